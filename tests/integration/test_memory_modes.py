"""Memory modes without a GPU: the out-of-memory retry, the ladder of memory modes, the fp16 VAE guard.

Running out of memory is injected (a `run_batch` that raises once). The ladder runs the real
ModelManager and the real diffusers offload hooks with the CPU standing in for the GPU: diffusers
accepts an explicit device for offloading, and `degraded` is asked as if the plan were a GPU plan.
Half precision is bfloat16 on the CPU, with a VAE decode that gives NaN while it is not float32.
"""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import app.generation.runner as runner_module
import app.models.manager as manager_module
from app.devices import DevicePlan, MemoryMode
from app.devices import degraded as real_degraded
from app.engine import Engine
from app.errors import EaselError
from app.generation.diffusion import decoded
from app.generation.prompts import encode_prompt_pair
from app.generation.requests import GenerationRequest
from app.hardware import HardwareFacts
from app.jobs import JobState
from app.kinds import JobKind
from app.models.families import Family
from app.models.manager import ModelManager
from app.models.placement import apply_plan
from app.models.registry import ModelRegistry
from tests.conftest import CPU_ONLY, TINY_SD1, engine_over, make_engine, make_settings, models_of
from tools.tiny_models import tiny_pipeline

TIMEOUT = 60.0
# Attention slicing (on in the offload modes) adds in another order: a pixel may move one level.
SLICING_TOLERANCE = 2
MODEL_OFFLOAD_ON_CPU = DevicePlan(
    "cpu", torch.float32, MemoryMode.MODEL_OFFLOAD, True, True, "Test: model offload with the CPU as the GPU."
)
SEQUENTIAL_OFFLOAD_ON_CPU = dataclasses.replace(MODEL_OFFLOAD_ON_CPU, memory_mode=MemoryMode.SEQUENTIAL_OFFLOAD)
BF16_CPU = HardwareFacts(cpu_name="test", cpu_threads=1, cpu_bf16=True)


def tiny(**fields) -> GenerationRequest:
    values = dict(prompt="a paper boat on a pond", steps=2, width=64, height=64, seed=21)
    values.update(fields)
    return GenerationRequest(**values)


def pixels(image) -> np.ndarray:
    image = Image.open(image) if not isinstance(image, Image.Image) else image
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def generate(engine: Engine, **fields):
    return engine.generate(tiny(**fields), TIMEOUT).images[0]


def gradient() -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    channels = [np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 40, np.uint8)]
    return Image.fromarray(np.stack(channels, axis=-1))


def png_count(engine: Engine) -> int:
    return len(list(engine.settings.outputs_dir.rglob("*.png")))


def out_of_memory() -> BaseException:
    kind = getattr(torch, "OutOfMemoryError", None)
    message = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 4.00 GiB total capacity)"
    return kind(message) if kind else RuntimeError(message)


class FlakyRunBatch:
    """`run_batch` that raises the given errors first, then runs the real one."""

    def __init__(self, real, *errors: BaseException):
        self.real, self.errors, self.calls = real, list(errors), 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.real(*args, **kwargs)


def modules_of(pipe) -> list[torch.nn.Module]:
    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


def placements(pipe) -> set:
    return {(p.device.type, p.dtype) for m in modules_of(pipe) for p in m.parameters()}


def hooked(pipe) -> bool:
    return any(hasattr(sub, "_hf_hook") for m in modules_of(pipe) for sub in m.modules())


