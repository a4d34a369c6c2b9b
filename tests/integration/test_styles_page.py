"""Styles in the page: chosen in text-to-image they reach the infotext expanded (as through the
API); the ✎ button's and the save button's handlers."""

import gradio as gr
import pytest
from gradio_client import Client
from PIL import Image

from app.engine import create_engine
from app.images.metadata import parse_infotext, read_parameters
from server.compose import serve
from tests.conftest import CPU_ONLY, make_settings
from ui.app import build_ui
from ui.styles import applied_to_boxes, saved_from_boxes


def test_styles_chosen_in_the_page_are_expanded_into_the_infotext(tiny_models_dir, tmp_path):
    settings = make_settings(tmp_path, tiny_models_dir, port=0, host="127.0.0.1")
    engine = create_engine(settings, CPU_ONLY)
    assert saved_from_boxes(engine, "Sharp", "{prompt}, sharp focus", "blur") == "Saved the style **Sharp**."
    server = serve(build_ui(engine), engine, settings)
    try:
        client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
        # prompt, negative, sampler, schedule, steps, cfg, width, height, seed, batch count, batch size
        fields = ("a red fox", "fog", "Euler a", "Automatic", 2, 7, 64, 64, 5, 1, 1)
        parameters = client.view_api(return_format="dict")["named_endpoints"]["/txt2img"]["parameters"]
        styles_at = len(parameters) - 1  # the styles are the last input; others may sit between
        values = [*fields, *(p.get("parameter_default") for p in parameters[len(fields):styles_at]), ["Sharp"]]
        gallery, *_ = client.predict(*values, api_name="/txt2img")
        written = parse_infotext(read_parameters(Image.open(gallery[0]["image"])))
        assert written["Prompt"] == "a red fox, sharp focus" and written["Negative prompt"] == "fog, blur"
    finally:
        server.close()
        engine.close()


def test_the_apply_and_save_handlers(engine):
    saved_from_boxes(engine, "Moody", "dark mood", "{prompt}, bright")
    assert applied_to_boxes(engine, "a cat", "dog", ["Moody"]) == ("a cat, dark mood", "dog, bright")
    with pytest.raises(gr.Error, match="no saved style called 'Gone'"):
        applied_to_boxes(engine, "a cat", "", ["Gone"])
    with pytest.raises(gr.Error, match="name"):
        saved_from_boxes(engine, "", "x", "")
