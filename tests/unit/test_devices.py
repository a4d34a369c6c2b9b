"""plan_device: every branch, decided from HardwareFacts passed in (no GPU needed)."""

import pytest
import torch

from app.devices import DevicePlan, DeviceUnavailable, HardwareFacts, MemoryMode, plan_device
from app.errors import EaselError

NO_GPU = HardwareFacts(cpu_name="x86_64", cpu_threads=6)
CUDA = HardwareFacts(cuda_available=True, cuda_name="NVIDIA GeForce RTX 3060", cuda_total_bytes=12 * 2**30, cpu_threads=8)
MPS = HardwareFacts(mps_available=True, cpu_name="arm", cpu_threads=8)


def test_cuda_gets_float16_with_everything_on_the_gpu():
    plan = plan_device(CUDA)
    assert plan == DevicePlan("cuda", torch.float16, MemoryMode.FULL, plan.description)
    assert "NVIDIA GeForce RTX 3060" in plan.description
    assert "12.0 GiB" in plan.description


def test_requested_cuda_with_cuda_present_is_the_same_plan_as_auto():
    assert plan_device(CUDA, "cuda") == plan_device(CUDA, "auto")


def test_mps_gets_float16_on_the_apple_gpu():
    plan = plan_device(MPS)
    assert (plan.device, plan.dtype, plan.memory_mode) == ("mps", torch.float16, MemoryMode.FULL)
    assert "MPS" in plan.description
    assert plan_device(MPS, "mps") == plan


def test_no_gpu_runs_on_cpu_in_float32_and_says_so():
    plan = plan_device(NO_GPU)
    assert (plan.device, plan.dtype, plan.memory_mode) == ("cpu", torch.float32, MemoryMode.CPU)
    assert "CPU" in plan.description
    assert "6 threads" in plan.description
    assert "No GPU" in plan.description


def test_requested_cpu_wins_over_a_present_gpu():
    for facts in (CUDA, MPS):
        plan = plan_device(facts, "cpu")
        assert (plan.device, plan.dtype, plan.memory_mode) == ("cpu", torch.float32, MemoryMode.CPU)
        assert "--device cpu" in plan.description


def test_requested_cuda_without_cuda_is_refused_with_advice():
    for facts in (NO_GPU, MPS):
        with pytest.raises(DeviceUnavailable) as caught:
            plan_device(facts, "cuda")
        assert "--device" in caught.value.message
        assert isinstance(caught.value, EaselError)  # shown to the user as a message, not a traceback


def test_requested_mps_without_an_apple_gpu_is_refused():
    for facts in (NO_GPU, CUDA):
        with pytest.raises(DeviceUnavailable, match="mps"):
            plan_device(facts, "mps")


@pytest.mark.parametrize("requested", ["tpu", "gpu", "", "cuda:0", "Cpu"])
def test_unknown_device_string_is_refused_naming_the_choices(requested):
    with pytest.raises(DeviceUnavailable) as caught:
        plan_device(NO_GPU, requested)
    assert "auto, cpu, cuda or mps" in caught.value.message


def test_auto_prefers_cuda_over_mps():
    both = HardwareFacts(cuda_available=True, cuda_name="GPU", cuda_total_bytes=2**30, mps_available=True)
    assert plan_device(both).device == "cuda"


def test_requested_mps_is_honoured_even_when_cuda_is_present():
    both = HardwareFacts(cuda_available=True, cuda_name="GPU", cuda_total_bytes=2**30, mps_available=True)
    assert plan_device(both, "mps").device == "mps"
