"""Which device and precision to run on: a pure function of hardware facts and the user's choice.

`probe_hardware()` is the only part that asks torch; `plan_device()` decides from plain facts, so
every branch is unit-tested on a machine without a GPU by passing the facts in.
"""

import platform
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
    mps_available: bool = False
    cpu_name: str = ""
    cpu_threads: int = 1


@dataclass(frozen=True)
class DevicePlan:
    device: str            # "cuda", "mps" or "cpu"
    dtype: torch.dtype
    memory_mode: MemoryMode
    description: str       # one sentence for the user: where this runs and what to expect


def probe_hardware() -> HardwareFacts:
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return HardwareFacts(
        cuda_available=cuda,
        cuda_name=torch.cuda.get_device_name(0) if cuda else "",
        cuda_total_bytes=torch.cuda.get_device_properties(0).total_memory if cuda else 0,
        mps_available=mps,
        cpu_name=platform.processor() or platform.machine(),
        cpu_threads=torch.get_num_threads(),
    )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def _cpu_plan(facts: HardwareFacts, why: str) -> DevicePlan:
    # fp16/bf16 run on most CPUs but several times slower than fp32: the CPU always gets fp32.
    return DevicePlan(
        "cpu",
        torch.float32,
        MemoryMode.CPU,
        f"{why} Running on the CPU ({facts.cpu_threads} threads) in float32: expect minutes per "
        f"512x512 image at 20 steps. An NVIDIA GPU makes this about 100x faster.",
    )


def _mps_plan() -> DevicePlan:
    return DevicePlan("mps", torch.float16, MemoryMode.FULL, "Running on the Apple GPU (MPS) in float16.")


def plan_device(facts: HardwareFacts, requested: str = "auto") -> DevicePlan:
    """The device, precision and memory mode to use, from the facts and `--device`."""
    if requested not in ("auto", "cpu", "cuda", "mps"):
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
        return _mps_plan()
    if facts.cuda_available:
        return DevicePlan(
            "cuda",
            torch.float16,
            MemoryMode.FULL,
            f"Running on {facts.cuda_name} ({_gib(facts.cuda_total_bytes)}) in float16.",
        )
    if facts.mps_available:
        return _mps_plan()
    return _cpu_plan(facts, "No GPU found.")
