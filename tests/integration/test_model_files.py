"""The model manager over a real models folder: every family as A1111-style single files, a .ckpt,
a diffusers folder, and files Easel must refuse (damaged, unknown, unsafe pickles).

The checkpoints are tiny random networks written with `save_single_file`, the exact inverse of
diffusers' single-file loader, and loaded through the real loading code with the tiny config
folders (`tiny_configs_dir`). Their images are noise, but deterministic noise: the same weights
and seed must give the same pixels whichever file layout they came from.
"""

import dataclasses
import hashlib
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import app.models.manager as manager_module
import app.models.registry as registry_module
from app.engine import Engine
from app.errors import EaselError, InvalidRequest, ModelLoadError, ModelNotFound
from app.generation.requests import GenerationRequest
from app.images.metadata import parse_infotext, read_parameters
from app.kinds import JobKind
from app.models.detect import Prediction
from app.models.families import Family
from app.models.loader import load_pipeline
from app.models.registry import Layout, ModelRegistry
from tests.conftest import make_engine, make_settings, models_of
from tools.ldm_convert import save_single_file
from tools.tiny_models import tiny_pipeline

TIMEOUT = 60.0

SD15 = "sd15.safetensors"
SD15_CKPT = "sd15-pickled.ckpt"
SD15_FOLDER = "diffusers/sd15-folder"
OTHER_SD15 = "other/sd15-seed1.safetensors"
SD15_INPAINT = "sd15-inpainting.safetensors"
SD21_V = "sd21-v.safetensors"
SD21_BASE = "sd21-base.safetensors"            # epsilon, told by its sidecar sd21-base.yaml
SD21_V_SIDECAR = "sd21-v-sidecar.safetensors"  # v, told by its sidecar (parameterization: "v")
SD2_INPAINT = "sd2-inpainting.safetensors"
X4 = "x4-upscaler.safetensors"
TRUNCATED = "broken/truncated.safetensors"
RANDOM_CKPT = "broken/random.ckpt"
EVIL = "broken/evil.ckpt"
LORA = "broken/lora.safetensors"
SDXL = "broken/sdxl.safetensors"

# A1111's v2-inference.yaml / v2-inference-v.yaml, cut to what matters.
EPSILON_YAML = """model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    cond_stage_key: "txt"
"""
V_YAML = EPSILON_YAML + '    parameterization: "v"\n'

# What torch says when it suggests loading unsafely: never advice to pass on to a user.
UNSAFE_ADVICE = ("weights_only", "Weights only load failed", "arbitrary code")


