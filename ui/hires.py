"""Text to image's "Hires fix" section: a second, image-to-image pass at a larger size."""

from dataclasses import dataclass

import gradio as gr

from app.engine import Engine
from app.generation.requests import DEFAULT_HIRES_UPSCALER, MAX_HIRES_SCALE, MAX_SIZE, MAX_STEPS

SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULE = "Use same scheduler"
# The request fields of the section, in the order of `HiresControls.inputs()`; "strength" is
# hires fix's denoising strength (text to image has no other).
HIRES_FIELDS = (
    "enable_hr", "hr_upscaler", "hr_second_pass_steps", "strength", "hr_scale", "hr_resize_x", "hr_resize_y",
    "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
)
HIRES_DEFAULTS = {
    "enable_hr": False, "hr_upscaler": DEFAULT_HIRES_UPSCALER, "hr_second_pass_steps": 0, "strength": 0.7,
    "hr_scale": 2.0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_sampler_name": SAME_SAMPLER,
    "hr_scheduler": SAME_SCHEDULE, "hr_prompt": "", "hr_negative_prompt": "",
}


@dataclass
class HiresControls:
    enable_hr: gr.Checkbox
    hr_upscaler: gr.Dropdown
    hr_second_pass_steps: gr.Slider
    strength: gr.Slider
    hr_scale: gr.Slider
    hr_resize_x: gr.Slider
    hr_resize_y: gr.Slider
    hr_sampler_name: gr.Dropdown
    hr_scheduler: gr.Dropdown
    hr_prompt: gr.Textbox
    hr_negative_prompt: gr.Textbox

    def inputs(self) -> list:
        return [getattr(self, name) for name in HIRES_FIELDS]


def _choice(value, choices: list[str], fallback: str) -> str:
    return value if value in choices else fallback


def hires_section(engine: Engine, tab: str, values: dict) -> HiresControls:
    upscalers = engine.hires_upscalers()
    samplers = [SAME_SAMPLER, *engine.sampler_names()]
    schedules = [SAME_SCHEDULE, *engine.schedule_names()]
    with gr.Accordion("Hires fix", open=bool(values["enable_hr"]), elem_id=f"{tab}-hires"):
        enable = gr.Checkbox(
            value=values["enable_hr"], label="Hires fix: make it small, upscale, then repaint at the larger size",
            elem_id=f"{tab}-enable-hr",
        )
        with gr.Row():
            upscaler = gr.Dropdown(
                upscalers, value=_choice(values["hr_upscaler"], upscalers, DEFAULT_HIRES_UPSCALER), label="Upscaler",
                info="Latent: fast, in the model's space; the others upscale the picture", elem_id=f"{tab}-hr-upscaler",
            )
            steps = gr.Slider(0, MAX_STEPS, value=values["hr_second_pass_steps"], step=1, label="Hires steps",
                              info="0: as many as the first pass", elem_id=f"{tab}-hr-steps")
            strength = gr.Slider(0, 1, value=values["strength"], step=0.01, label="Denoising strength",
                                 info="Low keeps the first pass, high repaints it", elem_id=f"{tab}-hr-strength")
        with gr.Row():
            scale = gr.Slider(1, MAX_HIRES_SCALE, value=values["hr_scale"], step=0.05, label="Upscale by",
                              elem_id=f"{tab}-hr-scale")
            resize_x = gr.Slider(0, MAX_SIZE, value=values["hr_resize_x"], step=8, label="Resize width to",
                                 info="0: by the scale", elem_id=f"{tab}-hr-resize-x")
            resize_y = gr.Slider(0, MAX_SIZE, value=values["hr_resize_y"], step=8, label="Resize height to",
                                 info="0: by the scale", elem_id=f"{tab}-hr-resize-y")
        with gr.Row():
            sampler = gr.Dropdown(samplers, value=_choice(values["hr_sampler_name"], samplers, SAME_SAMPLER),
                                  label="Hires sampler", elem_id=f"{tab}-hr-sampler")
            schedule = gr.Dropdown(schedules, value=_choice(values["hr_scheduler"], schedules, SAME_SCHEDULE),
                                   label="Hires schedule type", elem_id=f"{tab}-hr-schedule")
        prompt = gr.Textbox(value=values["hr_prompt"], label="Hires prompt", lines=2,
                            placeholder="Empty: the same prompt", elem_id=f"{tab}-hr-prompt")
        negative = gr.Textbox(value=values["hr_negative_prompt"], label="Hires negative prompt", lines=2,
                              placeholder="Empty: the same negative prompt", elem_id=f"{tab}-hr-negative-prompt")
    return HiresControls(enable, upscaler, steps, strength, scale, resize_x, resize_y, sampler, schedule, prompt, negative)
