"""The upscale tab: a picture in, a larger picture out, its generation parameters kept."""

from dataclasses import dataclass

import gradio as gr

from app.engine import Engine
from app.generation.upscale import LANCZOS, MAX_NOISE_LEVEL, MAX_SCALE, UpscaleRequest
from ui.runner import followed, outcome, owner_of, page_error, submitted, waiting_line


@dataclass
class UpscaleTab:
    image: gr.Image


def _short(folder) -> str:
    return f"{folder.parent.name}/{folder.name}"


def _problems(engine: Engine) -> str:
    """Why files in the upscaler folder are missing from the list, one line each."""
    return "\n".join(f"- {entry.problem}" for entry in engine.unusable_upscalers())


def _names(engine: Engine) -> list[str]:
    return [choice.name for choice in engine.upscalers()]


def build_upscale_tab(engine: Engine) -> UpscaleTab:
    with gr.Row():
        with gr.Column():
            # format="png" and type="pil": the picture's parameters text comes along.
            image = gr.Image(label="Picture", type="pil", image_mode=None, format="png", sources=("upload", "clipboard"),
                             height=400, elem_id="upscale-image")
            with gr.Row():
                upscaler = gr.Dropdown(
                    _names(engine), value=LANCZOS, label="Upscaler", elem_id="upscale-upscaler",
                    # The folder by its short name: colleagues on the network need no server paths.
                    info="Lanczos needs no model. Drop ESRGAN-family files (.pth, .safetensors) into "
                         f"{_short(engine.model_folders().upscalers)}; SD x4 models go with the checkpoints.",
                )
                rescan = gr.Button("Refresh", scale=0, min_width=90, elem_id="upscale-refresh")
                scale = gr.Slider(1, MAX_SCALE, value=4, step=0.5, label="Scale", elem_id="upscale-scale")
            problems = gr.Markdown(_problems(engine), elem_id="upscale-problems")
            with gr.Accordion("SD x4 settings (diffusion upscaler)", open=False):
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder="What the picture shows, to guide the details",
                                    elem_id="upscale-prompt")
                negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="upscale-negative-prompt")
                with gr.Row():
                    noise = gr.Slider(0, MAX_NOISE_LEVEL, value=20, step=1, label="Noise level",
                                      info="Higher invents more detail", elem_id="upscale-noise")
                    steps = gr.Slider(1, 100, value=20, step=1, label="Steps", elem_id="upscale-steps")
                    cfg = gr.Slider(0, 30, value=7, step=0.5, label="CFG scale", elem_id="upscale-cfg")
                    seed = gr.Number(value=-1, precision=0, label="Seed", elem_id="upscale-seed")
            run = gr.Button("Upscale", variant="primary", elem_id="upscale-run")
        with gr.Column():
            status = gr.Markdown("", elem_id="upscale-status")
            result = gr.Image(label="Result", format="png", interactive=False, height=400, elem_id="upscale-result")
            info = gr.Textbox(label="Parameters", lines=4, interactive=False, elem_id="upscale-info")

    def upscale(picture, chosen, factor, prompt_text, negative_text, noise_level, step_count, guidance, seed_value,
                progress=gr.Progress(), request: gr.Request = None):
        if picture is None:
            raise page_error("Upload a picture first (drop it on the Picture box).")
        wanted = UpscaleRequest(
            image=picture, scale=factor, upscaler=chosen, prompt=prompt_text, negative_prompt=negative_text,
            noise_level=noise_level, steps=step_count, cfg_scale=guidance, seed=seed_value,
        )
        job = submitted(lambda: engine.submit_upscale(wanted, owner=owner_of(request)))
        for job in followed(job):
            if job.waiting:
                yield waiting_line(engine, job), gr.skip(), gr.skip()
            elif job.progress.steps:
                progress(job.progress.fraction, desc=f"Step {job.progress.step}/{job.progress.steps}")
                yield f"Upscaling: step {job.progress.step} of {job.progress.steps}", gr.skip(), gr.skip()
        done = outcome(job)
        yield f"Done: {done.image.width}x{done.image.height}, saved as {done.path.name}.", str(done.path), done.parameters

    def refreshed(chosen: str | None):
        engine.refresh_models()
        names = _names(engine)
        return gr.update(choices=names, value=chosen if chosen in names else LANCZOS), _problems(engine)

    rescan.click(refreshed, inputs=upscaler, outputs=[upscaler, problems], queue=False, api_visibility="private")
    run.click(
        upscale,
        inputs=[image, upscaler, scale, prompt, negative, noise, steps, cfg, seed],
        outputs=[status, result, info],
        api_name="upscale",
        concurrency_id="generate",
    )
    return UpscaleTab(image)
