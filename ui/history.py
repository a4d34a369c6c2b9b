"""The History tab: the pictures in the outputs folder, newest first, with how each was made.

Presentation only: the outputs folder is the engine's `OutputStore`. Images are served by path
(the outputs folder is in `allowed_paths`) as the PNGs on disk, parameters text included.
"""

from pathlib import Path

import gradio as gr
from gradio.context import get_render_context
from PIL import Image

from app.engine import Engine
from app.images.metadata import read_parameters
from ui.runner import page_error

HISTORY_LIMIT = 60
ALL = "all"
# (label, value): the values are the store's categories, A1111's folder names.
CATEGORY_CHOICES = [
    ("All", ALL),
    ("Text to image", "txt2img-images"),
    ("Image to image", "img2img-images"),
    ("Extras", "extras-images"),
]
NO_PARAMETERS = "This image carries no generation parameters."
GONE = "This file is no longer there (deleted or moved since the list was made). Press Refresh."


def build_history_tab(engine: Engine) -> gr.Gallery:
    with gr.Row():
        category = gr.Radio(
            CATEGORY_CHOICES, value=ALL, label="Show", scale=4, elem_id="history-category"
        )
        refresh = gr.Button("Refresh", scale=1, elem_id="history-refresh")
    items, status_text, _ = _listing(engine, ALL)  # at build time a problem is only a status line
    status = gr.Markdown(status_text, elem_id="history-status")
    # format="png": Gradio's default (WebP) would drop the parameters text from the images.
    gallery = gr.Gallery(
        value=items, label="Past pictures", format="png", columns=5, height=560,
        object_fit="contain", interactive=False, elem_id="history-gallery",
    )
    paths = gr.State([path for path, _ in items])
    selected = gr.Markdown("", elem_id="history-selected")
    parameters = gr.Textbox(
        label="Generation parameters", lines=4, max_lines=20, interactive=False, buttons=["copy"],
        elem_id="history-parameters",
    )

    def show_list(chosen: str):
        found, line, readable = _listing(engine, chosen)
        if not readable:
            raise page_error(line)
        return found, [path for path, _ in found], line, "", ""

    def show_selected(shown: list[str], event: gr.SelectData):
        index = event.index if isinstance(event.index, int) else -1
        if not 0 <= index < len(shown):
            return "", ""
        return f"`{shown[index]}`", selected_parameters(shown[index])

    listing = dict(
        fn=show_list, inputs=category, outputs=[gallery, paths, status, selected, parameters],
        api_visibility="private",
    )
    refresh.click(**listing)
    category.change(**listing)
    tab = _enclosing_tab()
    if tab is not None:  # opening the tab shows what was made since the page loaded
        tab.select(**listing)
    gallery.select(show_selected, inputs=paths, outputs=[selected, parameters], api_visibility="private")
    return gallery


def history_items(engine: Engine, category: str | None = ALL, limit: int = HISTORY_LIMIT) -> list[tuple[str, str]]:
    """(path, caption) for the latest outputs of `category` ("all" or None: every category)."""
    chosen = None if category in (None, ALL) else category
    return [(str(path), _caption(path)) for path in engine.recent_outputs(chosen, limit=limit)]


def selected_parameters(path: str | Path) -> str:
    """The infotext of the file at `path`, or a sentence saying why there is none."""
    try:
        with Image.open(path) as image:
            text = read_parameters(image)
    except FileNotFoundError:
        return GONE
    except Exception as error:  # unreadable or damaged file: say so, keep the tab working
        return f"Could not read this file ({type(error).__name__}: {error})."
    return text if text else NO_PARAMETERS


def _listing(engine: Engine, category: str | None) -> tuple[list[tuple[str, str]], str, bool]:
    """(gallery items, status line, whether the folder could be read)."""
    try:
        items = history_items(engine, category)
    except OSError as error:
        reason = error.strerror or str(error)
        message = (
            f"Could not read the outputs folder {engine.outputs_folder()}: {reason}. Check that it exists "
            "and that Easel may read it, then press Refresh."
        )
        return [], message, False
    if not items:
        return [], f"Nothing here yet. Every picture you make is saved in `{engine.outputs_folder()}` and shows up here.", True
    more = " (the latest ones)" if len(items) >= HISTORY_LIMIT else ""
    return items, f"{len(items)} picture(s){more}, newest first. Click one to see how it was made.", True


def _caption(path: Path) -> str:
    return f"{path.parent.name} · {path.stem}"


def _enclosing_tab() -> gr.Tab | None:
    """The gr.Tab this tab is being built in, if any."""
    block = get_render_context()
    while block is not None and not isinstance(block, gr.Tab):
        block = getattr(block, "parent", None)
    return block
