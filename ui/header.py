"""The bar above the tabs: which checkpoint is active, refresh, downloads, and where generation runs."""

import threading

import gradio as gr

from app.engine import Engine
from app.models.detect import FamilySource, Prediction
from app.models.download import DownloadProgress
from app.models.families import Family
from app.models.registry import ModelEntry
from app.workers import WorkerStatus
from ui.runner import page_error, user_message
from ui.safety import safety_switch

AUTOMATIC_VAE = "Automatic"
PREDICTIONS = {"v-prediction (SD 2.x 768)": Prediction.V, "epsilon (SD 2.x base 512)": Prediction.EPSILON}


def entry_label(entry: ModelEntry) -> str:
    """What the dropdown shows: A1111's "name [hash]", and why a file cannot be used."""
    return f"{entry.a1111_title}  (cannot be used)" if entry.problem else entry.a1111_title


def model_status(engine: Engine) -> str:
    status = engine.status()
    lines = []
    if status.loading is not None:
        lines.append(f"Loading checkpoint **{status.loading.title}**... a generation started now waits for it.")
    elif status.model is None:
        lines.append("No checkpoint loaded yet: the first generation loads one.")
    if status.model is not None:
        model = status.model
        lines.append(f"Active checkpoint: **{model.title}** ({model.family.label}).")
        if model.demo:
            lines.append("This is the tiny random demo model: it draws noise, not pictures.")
        if model.family_source is FamilySource.DEFAULT:
            lines.append(
                "Nothing says whether this SD 2.x model is v-prediction or epsilon, so Easel assumes "
                "v-prediction (768). If its pictures look like noise or flat colour, switch below."
            )
    lines.append(status.device)
    lines += [worker_line(number, worker) for number, worker in enumerate(status.workers, start=1)]
    if status.speed:
        lines.append(status.speed)
    if status.compiling:
        lines.append(status.compiling)
    return "  \n".join(lines)


def worker_line(number: int, worker: WorkerStatus) -> str:
    """One cluster worker: where, what it holds, what it does."""
    holds = f"holds **{worker.holds}**" if worker.holds else "no checkpoint loaded"
    return f"Worker {number} ({worker.name}): {holds}; {worker.doing}."


def _choices(engine: Engine) -> list[tuple[str, str]]:
    return [(entry_label(entry), entry.title) for entry in engine.checkpoints()]


def _default_title(engine: Engine) -> str | None:
    """The active checkpoint, else the one the first generation will load."""
    active = engine.active_checkpoint()
    if active is not None:
        return active.title
    usable = engine.generating_checkpoints()
    return usable[0].title if usable else None


def _prediction_state(engine: Engine) -> dict:
    """The v/epsilon switch: shown only for an SD 2.x single file (folders carry their own config)."""
    active = engine.active_checkpoint()
    if active is None or not active.prediction_is_a_choice:
        return {"visible": False, "value": None}
    current = Prediction.V if active.family is Family.SD2_V else Prediction.EPSILON
    return {"visible": True, "value": next(label for label, value in PREDICTIONS.items() if value is current)}


def _vae_choices(engine: Engine) -> list[str]:
    return [AUTOMATIC_VAE, *(vae.title for vae in engine.vaes())]


def _catalog_choices(engine: Engine) -> list[tuple[str, str]]:
    """Checkpoints, then the helper models features need (safety checker, depth estimator)."""
    checkpoints = [
        (f"{entry.title}: {entry.size / 1e9:.1f} GB. {entry.description}" if entry.size else entry.title, entry.id)
        for entry in engine.download_catalog()
    ]
    helpers = [(f"{helper.title} (for a feature). {helper.description}", helper.id) for helper in engine.helper_downloads()]
    return checkpoints + helpers


def _helper_ids(engine: Engine) -> set[str]:
    return {helper.id for helper in engine.helper_downloads()}


def _progress_text(progress: DownloadProgress) -> str:
    done = progress.done_bytes / 1e9
    total = f" of {progress.total_bytes / 1e9:.2f} GB" if progress.total_bytes else " GB"
    return f"Downloading: {done:.2f}{total} at {progress.bytes_per_second / 1e6:.1f} MB/s"


