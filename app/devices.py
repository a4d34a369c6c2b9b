"""Which device, precision and memory mode to run on: pure functions of hardware facts and the user's choice.

`probe_hardware()` and `free_memory()` are the only parts that ask torch or the OS; `plan_device()`
and `degraded()` decide from plain facts, so every branch is unit-tested on a machine without a GPU
by passing the facts in. `apply_plan()` puts a diffusers pipeline into a plan, and can move one that
is already placed (with offload hooks) down the ladder after it ran out of memory.
"""

import ctypes
import functools
import gc
import os
import platform
import sys
from dataclasses import dataclass
from enum import Enum

import torch

from app.errors import EaselError


class DeviceUnavailable(EaselError):
    """The user asked for a device this machine does not have."""


class MemoryMode(str, Enum):
    FULL = "full"                      # every module on the GPU
    MODEL_OFFLOAD = "model-offload"    # one module at a time on the GPU
    SEQUENTIAL_OFFLOAD = "sequential-offload"  # one layer at a time: slow, but fits tiny GPUs
    CPU = "cpu"


@dataclass(frozen=True)
class HardwareFacts:
    cuda_available: bool = False
    cuda_name: str = ""
    cuda_total_bytes: int = 0
    cuda_free_bytes: int = 0
    mps_available: bool = False
    cpu_name: str = ""
    cpu_threads: int = 1
    cpu_bf16: bool = False       # AVX-512 BF16 or AMX: only then is bfloat16 faster than float32 on the CPU
    ram_total_bytes: int = 0
    ram_available_bytes: int = 0


@dataclass(frozen=True)
class DeviceOptions:
    """What the user asked for (command-line flags / settings)."""

    device: str = "auto"         # auto | cpu | cuda | mps
    lowvram: bool = False        # force sequential offload
    medvram: bool = False        # force model CPU offload
    no_half: bool = False        # float32 on the GPU too (for cards that give black/NaN images in fp16)


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

# Measured: 20 steps at 512x512 plus the VAE decode took ~4.5 min on 2 AVX2 threads in float32, about
# 540 thread-seconds. More threads help less than linearly (memory bandwidth), so this is a best case.
CPU_THREAD_SECONDS_PER_IMAGE = 540

# Markers of running out of memory in error messages that come as plain RuntimeError: CUDA and MPS
# ("... out of memory"), the CPU allocator, and cuBLAS failing to allocate its workspace.
_OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory", "cublas_status_alloc_failed")


# ---------------------------------------------------------------------------------------------------
# Probing: the only part that asks torch and the OS. Never raises: a fact it cannot read stays empty.


def probe_hardware() -> HardwareFacts:
    cuda = _cuda_available()
    cpuinfo = _read_text("/proc/cpuinfo")
    ram_total, ram_available = _ram_bytes()
    return HardwareFacts(
        cuda_available=cuda,
        cuda_name=_cuda_name() if cuda else "",
        cuda_total_bytes=_cuda_total_bytes() if cuda else 0,
        cuda_free_bytes=_cuda_free_bytes() if cuda else 0,
        mps_available=_mps_available(),
        cpu_name=cpu_model_name(cpuinfo) or platform.processor() or platform.machine(),
        cpu_threads=torch.get_num_threads(),
        cpu_bf16=cpu_has_fast_bf16(cpuinfo),
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
    )


def _cuda_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # a broken driver install can raise here; then there is no usable GPU
        return False


def _cuda_name() -> str:
    try:
        return torch.cuda.get_device_name(0)
    except Exception:
        return "the NVIDIA GPU"


def _cuda_total_bytes() -> int:
    try:
        return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:
        return 0


def _cuda_free_bytes() -> int:
    try:  # raises on the CPU build of torch and on some drivers
        return int(torch.cuda.mem_get_info()[0])
    except Exception:
        return 0


def _mps_available() -> bool:
    try:
        mps = getattr(torch.backends, "mps", None)
        return bool(mps and mps.is_available())
    except Exception:
        return False


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return ""


def cpu_model_name(cpuinfo: str) -> str:
    """The "model name" from /proc/cpuinfo text ("" if absent): platform.processor() is often just "x86_64"."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return ""


def cpu_has_fast_bf16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo lists AVX-512 BF16 or AMX: without them bf16 runs ~7x slower than fp32."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return bool({"avx512_bf16", "amx_bf16"} & set(value.split()))
    return False


def meminfo_bytes(meminfo: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo text; 0 for what is missing."""
    values = {}
    for line in meminfo.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def _ram_bytes() -> tuple[int, int]:
    total, available = meminfo_bytes(_read_text("/proc/meminfo"))
    if total:
        return total, available
    try:  # other Unixes; "available" is only the free pages there, an underestimate
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows, or names this OS does not know
        return 0, 0


# ---------------------------------------------------------------------------------------------------
# Planning: pure functions of the facts and the options.


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cpu_minutes_per_image(threads: int) -> int:
    """Rough minutes for a 512x512 image at 20 steps on the CPU in float32 (at least 1)."""
    return max(1, round(CPU_THREAD_SECONDS_PER_IMAGE / max(1, threads) / 60))


def _cpu_dtype(facts: HardwareFacts) -> torch.dtype:
    # fp16/bf16 run on most CPUs but several times slower than fp32; bf16 pays off only with
    # AVX-512 BF16 or AMX, which do bf16 math in hardware.
    return torch.bfloat16 if facts.cpu_bf16 else torch.float32


