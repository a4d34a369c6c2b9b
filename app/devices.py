"""Which device, precision and memory mode to run on: pure functions of the hardware facts
(app.hardware) and the user's choice, so every branch is unit-tested on a machine without a GPU by
passing the facts in. `degraded()` is the ladder a job steps down after running out of memory.
"""

from dataclasses import dataclass
from enum import Enum

import torch

from app.errors import EaselError
from app.hardware import HardwareFacts


class DeviceUnavailable(EaselError):
    """The user asked for a device this machine does not have."""


class MemoryMode(str, Enum):
    FULL = "full"                      # every module on the GPU
    MODEL_OFFLOAD = "model-offload"    # one module at a time on the GPU
    SEQUENTIAL_OFFLOAD = "sequential-offload"  # one layer at a time: slow, but fits tiny GPUs
    CPU = "cpu"


@dataclass(frozen=True)
class DeviceOptions:
    """What the user asked for (command-line flags / settings)."""

    device: str = "auto"         # auto | cpu | cuda | mps
    lowvram: bool = False        # force sequential offload
    medvram: bool = False        # force model CPU offload
    # float32 everywhere (--precision full / --no-half): for cards that give black images in float16,
    # for comparing against references, or where bfloat16 misbehaves on a CPU.
    full_precision: bool = False


@dataclass(frozen=True)
class DevicePlan:
    device: str                  # "cuda", "mps" or "cpu"
    dtype: torch.dtype
    memory_mode: MemoryMode
    attention_slicing: bool      # trade speed for memory in attention
    vae_tiling: bool             # decode large images in tiles
    description: str             # one sentence for the user: where it runs, in which mode, what speed to expect


DEVICES = ("auto", "cpu", "cuda", "mps")
GIB = 2**30

# VRAM needed per memory mode, for SD 1.x/2.x at 512-768 px in float16. The weights alone are ~2 GiB
# (UNet 1.7, text encoder 0.25, VAE 0.16); the CUDA context, attention at 768 px and the VAE decode
# add 3-5 GiB on top, so everything stays on the GPU only from 8 GiB on.
FULL_MIN_VRAM = 8 * GIB
# Model offload keeps one module at a time on the GPU: the UNet and its activations fit in 4 GiB.
MODEL_OFFLOAD_MIN_VRAM = 4 * GIB
# Sequential offload moves one layer at a time; below 2 GiB the CUDA context and the activations leave
# no room even for that, and the CPU is the better choice.
SEQUENTIAL_OFFLOAD_MIN_VRAM = 2 * GIB
# Attention slicing (worth it below ~6 GiB) and VAE tiling (below ~8 GiB) are not separate thresholds:
# with the table above every card under 8 GiB is in an offload mode, so both come with those modes.

def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cpu_precision(facts: HardwareFacts, full_precision: bool) -> tuple[torch.dtype, str]:
    """The CPU's dtype, and the words saying why."""
    if full_precision:
        return torch.float32, "float32 (full precision, as asked)"
    # fp16/bf16 run on most CPUs but several times slower than fp32; bf16 pays off only with
    # AVX-512 BF16 or AMX, which do bf16 math in hardware.
    if facts.cpu_bf16:
        return torch.bfloat16, "bfloat16 (this CPU does it in hardware; --precision full for float32)"
    return torch.float32, "float32"


def _cpu_plan(facts: HardwareFacts, why: str, full_precision: bool) -> DevicePlan:
    dtype, precision = _cpu_precision(facts, full_precision)
    threads = facts.cpu_threads
    # No attention slicing (it only slows the CPU down, RAM is plentiful) and no VAE tiling.
    return DevicePlan(
        "cpu",
        dtype,
        MemoryMode.CPU,
        False,
        False,
        # No time here: the header's speed line is measured on this machine (app.generation.speed).
        f"{why} Running on the CPU ({threads} thread{'s' if threads != 1 else ''}) in {precision}. "
        f"An NVIDIA GPU makes this about 100x faster.",
    )


def _mps_plan(options: DeviceOptions) -> DevicePlan:
    dtype = torch.float32 if options.full_precision else torch.float16
    # Offload frees nothing on unified memory, so always FULL; diffusers' MPS guide recommends attention
    # slicing there, since the GPU shares its memory with the whole system.
    return DevicePlan(
        "mps",
        dtype,
        MemoryMode.FULL,
        True,
        False,
        f"Running on the Apple GPU (MPS) in {_dtype_name(dtype)}: much faster than the CPU.",
    )


_CUDA_MODE_WORDS = {
    MemoryMode.FULL: "with the whole model on the GPU (fastest: seconds per 512x512 image)",
    MemoryMode.MODEL_OFFLOAD: (
        "with model offload (one part of the model on the GPU at a time): a little slower than with "
        "the whole model on the GPU"
    ),
    MemoryMode.SEQUENTIAL_OFFLOAD: (
        "with sequential offload (one layer at a time on the GPU): several times slower than with the "
        "whole model on the GPU, still faster than the CPU"
    ),
}


def _gpu_name(facts: HardwareFacts) -> str:
    """The GPU as the user knows it, with its memory when known."""
    name = facts.cuda_name or "the NVIDIA GPU"
    return f"{name} ({_gib(facts.cuda_total_bytes)})" if facts.cuda_total_bytes else name