@pytest.fixture(scope="module")
def cpu_engine(tiny_models_dir, tiny_configs_dir, tmp_path_factory) -> Engine:
    """One CPU engine for the retry tests and for reference pixels (each test undoes its patches)."""
    settings = make_settings(tmp_path_factory.mktemp("cpu"), tiny_models_dir, model_configs_dir=str(tiny_configs_dir))
    engine = make_engine(settings)
    engine.select_checkpoint(TINY_SD1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(cpu_engine) -> dict[str, np.ndarray]:
    """What the plain CPU run draws for tiny() and for its image-to-image variant."""
    return {
        "txt2img": pixels(generate(cpu_engine).path),
        "img2img": pixels(generate(cpu_engine, init_image=gradient(), strength=0.6).path),
    }


# --- the out-of-memory retry ---------------------------------------------------------------------


def test_out_of_memory_steps_down_once_and_runs_the_batch_again(cpu_engine, reference, monkeypatch):
    engine = cpu_engine
    flaky = FlakyRunBatch(runner_module.run_batch, out_of_memory())
    monkeypatch.setattr(runner_module, "run_batch", flaky)
    stepped = []

    def degrade() -> str:  # the real one would find nothing below the CPU
        stepped.append(models_of(engine).plan.memory_mode)
        return "Now running in the test's leaner mode."

    monkeypatch.setattr(models_of(engine), "degrade", degrade)
    files_before = png_count(engine)

    result = engine.generate(tiny(), TIMEOUT)

    assert stepped == [MemoryMode.CPU] and flaky.calls == 2
    assert any("out of memory" in note.lower() and "test's leaner mode" in note for note in result.notes)
    (image,) = result.images
    assert image.path.is_file() and png_count(engine) == files_before + 1  # the failed try saved nothing
    assert np.array_equal(pixels(image.path), reference["txt2img"])  # the same batch, run again


@pytest.mark.parametrize(
    "error",
    [
        out_of_memory(),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 100000000000 bytes."),
        MemoryError(),
    ],
    ids=["OutOfMemoryError", "cuda-runtime-error", "cpu-allocator", "MemoryError"],
)
def test_out_of_memory_on_the_cpu_fails_the_job_with_advice_and_the_engine_goes_on(
    cpu_engine, reference, monkeypatch, error
):
    engine = cpu_engine
    flaky = FlakyRunBatch(runner_module.run_batch, error)
    monkeypatch.setattr(runner_module, "run_batch", flaky)
    files_before = png_count(engine)

    job = engine.submit(tiny())
    with pytest.raises(EaselError) as caught:
        job.wait(TIMEOUT)
    assert job.state is JobState.FAILED
    message = caught.value.message
    assert "out of memory even on the CPU" in message
    assert "smaller image size or batch size" in message  # what to do
    assert flaky.calls == 1 and png_count(engine) == files_before
    assert models_of(engine).plan.memory_mode is MemoryMode.CPU

    after = generate(engine)  # the next request is served, with the same model, as before
    assert np.array_equal(pixels(after.path), reference["txt2img"])


def test_other_errors_are_not_taken_for_out_of_memory(cpu_engine, monkeypatch):
    engine = cpu_engine
    flaky = FlakyRunBatch(runner_module.run_batch, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    monkeypatch.setattr(runner_module, "run_batch", flaky)
    stepped = []
    monkeypatch.setattr(models_of(engine), "degrade", lambda: stepped.append(1) or "never")

    job = engine.submit(tiny())
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        job.wait(TIMEOUT)
    assert job.state is JobState.FAILED
    assert stepped == [] and flaky.calls == 1
    assert generate(engine).path.is_file()


# --- the ladder with the real manager, the CPU standing in for the GPU --------------------------


def cpu_standing_in(plan: DevicePlan, facts: HardwareFacts) -> DevicePlan | None:
    """app.devices.degraded as for a GPU plan, keeping the CPU as the "GPU" of the offload modes."""
    if plan.memory_mode is MemoryMode.CPU:
        return None
    lower = real_degraded(dataclasses.replace(plan, device="cuda"), facts)
    return lower if lower is None or lower.device == "cpu" else dataclasses.replace(lower, device="cpu")


@pytest.fixture
def offload_engine(tiny_models_dir, tiny_configs_dir, tmp_path, monkeypatch):
    """An Engine whose ModelManager starts in model offload (CPU as the accelerator)."""
    monkeypatch.setattr(manager_module, "degraded", cpu_standing_in)
    registry = ModelRegistry(tiny_models_dir, cache_file=tmp_path / "offload" / "cache" / "facts.json")
    registry.refresh()
    manager = ModelManager(registry, MODEL_OFFLOAD_ON_CPU, CPU_ONLY, tiny_configs_dir)
    settings = make_settings(tmp_path / "offload", tiny_models_dir, model_configs_dir=str(tiny_configs_dir))
    engine = engine_over(settings, manager)
    manager.load(TINY_SD1)
    yield engine
    engine.close()


def test_model_offload_generates_like_the_cpu_and_hooks_follow_the_pipeline(reference, offload_engine):
    cpu_txt, cpu_img = reference["txt2img"], reference["img2img"]
    loaded = models_of(offload_engine).loaded
    assert hooked(loaded.base)

    offload_txt = pixels(generate(offload_engine).path)
    assert np.abs(offload_txt - cpu_txt).max() <= SLICING_TOLERANCE
    offload_img = pixels(generate(offload_engine, init_image=gradient(), strength=0.6).path)
    assert loaded.hooked is JobKind.IMG2IMG  # the offload hooks moved to the pipeline that ran
    assert np.abs(offload_img - cpu_img).max() <= SLICING_TOLERANCE
    assert np.array_equal(pixels(generate(offload_engine).path), offload_txt)  # and back


def test_degrade_walks_the_loaded_model_down_the_ladder_to_the_cpu(reference, offload_engine):
    manager = models_of(offload_engine)
    base = manager.loaded.base
    assert hooked(base) and placements(base) == {("cpu", torch.float32)}

    description = manager.degrade()
    assert manager.plan.memory_mode is MemoryMode.SEQUENTIAL_OFFLOAD
    assert "sequential offload" in description and "model-offload" in description
    assert ("meta", torch.float32) in placements(base)  # layers now wait on "meta" for their turn
    assert manager.loaded.base is base  # the same model moved down, not reloaded

    description = manager.degrade()
    assert manager.plan.memory_mode is MemoryMode.CPU and manager.plan.device == "cpu"
    assert "CPU" in description
    assert placements(base) == {("cpu", torch.float32)}  # nothing left on "meta"
    assert not hooked(base)
    assert np.array_equal(pixels(generate(offload_engine).path), reference["txt2img"])  # exactly the CPU's

    with pytest.raises(EaselError, match="even on the CPU"):
        manager.degrade()
    assert np.array_equal(pixels(generate(offload_engine).path), reference["txt2img"])


def test_the_ladder_works_after_generating_in_model_offload(reference, offload_engine):
    manager = models_of(offload_engine)
    generate(offload_engine)  # a job in model offload, then out of memory twice
    manager.degrade()
    manager.degrade()
    assert manager.plan.memory_mode is MemoryMode.CPU
    assert "meta" not in {device for device, _ in placements(manager.loaded.base)}
    assert np.array_equal(pixels(generate(offload_engine).path), reference["txt2img"])


def test_prompts_are_encoded_on_the_execution_device_in_sequential_offload():
    pipe = tiny_pipeline(Family.SD1, seed=0)
    apply_plan(pipe, SEQUENTIAL_OFFLOAD_ON_CPU)
    seen: list[torch.device] = []

    class Seen(Exception):
        pass

    def spy(module, args, kwargs):  # runs before accelerate's hook moves anything
        ids = args[0] if args else kwargs["input_ids"]
        seen.append(ids.device)
        raise Seen  # stop here: only where the ids were built is under test

    pipe.text_encoder.register_forward_pre_hook(spy, with_kwargs=True)
    with pytest.raises(Seen):
        encode_prompt_pair(pipe.tokenizer, pipe.text_encoder, "a paper boat", "", 1)
    assert seen[0].type == pipe._execution_device.type == "cpu"


# --- the fp16 (here bf16) VAE guard ---------------------------------------------------------------


def nan_while_half(vae, monkeypatch) -> list[torch.dtype]:
    """Make `vae.decode` overflow to NaN whenever the VAE is not float32; returns the dtypes it ran in."""
    real = vae.decode
    ran: list[torch.dtype] = []

    def decode(latents, *args, **kwargs):
        ran.append(vae.dtype)
        out = real(latents, *args, **kwargs)
        if vae.dtype != torch.float32:
            return (torch.full_like(out[0], float("nan")),)
        return out

    monkeypatch.setattr(vae, "decode", decode)
    return ran


@pytest.fixture
def half_vae_pipe():
    pipe = tiny_pipeline(Family.SD1, seed=0)
    pipe.vae.to(torch.bfloat16)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    return pipe, latents


def test_nan_from_a_half_vae_decodes_again_in_float32(half_vae_pipe, monkeypatch):
    pipe, latents = half_vae_pipe
    real_decode = pipe.vae.decode
    ran = nan_while_half(pipe.vae, monkeypatch)

    batch = decoded(pipe, latents, vae_float32=False)

    assert batch.vae_float32 is True
    assert ran == [torch.bfloat16, torch.float32]
    assert pipe.vae.dtype == torch.float32
    (image,) = batch.images
    assert image.size == (64, 64)
    with torch.inference_mode():
        expected = real_decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    (expected_image,) = pipe.image_processor.postprocess(expected.float(), output_type="pil")
    assert np.array_equal(pixels(image), pixels(expected_image))  # the float32 decode, not NaN garbage
    assert pixels(image).std() > 0


def test_a_finite_half_decode_keeps_the_half_vae(half_vae_pipe):
    pipe, latents = half_vae_pipe
    batch = decoded(pipe, latents, vae_float32=False)
    assert batch.vae_float32 is False
    assert pipe.vae.dtype == torch.bfloat16  # no needless float32 copy of the VAE


def test_a_model_known_to_overflow_decodes_in_float32_straight_away(half_vae_pipe, monkeypatch):
    pipe, latents = half_vae_pipe
    ran = nan_while_half(pipe.vae, monkeypatch)
    batch = decoded(pipe, latents, vae_float32=True)
    assert ran == [torch.float32] and batch.vae_float32 is True


def test_engine_remembers_the_float32_vae_for_the_model(tiny_models_dir, tiny_configs_dir, tmp_path, monkeypatch):
    settings = make_settings(tmp_path, tiny_models_dir, model_configs_dir=str(tiny_configs_dir))
    engine = make_engine(settings, BF16_CPU)
    try:
        assert models_of(engine).plan.dtype == torch.bfloat16
        engine.select_checkpoint(TINY_SD1)
        loaded = models_of(engine).loaded
        assert loaded.vae_float32 is False and loaded.base.vae.dtype == torch.bfloat16
        ran = nan_while_half(loaded.base.vae, monkeypatch)

        first = generate(engine)
        assert models_of(engine).loaded.vae_float32 is True
        assert ran == [torch.bfloat16, torch.float32]
        assert loaded.base.vae.dtype == torch.float32
        assert loaded.base.unet.dtype == torch.bfloat16  # only the VAE leaves half precision
        assert first.path.is_file() and pixels(first.path).std() > 0

        # The next job (image-to-image: a sibling sharing the VAE) makes no half-precision attempt.
        img2img = generate(engine, init_image=gradient(), strength=0.6)
        assert img2img.path.is_file() and pixels(img2img.path).std() > 0
        assert ran == [torch.bfloat16, torch.float32, torch.float32]
        assert models_of(engine).loaded.vae_float32 is True
    finally:
        engine.close()
