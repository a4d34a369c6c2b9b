"""Device planning: every branch decided from HardwareFacts passed in (no GPU needed); applying a plan
to fake and real tiny pipelines; probing, freeing memory and recognising out-of-memory errors here."""

import gc
import sys
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from app.devices import (
    GIB,
    DeviceOptions,
    DevicePlan,
    DeviceUnavailable,
    MemoryMode,
    degraded,
    plan_device,
)
from app.errors import EaselError
from app.hardware import HardwareFacts, cpu_has_fast_bf16, cpu_model_name, meminfo_bytes, probe_hardware
from app.memory import free_memory, is_out_of_memory, trim_heap
from app.models.placement import apply_plan

NO_GPU = HardwareFacts(cpu_name="x86_64", cpu_threads=6)
CUDA = HardwareFacts(cuda_available=True, cuda_name="NVIDIA GeForce RTX 3060", cuda_total_bytes=12 * 2**30, cpu_threads=8)
MPS = HardwareFacts(mps_available=True, cpu_name="arm", cpu_threads=8)
FULL, MODEL, SEQ, CPU = MemoryMode.FULL, MemoryMode.MODEL_OFFLOAD, MemoryMode.SEQUENTIAL_OFFLOAD, MemoryMode.CPU


def cuda_with(gib: float) -> HardwareFacts:
    return HardwareFacts(cuda_available=True, cuda_name="Card", cuda_total_bytes=int(gib * GIB), cpu_threads=4)


# --- plan_device: CUDA --------------------------------------------------------------------------


def test_cuda_gets_float16_with_everything_on_the_gpu():
    plan = plan_device(CUDA)
    assert plan == DevicePlan("cuda", torch.float16, FULL, False, False, plan.description)
    assert "NVIDIA GeForce RTX 3060" in plan.description
    assert "12.0 GiB" in plan.description


def test_requested_cuda_with_cuda_present_is_the_same_plan_as_auto():
    assert plan_device(CUDA, "cuda") == plan_device(CUDA, "auto")
    assert plan_device(CUDA, DeviceOptions(device="cuda")) == plan_device(CUDA, DeviceOptions())


@pytest.mark.parametrize(
    "gib, mode",
    [(24, FULL), (8, FULL), (7.9, MODEL), (4, MODEL), (3.9, SEQ), (2, SEQ), (1.9, CPU)],
)
def test_vram_table_at_its_edges(gib, mode):
    plan = plan_device(cuda_with(gib))
    assert plan.memory_mode is mode
    if mode is CPU:
        assert (plan.device, plan.dtype) == ("cpu", torch.float32)
        assert "too little" in plan.description and "CPU" in plan.description
        assert (plan.attention_slicing, plan.vae_tiling) == (False, False)
    else:
        assert (plan.device, plan.dtype) == ("cuda", torch.float16)
        # Memory-saving extras come with every offload mode (every card under 8 GiB), never with FULL.
        assert plan.attention_slicing is plan.vae_tiling is (mode is not FULL)


@pytest.mark.parametrize(
    "gib, mode", [(24, FULL), (16, FULL), (15.9, MODEL), (8, MODEL), (7.9, SEQ), (4, SEQ), (3.9, CPU)]
)
def test_full_precision_runs_float32_and_chooses_as_if_the_card_had_half_the_memory(gib, mode):
    plan = plan_device(cuda_with(gib), DeviceOptions(full_precision=True))
    assert plan.memory_mode is mode
    assert plan.dtype == torch.float32
    if mode is CPU:
        assert "full precision doubles" in plan.description
    else:
        assert "float32" in plan.description


@pytest.mark.parametrize("gib", [24, 8, 5])
def test_medvram_forces_model_offload(gib):
    plan = plan_device(cuda_with(gib), DeviceOptions(medvram=True))
    assert (plan.device, plan.dtype, plan.memory_mode) == ("cuda", torch.float16, MODEL)
    assert plan.attention_slicing and plan.vae_tiling


