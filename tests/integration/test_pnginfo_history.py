"""PNG Info and History: real outputs of the tiny engine, read back as the tabs show them."""

import shutil

import gradio as gr
import numpy as np
import pytest
from gradio.data_classes import ImageData
from PIL import Image

from app.engine import Engine, create_engine
from app.generation.a1111 import request_fields
from app.generation.infotext import png_info
from app.generation.requests import GenerationRequest
from app.images.metadata import png_pnginfo
from app.images.watermark import apply_watermark
from tests.conftest import CPU_ONLY, TINY_SD1, make_settings
from ui.history import GONE, build_history_tab, history_items, selected_parameters
from ui.history import NO_PARAMETERS as HISTORY_NO_PARAMETERS
from ui.pnginfo import (
    INTRO,
    NO_PARAMETERS,
    NO_WATERMARK,
    TOO_SMALL,
    PngInfoTab,
    build_pnginfo_tab,
    pnginfo_outputs,
)

TIMEOUT = 60.0


def tiny(**fields) -> GenerationRequest:
    values = dict(prompt="a lighthouse, (dusk:1.2)", negative_prompt="blurry", steps=2, width=64, height=64,
                  seed=4242, sampler="Euler", schedule="Karras", cfg_scale=6.5)
    values.update(fields)
    return GenerationRequest(**values)


def grey(size=(256, 256)) -> Image.Image:
    # dwtDct round-trips reliably on a flat mid-grey image (see tests/unit/test_watermark.py).
    return Image.new("RGB", size, (128, 128, 128))


@pytest.fixture(scope="module")
def shared_engine(tiny_models_dir, tiny_configs_dir, tmp_path_factory) -> Engine:
    """The conftest `engine`, once for the module: these tests only read what it made."""
    settings = make_settings(tmp_path_factory.mktemp("pnginfo"), tiny_models_dir, model_configs_dir=str(tiny_configs_dir))
    engine = create_engine(settings, CPU_ONLY)
    engine.select_checkpoint(TINY_SD1)
    yield engine
    engine.close()


def make_two(engine: Engine):
    """One txt2img output, then one img2img output (the newest)."""
    first = engine.generate(tiny(), timeout=TIMEOUT).images[0]
    second = engine.generate(
        tiny(init_image=Image.new("RGB", (64, 64), (200, 40, 40)), strength=0.5, seed=7, width=None, height=None),
        timeout=TIMEOUT,
    ).images[0]
    return first, second


@pytest.fixture(scope="module")
def made(shared_engine):
    return make_two(shared_engine)


def test_png_info_of_a_saved_output_gives_its_parameters_and_fields(shared_engine, made):
    saved, _ = made
    with Image.open(saved.path) as image:
        info = png_info(image)
    assert info.parameters == saved.parameters
    assert info.fields["Prompt"] == "a lighthouse, (dusk:1.2)"
    assert info.fields["Negative prompt"] == "blurry"
    assert (info.fields["Seed"], info.fields["Size"], info.fields["Sampler"]) == ("4242", "64x64", "Euler")
    assert info.watermark is None  # 64 px: too small to carry it

    # Sending it back to txt2img makes the same picture again.
    fields = request_fields(info.fields)
    assert fields["schedule"] == "Karras" and fields["cfg_scale"] == 6.5
    again = shared_engine.generate(GenerationRequest(**fields), timeout=TIMEOUT).images[0]
    with Image.open(saved.path) as original:
        assert np.array_equal(np.asarray(again.image), np.asarray(original.convert("RGB")))


def test_the_tab_shows_parameters_table_and_send_fields_for_an_output(shared_engine, made):
    _, saved = made
    with Image.open(saved.path) as image:
        text, rows, watermark, message, fields = pnginfo_outputs(shared_engine, image)
    assert text == saved.parameters
    table = dict(rows)
    assert table["Prompt"] == "a lighthouse, (dusk:1.2)" and table["Size"] == "64x64"
    assert table["Denoising strength"] == "0.5"
    assert "Size-1" not in table and "Size-2" not in table
    assert watermark == TOO_SMALL and message == ""
    assert fields["strength"] == 0.5 and fields["seed"] == 7
    assert pnginfo_outputs(shared_engine, None) == ("", [], "", INTRO, {})