def _cpu_plan(facts: HardwareFacts, why: str) -> DevicePlan:
    dtype = _cpu_dtype(facts)
    threads, minutes = facts.cpu_threads, cpu_minutes_per_image(facts.cpu_threads)
    # No attention slicing (it only slows the CPU down, RAM is plentiful) and no VAE tiling.
    return DevicePlan(
        "cpu",
        dtype,
        MemoryMode.CPU,
        False,
        False,
        f"{why} Running on the CPU ({threads} thread{'s' if threads != 1 else ''}) in {_dtype_name(dtype)}: "
        f"expect roughly {minutes} minute{'s' if minutes != 1 else ''} per 512x512 image at 20 steps. "
        f"An NVIDIA GPU makes this about 100x faster.",
    )


def _mps_plan(options: DeviceOptions) -> DevicePlan:
    dtype = torch.float32 if options.no_half else torch.float16
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
    dtype = torch.float32 if options.no_half else torch.float16
    # float32 weights and activations take twice the memory of float16: choose as if the card had half.
    effective = facts.cuda_total_bytes // 2 if options.no_half else facts.cuda_total_bytes
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
                    f"for Stable Diffusion in float32 (--no-half doubles the {_gib(SEQUENTIAL_OFFLOAD_MIN_VRAM)} "
                    f"it needs in float16)."
                    if options.no_half
                    else f"for Stable Diffusion (it needs {_gib(SEQUENTIAL_OFFLOAD_MIN_VRAM)})."
                ),
            )
        # --device cuda was asked for explicitly: try the smallest GPU mode; out of memory steps to the CPU.
        mode = MemoryMode.SEQUENTIAL_OFFLOAD
        why = "The GPU has less memory than Stable Diffusion needs and may run out. "
    notes = ["half precision off"] if options.no_half else []
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
            "or install the CUDA build of torch (launch.sh does this when it finds an NVIDIA driver)."
        )
    if requested == "mps" and not facts.mps_available:
        raise DeviceUnavailable("You asked for --device mps, but this machine has no Apple GPU. Use --device auto.")
    if requested == "cpu":
        return _cpu_plan(facts, "CPU chosen with --device cpu.")
    if requested == "mps":
        return _mps_plan(options)
    if facts.cuda_available:
        return _plan_cuda(facts, options)
    if facts.mps_available:
        return _mps_plan(options)
    return _cpu_plan(facts, "No GPU found.")


def degraded(plan: DevicePlan, facts: HardwareFacts) -> DevicePlan | None:
    """The plan one rung down FULL -> MODEL_OFFLOAD -> SEQUENTIAL_OFFLOAD -> CPU, after running out of
    memory; None when already on the CPU (nothing lower to go to)."""
    if plan.device == "cpu":
        return None
    if plan.device == "mps":  # unified memory: offloading frees nothing, the CPU is the next rung
        return _cpu_plan(facts, "Ran out of memory on the Apple GPU.")
    if plan.memory_mode is MemoryMode.SEQUENTIAL_OFFLOAD:
        return _cpu_plan(facts, "Ran out of GPU memory even with sequential offload.")
    lower = _LADDER[_LADDER.index(plan.memory_mode) + 1]
    return _cuda_plan(facts, plan.dtype, lower, f"Ran out of GPU memory in {plan.memory_mode.value} mode. ", ",")


# ---------------------------------------------------------------------------------------------------
# Applying a plan to a pipeline, freeing memory, recognising out-of-memory errors.


def apply_plan(pipe, plan: DevicePlan) -> None:
    """Put a diffusers pipeline on the plan's device, precision and memory mode.

    Works on a pipeline that is already placed: offload hooks come off first, so the same pipeline
    can move down the ladder after running out of memory.
    """
    if hasattr(pipe, "remove_all_hooks"):
        pipe.remove_all_hooks()  # .to() refuses (or misplaces) modules that still carry offload hooks
    if plan.memory_mode is MemoryMode.MODEL_OFFLOAD:
        pipe.to(dtype=plan.dtype)
        pipe.enable_model_cpu_offload(device=plan.device)
    elif plan.memory_mode is MemoryMode.SEQUENTIAL_OFFLOAD:
        pipe.to(dtype=plan.dtype)
        pipe.enable_sequential_cpu_offload(device=plan.device)
    else:  # FULL, or CPU (whose plan.device is "cpu")
        pipe.to(plan.device, plan.dtype)
    if plan.attention_slicing and hasattr(pipe, "enable_attention_slicing"):
        pipe.enable_attention_slicing()
    elif not plan.attention_slicing and hasattr(pipe, "disable_attention_slicing"):
        pipe.disable_attention_slicing()
    vae = getattr(pipe, "vae", None)
    if plan.vae_tiling and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    elif not plan.vae_tiling and hasattr(vae, "disable_tiling"):
        vae.disable_tiling()


@functools.cache
def _libc():
    """glibc, for malloc_trim; None elsewhere (macOS, Windows, musl has no malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def free_memory() -> None:
    """Give freed memory back: Python garbage, the GPU cache, and the C heap. Never raises.

    Call after dropping every reference to a model (and to a caught out-of-memory error, whose
    traceback holds tensors).
    """
    try:
        gc.collect()
        if _cuda_available():
            torch.cuda.empty_cache()
        if _mps_available():
            torch.mps.empty_cache()
        libc = _libc()
        if libc is not None:
            # glibc keeps freed heap pages mapped; without this the resident size stays at its peak
            # after a model swap even though Python and torch have released everything.
            libc.malloc_trim(0)
    except Exception:
        pass  # freeing is best effort; failing to free must not turn into a user-facing error


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an error means the device (or the CPU allocator) ran out of memory."""
    if isinstance(error, MemoryError):  # Python's own; often without a message
        return True
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if t)
    if isinstance(error, oom_types):
        return True
    if isinstance(error, RuntimeError):  # MPS, the CPU allocator and older CUDA paths raise plain RuntimeError
        message = str(error).lower()
        return any(marker in message for marker in _OUT_OF_MEMORY_MARKERS)
    return False