@pytest.mark.parametrize("gib", [24, 5, 3])
def test_lowvram_forces_sequential_offload_and_wins_over_medvram(gib):
    for options in (DeviceOptions(lowvram=True), DeviceOptions(lowvram=True, medvram=True)):
        plan = plan_device(cuda_with(gib), options)
        assert (plan.device, plan.memory_mode) == ("cuda", SEQ)


def test_forcing_flags_never_move_a_small_card_up():
    assert plan_device(cuda_with(3), DeviceOptions(medvram=True)).memory_mode is SEQ
    assert plan_device(cuda_with(1.5), DeviceOptions(medvram=True)).memory_mode is CPU
    assert plan_device(cuda_with(1.5), DeviceOptions(lowvram=True)).memory_mode is CPU


def test_forced_mode_is_named_in_the_description():
    assert "--medvram" in plan_device(cuda_with(24), DeviceOptions(medvram=True)).description
    assert "--lowvram" in plan_device(cuda_with(24), DeviceOptions(lowvram=True)).description
    # Not claimed when the table chose that mode anyway.
    assert "--medvram" not in plan_device(cuda_with(5), DeviceOptions(medvram=True)).description


def test_explicit_cuda_on_a_too_small_card_tries_the_smallest_gpu_mode():
    plan = plan_device(cuda_with(1.5), "cuda")
    assert (plan.device, plan.memory_mode) == ("cuda", SEQ)
    assert "may run out" in plan.description


def test_unknown_vram_size_starts_in_model_offload():
    plan = plan_device(HardwareFacts(cuda_available=True, cuda_name="Card"))
    assert (plan.device, plan.memory_mode) == ("cuda", MODEL)
    assert "Could not read" in plan.description


def test_auto_prefers_cuda_over_mps():
    both = HardwareFacts(cuda_available=True, cuda_name="GPU", cuda_total_bytes=12 * GIB, mps_available=True)
    assert plan_device(both).device == "cuda"


# --- plan_device: MPS and CPU -------------------------------------------------------------------


def test_mps_gets_float16_on_the_apple_gpu_with_attention_slicing():
    plan = plan_device(MPS)
    assert (plan.device, plan.dtype, plan.memory_mode) == ("mps", torch.float16, FULL)
    assert plan.attention_slicing
    assert "MPS" in plan.description and "Apple GPU" in plan.description
    assert plan_device(MPS, "mps") == plan
    assert plan_device(MPS, DeviceOptions(full_precision=True)).dtype == torch.float32


def test_requested_mps_is_honoured_even_when_cuda_is_present():
    both = HardwareFacts(cuda_available=True, cuda_name="GPU", cuda_total_bytes=12 * GIB, mps_available=True)
    assert plan_device(both, "mps").device == "mps"


def test_no_gpu_runs_on_cpu_in_float32_and_says_so():
    plan = plan_device(NO_GPU)
    assert plan == DevicePlan("cpu", torch.float32, CPU, False, False, plan.description)
    assert plan.description.startswith("No GPU found.")
    assert "CPU" in plan.description
    assert "6 threads" in plan.description
    assert "minute" not in plan.description  # the speed is measured, never a table's guess
    assert "100x" in plan.description


def test_cpu_uses_bfloat16_only_with_hardware_bf16():
    plan = plan_device(replace(NO_GPU, cpu_bf16=True))
    assert (plan.device, plan.dtype, plan.memory_mode) == ("cpu", torch.bfloat16, CPU)
    assert "in bfloat16" in plan.description and "--precision full" in plan.description
    assert plan_device(NO_GPU).dtype == torch.float32


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_full_precision_gives_float32_on_a_bf16_cpu_and_says_so(device):
    plan = plan_device(replace(NO_GPU, cpu_bf16=True), DeviceOptions(device=device, full_precision=True))
    assert (plan.device, plan.dtype) == ("cpu", torch.float32)
    assert "in float32 (full precision, as asked)" in plan.description