def _cuda_plan(
    facts: HardwareFacts, dtype: torch.dtype, mode: MemoryMode, why: str = "", detail: str = ""
) -> DevicePlan:
    tight = mode is not MemoryMode.FULL  # every offload mode is a "memory is short" mode
    return DevicePlan(
        "cuda",
        dtype,
        mode,
        tight,  # attention slicing: small cost next to offloading's
        tight,  # VAE tiling: only acts on images larger than the VAE's tile (512 px for SD 1.x)
        f"{why}Running on {_gpu_name(facts)} in {_dtype_name(dtype)}{detail} "
        f"{_CUDA_MODE_WORDS[mode]}.",
    )


_LADDER = (MemoryMode.FULL, MemoryMode.MODEL_OFFLOAD, MemoryMode.SEQUENTIAL_OFFLOAD, MemoryMode.CPU)


def mode_for_vram(effective_bytes: int) -> MemoryMode:
    """The memory mode the VRAM table gives for this much memory (already halved for float32)."""
    if effective_bytes >= FULL_MIN_VRAM:
        return MemoryMode.FULL
    if effective_bytes >= MODEL_OFFLOAD_MIN_VRAM:
        return MemoryMode.MODEL_OFFLOAD
    if effective_bytes >= SEQUENTIAL_OFFLOAD_MIN_VRAM:
        return MemoryMode.SEQUENTIAL_OFFLOAD
    return MemoryMode.CPU


def _plan_cuda(facts: HardwareFacts, options: DeviceOptions) -> DevicePlan:
    dtype = torch.float32 if options.full_precision else torch.float16
    # float32 weights and activations take twice the memory of float16: choose as if the card had half.
    effective = facts.cuda_total_bytes // 2 if options.full_precision else facts.cuda_total_bytes
    why = ""
    if facts.cuda_total_bytes == 0:
        # The size could not be read: model offload runs on any card of 4 GiB or more at near full
        # speed, and running out of memory steps down from there.
        mode, why = MemoryMode.MODEL_OFFLOAD, "Could not read how much memory the GPU has. "
    else:
        mode = mode_for_vram(effective)
    if mode is MemoryMode.CPU:
        if options.device != "cuda":
            return _cpu_plan(
                facts,
                f"{facts.cuda_name or 'The GPU'} has only {_gib(facts.cuda_total_bytes)} of memory, too little "
                + (
                    f"for Stable Diffusion in float32 (full precision doubles the "
                    f"{_gib(SEQUENTIAL_OFFLOAD_MIN_VRAM)} it needs in float16)."
                    if options.full_precision
                    else f"for Stable Diffusion (it needs {_gib(SEQUENTIAL_OFFLOAD_MIN_VRAM)})."
                ),
                options.full_precision,
            )
        # --device cuda was asked for explicitly: try the smallest GPU mode; out of memory steps to the CPU.
        mode = MemoryMode.SEQUENTIAL_OFFLOAD
        why = "The GPU has less memory than Stable Diffusion needs and may run out. "
    notes = ["full precision"] if options.full_precision else []
    # --medvram / --lowvram only ever save more memory; they never lift a small card to a faster mode.
    forced = MemoryMode.SEQUENTIAL_OFFLOAD if options.lowvram else MemoryMode.MODEL_OFFLOAD if options.medvram else None
    if forced is not None and _LADDER.index(forced) > _LADDER.index(mode):
        mode = forced
        notes.append("--lowvram" if options.lowvram else "--medvram")
    return _cuda_plan(facts, dtype, mode, why, f" ({', '.join(notes)})," if notes else ",")


def plan_device(facts: HardwareFacts, options: DeviceOptions | str = DeviceOptions()) -> DevicePlan:
    """The device, precision and memory mode to use, from the facts and the user's options.

    `options` may also be just the `--device` string (the older call form).
    """
    if isinstance(options, str):
        options = DeviceOptions(device=options)
    requested = options.device
    if requested not in DEVICES:
        raise DeviceUnavailable(f"Unknown device '{requested}'. Use auto, cpu, cuda or mps.")
    if requested == "cuda" and not facts.cuda_available:
        raise DeviceUnavailable(
            "You asked for --device cuda, but torch sees no CUDA GPU. Start with --device auto or cpu, "
            "or install the CUDA build of torch: start the launcher once with --torch cuda."
        )
    if requested == "mps" and not facts.mps_available:
        raise DeviceUnavailable("You asked for --device mps, but this machine has no Apple GPU. Use --device auto.")
    if requested == "cpu":
        return _cpu_plan(facts, "CPU chosen with --device cpu.", options.full_precision)
    if requested == "mps":
        return _mps_plan(options)
    if facts.cuda_available:
        return _plan_cuda(facts, options)
    if facts.mps_available:
        return _mps_plan(options)
    return _cpu_plan(facts, "No GPU found.", options.full_precision)


def degraded(plan: DevicePlan, facts: HardwareFacts) -> DevicePlan | None:
    """The plan one rung down FULL -> MODEL_OFFLOAD -> SEQUENTIAL_OFFLOAD -> CPU, after running out of
    memory; None when already on the CPU (nothing lower to go to)."""
    if plan.device == "cpu":
        return None
    full_precision = plan.dtype == torch.float32  # a GPU runs in float32 only when asked to
    if plan.device == "mps":  # unified memory: offloading frees nothing, the CPU is the next rung
        return _cpu_plan(facts, "Ran out of memory on the Apple GPU.", full_precision)
    if plan.memory_mode is MemoryMode.SEQUENTIAL_OFFLOAD:
        return _cpu_plan(facts, "Ran out of GPU memory even with sequential offload.", full_precision)
    lower = _LADDER[_LADDER.index(plan.memory_mode) + 1]
    return _cuda_plan(facts, plan.dtype, lower, f"Ran out of GPU memory in {plan.memory_mode.value} mode. ", ",")
