"""LoRAs and textual-inversion embeddings in a generation tab: searchable lists whose rows, clicked,
add `<lora:name:1>` or the embedding's name to the prompt (A1111's extra-networks cards, as a table).
Files that cannot be used are listed under them with the reason."""

import gradio as gr

from app.engine import Engine
from ui.widgets import GenerationControls

PAGE = 8


def lora_rows(engine: Engine, search: str | None) -> list[list[str]]:
    """[name, alias] of the usable LoRAs whose name or alias holds the search text."""
    wanted = (search or "").strip().lower()
    return [[entry.name, entry.alias if entry.alias != entry.name else ""] for entry in engine.loras()
            if entry.problem is None and (wanted in entry.name.lower() or wanted in entry.alias.lower())]


def embedding_rows(engine: Engine, search: str | None) -> list[list[str]]:
    """[name, "N vectors"] of the embeddings that fit the active checkpoint and hold the search text."""
    wanted = (search or "").strip().lower()
    return [[entry.name, f"{entry.data.count} vector{'s' if entry.data.count != 1 else ''}"]
            for entry in engine.embeddings().loaded if wanted in entry.name.lower()]


def problems_text(engine: Engine) -> str:
    """The files that cannot be used, and the embeddings made for another model, as a list."""
    report = engine.embeddings()
    lines = [f"- {entry.problem}" for entry in engine.loras() if entry.problem]
    lines += [f"- {entry.problem}" for entry in report.unreadable]
    lines += [f"- The embedding '{entry.name}' was made for a text encoder {entry.data.width} wide, "
              "not this checkpoint's: skipped." for entry in report.skipped]
    return "\n".join(lines)


def with_tag(prompt: str | None, tag: str) -> str:
    prompt = prompt or ""
    return f"{prompt}{' ' if prompt and not prompt.endswith((' ', ',')) else ''}{tag}"


def networks_section(engine: Engine, tab: str, controls: GenerationControls) -> None:
    """The "LoRA and embeddings" accordion, wired to the tab's prompt box."""
    folders = engine.network_folders()
    with gr.Accordion("LoRA and embeddings", open=False, elem_id=f"{tab}-networks"):
        with gr.Row(equal_height=True):
            search = gr.Textbox(label="Search", placeholder="Part of a name", scale=4, elem_id=f"{tab}-networks-search")
            refresh = gr.Button("Refresh", scale=0, min_width=90, elem_id=f"{tab}-networks-refresh")
        loras = gr.Dataset(label=f"LoRA (click to add to the prompt; files go into {folders.loras})",
                           components=[gr.Textbox(visible=False), gr.Textbox(visible=False)],
                           headers=["LoRA", "Alias"], samples=lora_rows(engine, ""), type="index",
                           samples_per_page=PAGE, elem_id=f"{tab}-loras")
        embeddings = gr.Dataset(label=f"Embeddings (click to add to the prompt; files go into {folders.embeddings})",
                                components=[gr.Textbox(visible=False), gr.Textbox(visible=False)],
                                headers=["Embedding", "Size"], samples=embedding_rows(engine, ""), type="index",
                                samples_per_page=PAGE, elem_id=f"{tab}-embeddings")
        problems = gr.Markdown(problems_text(engine), elem_id=f"{tab}-networks-problems")

    def listed(text: str):
        return gr.Dataset(samples=lora_rows(engine, text)), gr.Dataset(samples=embedding_rows(engine, text))

    def refreshed(text: str):
        engine.refresh_loras()
        return *listed(text), problems_text(engine)

    # The row's index is looked up again in the same filtered list the page shows.
    def lora_added(index: int | None, text: str, prompt: str):
        rows = lora_rows(engine, text)
        return with_tag(prompt, f"<lora:{rows[index][0]}:1>") if index is not None and index < len(rows) else prompt

    def embedding_added(index: int | None, text: str, prompt: str):
        rows = embedding_rows(engine, text)
        return with_tag(prompt, rows[index][0]) if index is not None and index < len(rows) else prompt

    private = dict(queue=False, api_visibility="private")
    search.change(listed, inputs=search, outputs=[loras, embeddings], **private)
    refresh.click(refreshed, inputs=search, outputs=[loras, embeddings, problems], **private)
    loras.click(lora_added, inputs=[loras, search, controls.prompt], outputs=controls.prompt, **private)
    embeddings.click(embedding_added, inputs=[embeddings, search, controls.prompt], outputs=controls.prompt, **private)