def test_a_full_precision_gpu_steps_down_to_a_float32_cpu_even_where_bf16_is_fast():
    facts = replace(cuda_with(3), cpu_bf16=True)
    assert degraded(plan_device(facts, DeviceOptions(device="cuda", full_precision=True)), facts).dtype == torch.float32
    assert degraded(plan_device(facts, DeviceOptions(device="cuda")), facts).dtype == torch.bfloat16


def test_requested_cpu_wins_over_a_present_gpu():
    for facts in (CUDA, MPS):
        for options in ("cpu", DeviceOptions(device="cpu", medvram=True, full_precision=True)):
            plan = plan_device(facts, options)
            assert (plan.device, plan.dtype, plan.memory_mode) == ("cpu", torch.float32, CPU)
            assert "--device cpu" in plan.description


# --- plan_device: errors ------------------------------------------------------------------------


def test_requested_cuda_without_cuda_is_refused_with_advice():
    for facts in (NO_GPU, MPS):
        with pytest.raises(DeviceUnavailable) as caught:
            plan_device(facts, "cuda")
        assert "--device" in caught.value.message
        assert isinstance(caught.value, EaselError)  # shown to the user as a message, not a traceback


def test_requested_mps_without_an_apple_gpu_is_refused():
    for facts in (NO_GPU, CUDA):
        with pytest.raises(DeviceUnavailable, match="mps"):
            plan_device(facts, DeviceOptions(device="mps"))


@pytest.mark.parametrize("requested", ["tpu", "gpu", "", "cuda:0", "Cpu"])
def test_unknown_device_string_is_refused_naming_the_choices(requested):
    for options in (requested, DeviceOptions(device=requested)):
        with pytest.raises(DeviceUnavailable) as caught:
            plan_device(NO_GPU, options)
        assert "auto, cpu, cuda or mps" in caught.value.message


# --- degraded -----------------------------------------------------------------------------------


def test_degraded_walks_the_ladder_down_to_the_cpu_then_stops():
    plan = plan_device(CUDA)
    seen = []
    while plan is not None:
        seen.append((plan.device, plan.memory_mode, plan.dtype))
        if len(seen) > 1:
            assert "out of" in plan.description.lower() and "memory" in plan.description
        plan = degraded(plan, CUDA)
    assert seen == [
        ("cuda", FULL, torch.float16),
        ("cuda", MODEL, torch.float16),
        ("cuda", SEQ, torch.float16),
        ("cpu", CPU, torch.float32),
    ]


def test_degraded_gpu_rungs_save_memory_everywhere_and_keep_the_precision():
    lower = degraded(plan_device(cuda_with(24), DeviceOptions(full_precision=True)), cuda_with(24))
    assert (lower.memory_mode, lower.dtype) == (MODEL, torch.float32)
    assert lower.attention_slicing and lower.vae_tiling
    assert "Card (24.0 GiB)" in lower.description


def test_degraded_cpu_rung_is_the_cpu_plan():
    cpu = degraded(plan_device(cuda_with(3)), cuda_with(3))
    assert cpu == DevicePlan("cpu", torch.float32, CPU, False, False, cpu.description)
    assert "Ran out of GPU memory" in cpu.description


def test_degraded_mps_goes_straight_to_the_cpu():
    cpu = degraded(plan_device(MPS), MPS)
    assert (cpu.device, cpu.dtype, cpu.memory_mode) == ("cpu", torch.float32, CPU)
    assert "out of memory" in cpu.description


def test_nothing_below_the_cpu():
    assert degraded(plan_device(NO_GPU), NO_GPU) is None


# --- apply_plan with a fake pipeline ------------------------------------------------------------


class FakeVae:
    def __init__(self, calls):
        self.calls = calls

    def enable_tiling(self):
        self.calls.append("vae.enable_tiling")

    def disable_tiling(self):
        self.calls.append("vae.disable_tiling")