class _RunsCode:
    """Pickles as "call open(marker, 'w')": unpickling it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_evil_ckpt(path: Path, marker: Path) -> Path:
    """A .ckpt that looks like a checkpoint but runs code when unpickled the unsafe way."""
    state = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "callback": _RunsCode(marker)}, path)
    return path


@dataclasses.dataclass
class Library:
    root: Path
    models: Path          # the models folder (holds Stable-diffusion/)
    checkpoints: Path     # models/Stable-diffusion
    marker: Path          # created if the unsafe pickle ever runs

    def path(self, title: str) -> Path:
        return self.checkpoints / title


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Library:
    root = tmp_path_factory.mktemp("library")
    checkpoints = root / "models" / "Stable-diffusion"
    lib = Library(root, root / "models", checkpoints, root / "CODE-RAN")

    sd15 = tiny_pipeline(Family.SD1, seed=0)
    save_single_file(sd15, lib.path(SD15))
    save_single_file(sd15, lib.path(SD15_CKPT))  # .ckpt: torch.save({"state_dict": ...})
    sd15.save_pretrained(lib.path(SD15_FOLDER), safe_serialization=True)
    save_single_file(tiny_pipeline(Family.SD1, seed=1), lib.path(OTHER_SD15))
    save_single_file(tiny_pipeline(Family.SD1_INPAINT, seed=0), lib.path(SD15_INPAINT))
    save_single_file(tiny_pipeline(Family.SD2_V, seed=2), lib.path(SD21_V))
    save_single_file(tiny_pipeline(Family.SD2, seed=3), lib.path(SD21_BASE))
    lib.path(SD21_BASE).with_suffix(".yaml").write_text(EPSILON_YAML)
    save_single_file(tiny_pipeline(Family.SD2_V, seed=4), lib.path(SD21_V_SIDECAR))
    lib.path(SD21_V_SIDECAR).with_suffix(".yaml").write_text(V_YAML)
    save_single_file(tiny_pipeline(Family.SD2_INPAINT, seed=0), lib.path(SD2_INPAINT))
    save_single_file(tiny_pipeline(Family.X4_UPSCALER, seed=0), lib.path(X4))

    whole = lib.path(SD15).read_bytes()
    lib.path(TRUNCATED).parent.mkdir(parents=True)
    lib.path(TRUNCATED).write_bytes(whole[: len(whole) // 2])  # an unfinished download
    lib.path(RANDOM_CKPT).write_bytes(random.Random(0).randbytes(4096))
    write_evil_ckpt(lib.path(EVIL), lib.marker)
    save_file(  # a LoRA: UNet-ish names, but no UNet
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
        },
        str(lib.path(LORA)),
    )
    save_file(  # SDXL keys: text encoders under conditioner.embedders
        {
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 4),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
        },
        str(lib.path(SDXL)),
    )
    return lib


@pytest.fixture
def open_engine(tiny_configs_dir, tmp_path):
    """Engines over a models folder, CPU only, with the tiny config folders; closed after the test."""
    engines: list[Engine] = []

    def make(models_dir: Path, name: str = "engine") -> Engine:
        settings = make_settings(tmp_path / name, models_dir, model_configs_dir=str(tiny_configs_dir))
        engine = make_engine(settings)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def tiny(**fields) -> GenerationRequest:
    values = dict(prompt="a lighthouse at dusk", steps=2, width=64, height=64, seed=11)
    values.update(fields)
    return GenerationRequest(**values)


def pixels(source) -> np.ndarray:
    image = Image.open(source) if isinstance(source, (str, Path)) else source
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def generate(engine: Engine, **fields):
    return engine.generate(tiny(**fields), TIMEOUT).images[0]


def params_of(path: Path) -> dict:
    with Image.open(path) as image:
        return parse_infotext(read_parameters(image))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gradient() -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    channels = [np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 90, np.uint8)]
    return Image.fromarray(np.stack(channels, axis=-1))


def copy_models(library: Library, target: Path, *titles: str) -> Path:
    """A fresh models folder with copies of some checkpoints (for tests that change files)."""
    for title in titles:
        source, destination = library.path(title), target / "Stable-diffusion" / title
        destination.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, destination)
    return target


# --- discovery and detection --------------------------------------------------------------------


EXPECTED = {  # title: (family, family_source, layout)
    SD15: (Family.SD1, "weights", Layout.SINGLE_FILE),
    SD15_CKPT: (Family.SD1, "weights", Layout.SINGLE_FILE),
    SD15_FOLDER: (Family.SD1, "weights", Layout.DIFFUSERS),
    OTHER_SD15: (Family.SD1, "weights", Layout.SINGLE_FILE),
    SD15_INPAINT: (Family.SD1_INPAINT, "weights", Layout.SINGLE_FILE),
    SD21_V: (Family.SD2_V, "default", Layout.SINGLE_FILE),
    SD21_BASE: (Family.SD2, "sidecar", Layout.SINGLE_FILE),
    SD21_V_SIDECAR: (Family.SD2_V, "sidecar", Layout.SINGLE_FILE),
    SD2_INPAINT: (Family.SD2_INPAINT, "weights", Layout.SINGLE_FILE),
    X4: (Family.X4_UPSCALER, "weights", Layout.SINGLE_FILE),
}
UNUSABLE = (TRUNCATED, RANDOM_CKPT, EVIL, LORA, SDXL)


def test_discovery_finds_every_file_and_folder_with_its_family(library, open_engine):
    engine = open_engine(library.models)
    entries = {entry.title: entry for entry in engine.checkpoints()}

    # Exactly the checkpoints: no sidecar .yaml, no weights from inside the diffusers folder.
    assert set(entries) == set(EXPECTED) | set(UNUSABLE)
    for title, (family, source, layout) in EXPECTED.items():
        entry = entries[title]
        assert (entry.family, entry.family_source, entry.layout) == (family, source, layout), title
        assert entry.problem is None, title
        assert entry.path == library.path(title)
        assert entry.demo is False
    assert entries[SD15].name == "sd15" and entries[OTHER_SD15].name == "sd15-seed1"
    assert entries[SD15_FOLDER].name == "sd15-folder"
    for title in UNUSABLE:
        assert entries[title].family is None and entries[title].problem, title
    assert library.marker.exists() is False


@pytest.fixture(scope="module")
def scanned(library) -> ModelRegistry:
    registry = ModelRegistry(library.models)
    registry.refresh()
    return registry


@pytest.mark.parametrize(
    "title, words",
    [
        (LORA, ("not a full Stable Diffusion checkpoint", "LoRA")),
        (SDXL, ("SDXL",)),
        (TRUNCATED, ("damaged", "Download it again")),
        (RANDOM_CKPT, ("damaged", "Download it again")),
    ],
)
def test_unusable_files_say_why(scanned, title, words):
    problem = scanned.find(title).problem
    assert f"'{title}'" in problem
    for word in words:
        assert word in problem
    # A damaged file is not called a dangerous one, and torch's "load it unsafely" text stays out.
    assert "Python code" not in problem
    assert not any(advice in problem for advice in UNSAFE_ADVICE)


def test_loading_an_unusable_file_fails_with_its_problem_and_keeps_the_model(library, open_engine):
    engine = open_engine(library.models)
    engine.select_checkpoint(SD15)
    before = generate(engine)
    for title in UNUSABLE:
        with pytest.raises(ModelLoadError) as caught:
            engine.select_checkpoint(title)
        assert caught.value.message == models_of(engine).registry.find(title).problem
        assert engine.active_checkpoint().title == SD15
    assert np.array_equal(pixels(generate(engine).path), pixels(before.path))
    assert not library.marker.exists()


def test_unsafe_pickle_is_refused_with_the_reason_and_never_runs(library, open_engine, tmp_path):
    # Control: the file really runs code when unpickled the unsafe way (else this test proves nothing).
    control_marker = tmp_path / "control-ran"
    control = write_evil_ckpt(tmp_path / "control.ckpt", control_marker)
    torch.load(control, weights_only=False)
    assert control_marker.exists()

    engine = open_engine(library.models)
    entry = models_of(engine).registry.find(EVIL)
    assert not library.marker.exists()  # the scan did not run it
    assert entry.family is None
    assert "would run Python code" in entry.problem and "safetensors" in entry.problem
    assert not any(advice in entry.problem for advice in UNSAFE_ADVICE)

    engine.select_checkpoint(SD15)
    with pytest.raises(ModelLoadError) as caught:
        engine.select_checkpoint(EVIL)
    assert "would run Python code" in caught.value.message
    assert engine.active_checkpoint().title == SD15
    assert not library.marker.exists()

    # The loader's own guard, without the registry's verdict in front of it: still weights_only.
    unguarded = dataclasses.replace(entry, problem=None, family=Family.SD1)
    with pytest.raises(ModelLoadError):
        load_pipeline(unguarded, torch.float32, models_of(engine).config_root)
    assert not library.marker.exists()


@pytest.mark.parametrize("seed", [2, 20])  # random.Random(seed).randbytes(4096): IndexError, KeyError
def test_any_random_bytes_ckpt_is_reported_damaged_without_breaking_the_scan(tmp_path, seed):
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    (checkpoints / "garbage.ckpt").write_bytes(random.Random(seed).randbytes(4096))
    registry = ModelRegistry(tmp_path / "models")
    (entry,) = registry.refresh()
    assert entry.family is None and "damaged" in entry.problem


def test_unsafe_plain_pickle_is_named_as_code_not_as_damage(tmp_path):
    marker = tmp_path / "code-ran"
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    state = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}
    with open(checkpoints / "plain.ckpt", "wb") as handle:
        pickle.dump({"state_dict": state, "callback": _RunsCode(marker)}, handle)
    (entry,) = ModelRegistry(tmp_path / "models").refresh()
    assert not marker.exists()
    assert "Python code" in entry.problem


def test_unsafe_pickle_swapped_in_after_the_scan_never_runs_and_keeps_the_model(library, open_engine, tmp_path):
    models = copy_models(library, tmp_path / "models", SD15, SD15_CKPT)
    engine = open_engine(models)
    engine.select_checkpoint(SD15)
    before = generate(engine)
    marker = tmp_path / "code-ran"
    write_evil_ckpt(models / "Stable-diffusion" / SD15_CKPT, marker)  # replaced while the app runs

    with pytest.raises(ModelLoadError) as caught:
        engine.select_checkpoint(SD15_CKPT)
    assert f"'{SD15_CKPT}'" in caught.value.message
    assert not any(advice in caught.value.message for advice in UNSAFE_ADVICE)
    assert not marker.exists()
    assert engine.active_checkpoint().title == SD15
    assert np.array_equal(pixels(generate(engine).path), pixels(before.path))


def test_unsafe_pickle_reaching_the_loader_is_named_as_code(library, open_engine, tmp_path):
    models = copy_models(library, tmp_path / "models", SD15_CKPT)
    engine = open_engine(models)
    write_evil_ckpt(models / "Stable-diffusion" / SD15_CKPT, tmp_path / "code-ran")
    with pytest.raises(ModelLoadError) as caught:
        engine.select_checkpoint(SD15_CKPT)
    assert "Python code" in caught.value.message


# --- loading: weights, prediction types, hashes ---------------------------------------------------


def test_single_file_ckpt_and_diffusers_folder_of_the_same_weights_draw_the_same_pixels(library, open_engine):
    engine = open_engine(library.models)
    images = {}
    for title in (SD15, SD15_CKPT, SD15_FOLDER, OTHER_SD15):
        assert engine.select_checkpoint(title).title == title
        images[title] = generate(engine)
        assert params_of(images[title].path)["Model"] == engine.active_checkpoint().name
    reference = pixels(images[SD15_FOLDER].path)  # diffusers' own format: the ground truth
    assert np.array_equal(pixels(images[SD15].path), reference)
    assert np.array_equal(pixels(images[SD15_CKPT].path), reference)
    # Other weights, same seed: other pixels (so the equalities above are about the weights).
    assert not np.array_equal(pixels(images[OTHER_SD15].path), reference)


@pytest.mark.parametrize(
    "title, family, source, prediction",
    [
        (SD21_V, Family.SD2_V, "default", "v_prediction"),
        (SD21_BASE, Family.SD2, "sidecar", "epsilon"),
        (SD21_V_SIDECAR, Family.SD2_V, "sidecar", "v_prediction"),
    ],
)
def test_loaded_pipeline_predicts_what_detection_says(library, open_engine, title, family, source, prediction):
    engine = open_engine(library.models)
    entry = engine.select_checkpoint(title)
    assert (entry.family, entry.family_source) == (family, source)
    loaded = models_of(engine).loaded
    assert loaded.base.scheduler.config.prediction_type == prediction
    assert loaded.scheduler_config["prediction_type"] == prediction
    generate(engine)
    # The job's sampler is built from the checkpoint's config: the prediction type carries over.
    assert models_of(engine).loaded.base.scheduler.config.prediction_type == prediction


def test_user_prediction_override_reloads_changes_pixels_and_persists(library, open_engine, tmp_path):
    models = copy_models(library, tmp_path / "models", SD21_V, SD15)
    engine = open_engine(models)
    registry = models_of(engine).registry
    assert registry.find(SD21_V).family_source == "default"
    engine.select_checkpoint(SD21_V)
    as_v = generate(engine)

    entry = registry.set_prediction(SD21_V, Prediction.EPSILON)
    assert (entry.family, entry.family_source) == (Family.SD2, "override")
    engine.select_checkpoint(SD21_V)  # same file, other family: reloaded, not a no-op
    assert models_of(engine).loaded.base.scheduler.config.prediction_type == "epsilon"
    as_epsilon = generate(engine)
    assert not np.array_equal(pixels(as_v.path), pixels(as_epsilon.path))

    # Remembered across starts (models/model-settings.json).
    again = ModelRegistry(models)
    again.refresh()
    assert (again.find(SD21_V).family, again.find(SD21_V).family_source) == (Family.SD2, "override")

    entry = registry.set_prediction(SD21_V, None)  # back to "nothing says otherwise"
    assert (entry.family, entry.family_source) == (Family.SD2_V, "default")
    engine.select_checkpoint(SD21_V)
    assert models_of(engine).loaded.base.scheduler.config.prediction_type == "v_prediction"
    assert np.array_equal(pixels(generate(engine).path), pixels(as_v.path))


def test_hash_is_a1111s_short_sha256_written_to_the_png_and_cached(library, open_engine, tmp_path, monkeypatch):
    models = copy_models(library, tmp_path / "models", SD15, SD21_V)
    expected = sha256_of(library.path(SD15))[:10]
    first = open_engine(models, "first")
    assert models_of(first).registry.find(SD15).model_hash is None  # not hashed before it is needed
    entry = first.select_checkpoint(SD15)
    assert entry.model_hash == expected
    assert first.active_checkpoint().model_hash == expected
    assert models_of(first).registry.find(SD15).model_hash == expected
    image = generate(first)
    assert params_of(image.path)["Model hash"] == expected
    assert f"Model hash: {expected}" in image.parameters

    # A second start over the same cache: no file is hashed or opened for detection again.
    def must_not_run(*args, **kwargs):
        raise AssertionError("re-read a checkpoint although its facts were cached")

    monkeypatch.setattr(registry_module, "file_sha256", must_not_run)
    monkeypatch.setattr(registry_module, "tensor_shapes", must_not_run)
    settings = make_settings(tmp_path / "first", models, model_configs_dir=str(models_of(first).config_root))
    second = make_engine(settings)
    try:
        assert models_of(second).registry.find(SD15).model_hash == expected  # known from the cache at once
        assert models_of(second).registry.find(SD21_V).family == Family.SD2_V
        # An A1111 client sends the title with a hash in brackets (even a stale one).
        assert second.select_checkpoint(f"{SD15} [0123456789]").title == SD15
        assert second.select_checkpoint(f"{SD15} [{expected}]").model_hash == expected
        assert params_of(generate(second).path)["Model hash"] == expected
    finally:
        second.close()


def test_changed_file_is_hashed_and_detected_again(library, open_engine, tmp_path):
    models = copy_models(library, tmp_path / "models", SD15)
    path = models / "Stable-diffusion" / SD15
    engine = open_engine(models)
    old_hash = engine.select_checkpoint(SD15).model_hash
    assert old_hash == sha256_of(path)[:10]

    models_of(engine).unload()
    shutil.copy(library.path(SD2_INPAINT), path)  # the same name, other weights (other size, mtime)
    entry = next(e for e in engine.refresh_models() if e.title == SD15)
    assert entry.family == Family.SD2_INPAINT  # not the cached SD1
    assert entry.model_hash in (None, sha256_of(path)[:10])  # never the stale hash
    engine.select_checkpoint(SD15)
    assert engine.active_checkpoint().model_hash == sha256_of(path)[:10] != old_hash


# --- refresh ----------------------------------------------------------------------------------------


def test_refresh_picks_up_added_and_removed_files_and_folders(library, open_engine, tmp_path):
    models = copy_models(library, tmp_path / "models", SD15)
    engine = open_engine(models)
    assert [e.title for e in engine.checkpoints()] == [SD15]

    copy_models(library, models, OTHER_SD15, SD15_FOLDER, SD21_BASE)  # without its sidecar: v assumed
    assert [e.title for e in engine.checkpoints()] == [SD15]  # nothing changes until refresh
    titles = {e.title: e for e in engine.refresh_models()}
    assert set(titles) == {SD15, OTHER_SD15, SD15_FOLDER, SD21_BASE}
    assert titles[OTHER_SD15].family == Family.SD1 and titles[SD15_FOLDER].layout is Layout.DIFFUSERS
    assert (titles[SD21_BASE].family, titles[SD21_BASE].family_source) == (Family.SD2_V, "default")
    assert engine.select_checkpoint(OTHER_SD15).title == OTHER_SD15

    (models / "Stable-diffusion" / SD15).unlink()
    shutil.rmtree(models / "Stable-diffusion" / SD15_FOLDER)
    assert {e.title for e in engine.refresh_models()} == {OTHER_SD15, SD21_BASE}
    with pytest.raises(ModelNotFound) as caught:
        engine.select_checkpoint(SD15)
    assert SD15 in caught.value.message and OTHER_SD15 in caught.value.message


# --- swapping ---------------------------------------------------------------------------------------


def test_hot_swap_a_b_a_reproduces_and_the_img2img_sibling_shares_then_goes(library, open_engine):
    engine = open_engine(library.models)
    engine.select_checkpoint(SD15)
    a_txt = generate(engine)
    a_img = generate(engine, init_image=gradient(), strength=0.6)
    loaded_a = models_of(engine).loaded
    sibling = loaded_a.siblings[JobKind.IMG2IMG]
    for module in ("unet", "vae", "text_encoder"):
        assert getattr(sibling, module) is getattr(loaded_a.base, module), module

    engine.select_checkpoint(OTHER_SD15)
    assert loaded_a.siblings == {}  # the old model's sibling went with it
    assert models_of(engine).loaded is not loaded_a and models_of(engine).loaded.siblings == {}
    b_txt = generate(engine)
    b_img = generate(engine, init_image=gradient(), strength=0.6)
    assert models_of(engine).loaded.siblings[JobKind.IMG2IMG].unet is models_of(engine).loaded.base.unet
    assert not np.array_equal(pixels(b_txt.path), pixels(a_txt.path))
    assert not np.array_equal(pixels(b_img.path), pixels(a_img.path))  # not a stale sibling

    engine.select_checkpoint(SD15)
    assert np.array_equal(pixels(generate(engine).path), pixels(a_txt.path))
    assert np.array_equal(
        pixels(generate(engine, init_image=gradient(), strength=0.6).path), pixels(a_img.path)
    )


@pytest.mark.parametrize("load_new_first", [True, False], ids=["load-beside", "unload-first"])
def test_failed_load_leaves_the_previous_model_working(library, open_engine, tmp_path, monkeypatch, load_new_first):
    # Both ways a swap can go: with room for two models, and without (old one released first).
    monkeypatch.setattr(manager_module, "load_new_first", lambda available, needed: load_new_first)
    models = copy_models(library, tmp_path / "models", SD15, OTHER_SD15)
    engine = open_engine(models)
    engine.select_checkpoint(SD15)
    before = generate(engine)

    # Damaged after the scan (the entry still looks fine): the failure comes from the loader itself.
    broken = models / "Stable-diffusion" / OTHER_SD15
    broken.write_bytes(broken.read_bytes()[:4096])
    with pytest.raises(ModelLoadError) as caught:
        engine.select_checkpoint(OTHER_SD15)
    assert f"'{OTHER_SD15}'" in caught.value.message and "damaged" in caught.value.message
    assert "Python code" not in caught.value.message
    assert not any(advice in caught.value.message for advice in UNSAFE_ADVICE)
    assert engine.active_checkpoint().title == SD15
    assert np.array_equal(pixels(generate(engine).path), pixels(before.path))


def test_checkpoint_removed_after_the_scan_gives_a_clear_error(library, open_engine, tmp_path):
    models = copy_models(library, tmp_path / "models", SD15, OTHER_SD15)
    engine = open_engine(models)
    engine.select_checkpoint(SD15)
    (models / "Stable-diffusion" / OTHER_SD15).unlink()
    with pytest.raises(EaselError) as caught:
        engine.select_checkpoint(OTHER_SD15)
    assert OTHER_SD15 in caught.value.message
    assert engine.active_checkpoint().title == SD15


def test_inpainting_and_upscaler_checkpoints_refuse_txt2img_and_img2img(library, open_engine):
    engine = open_engine(library.models)
    for title, family in (
        (SD15_INPAINT, Family.SD1_INPAINT),
        (SD2_INPAINT, Family.SD2_INPAINT),
        (X4, Family.X4_UPSCALER),
    ):
        assert engine.select_checkpoint(title).family == family  # it loads: the refusal is about the task
        for kind, fields in (("txt2img", {}), ("img2img", {"init_image": gradient()})):
            with pytest.raises(InvalidRequest) as caught:
                generate(engine, **fields)
            message = caught.value.message
            assert f"'{title}'" in message and family.label in message and kind in message
    assert list(engine.settings.outputs_dir.rglob("*.png")) == []
    engine.select_checkpoint(SD15)
    assert generate(engine).path.is_file()  # a regular checkpoint works again at once
