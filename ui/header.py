"""The bar above the tabs: which checkpoint is active, refresh, and where generation runs."""

import gradio as gr

from app.engine import Engine
from app.models.families import LABELS
from ui.runner import user_message


def model_status(engine: Engine) -> str:
    status = engine.status()
    if status.model is None:
        model = "No checkpoint loaded yet: the first generation loads one."
    else:
        model = f"Active checkpoint: **{status.model.title}** ({LABELS[status.model.family]})."
        if status.model.demo:
            model += " This is the tiny random demo model: it draws noise, not pictures."
    return f"{model}  \n{status.device}"


def _choices(engine: Engine) -> list[str]:
    return [entry.title for entry in engine.models.entries()]


def build_header(engine: Engine) -> None:
    with gr.Row(equal_height=True):
        active = engine.models.active
        choices = _choices(engine)
        checkpoint = gr.Dropdown(
            choices,
            value=active.title if active else (choices[0] if choices else None),
            label="Stable Diffusion checkpoint",
            info=None if choices else f"None found: put models into {engine.models.registry.checkpoint_dir}",
            scale=4,
            elem_id="checkpoint",
        )
        refresh = gr.Button("Refresh list", scale=0, min_width=120, elem_id="checkpoint-refresh")
    status = gr.Markdown(model_status(engine), elem_id="model-status")

    def select(title: str | None):
        if not title:
            return model_status(engine)
        try:
            engine.models.load(title)
        except Exception as error:
            raise gr.Error(user_message(error)) from None
        return model_status(engine)

    def rescan():
        engine.models.refresh()
        choices = _choices(engine)
        active = engine.models.active
        value = active.title if active and active.title in choices else (choices[0] if choices else None)
        return gr.update(choices=choices, value=value), model_status(engine)

    checkpoint.change(select, inputs=checkpoint, outputs=status, concurrency_id="generate", api_name="select_checkpoint")
    refresh.click(rescan, outputs=[checkpoint, status], queue=False, api_name="refresh_checkpoints")
