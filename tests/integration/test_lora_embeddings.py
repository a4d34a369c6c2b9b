"""LoRA tags and textual-inversion embeddings through the Engine, on the tiny models: files in the
real layouts with random weights change the pixels, leave no trace on the next job, say when
they do not fit, and are recorded in the infotext as A1111 records them."""

import hashlib
import pickle

import numpy as np
import pytest
import torch

from app.devices import DevicePlan, MemoryMode
from app.generation.requests import GenerationRequest
from app.hardware import HardwareFacts
from app.images.metadata import parse_infotext
from app.models.families import Family
from app.models.manager import ModelManager
from app.models.registry import ModelRegistry
from tests.conftest import CPU_ONLY, TINY_SD1, TINY_SD2_V, engine_over, make_engine, make_settings
from tools.tiny_models import tiny_pipeline
from tools.tiny_networks import (
    embedding_vectors,
    kohya_lora,
    peft_lora,
    save_a1111_embedding,
    save_emb_params_embedding,
    save_lora,
)

TEXT_WIDTH = 32  # the tiny models' text encoder


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def networks_models(tiny_models_dir, tmp_path_factory):
    """A models folder with the tiny checkpoints, LoRAs and embeddings (and two dangerous pickles)."""
    root = tmp_path_factory.mktemp("networks")
    models = root / "models"
    models.mkdir()
    (models / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion", target_is_directory=True)
    pipe = tiny_pipeline(Family.SD1)
    save_lora(models / "Lora" / "kohya.safetensors", kohya_lora(pipe, seed=1),
              metadata={"ss_output_name": "kohya-alias", "ss_tag_frequency": '{"a": {"fox": 3}}'})
    save_lora(models / "Lora" / "styles" / "peft.safetensors", peft_lora(pipe, seed=2))
    save_lora(models / "Lora" / "other-family.safetensors", kohya_lora(pipe, seed=3, widen=16))
    save_a1111_embedding(models / "embeddings" / "fancytok.pt", embedding_vectors(TEXT_WIDTH, 2, seed=4, strength=3))
    save_emb_params_embedding(models / "embeddings" / "glowy.safetensors", embedding_vectors(TEXT_WIDTH, 1, seed=5))
    save_emb_params_embedding(models / "embeddings" / "widetok.safetensors", embedding_vectors(48, 1, seed=6))
    marker = root / "pwned"
    (models / "embeddings" / "evil.pt").write_bytes(pickle.dumps(Evil(marker), protocol=2))
    (models / "Lora" / "evil.pt").write_bytes(pickle.dumps(Evil(marker), protocol=2))
    return models


@pytest.fixture(scope="module")
def networks_engine(networks_models, tiny_configs_dir):
    models = networks_models
    marker = models.parent / "pwned"
    settings = make_settings(models.parent, models, model_configs_dir=str(tiny_configs_dir))
    engine = make_engine(settings)
    engine.select_checkpoint(TINY_SD1)
    engine.marker = marker
    engine.models_root = models
    yield engine
    engine.close()


OFFLOAD = DevicePlan("cpu", torch.float32, MemoryMode.MODEL_OFFLOAD, False, False, "Test: model offload on the CPU.")
# Sequential offload is checked on one layer in tests/unit/test_lora_files.py: a whole generation
# under it fails on the CPU in this stack before any LoRA is involved (accelerate's post_forward).
PLANS = {"cpu-bfloat16": None, "model-offload": OFFLOAD}


@pytest.mark.parametrize("plan", PLANS, ids=list(PLANS))
def test_on_every_device_plan_the_lora_comes_and_goes_without_a_trace(networks_models, tiny_configs_dir, tmp_path, plan):
    settings = make_settings(tmp_path, networks_models, model_configs_dir=str(tiny_configs_dir))
    if PLANS[plan] is None:  # bfloat16 weights: an update and its removal would both round
        engine = make_engine(settings, HardwareFacts(cpu_name="test", cpu_threads=1, cpu_bf16=True))
    else:
        registry = ModelRegistry(networks_models, cache_file=tmp_path / "facts.json")
        registry.refresh()
        engine = engine_over(settings, ModelManager(registry, PLANS[plan], CPU_ONLY, tiny_configs_dir))
    try:
        before = generate(engine, "a red fox")
        with_lora = generate(engine, "a red fox <lora:kohya:1> <lora:peft:1>")
        after = generate(engine, "a red fox")
    finally:
        engine.close()
    assert not np.array_equal(pixels(with_lora), pixels(before))
    assert np.array_equal(pixels(after), pixels(before))


def generate(engine, prompt, negative="", model=TINY_SD1):
    return engine.generate(GenerationRequest(prompt=prompt, negative_prompt=negative, steps=2, width=64, height=64,
                                             seed=11, model=model, save=False))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image)