@pytest.mark.parametrize("text, version", [("StableDiffusionV1", 1), ("SDV2", 2)])
def test_watermarked_image_is_recognised(shared_engine, text, version):
    marked = apply_watermark(grey(), text)
    assert png_info(marked).watermark == text
    line = pnginfo_outputs(shared_engine, marked)[2]
    assert line.startswith(f"Invisible watermark: {text} (made with an SD {version}.x model)")


def test_plain_image_has_no_watermark_and_no_parameters(shared_engine):
    info = png_info(grey())
    assert info == type(info)(parameters=None, fields={}, watermark=None, request={})
    text, rows, watermark, message, fields = pnginfo_outputs(shared_engine, grey())
    assert (text, rows, fields) == ("", [], {})
    assert watermark == NO_WATERMARK and message == NO_PARAMETERS
    assert pnginfo_outputs(shared_engine, grey((255, 300)))[2] == TOO_SMALL


def test_a_jpeg_with_a1111_exif_comment_is_read(shared_engine, tmp_path):
    text = "a jpeg cat\nSteps: 9, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    path = tmp_path / "cat.jpg"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(path, format="JPEG", exif=exif.tobytes())
    with Image.open(path) as image:
        parameters, _, _, _, fields = pnginfo_outputs(shared_engine, image)
    assert parameters == text
    assert fields["prompt"] == "a jpeg cat" and fields["steps"] == 9


def test_tabs_build_and_an_upload_keeps_the_png_text(engine, tmp_path):
    saved, _ = make_two(engine)
    with gr.Blocks() as blocks:
        with gr.Tab("PNG Info"):
            tab = build_pnginfo_tab(engine)
        with gr.Tab("History") as history_tab:
            gallery = build_history_tab(engine)
    assert isinstance(tab, PngInfoTab) and isinstance(tab.fields, gr.State)
    assert isinstance(gallery, gr.Gallery)
    ids = {tab.image.elem_id, tab.send_to_txt2img.elem_id, tab.send_to_img2img.elem_id, gallery.elem_id}
    assert ids == {"pnginfo-image", "pnginfo-send-txt2img", "pnginfo-send-img2img", "history-gallery"}

    # The history opens on what is already there, newest first, and refreshes when its tab opens.
    shown = [item["image"]["path"] for item in gallery.value]
    assert len(shown) == 2
    triggers = {(t[0], t[1]) for dep in blocks.config["dependencies"] for t in dep["targets"]}
    assert (history_tab._id, "select") in triggers
    assert (tab.image._id, "change") in triggers

    # What Gradio hands the handler for an upload still carries the parameters text.
    upload = tmp_path / "upload.png"
    shutil.copy(saved.path, upload)
    image = tab.image.preprocess(ImageData(path=str(upload), orig_name="upload.png"))
    assert pnginfo_outputs(engine, image)[0] == saved.parameters


def test_history_lists_outputs_by_category_newest_first(engine):
    txt2img, img2img = make_two(engine)
    everything = history_items(engine, "all", limit=10)
    assert [path for path, _ in everything] == [str(img2img.path), str(txt2img.path)]
    assert everything[0][1].endswith(img2img.path.stem)
    assert [p for p, _ in history_items(engine, "txt2img-images", 10)] == [str(txt2img.path)]
    assert [p for p, _ in history_items(engine, "img2img-images", 10)] == [str(img2img.path)]
    assert history_items(engine, "extras-images", 10) == []
    assert len(history_items(engine, None, limit=1)) == 1


def test_history_selection_reads_the_file(tmp_path, made):
    txt2img, _ = made
    assert selected_parameters(txt2img.path) == txt2img.parameters
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    assert selected_parameters(bare) == HISTORY_NO_PARAMETERS
    assert selected_parameters(tmp_path / "gone.png") == GONE
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert selected_parameters(broken).startswith("Could not read this file")
    texted = tmp_path / "texted.png"
    Image.new("RGB", (8, 8)).save(texted, pnginfo=png_pnginfo("hello\nSteps: 1, Seed: 2, CFG scale: 3"))
    assert selected_parameters(texted).startswith("hello")
