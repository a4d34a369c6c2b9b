"""A1111's LoRA and embedding routes: `GET /loras`, `POST /refresh-loras`, `GET /embeddings`."""

from fastapi import APIRouter

from app.api.schemas import Embedding, Embeddings, Lora
from app.engine import Engine
from app.models.network_library import EmbeddingEntry, LoraEntry


def add_network_routes(router: APIRouter, engine: Engine) -> None:
    @router.get("/loras", response_model=list[Lora])
    def loras():
        """The LoRA files in models/Lora/ that can be used, for `<lora:name:weight>` in a prompt."""
        models_folder = engine.network_folders().loras.parent
        return [_lora(entry, models_folder) for entry in engine.loras() if entry.problem is None]

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        """Scan models/Lora/ again for added or removed files."""
        engine.refresh_loras()

    @router.get("/embeddings", response_model=Embeddings)
    def embeddings():
        """The textual-inversion embeddings: `loaded` fit the active checkpoint's text encoder, `skipped` do not."""
        report = engine.embeddings()
        return Embeddings(loaded={e.name: _embedding(e) for e in report.loaded},
                          skipped={e.name: _embedding(e) for e in report.skipped})


def _lora(entry: LoraEntry, models_folder) -> Lora:
    # A1111 sends the absolute path; relative to the models folder tells a client as much without
    # telling it about the server's disks.
    path = entry.path.relative_to(models_folder) if entry.path.is_relative_to(models_folder) else entry.path.name
    return Lora(name=entry.name, alias=entry.alias, path=str(path), metadata=entry.metadata)


def _embedding(entry: EmbeddingEntry) -> Embedding:
    data = entry.data
    return Embedding(step=data.step, sd_checkpoint=data.sd_checkpoint, sd_checkpoint_name=data.sd_checkpoint_name,
                     shape=data.width, vectors=data.count)
