"""ModelRegistry: families told apart from config files alone, rescans, nested titles, lookups."""

import json
import shutil
from pathlib import Path

import pytest

from app.errors import ModelNotFound
from app.models.families import Family
from app.models.registry import CHECKPOINT_SUBFOLDER, ModelRegistry, diffusers_family


def write_configs(
    folder: Path,
    *,
    hidden_act: str = "quick_gelu",
    in_channels: int = 4,
    prediction_type: str | None = "epsilon",
    pipeline: str = "StableDiffusionPipeline",
    demo: bool = False,
) -> Path:
    """A diffusers folder as far as the registry looks: the JSON configs, no weights."""
    def write(relative: str, data: dict) -> None:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data), encoding="utf-8")

    write("model_index.json", {"_class_name": pipeline, "_diffusers_version": "0.42.1", "unet": ["diffusers", "UNet2DConditionModel"]})
    write("unet/config.json", {"_class_name": "UNet2DConditionModel", "in_channels": in_channels})
    write("text_encoder/config.json", {"architectures": ["CLIPTextModel"], "hidden_act": hidden_act})
    scheduler = {"_class_name": "DDIMScheduler"}
    if prediction_type is not None:
        scheduler["prediction_type"] = prediction_type
    write("scheduler/scheduler_config.json", scheduler)
    if demo:
        write("easel_demo.json", {"demo": True})
    return folder


SD1 = dict(hidden_act="quick_gelu")
SD1_INPAINT = dict(hidden_act="quick_gelu", in_channels=9)
SD2_V = dict(hidden_act="gelu", prediction_type="v_prediction")
SD2 = dict(hidden_act="gelu", prediction_type="epsilon")
SD2_INPAINT = dict(hidden_act="gelu", in_channels=9, prediction_type="epsilon")
X4 = dict(hidden_act="gelu", in_channels=7, prediction_type="v_prediction", pipeline="StableDiffusionUpscalePipeline")


@pytest.fixture
def checkpoints(tmp_path) -> Path:
    folder = tmp_path / "models" / CHECKPOINT_SUBFOLDER
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize(
    "configs, family",
    [
        (SD1, Family.SD1),
        (SD1_INPAINT, Family.SD1_INPAINT),
        (SD2_V, Family.SD2_V),
        (SD2, Family.SD2),
        (dict(hidden_act="gelu", prediction_type=None), Family.SD2),  # diffusers' default: epsilon
        (SD2_INPAINT, Family.SD2_INPAINT),
        (X4, Family.X4_UPSCALER),
    ],
    ids=["sd1", "sd1-inpaint", "sd2-v", "sd2-eps", "sd2-no-prediction-type", "sd2-inpaint", "x4"],
)
def test_family_is_read_from_the_configs(checkpoints, configs, family):
    folder = write_configs(checkpoints / "model", **configs)
    assert diffusers_family(folder) == family
    registry = ModelRegistry(checkpoints.parent)
    (entry,) = registry.refresh()
    assert entry.family == family
    assert (entry.title, entry.name, entry.path, entry.layout) == ("model", "model", folder, "diffusers")
    assert entry.demo is False


def test_every_family_side_by_side(checkpoints):
    for name, configs in [("a-sd1", SD1), ("b-sd2v", SD2_V), ("c-sd2", SD2), ("d-inpaint", SD1_INPAINT), ("e-x4", X4)]:
        write_configs(checkpoints / name, **configs)
    entries = ModelRegistry(checkpoints.parent).refresh()
    assert [(e.title, e.family) for e in entries] == [
        ("a-sd1", Family.SD1),
        ("b-sd2v", Family.SD2_V),
        ("c-sd2", Family.SD2),
        ("d-inpaint", Family.SD1_INPAINT),
        ("e-x4", Family.X4_UPSCALER),
    ]


