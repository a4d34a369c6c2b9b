"""What this machine has: the GPU and its memory, the CPU and whether it does bfloat16 math in
hardware, the RAM. The only code that asks torch and the OS about the hardware; it never raises:
a fact it cannot read stays empty. Everything that decides from the facts takes them as a value.
"""

import os
import platform
from dataclasses import dataclass

import torch


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


def probe_hardware() -> HardwareFacts:
    cuda = cuda_available()
    cpuinfo = _read_text("/proc/cpuinfo")
    ram_total, ram_available = _ram_bytes()
    return HardwareFacts(
        cuda_available=cuda,
        cuda_name=_cuda_name() if cuda else "",
        cuda_total_bytes=_cuda_total_bytes() if cuda else 0,
        cuda_free_bytes=_cuda_free_bytes() if cuda else 0,
        mps_available=mps_available(),
        cpu_name=cpu_model_name(cpuinfo) or platform.processor() or platform.machine(),
        cpu_threads=torch.get_num_threads(),
        cpu_bf16=cpu_has_fast_bf16(cpuinfo),
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
    )


def cuda_available() -> bool:
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


def mps_available() -> bool:
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


def physical_cores(cpuinfo: str, usable: set[int] | None = None) -> int:
    """How many physical cores the usable CPUs (default: all listed) are on; 0 if /proc/cpuinfo does not say.

    Hyper-threads share a core's matrix units: a second torch thread per core only adds contention."""
    cores, processor, physical = set(), None, "0"
    for line in cpuinfo.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            processor = int(value) if value.isdigit() else None
        elif key == "physical id":
            physical = value
        elif key == "core id" and (usable is None or processor in usable):
            cores.add((physical, value))
    return len(cores)


def threads_for_torch() -> int:
    """One torch thread per physical core this process may use (the logical CPU count where unknown)."""
    try:
        usable = os.sched_getaffinity(0)  # honours taskset and container CPU sets
    except AttributeError:  # macOS, Windows
        usable = None
    cores = physical_cores(_read_text("/proc/cpuinfo"), usable)
    return cores or (len(usable) if usable else os.cpu_count() or 1)


def use_physical_cores() -> int:
    """Give torch one thread per physical core (unless OMP_NUM_THREADS says otherwise); returns the count.
    Called once at start-up, by the launcher (and the benches), before any model runs."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return torch.get_num_threads()
    threads = threads_for_torch()
    torch.set_num_threads(threads)
    return threads


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