def test_a_lora_changes_the_pixels_for_its_job_only(networks_engine):
    before = generate(networks_engine, "a red fox")
    with_lora = generate(networks_engine, "a red fox <lora:kohya:0.8>")
    after = generate(networks_engine, "a red fox")
    weight_zero = generate(networks_engine, "a red fox <lora:kohya:0>")
    assert not np.array_equal(pixels(with_lora), pixels(before))
    assert np.array_equal(pixels(after), pixels(before))  # bit-identical weights restored
    assert np.array_equal(pixels(weight_zero), pixels(before))
    assert with_lora.notes == before.notes


def test_the_tag_is_not_text_for_clip_and_the_infotext_keeps_it_with_the_hash(networks_engine):
    result = generate(networks_engine, "a red fox <lora:kohya:0>")
    assert np.array_equal(pixels(result), pixels(generate(networks_engine, "a red fox")))
    fields = parse_infotext(result.images[0].parameters)
    assert fields["Prompt"] == "a red fox <lora:kohya:0>"
    path = networks_engine.models_root / "Lora" / "kohya.safetensors"
    data = path.read_bytes()
    addnet = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]
    assert fields["Lora hashes"] == f"kohya: {addnet}"


def test_two_loras_by_name_and_alias_in_both_prompts(networks_engine):
    one = generate(networks_engine, "a red fox <lora:kohya-alias:1>")
    other = generate(networks_engine, "a red fox <lyco:peft:1>")
    both = generate(networks_engine, "a red fox <lora:kohya-alias:1>", negative="blurry <lora:peft:1>")
    assert not np.array_equal(pixels(one), pixels(other))
    assert not np.array_equal(pixels(both), pixels(one))
    assert not np.array_equal(pixels(both), pixels(other))
    assert parse_infotext(both.images[0].parameters)["Lora hashes"].count(": ") == 2


def test_a_lora_of_another_family_or_name_is_a_sentence_and_the_picture_is_made_without_it(networks_engine):
    plain = generate(networks_engine, "a red fox")
    result = generate(networks_engine, "a red fox <lora:other-family:1> <lora:nowhere:1>")
    assert np.array_equal(pixels(result), pixels(plain))
    assert any("other-family" in note and "another model family" in note for note in result.notes)
    assert any("Couldn't find Lora with name nowhere" in note for note in result.notes)


def test_an_sd1_lora_on_the_sd2_model_does_not_crash(networks_engine):
    plain = generate(networks_engine, "a red fox", model=TINY_SD2_V)
    result = generate(networks_engine, "a red fox <lora:other-family:1>", model=TINY_SD2_V)
    assert np.array_equal(pixels(result), pixels(plain))
    assert any("other-family" in note for note in result.notes)
    networks_engine.select_checkpoint(TINY_SD1)


def test_an_embedding_changes_the_pixels_and_is_recorded(networks_engine, tmp_path):
    with_embedding = generate(networks_engine, "a fancytok fox")
    fields = parse_infotext(with_embedding.images[0].parameters)
    path = networks_engine.models_root / "embeddings" / "fancytok.pt"
    assert fields["TI hashes"] == f"fancytok: {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    moved = tmp_path / "fancytok.pt"
    path.rename(moved)
    try:
        without = generate(networks_engine, "a fancytok fox")
    finally:
        moved.rename(path)
    assert not np.array_equal(pixels(with_embedding), pixels(without))
    assert "TI hashes" not in parse_infotext(without.images[0].parameters)
    again = generate(networks_engine, "a fancytok fox")
    assert np.array_equal(pixels(again), pixels(with_embedding))


def test_embeddings_are_listed_as_a1111_splits_them_and_bad_files_never_run(networks_engine):
    report = networks_engine.embeddings()
    loaded = {entry.name: entry for entry in report.loaded}
    assert set(loaded) == {"fancytok", "glowy"}
    assert (loaded["fancytok"].data.count, loaded["fancytok"].data.width, loaded["fancytok"].data.step) == (2, 32, 100)
    assert [entry.name for entry in report.skipped] == ["widetok"]
    (evil,) = report.unreadable
    assert "run Python code" in evil.problem
    assert not networks_engine.marker.exists()


def test_loras_are_listed_with_alias_metadata_and_problems(networks_engine):
    entries = {entry.name: entry for entry in networks_engine.refresh_loras()}
    assert entries["kohya"].alias == "kohya-alias"
    assert entries["kohya"].metadata["ss_tag_frequency"] == {"a": {"fox": 3}}
    assert entries["peft"].problem is None and entries["peft"].metadata == {}
    assert "run Python code" in entries["evil"].problem
    assert not networks_engine.marker.exists()
    assert networks_engine.loras()[-1].name == "evil"  # unusable ones last