def build_header(engine: Engine):
    """The header; returns the event of choosing a checkpoint, for the tabs to follow with `.then`."""
    folders = engine.model_folders()
    with gr.Row(equal_height=True):
        choices = _choices(engine)
        checkpoint = gr.Dropdown(
            choices,
            value=_default_title(engine),
            label="Stable Diffusion checkpoint",
            info=None if choices else f"None found: put models into {folders.checkpoints}",
            scale=4,
            elem_id="checkpoint",
        )
        vae = gr.Dropdown(
            _vae_choices(engine), value=engine.vae_choice() or AUTOMATIC_VAE, label="VAE",
            info="Automatic: the checkpoint's own", scale=2, elem_id="vae",
        )
        refresh = gr.Button("Refresh list", scale=0, min_width=120, elem_id="checkpoint-refresh")
    status = gr.Markdown(model_status(engine), elem_id="model-status")
    prediction = gr.Radio(
        list(PREDICTIONS), label="This SD 2.x model is", elem_id="checkpoint-prediction", **_prediction_state(engine)
    )
    with gr.Accordion("Download a model", open=not engine.generating_checkpoints(), elem_id="download"):
        gr.Markdown(
            "Easel downloads only what you choose here, from huggingface.co, into "
            f"`{folders.checkpoints}`. Downloads resume where they stopped and are "
            "checked before use."
        )
        catalog = _catalog_choices(engine)
        wanted = gr.Dropdown(catalog, value=catalog[0][1] if catalog else None, label="Model", elem_id="download-choice")
        with gr.Row():
            start = gr.Button("Download", variant="primary", elem_id="download-start")
            stop = gr.Button("Cancel download", elem_id="download-cancel")
        download_status = gr.Markdown("", elem_id="download-status")
    safety_switch(engine)
    cancel_event = gr.State(None)

    def select(title: str | None):
        if title:
            try:
                engine.select_checkpoint(title)
            except Exception as error:
                raise page_error(user_message(error)) from None
        return model_status(engine), gr.update(**_prediction_state(engine))

    def rescan():
        engine.refresh_models()
        choices = _choices(engine)
        titles = [title for _, title in choices]
        active, usable = engine.active_checkpoint(), engine.generating_checkpoints()
        value = active.title if active and active.title in titles else (usable[0].title if usable else None)
        vae_value = engine.vae_choice() or AUTOMATIC_VAE
        return gr.update(choices=choices, value=value), gr.update(choices=_vae_choices(engine), value=vae_value), model_status(engine)

    def select_vae(title: str | None):
        try:
            engine.select_vae(None if title in (None, AUTOMATIC_VAE) else title)
        except Exception as error:
            raise page_error(user_message(error)) from None
        return model_status(engine)

    def set_prediction(label: str | None):
        active = engine.active_checkpoint()
        if not label or active is None:
            return model_status(engine)
        try:
            engine.set_prediction(active.title, PREDICTIONS[label])
        except Exception as error:
            raise page_error(user_message(error)) from None
        return model_status(engine)

    def download(catalog_id: str, progress=gr.Progress()):
        cancel = threading.Event()
        yield cancel, "Starting the download…", gr.skip(), gr.skip()

        def report(p: DownloadProgress):
            progress(p.fraction or 0.0, desc=_progress_text(p))

        try:
            if catalog_id in _helper_ids(engine):
                folder = engine.download_helper(catalog_id, on_progress=report, cancel=cancel)
                yield None, f"Downloaded into `{folder}`: it is used from now on.", gr.skip(), gr.skip()
                return
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

    selected = checkpoint.change(select, inputs=checkpoint, outputs=[status, prediction], concurrency_id="generate",
                                 api_name="select_checkpoint")
    refresh.click(rescan, outputs=[checkpoint, vae, status], queue=False, api_name="refresh_checkpoints")
    vae.input(select_vae, inputs=vae, outputs=status, concurrency_id="generate", api_name="select_vae")
    prediction.input(set_prediction, inputs=prediction, outputs=status, concurrency_id="generate", api_visibility="private")
    start.click(download, inputs=wanted, outputs=[cancel_event, download_status, checkpoint, status], api_visibility="private")
    stop.click(cancel, inputs=cancel_event, outputs=download_status, queue=False, api_visibility="private")
    # The status line changes without a click: measured speed after each job, the compiled mode once ready.
    gr.Timer(15).tick(lambda: model_status(engine), outputs=status, queue=False, show_progress="hidden",
                      api_visibility="private")
    return selected
