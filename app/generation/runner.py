"""Runs a generation job, one batch per turn: model → prompt embeddings → sampler → diffusion →
the finished pictures, through the output writer.

Each turn is one batch, so the queue can give other users a turn between two batches of a long
job; what a job has made so far waits in `job.partial` between its turns.
"""

import time
from dataclasses import dataclass, field

from app.generation import samplers
from app.generation.canvas import prepared
from app.generation.diffusion import run_batch
from app.generation.memory_retry import with_memory_retry
from app.generation.outputs import OutputWriter
from app.generation.previews import latent_preview
from app.generation.prompts import PromptEmbeddings, encode_prompt_pair
from app.generation.requests import GenerationRequest
from app.generation.results import GeneratedImage, GenerationResult
from app.jobs import UNFINISHED, Job, Unfinished
from app.models.loaded import LoadedModel
from app.models.manager import ModelManager
from app.models.registry import ModelEntry


@dataclass
class _Partial:
    """A generation between its turns: what it has made so far, on which checkpoint."""

    started: float
    model_title: str | None = None
    batch: int = 0
    images: list[GeneratedImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class GenerationRunner:
    def __init__(self, models: ModelManager, writer: OutputWriter, preview_every: int = 0):
        self._models = models
        self._writer = writer
        self._preview_every = preview_every  # a live preview every N steps (0: none)

    def turn(self, job: Job) -> GenerationResult | Unfinished:
        """The job's next batch. Returns UNFINISHED while batches remain."""
        request: GenerationRequest = job.request
        partial: _Partial = job.partial or _Partial(started=time.monotonic())
        job.partial = partial
        # The checkpoint is fixed at the first turn: later batches never switch to another user's choice.
        with self._models.use(partial.model_title or request.model) as loaded:
            partial.model_title = loaded.entry.title
            if not job.cancelled and partial.batch < request.batch_count:
                self._next_batch(job, loaded, partial)
            if partial.batch < request.batch_count and not job.cancelled:
                return UNFINISHED
            return GenerationResult(
                images=partial.images,
                interrupted=job.cancelled,
                notes=_notes(loaded.entry) + partial.notes,
                seconds=time.monotonic() - partial.started,
                model=loaded.entry,
            )

    def _next_batch(self, job: Job, loaded: LoadedModel, partial: _Partial) -> None:
        request: GenerationRequest = job.request
        pipe = self._models.pipeline_for(job.kind)
        embeddings = encode_prompt_pair(
            pipe.tokenizer, pipe.text_encoder, request.prompt, request.negative_prompt, request.clip_skip
        )
        batch = partial.batch
        job.report(batch=batch, batches=request.batch_count, step=0)
        seeds = request.seeds()[batch * request.batch_size : (batch + 1) * request.batch_size]
        pictures = with_memory_retry(
            lambda: self._batch(job, loaded, embeddings, seeds), self._models.degrade, partial.notes
        )
        partial.images += [self._writer.generated(request, loaded.entry, loaded.vae, picture, seed)
                           for picture, seed in zip(pictures, seeds)]
        partial.batch += 1

    def _batch(self, job: Job, loaded: LoadedModel, embeddings: PromptEmbeddings, seeds: list[int]):
        request: GenerationRequest = job.request
        pipe = self._models.pipeline_for(job.kind)  # again: a step down may have moved it
        pipe.scheduler = samplers.build_scheduler(
            samplers.SamplerChoice(request.sampler, request.schedule), loaded.scheduler_config, seeds
        )
        every = self._preview_every

        def on_step(step: int, steps: int, latents) -> bool:
            preview = latent_preview(latents, (request.width, request.height)) if every and step % every == 0 else None
            job.report(step=step, steps=steps, **({"preview": preview} if preview else {}))
            return job.cancelled or job.skipping

        canvas = prepared(request)
        batch = run_batch(pipe, request, embeddings, seeds, on_step, loaded.vae_float32, canvas.canvas)
        job.skipped()
        if batch.vae_float32 and not loaded.vae_float32:
            self._models.remember_vae_float32()  # this model's VAE overflows in half precision
        return [canvas.finish(picture) for picture in batch.images]


def _notes(entry: ModelEntry) -> list[str]:
    if entry.demo:
        return [
            f"'{entry.title}' is a tiny random demo model ({entry.family.label} architecture): "
            "its images are noise. Put a real checkpoint into the models folder to make pictures."
        ]
    return []
