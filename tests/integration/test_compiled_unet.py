"""The compiled UNet (app.models.compiled) on the tiny model: the first job runs eager while the graph
is compiled in the background, later jobs of the same size run the compiled graph and give the same
picture within the stated tolerance; a job with a LoRA patched in runs eager (the compiled graph holds
the frozen original weights); unloading drops the graphs.

Tolerance: inductor reorders float sums, so compiled and eager differ in the last bits of each step;
after the VAE the pictures differ by at most COMPILE_TOLERANCE levels of 255 per channel.
One compile of the tiny UNet takes ~30-60 s on one thread: the whole flow shares one engine.
"""

import numpy as np
import pytest

from app.generation.requests import GenerationRequest
from app.models.compiled import CompileState
from tests.conftest import TINY_SD1, make_engine, make_settings, models_of
from tools.tiny_models import tiny_pipeline
from tools.tiny_networks import kohya_lora, save_lora

COMPILE_TOLERANCE = 2  # of 255, per channel (stated in bench/RESULTS.md's notes on compiling)


def generate(engine, prompt="a red fox", seed=11):
    result = engine.generate(GenerationRequest(prompt=prompt, steps=3, width=64, height=64, seed=seed,
                                               model=TINY_SD1, save=False))
    return np.asarray(result.images[0].image).astype(int)


@pytest.fixture(scope="module")
def compiled_models(tiny_models_dir, tmp_path_factory):
    models = tmp_path_factory.mktemp("compiled") / "models"
    models.mkdir()
    (models / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion", target_is_directory=True)
    from app.models.families import Family

    save_lora(models / "Lora" / "kohya.safetensors", kohya_lora(tiny_pipeline(Family.SD1), seed=1))
    return models


class CountingGraph:
    def __init__(self, graph):
        self.graph, self.calls = graph, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.graph(*args, **kwargs)


def test_compiled_jobs_match_eager_and_loras_run_eager(compiled_models, tiny_configs_dir, tmp_path):
    eager_engine = make_engine(make_settings(tmp_path / "eager", compiled_models, model_configs_dir=str(tiny_configs_dir)))
    try:
        eager = generate(eager_engine)
        eager_lora = generate(eager_engine, "a red fox <lora:kohya:1>")
        assert eager_engine.status().compiling == ""  # the setting is off: nothing said, nothing compiled
        assert models_of(eager_engine).loaded.compiled is None
    finally:
        eager_engine.close()

    engine = make_engine(make_settings(tmp_path / "compiled", compiled_models, model_configs_dir=str(tiny_configs_dir),
                                       torch_compile=True))
    try:
        engine.select_checkpoint(TINY_SD1)
        compiled = models_of(engine).loaded.compiled
        assert compiled.state is CompileState.WAITING  # the load's speed calibration compiles nothing
        assert models_of(engine).compiler.prepared  # inductor's one-time trace, done while the load held the lock
        first = generate(engine)  # eager, and starts compiling its inputs in the background
        assert compiled.state in (CompileState.PREPARING, CompileState.READY)
        if compiled.state is CompileState.PREPARING:
            assert "being prepared" in engine.status().compiling
        assert np.array_equal(first, eager)  # run eager: the very same pixels
        assert engine.wait_until_compiled(timeout=600)
        assert compiled.state is CompileState.READY, compiled.problem
        assert "ready" in engine.status().compiling
        cache = tmp_path / "compiled" / "cache" / "torch-compile"
        assert any(path.is_file() for path in cache.rglob("*"))  # the compiled code is kept in Easel's cache

        counting = compiled._graph = CountingGraph(compiled._graph)
        second = generate(engine)
        assert counting.calls >= 3  # every step (CFG in one batch) took the compiled graph
        assert np.abs(second - eager).max() <= COMPILE_TOLERANCE
        assert np.abs(second - eager).mean() < 0.5

        calls = counting.calls
        with_lora = generate(engine, "a red fox <lora:kohya:1>")
        assert counting.calls == calls  # LoRAs patched in: the frozen graph would ignore them, so eager
        assert np.array_equal(with_lora, eager_lora)
        again = generate(engine)
        assert counting.calls > calls  # the checkpoint's own weights are back: compiled again
        assert np.abs(again - eager).max() <= COMPILE_TOLERANCE

        unet = models_of(engine).loaded.base.unet
        models_of(engine).unload()
        assert getattr(unet, "_compiled_call_impl", None) is None  # the plain module again
    finally:
        engine.wait_until_compiled(timeout=600)  # a compile cut off at exit aborts the interpreter
        engine.close()