class FakePipeline:
    """Records the diffusers calls apply_plan makes, in order."""

    def __init__(self):
        self.calls = []
        self.vae = FakeVae(self.calls)

    def remove_all_hooks(self):
        self.calls.append("remove_all_hooks")

    def to(self, *args, **kwargs):
        self.calls.append(("to", args, kwargs))
        return self

    def enable_model_cpu_offload(self, gpu_id=None, device=None):
        self.calls.append(("enable_model_cpu_offload", device))

    def enable_sequential_cpu_offload(self, gpu_id=None, device=None):
        self.calls.append(("enable_sequential_cpu_offload", device))

    def enable_attention_slicing(self, slice_size="auto"):
        self.calls.append("enable_attention_slicing")

    def disable_attention_slicing(self):
        self.calls.append("disable_attention_slicing")


def plan(device, dtype, mode, slicing, tiling):
    return DevicePlan(device, dtype, mode, slicing, tiling, "test")


@pytest.mark.parametrize(
    "the_plan, expected",
    [
        (
            plan("cuda", torch.float16, FULL, False, False),
            ["remove_all_hooks", ("to", ("cuda", torch.float16), {}), "disable_attention_slicing", "vae.disable_tiling"],
        ),
        (
            plan("cuda", torch.float16, MODEL, True, True),
            [
                "remove_all_hooks",
                ("to", (), {"dtype": torch.float16}),
                ("enable_model_cpu_offload", "cuda"),
                "enable_attention_slicing",
                "vae.enable_tiling",
            ],
        ),
        (
            plan("cuda", torch.float32, SEQ, True, True),
            [
                "remove_all_hooks",
                ("to", (), {"dtype": torch.float32}),
                ("enable_sequential_cpu_offload", "cuda"),
                "enable_attention_slicing",
                "vae.enable_tiling",
            ],
        ),
        (
            plan("mps", torch.float16, FULL, True, False),
            ["remove_all_hooks", ("to", ("mps", torch.float16), {}), "enable_attention_slicing", "vae.disable_tiling"],
        ),
        (
            plan("cpu", torch.float32, CPU, False, False),
            ["remove_all_hooks", ("to", ("cpu", torch.float32), {}), "disable_attention_slicing", "vae.disable_tiling"],
        ),
    ],
    ids=["full", "model-offload", "sequential-offload", "mps", "cpu"],
)
def test_apply_plan_calls_the_right_methods_in_order_hooks_first(the_plan, expected):
    pipe = FakePipeline()
    apply_plan(pipe, the_plan)
    assert pipe.calls == expected


def test_apply_plan_skips_what_a_pipeline_does_not_have():
    class Bare:
        def __init__(self):
            self.calls = []

        def to(self, *args, **kwargs):
            self.calls.append(("to", args))

    pipe = Bare()
    apply_plan(pipe, plan("cpu", torch.float32, CPU, True, True))
    assert pipe.calls == [("to", ("cpu", torch.float32))]


# --- apply_plan with a real tiny pipeline -------------------------------------------------------


def _placements(pipe) -> set:
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return {(p.device.type, p.dtype) for m in modules for p in m.parameters()}


def _hooked(pipe) -> bool:
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return any(hasattr(sub, "_hf_hook") for m in modules for sub in m.modules())


@pytest.fixture
def tiny():
    from tools.tiny_models import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_cpu_plan_on_a_real_pipeline_gives_float32_on_cpu(tiny):
    tiny.to(dtype=torch.bfloat16)  # as if loaded in another precision
    apply_plan(tiny, plan_device(NO_GPU))
    assert _placements(tiny) == {("cpu", torch.float32)}
    assert not tiny.vae.use_tiling


