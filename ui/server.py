"""Serves the UI: the queue, the address, and which files the browser may read."""

import gradio as gr

from app.settings import Settings
from ui.app import PAGE_JS

# Generation handlers only wait on the engine's own queue, which runs one job at a time; let many
# of them wait at once so every user sees their position and live progress.
WAITING_HANDLERS = 32


def serve(blocks: gr.Blocks, settings: Settings, block: bool = True):
    """Start the server; returns (app, local_url) once it is listening."""
    blocks.queue(default_concurrency_limit=WAITING_HANDLERS, max_size=settings.queue_size)
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    app, local_url, _ = blocks.launch(
        server_name=settings.host,
        server_port=settings.port,
        inbrowser=settings.open_browser,
        share=False,
        # The browser may read the outputs and nothing else on disk (models, settings stay private).
        allowed_paths=[str(settings.outputs_dir)],
        blocked_paths=[str(settings.models_dir), str(settings.cache_dir)],
        prevent_thread_lock=not block,
        footer_links=[],
        quiet=True,
        show_error=True,
        js=PAGE_JS,
    )
    return app, local_url
