"""Saved styles in a generation tab: choose several (applied at generation, in order), apply them to
the prompt boxes (A1111's ✎ button), save the boxes as a new style. The styles file's problem, if
it has one, is shown here."""

from dataclasses import dataclass

import gradio as gr

from app.engine import Engine
from app.errors import EaselError
from app.preferences import Preferences
from ui.runner import page_error
from ui.widgets import GenerationControls


def _section(tab: str) -> str:
    return f"{tab}-styles"  # remembered apart from the tab's fields: a list, not a number or a text


def _names(engine: Engine) -> list[str]:
    return [style.name for style in engine.styles()]


def _problem_text(engine: Engine) -> str:
    problem = engine.styles_problem()
    return f"⚠ {problem}" if problem else ""


def remembered_styles(preferences: Preferences, tab: str) -> list[str]:
    saved = preferences.section(_section(tab)).get("styles") or ""
    return [name for name in saved.split("\n") if name]


def remember_styles(preferences: Preferences, tab: str, names: list[str] | None) -> None:
    preferences.remember(_section(tab), {"styles": "\n".join(names or [])})


def applied_to_boxes(engine: Engine, prompt: str | None, negative: str | None,
                     selected: list[str] | None) -> tuple[str, str]:
    """The boxes' text with the chosen styles applied (A1111's ✎); an unknown name is a page error."""
    try:
        return engine.apply_styles(prompt or "", negative or "", list(selected or []))
    except EaselError as error:
        raise page_error(error.message) from None


def saved_from_boxes(engine: Engine, name: str | None, prompt: str | None, negative: str | None) -> str:
    """Save the boxes as a style; what the page then says."""
    try:
        style = engine.save_style(name or "", prompt or "", negative or "")
    except EaselError as error:
        raise page_error(error.message) from None
    return f"Saved the style **{style.name}**."


@dataclass
class StylesSection:
    chosen: gr.Dropdown   # the names a generation applies
    saved: object         # the event of saving a style (other tabs follow it with `.then`)


def current_choices(engine: Engine, selected: list[str] | None):
    """The dropdown's update for the styles file as it is now, keeping the choices still there."""
    names = _names(engine)
    return gr.update(choices=names, value=[name for name in selected or [] if name in names])


def keep_in_step(sections: list[StylesSection], engine: Engine, blocks: gr.Blocks) -> None:
    """Every tab's list shows a style saved in another tab, and the file as it is when the page opens."""
    private = dict(queue=False, api_visibility="private")
    for section in sections:
        for other in sections:
            if other is not section:
                section.saved.then(lambda selected: current_choices(engine, selected), inputs=other.chosen,
                                   outputs=other.chosen, **private)
        blocks.load(lambda selected: current_choices(engine, selected), inputs=section.chosen, outputs=section.chosen,
                    **private)


def styles_section(engine: Engine, tab: str, controls: GenerationControls, preferences: Preferences) -> StylesSection:
    """The styles accordion."""
    names = _names(engine)
    chosen_before = [name for name in remembered_styles(preferences, tab) if name in names]
    with gr.Accordion("Styles", open=bool(chosen_before), elem_id=f"{tab}-styles"):
        with gr.Row(equal_height=True):
            chosen = gr.Dropdown(names, value=chosen_before, multiselect=True, label="Styles",
                                 info="Applied to the prompts at generation, in this order", scale=4,
                                 elem_id=f"{tab}-styles-chosen")
            apply = gr.Button("Apply styles to the prompt boxes", scale=1, min_width=120, elem_id=f"{tab}-styles-apply")
            refresh = gr.Button("Refresh", scale=0, min_width=90, elem_id=f"{tab}-styles-refresh")
        with gr.Row(equal_height=True):
            new_name = gr.Textbox(label="New style's name", placeholder="e.g. Cinematic", scale=4,
                                  elem_id=f"{tab}-styles-name")
            save = gr.Button("Save the prompts as a style", scale=1, min_width=120, elem_id=f"{tab}-styles-save")
        message = gr.Markdown(_problem_text(engine), elem_id=f"{tab}-styles-message")

    def applied(prompt: str, negative: str, selected: list[str] | None):
        prompt, negative = applied_to_boxes(engine, prompt, negative, selected)
        remember_styles(preferences, tab, [])
        return prompt, negative, gr.update(value=[])  # applied once: generating again must not add them twice

    def saved(name: str, prompt: str, negative: str, selected: list[str] | None):
        note = saved_from_boxes(engine, name, prompt, negative)
        names = _names(engine)
        return gr.update(choices=names, value=[n for n in selected or [] if n in names]), "", note

    def refreshed(selected: list[str] | None):
        return current_choices(engine, selected), _problem_text(engine)

    private = dict(queue=False, api_visibility="private")
    apply.click(applied, inputs=[controls.prompt, controls.negative_prompt, chosen],
                outputs=[controls.prompt, controls.negative_prompt, chosen], **private)
    saving = save.click(saved, inputs=[new_name, controls.prompt, controls.negative_prompt, chosen],
                        outputs=[chosen, new_name, message], **private)
    refresh.click(refreshed, inputs=chosen, outputs=[chosen, message], **private)

    def reset():
        remember_styles(preferences, tab, [])
        return gr.update(value=[])

    if controls.reset is not None:
        controls.reset.click(reset, outputs=chosen, **private)
    return StylesSection(chosen, saving)