@pytest.mark.parametrize("mode", [MODEL, SEQ])
def test_a_real_pipeline_moves_down_from_an_offload_mode_to_the_cpu(tiny, mode):
    # The CPU stands in for the accelerator (diffusers accepts an explicit device): this checks that
    # our calls match diffusers' real signatures and that hooks really come off on the way down.
    apply_plan(tiny, plan("cpu", torch.float32, mode, True, True))
    assert _hooked(tiny)
    assert tiny.vae.use_tiling
    cpu = degraded(plan_device(cuda_with(3)), cuda_with(3))
    apply_plan(tiny, cpu)
    assert not _hooked(tiny)
    assert _placements(tiny) == {("cpu", torch.float32)}  # sequential offload had left weights on "meta"
    assert not tiny.vae.use_tiling
    image = tiny("a cat", num_inference_steps=1, height=64, width=64, guidance_scale=1.0, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


# --- is_out_of_memory ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        torch.OutOfMemoryError("out of memory"),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 4.00 GiB total capacity)"),
        RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB, other allocations: 1.00 GB)"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 100000000000000 bytes. Error code 12 (Cannot allocate memory)"
        ),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        MemoryError(),
        MemoryError("out of memory"),
    ],
)
def test_out_of_memory_errors_are_recognised(error):
    assert is_out_of_memory(error)


def test_the_real_cpu_allocator_failure_is_recognised():
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except Exception as error:
        assert is_out_of_memory(error)
    else:
        pytest.fail("allocating 4 EiB should fail")


@pytest.mark.parametrize(
    "error",
    [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("out of memory"), KeyError("x"), EaselError("m")],
)
def test_other_errors_are_not_out_of_memory(error):
    assert not is_out_of_memory(error)


# --- probing and freeing on this machine --------------------------------------------------------


def test_probe_on_this_machine_sees_no_cuda_and_does_not_raise():
    facts = probe_hardware()
    assert facts.cuda_available is False
    assert (facts.cuda_total_bytes, facts.cuda_free_bytes) == (0, 0)
    assert facts.cpu_threads >= 1
    if sys.platform.startswith("linux"):
        assert facts.ram_total_bytes >= facts.ram_available_bytes > 0
    plan_device(facts)  # whatever it found plans without error


def test_meminfo_parsing():
    text = "MemTotal:       24683656 kB\nMemFree:        21295960 kB\nMemAvailable:   23522076 kB\n"
    assert meminfo_bytes(text) == (24683656 * 1024, 23522076 * 1024)
    assert meminfo_bytes("") == (0, 0)
    assert meminfo_bytes("MemTotal: 1024 kB\n") == (1024 * 1024, 0)  # old kernels have no MemAvailable


def test_cpuinfo_parsing():
    text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n"
    assert cpu_model_name(text) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_has_fast_bf16(text)
    assert cpu_has_fast_bf16("flags\t: fpu avx512f avx512_bf16\n")
    assert not cpu_has_fast_bf16("flags\t: fpu sse avx2 avx512f avx512bw\n")
    assert not cpu_has_fast_bf16("") and cpu_model_name("") == ""


def _rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


def test_free_memory_collects_cycles_that_hold_tensors():
    class Holder:
        pass

    gc.disable()  # only free_memory may collect here
    try:
        holder = Holder()
        holder.itself, holder.tensor = holder, torch.ones(1024)
        watched = weakref.ref(holder.tensor)
        del holder
        assert watched() is not None  # a cycle: reference counting alone never frees it
        free_memory()
        assert watched() is None
    finally:
        gc.enable()


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RssAnon from /proc (Linux)")
def test_free_memory_gives_freed_heap_pages_back_to_the_system():
    if not trim_heap():
        pytest.skip("no glibc heap to trim here")
    # 192 MiB in 64 KiB blocks (below glibc's mmap threshold: they live on the heap), every 16th kept,
    # so the heap cannot shrink from its top by itself: the freed blocks stay resident until trimmed.
    blocks = [bytearray(64 * 1024) for _ in range(3072)]
    kept = blocks[::16]
    del blocks
    gc.collect()
    before = _rss_anon()
    free_memory()
    after = _rss_anon()
    assert before - after > 100 * 2**20, f"only {(before - after) / 2**20:.0f} MiB given back"
    assert len(kept) == 192