def test_the_page_lists_them_and_a_click_adds_the_tag(networks_engine):
    import gradio as gr

    from ui.networks import embedding_rows, lora_rows, networks_section, problems_text, with_tag

    assert [row[0] for row in lora_rows(networks_engine, "")] == ["kohya", "other-family", "peft"]
    assert lora_rows(networks_engine, "ALIAS") == [["kohya", "kohya-alias"]]  # by alias too, any case
    assert embedding_rows(networks_engine, "fancy") == [["fancytok", "2 vectors"]]
    problems = problems_text(networks_engine)
    assert "evil.pt" in problems and "'widetok'" in problems
    assert with_tag("a fox", "<lora:kohya:1>") == "a fox <lora:kohya:1>"
    assert with_tag("", "fancytok") == "fancytok"
    with gr.Blocks():
        from types import SimpleNamespace

        networks_section(networks_engine, "txt2img", SimpleNamespace(prompt=gr.Textbox()))


def test_a_png_pasted_back_applies_its_lora_and_embedding_again(networks_engine):
    from PIL import Image

    made = networks_engine.generate(GenerationRequest(
        prompt="a fancytok fox <lora:kohya:0.6>", negative_prompt="glowy", steps=2, width=64, height=64, seed=21))
    info = networks_engine.read_png_info(Image.open(made.images[0].path))
    assert info.request["prompt"] == "a fancytok fox <lora:kohya:0.6>"
    assert [item.split(": ")[0] for item in info.fields["TI hashes"].split(", ")] == ["fancytok", "glowy"]
    assert info.fields["Lora hashes"].startswith("kohya: ")
    again = networks_engine.generate(GenerationRequest(**{**info.request, "save": False}))
    assert np.array_equal(pixels(again), pixels(made))
    assert again.images[0].parameters == made.images[0].parameters


def hires(engine, prompt, hr_prompt=""):
    return engine.generate(GenerationRequest(prompt=prompt, hr_prompt=hr_prompt, steps=2, width=64, height=64, seed=11,
                                             enable_hr=True, hr_scale=1.5, strength=0.6, save=False))


def test_a_hires_prompt_swaps_in_its_own_loras_for_the_second_pass_and_records_them(networks_engine):
    plain = pixels(generate(networks_engine, "a red fox"))
    same = hires(networks_engine, "a red fox")
    hr_lora = hires(networks_engine, "a red fox", "a red fox <lora:peft:1>")
    assert not np.array_equal(pixels(same), pixels(hr_lora))
    hashes = parse_infotext(hr_lora.images[0].parameters)["Lora hashes"]
    assert hashes.startswith("peft: ") and "kohya" not in hashes

    # A LoRA in the first prompt only is taken out for a hires prompt without it.
    first_only = hires(networks_engine, "a red fox <lora:kohya:1>", "a red fox")
    both = hires(networks_engine, "a red fox <lora:kohya:1>")
    assert not np.array_equal(pixels(first_only), pixels(both))
    assert parse_infotext(first_only.images[0].parameters)["Lora hashes"].startswith("kohya: ")
    assert np.array_equal(pixels(generate(networks_engine, "a red fox")), plain)  # nothing left behind
    assert np.array_equal(pixels(hires(networks_engine, "a red fox")), pixels(same))


def test_embeddings_in_a_hires_prompt_are_recorded(networks_engine):
    result = hires(networks_engine, "a red fox", "a red fox, glowy")
    assert parse_infotext(result.images[0].parameters)["TI hashes"].startswith("glowy: ")


def test_the_same_loras_stay_in_the_weights_between_jobs_and_go_when_a_job_asks_for_none(networks_engine):
    from tests.conftest import models_of

    plain = pixels(generate(networks_engine, "a red fox"))
    first = generate(networks_engine, "a red fox <lora:kohya:0.8>")
    carried = models_of(networks_engine).loaded.lora_weights
    saved = dict(carried.saved)
    assert saved  # the originals of the layers it changed
    again = generate(networks_engine, "a red fox <lora:kohya:0.8>")
    assert np.array_equal(pixels(first), pixels(again))
    assert all(carried.saved[key] is tensor for key, tensor in saved.items())  # not added a second time

    # Another weight is another LoRA state: swapped from the originals, not added on top.
    stronger = generate(networks_engine, "a red fox <lora:kohya:1.6>")
    assert not np.array_equal(pixels(stronger), pixels(first))
    assert np.array_equal(pixels(generate(networks_engine, "a red fox <lora:kohya:0.8>")), pixels(first))

    assert np.array_equal(pixels(generate(networks_engine, "a red fox")), plain)
    assert carried.saved == {}  # the checkpoint's own weights back, nothing kept


def test_a_lora_that_does_not_fit_is_noted_on_every_job_that_asks_for_it(networks_engine):
    for _ in range(2):
        result = generate(networks_engine, "a red fox <lora:other-family:1>")
        assert any("does not fit" in note for note in result.notes)