def test_folders_without_model_index_are_not_checkpoints(checkpoints):
    write_configs(checkpoints / "real", **SD1)
    (checkpoints / "notes").mkdir()
    (checkpoints / "notes" / "readme.txt").write_text("hello")
    (checkpoints / "loose.json").write_text("{}")
    assert [e.title for e in ModelRegistry(checkpoints.parent).refresh()] == ["real"]


def test_missing_models_folder_gives_no_entries(tmp_path):
    registry = ModelRegistry(tmp_path / "does-not-exist")
    assert registry.refresh() == []
    assert registry.checkpoint_dir == tmp_path / "does-not-exist" / CHECKPOINT_SUBFOLDER


def test_refresh_picks_up_added_and_removed_folders(checkpoints):
    write_configs(checkpoints / "first", **SD1)
    registry = ModelRegistry(checkpoints.parent)
    assert [e.title for e in registry.refresh()] == ["first"]

    write_configs(checkpoints / "second", **SD2_V)
    assert [e.title for e in registry.entries] == ["first"]  # nothing changes until a refresh
    assert [e.title for e in registry.refresh()] == ["first", "second"]

    shutil.rmtree(checkpoints / "first")
    assert [e.title for e in registry.refresh()] == ["second"]
    with pytest.raises(ModelNotFound):
        registry.find("first")


def test_nested_folders_get_their_relative_path_as_title(checkpoints):
    write_configs(checkpoints / "SD2" / "anime" / "waifu-v", **SD2_V)
    write_configs(checkpoints / "SD1" / "photo", **SD1)
    entries = ModelRegistry(checkpoints.parent).refresh()
    assert [(e.title, e.name, e.family) for e in entries] == [
        ("SD1/photo", "photo", Family.SD1),
        ("SD2/anime/waifu-v", "waifu-v", Family.SD2_V),
    ]


def test_find_by_title_and_by_name(checkpoints):
    write_configs(checkpoints / "SD2" / "anime" / "waifu-v", **SD2_V)
    write_configs(checkpoints / "plain", **SD1)
    registry = ModelRegistry(checkpoints.parent)
    registry.refresh()
    by_title = registry.find("SD2/anime/waifu-v")
    assert by_title.path == checkpoints / "SD2" / "anime" / "waifu-v"
    assert registry.find("waifu-v") == by_title
    assert registry.find("plain").family == Family.SD1


def test_unknown_name_raises_model_not_found_listing_what_exists(checkpoints):
    write_configs(checkpoints / "SD1" / "photo", **SD1)
    registry = ModelRegistry(checkpoints.parent)
    registry.refresh()
    with pytest.raises(ModelNotFound) as caught:
        registry.find("nope")
    assert "'nope'" in caught.value.message
    assert "SD1/photo" in caught.value.message
    with pytest.raises(ModelNotFound, match="Available: none"):
        ModelRegistry(checkpoints.parent / "empty").find("anything")


def test_extra_roots_and_demo_models_come_after_real_ones(checkpoints, tmp_path):
    demo_root = tmp_path / "demo-models"
    write_configs(demo_root / "A demo", demo=True, **SD1)
    write_configs(checkpoints / "zeta", **SD1)
    entries = ModelRegistry(checkpoints.parent, (demo_root,)).refresh()
    assert [(e.title, e.demo) for e in entries] == [("zeta", False), ("A demo", True)]


def test_entries_sort_case_insensitively(checkpoints):
    for name in ("beta", "Alpha", "gamma"):
        write_configs(checkpoints / name, **SD1)
    assert [e.title for e in ModelRegistry(checkpoints.parent).refresh()] == ["Alpha", "beta", "gamma"]


def test_unreadable_config_falls_back_instead_of_failing(checkpoints):
    folder = write_configs(checkpoints / "broken", **SD2_V)
    (folder / "text_encoder" / "config.json").write_text("{not json")
    (entry,) = ModelRegistry(checkpoints.parent).refresh()
    assert entry.family == Family.SD1  # unreadable text encoder config: the most common family
