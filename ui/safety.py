"""The safety filter's switch in the page (the setting `safety_filter`, shared by everyone who uses
this Easel, as A1111's settings are)."""

import gradio as gr

from app.engine import Engine


def safety_switch(engine: Engine) -> gr.Checkbox:
    switch = gr.Checkbox(
        value=engine.safety_filter_on(), label="Safety filter",
        info="Blur pictures that the CompVis safety checker flags as not safe for work "
             "(downloaded into models/safety_checker/ on first use). For everyone using this Easel.",
        elem_id="safety-filter",
    )
    switch.input(engine.set_safety_filter, inputs=switch, queue=False, api_visibility="private")
    return switch
