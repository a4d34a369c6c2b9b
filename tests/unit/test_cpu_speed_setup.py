"""The CPU speed measures that need no compile: threads matched to physical cores, channels_last for
the convolutional modules, what a compiled graph is specialised on, and the setting that turns
compiling off."""

import pytest
import torch

from app.devices import DevicePlan, MemoryMode
from app.hardware import physical_cores
from app.models.compiled import CompileState, compile_sentence, compiles_on, inputs_key
from app.models.families import Family
from app.models.placement import apply_plan
from app.settings import load_settings
from launch import parse_args, settings_overrides
from tools.tiny_models import tiny_pipeline

HYPER_THREADED = "".join(
    f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu // 2}\nflags\t\t: avx2\n\n" for cpu in range(8))
TWO_SOCKETS = "".join(
    f"processor\t: {cpu}\nphysical id\t: {cpu // 4}\ncore id\t\t: {cpu % 4}\n\n" for cpu in range(8))


def test_threads_follow_physical_cores_not_hyper_threads():
    assert physical_cores(HYPER_THREADED) == 4
    assert physical_cores(HYPER_THREADED, usable={0, 1}) == 1  # two hyper-threads of one core
    assert physical_cores(HYPER_THREADED, usable={0, 2, 4}) == 3
    assert physical_cores(TWO_SOCKETS) == 8  # core ids repeat per socket
    assert physical_cores("") == 0  # nothing said: the caller falls back to the logical count


CPU_PLAN = DevicePlan("cpu", torch.float32, MemoryMode.CPU, False, False, "test")


def conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_the_unet_and_vae_are_placed_channels_last_and_draw_the_same():
    pipe = tiny_pipeline(Family.SD1)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = pipe.vae.decode(latents).sample
    apply_plan(pipe, CPU_PLAN)
    for module in (pipe.unet, pipe.vae):
        weights = conv_weights(module)
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
        assert not all(w.is_contiguous() for w in weights if w.shape[-1] > 1)  # really changed layout
    with torch.no_grad():
        after = pipe.vae.decode(latents).sample
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_a_graph_is_specialised_on_shapes_dtypes_and_plain_values():
    sample = torch.zeros(2, 4, 64, 64)
    key = inputs_key((sample, torch.tensor(999)), {"encoder_hidden_states": torch.zeros(2, 77, 768), "return_dict": False})
    assert key == inputs_key((torch.ones(2, 4, 64, 64), torch.tensor(1)),
                             {"encoder_hidden_states": torch.ones(2, 77, 768), "return_dict": False})
    assert key != inputs_key((torch.zeros(2, 4, 96, 64), torch.tensor(999)),
                             {"encoder_hidden_states": torch.zeros(2, 77, 768), "return_dict": False})
    assert key != inputs_key((sample.bfloat16(), torch.tensor(999)),
                             {"encoder_hidden_states": torch.zeros(2, 77, 768), "return_dict": False})
    assert key != inputs_key((sample, torch.tensor(999.0)),  # float timesteps (Euler) vs integer ones
                             {"encoder_hidden_states": torch.zeros(2, 77, 768), "return_dict": False})
    assert inputs_key((sample, object()), {}) is None  # not described: such a call stays eager


def test_compiling_happens_only_where_a_frozen_graph_can_run():
    assert compiles_on("cpu", memory_mode_offloads=False)
    assert compiles_on("cuda", memory_mode_offloads=False)
    assert not compiles_on("cuda", memory_mode_offloads=True)  # offload hooks move weights during the call
    assert not compiles_on("mps", memory_mode_offloads=False)


@pytest.mark.parametrize("flags, expected", [([], True), (["--no-compile"], False),
                                             (["--set", "torch_compile=false"], False)])
def test_a_flag_or_setting_turns_compiling_off(flags, expected):
    assert load_settings(settings_overrides(parse_args(flags))).torch_compile is expected


def test_the_page_is_told_while_a_faster_mode_is_prepared():
    assert "being prepared" in compile_sentence(CompileState.PREPARING, None)
    assert "normal speed meanwhile" in compile_sentence(CompileState.PREPARING, None)
    assert compile_sentence(CompileState.UNAVAILABLE, "No C++ compiler.") == "No C++ compiler."
    assert compile_sentence(None, None) == ""


def test_the_compiler_keeps_its_graphs_in_easels_cache_and_traces_inductors_dummy_when_prepared(tmp_path):
    from torch._inductor.loop_body import InterpreterShim
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from app.models.compiled import BackgroundCompiler

    compiler = BackgroundCompiler(tmp_path / "torch-compile")
    try:
        assert cache_dir() == str(tmp_path / "torch-compile")  # not the temporary folder torch chose at import
        assert not compiler.prepared  # nothing of inductor's at startup: the page comes first
        compiler.prepare()
        # done before any compile: tracing it later would break a job's model calls for its duration
        assert compiler.prepared and InterpreterShim._dummy_gm.cache_info().currsize == 1
    finally:
        compiler.close()


def test_job_threads_share_the_main_heap_on_glibc():
    import platform

    from app.memory import one_heap_for_all_threads

    assert one_heap_for_all_threads() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
