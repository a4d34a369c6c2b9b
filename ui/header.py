"""The bar above the tabs: which checkpoint is active, refresh, downloads, and where generation runs."""

import threading

import gradio as gr

from app.engine import Engine
from app.models import families
from app.models.download import DownloadProgress
from app.models.registry import ModelEntry
from ui.runner import page_error, user_message

AUTOMATIC_VAE = "Automatic"
PREDICTIONS = {"v-prediction (SD 2.x 768)": "v", "epsilon (SD 2.x base 512)": "epsilon"}


def entry_label(entry: ModelEntry) -> str:
    """What the dropdown shows: A1111's "name [hash]", and why a file cannot be used."""
    label = f"{entry.title} [{entry.model_hash}]" if entry.model_hash else entry.title
    return f"{label}  (cannot be used)" if entry.problem else label


def model_status(engine: Engine) -> str:
    status = engine.status()
    lines = []
    if status.model is None:
        lines.append("No checkpoint loaded yet: the first generation loads one.")
    else:
        model = status.model
        lines.append(f"Active checkpoint: **{model.title}** ({families.LABELS[model.family]}).")
        if model.demo:
            lines.append("This is the tiny random demo model: it draws noise, not pictures.")
        if model.family_source == "default":
            lines.append(
                "Nothing says whether this SD 2.x model is v-prediction or epsilon, so Easel assumes "
                "v-prediction (768). If its pictures look like noise or flat colour, switch below."
            )
    lines.append(status.device)
    return "  \n".join(lines)


def _choices(engine: Engine) -> list[tuple[str, str]]:
    return [(entry_label(entry), entry.title) for entry in engine.models.entries()]


def _prediction_state(engine: Engine) -> dict:
    """The v/epsilon switch: shown only for an SD 2.x single file (folders carry their own config)."""
    active = engine.models.active
    if active is None or active.family not in (families.SD2, families.SD2_V) or active.layout != "single-file":
        return {"visible": False, "value": None}
    current = "v" if active.family == families.SD2_V else "epsilon"
    return {"visible": True, "value": next(label for label, value in PREDICTIONS.items() if value == current)}


def _vae_choices(engine: Engine) -> list[str]:
    return [AUTOMATIC_VAE, *(vae.title for vae in engine.models.registry.vaes)]


def _catalog_choices(engine: Engine) -> list[tuple[str, str]]:
    return [
        (f"{entry.title}: {entry.size / 1e9:.1f} GB. {entry.description}" if entry.size else entry.title, entry.id)
        for entry in engine.download_catalog()
    ]


def _progress_text(progress: DownloadProgress) -> str:
    done = progress.done_bytes / 1e9
    total = f" of {progress.total_bytes / 1e9:.2f} GB" if progress.total_bytes else " GB"
    return f"Downloading: {done:.2f}{total} at {progress.bytes_per_second / 1e6:.1f} MB/s"


def build_header(engine: Engine) -> None:
    with gr.Row(equal_height=True):
        active = engine.models.active
        choices = _choices(engine)
        usable = engine.models.generating_entries()
        checkpoint = gr.Dropdown(
            choices,
            value=active.title if active else (usable[0].title if usable else None),
            label="Stable Diffusion checkpoint",
            info=None if choices else f"None found: put models into {engine.models.registry.checkpoint_dir}",
            scale=4,
            elem_id="checkpoint",
        )
        vae = gr.Dropdown(
            _vae_choices(engine), value=engine.models.vae_choice or AUTOMATIC_VAE, label="VAE",
            info="Automatic: the checkpoint's own", scale=2, elem_id="vae",
        )
        refresh = gr.Button("Refresh list", scale=0, min_width=120, elem_id="checkpoint-refresh")
    status = gr.Markdown(model_status(engine), elem_id="model-status")
    prediction = gr.Radio(
        list(PREDICTIONS), label="This SD 2.x model is", elem_id="checkpoint-prediction", **_prediction_state(engine)
    )
    with gr.Accordion("Download a model", open=not usable, elem_id="download"):
        gr.Markdown(
            "Easel downloads only what you choose here, from huggingface.co, into "
            f"`{engine.models.registry.checkpoint_dir}`. Downloads resume where they stopped and are "
            "checked before use."
        )
        catalog = _catalog_choices(engine)
        wanted = gr.Dropdown(catalog, value=catalog[0][1] if catalog else None, label="Model", elem_id="download-choice")
        with gr.Row():
            start = gr.Button("Download", variant="primary", elem_id="download-start")
            stop = gr.Button("Cancel download", elem_id="download-cancel")
        download_status = gr.Markdown("", elem_id="download-status")
    cancel_event = gr.State(None)

    def select(title: str | None):
        if title:
            try:
                engine.models.load(title)
            except Exception as error:
                raise page_error(user_message(error)) from None
        return model_status(engine), gr.update(**_prediction_state(engine))

    def rescan():
        engine.models.refresh()
        choices = _choices(engine)
        active = engine.models.active
        titles = [title for _, title in choices]
        usable = engine.models.generating_entries()
        value = active.title if active and active.title in titles else (usable[0].title if usable else None)
        vae_value = engine.models.vae_choice or AUTOMATIC_VAE
        return gr.update(choices=choices, value=value), gr.update(choices=_vae_choices(engine), value=vae_value), model_status(engine)

    def select_vae(title: str | None):
        try:
            engine.models.select_vae(None if title in (None, AUTOMATIC_VAE) else title)
        except Exception as error:
            raise page_error(user_message(error)) from None
        return model_status(engine)

    def set_prediction(label: str | None):
        active = engine.models.active
        if not label or active is None:
            return model_status(engine)
        try:
            entry = engine.models.registry.set_prediction(active.title, PREDICTIONS[label])
            engine.models.load(entry.title)
        except Exception as error:
            raise page_error(user_message(error)) from None
        return model_status(engine)

    def download(catalog_id: str, progress=gr.Progress()):
        cancel = threading.Event()
        yield cancel, "Starting the download…", gr.skip(), gr.skip()

        def report(p: DownloadProgress):
            progress(p.fraction or 0.0, desc=_progress_text(p))

        try:
            entry = engine.download_model(catalog_id, on_progress=report, cancel=cancel)
        except Exception as error:
            yield None, user_message(error), gr.skip(), gr.skip()
            return
        choices, _, status_text = rescan()
        yield None, f"Downloaded and checked: **{entry.title}**. Choose it above to use it.", choices, status_text

    def cancel(event: threading.Event | None):
        if event is not None:
            event.set()
        return "Cancelling… the part downloaded so far is kept, and the download resumes next time."

    checkpoint.change(select, inputs=checkpoint, outputs=[status, prediction], concurrency_id="generate", api_name="select_checkpoint")
    refresh.click(rescan, outputs=[checkpoint, vae, status], queue=False, api_name="refresh_checkpoints")
    vae.input(select_vae, inputs=vae, outputs=status, concurrency_id="generate", api_name="select_vae")
    prediction.input(set_prediction, inputs=prediction, outputs=status, concurrency_id="generate", api_visibility="private")
    start.click(download, inputs=wanted, outputs=[cancel_event, download_status, checkpoint, status], api_visibility="private")
    stop.click(cancel, inputs=cancel_event, outputs=download_status, queue=False, api_visibility="private")
