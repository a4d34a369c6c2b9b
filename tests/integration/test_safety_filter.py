"""The optional safety filter with a tiny CompVis safety checker (the real class, a tiny CLIP vision
tower) whose one concept is set so that a known picture is flagged and another is not."""

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

from app.errors import EaselError, HelperModelMissing
from app.generation.requests import GenerationRequest
from app.generation.safety import SafetyFilter
from app.models.catalog import load_helpers
from app.models.safety_checker import SAFETY_CHECKER_ID, SafetyCheckerSlot
from tests.conftest import TINY_SD1, make_engine, make_settings

REQUEST = dict(prompt="a lighthouse", seed=11, steps=2, width=64, height=64, batch_size=2, save=False)


def helper():
    return next(entry for entry in load_helpers() if entry.id == SAFETY_CHECKER_ID)


def embedding(model, processor, picture: Image.Image) -> torch.Tensor:
    with torch.no_grad():
        pixels = processor(images=[picture], return_tensors="pt").pixel_values
        return model.visual_projection(model.vision_model(pixels)[1])[0]


def save_tiny_checker(folder, flagged: Image.Image, allowed: Image.Image) -> None:
    """A checker whose first concept points from `allowed` to `flagged`, its threshold halfway."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    model = StableDiffusionSafetyChecker(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    bad, good = embedding(model, processor, flagged), embedding(model, processor, allowed)
    concept = torch.nn.functional.normalize(bad - good, dim=0)
    scores = [float(torch.nn.functional.cosine_similarity(e, concept, dim=0)) for e in (bad, good)]
    assert scores[0] - scores[1] > 0.05  # room for the checker's rounding to 3 decimals
    with torch.no_grad():
        model.concept_embeds[0] = concept
        model.concept_embeds_weights.fill_(5.0)            # every other concept: never
        model.concept_embeds_weights[0] = sum(scores) / 2
        model.special_care_embeds_weights.fill_(5.0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def test_only_the_flagged_picture_is_blurred_and_the_note_says_so(tmp_path):
    flagged, allowed = noise(1), Image.new("RGB", (64, 64), (40, 120, 200))
    save_tiny_checker(tmp_path / "checker", flagged, allowed)
    slot = SafetyCheckerSlot(helper(), tmp_path / "checker")
    off = SafetyFilter(slot, enabled=False)
    assert off.filtered([flagged, allowed]) == ([flagged, allowed], [])   # off: untouched, checker not even loaded
    on = SafetyFilter(slot, enabled=True)
    pictures, notes = on.filtered([flagged, allowed])
    assert pictures[1] is allowed
    blurred = np.asarray(pictures[0], dtype=np.float64)
    assert pictures[0].size == flagged.size and not np.array_equal(blurred, np.asarray(flagged))
    assert blurred.std() < np.asarray(flagged, dtype=np.float64).std() / 4   # smoothed, not just changed
    assert notes == ["The safety filter blurred 1 of these 2 pictures: the safety checker flagged it as not safe for work."]


def test_a_missing_checker_is_fetched_once_and_otherwise_named_with_where_it_goes(tmp_path):
    calls = []

    def offline(entry, folder):
        calls.append(folder)
        raise EaselError("Could not reach huggingface.co.")

    folder = tmp_path / "models" / "safety_checker"
    on = SafetyFilter(SafetyCheckerSlot(helper(), folder, fetch=offline), enabled=True)
    with pytest.raises(HelperModelMissing) as caught:
        on.filtered([noise(1)])
    with pytest.raises(HelperModelMissing):
        on.filtered([noise(1)])
    assert calls == [folder]                     # offline: not tried again for every job
    on.set_enabled(False)
    on.set_enabled(True)
    with pytest.raises(HelperModelMissing):
        on.filtered([noise(1)])
    assert calls == [folder, folder]             # switched on again: tried again
    message = caught.value.message
    assert str(folder) in message and "model.safetensors" in message and "CompVis/stable-diffusion-safety-checker" in message
    assert "no unfiltered picture" in message


def test_the_engine_blurs_what_the_checker_flags_and_keeps_the_rest_pixel_for_pixel(
        tiny_models_dir, tiny_configs_dir, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion", target_is_directory=True)
    settings = make_settings(tmp_path, models, model_configs_dir=str(tiny_configs_dir), watermark=False,
                             preview_every=1)
    engine = make_engine(settings)
    try:
        engine.select_checkpoint(TINY_SD1)
        plain_job = engine.submit(GenerationRequest(**REQUEST))
        plain_job.watch()  # previews are made only while someone reads them
        plain = plain_job.wait()
        assert plain_job.progress.preview is not None
        first, second = (image.image for image in plain.images)
        save_tiny_checker(models / "safety_checker", first, second)
        assert not engine.safety_filter_on()
        again = engine.generate(GenerationRequest(**REQUEST))
        assert [np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(again.images, plain.images)] == [True, True]
        engine.set_safety_filter(True)
        filtered_job = engine.submit(GenerationRequest(**REQUEST))
        filtered_job.watch()  # watched, yet no preview
        filtered = filtered_job.wait()
        assert filtered_job.progress.preview is None  # no live preview shows what the checker has not seen
        assert not np.array_equal(np.asarray(filtered.images[0].image), np.asarray(first))
        assert np.array_equal(np.asarray(filtered.images[1].image), np.asarray(second))
        assert any("safety filter blurred 1 of these 2" in note for note in filtered.notes)
        assert [image.parameters for image in filtered.images] == [image.parameters for image in plain.images]
    finally:
        engine.close()


def test_the_setting_turns_it_on_from_the_start(tmp_path, tiny_models_dir):
    settings = make_settings(tmp_path, tiny_models_dir, safety_filter=True)
    assert settings.safety_filter is True
    engine = make_engine(settings)
    try:
        assert engine.safety_filter_on()
    finally:
        engine.close()


def test_with_the_filter_on_and_no_checker_the_job_fails_and_nothing_is_saved(
        tiny_models_dir, tiny_configs_dir, tmp_path, monkeypatch):
    import app.engine

    def offline(entry, folder):
        raise EaselError("Could not reach huggingface.co.")

    monkeypatch.setattr(app.engine, "download_helper", offline)
    settings = make_settings(tmp_path, tiny_models_dir, model_configs_dir=str(tiny_configs_dir), safety_filter=True)
    engine = make_engine(settings)
    try:
        with pytest.raises(HelperModelMissing, match="safety_checker"):
            engine.generate(GenerationRequest(**{**REQUEST, "save": True}))
        assert not list(settings.outputs_dir.rglob("*.png"))
    finally:
        engine.close()


def test_the_catalog_offers_the_checker_and_refuses_a_helper_path_outside_its_folder(tmp_path):
    assert helper().files == ("config.json", "preprocessor_config.json", "model.safetensors")
    assert [entry.url for entry in helper().file_entries()][2] == \
        "https://huggingface.co/CompVis/stable-diffusion-safety-checker/resolve/main/model.safetensors"
    bad = tmp_path / "catalog.yaml"
    bad.write_text("models: []\nhelpers:\n  - {id: x, title: X, repository: a/b, folder: '..', files: [c.json], "
                   "licence: l, description: d}\n")
    with pytest.raises(EaselError, match="outside its folder"):
        load_helpers(bad)


def test_the_page_offers_each_helper_and_the_engine_fetches_it_into_its_folder(
        tiny_models_dir, tiny_configs_dir, tmp_path, monkeypatch):
    import app.engine
    from app.errors import ModelNotFound
    from ui.header import _catalog_choices

    fetched = []

    def fetch(entry, folder, cancel=None, on_progress=None):
        fetched.append((entry.id, folder))
        return folder

    monkeypatch.setattr(app.engine, "download_helper", fetch)
    settings = make_settings(tmp_path, tiny_models_dir, model_configs_dir=str(tiny_configs_dir))
    engine = make_engine(settings)
    try:
        offered = [value for _label, value in _catalog_choices(engine)]
        assert {"safety-checker", "depth-estimator"} <= set(offered)
        assert engine.download_helper("depth-estimator") == settings.models_dir / "dpt-hybrid-midas"
        assert fetched == [("depth-estimator", settings.models_dir / "dpt-hybrid-midas")]
        with pytest.raises(ModelNotFound, match="no download called"):
            engine.download_helper("../../etc")
    finally:
        engine.close()
