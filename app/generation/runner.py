"""Runs a generation job, one batch per turn: model → prompt embeddings → sampler → diffusion →
the finished pictures, through the output writer.

Each turn is one batch, so the queue can give other users a turn between two batches of a long
job; what a job has made so far waits in `job.partial` between its turns.
"""

import time
from dataclasses import dataclass, field

from PIL import Image

from app.generation import samplers
from app.generation.a1111 import variation_keys
from app.generation.canvas import prepared
from app.generation.diffusion import StepCallback, run_batch
from app.generation.hires import HiresFix, second_pass
from app.generation.job_networks import JobNetworks, infotext_keys, job_networks
from app.generation.lora_patch import carried_loras
from app.generation.memory_retry import with_memory_retry
from app.generation.noise import Variation, noise_maker
from app.generation.outputs import OutputWriter
from app.generation.previews import latent_preview
from app.generation.prompts import PromptEmbeddings, encode_prompt_pair
from app.generation.requests import GenerationRequest
from app.generation.results import GeneratedImage, GenerationResult
from app.generation.safety import SafetyFilter
from app.jobs import UNFINISHED, Job, Unfinished
from app.models.loaded import LoadedModel
from app.models.manager import ModelManager
from app.models.network_library import NetworkLibrary
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
    def __init__(self, models: ModelManager, writer: OutputWriter, preview_every: int = 0,
                 safety: SafetyFilter | None = None, networks: NetworkLibrary | None = None):
        self._models = models
        self._networks = networks            # LoRA and embedding files (None: prompts use none)
        self._writer = writer
        self._preview_every = preview_every  # a live preview every N steps (0: none)
        self._safety = safety                # blurs what the safety checker flags, when switched on
        self._hires = HiresFix(models)

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
        networks = self._job_networks(request.prompt, request.negative_prompt, pipe, loaded)
        # A hires prompt of its own may name other LoRAs: A1111 swaps them in for the second pass.
        hires = second_pass(request) if request.enable_hr else request
        hires_networks = self._job_networks(hires.prompt, hires.negative_prompt, pipe, loaded) \
            if (hires.prompt, hires.negative_prompt) != (request.prompt, request.negative_prompt) else networks
        batch = partial.batch
        job.report(batch=batch, batches=request.batch_count, step=0)
        seeds = request.seeds()[batch * request.batch_size : (batch + 1) * request.batch_size]
        subseeds = request.subseeds()[batch * request.batch_size : (batch + 1) * request.batch_size]
        notes = list(dict.fromkeys(networks.notes + hires_networks.notes))
        embeddings_used: list[str] = []
        # The weights carry the job's LoRAs from here; the next job that asks for others (or none) swaps
        # them out first, so a job without a tag always runs on the checkpoint's own weights.
        loras = carried_loras(loaded)

        def first_pass_loras() -> None:
            loras.carry(pipe, networks.loras, loaded.entry.title, notes)

        def encode(prompt: str, negative: str) -> PromptEmbeddings:
            encoded = encode_prompt_pair(pipe.tokenizer, pipe.text_encoder, prompt, negative, request.clip_skip,
                                         networks.lookup)
            embeddings_used.extend(encoded.embeddings_used)
            return encoded

        def second_pass_loras() -> None:
            loras.carry(pipe, hires_networks.loras, loaded.entry.title, notes)

        def batch() -> list[Image.Image]:
            first_pass_loras()  # again on a retry after running out of memory: hires may have swapped them
            return self._batch(job, loaded, embeddings, seeds, subseeds, encode, second_pass_loras)

        first_pass_loras()
        embeddings = encode(request.prompt, request.negative_prompt)
        pictures = with_memory_retry(batch, self._models.degrade, partial.notes)
        partial.notes += [note for note in notes if note not in partial.notes]
        network_keys = infotext_keys(self._networks, networks, hires_networks, embeddings_used) if self._networks else {}
        if self._safety is not None:  # before the watermark and the save: nothing unfiltered is written
            pictures, notes = self._safety.filtered(pictures)
            partial.notes += notes
        partial.images += [self._writer.generated(request, loaded.entry, loaded.vae, picture, seed,
                                                  extra={**variation_keys(request, subseed), **network_keys})
                           for picture, seed, subseed in zip(pictures, seeds, subseeds)]
        partial.batch += 1

    def _batch(self, job: Job, loaded: LoadedModel, embeddings: PromptEmbeddings, seeds: list[int],
               subseeds: list[int], encode, second_pass_loras) -> list[Image.Image]:
        """One batch's finished pictures; none when a hires batch was stopped half-way."""
        request: GenerationRequest = job.request
        pipe = self._models.pipeline_for(job.kind)  # again: a step down may have moved it
        pipe.scheduler = samplers.build_scheduler(
            samplers.SamplerChoice(request.sampler, request.schedule), loaded.scheduler_config, seeds
        )
        variation = Variation(request.subseed_strength, request.seed_resize_from)
        noise = noise_maker(seeds, subseeds, variation) if variation.active else None  # None: diffusers' own
        canvas = prepared(request)
        if request.enable_hr:
            batch = self._hires.run(job, loaded, pipe, embeddings, seeds, noise, lambda *at: self._on_step(job, *at),
                                    encode, second_pass_loras)
        else:
            on_step = self._on_step(job, (request.width, request.height))
            batch = run_batch(pipe, request, embeddings, seeds, on_step, loaded.vae_float32, canvas.canvas, noise)
        job.skipped()
        if batch is None:
            return []
        if batch.vae_float32 and not loaded.vae_float32:
            self._models.remember_vae_float32()  # this model's VAE overflows in half precision
        return [canvas.finish(picture) for picture in batch.images]

    def _on_step(self, job: Job, size: tuple[int, int], done_before: int = 0, steps_after: int = 0) -> StepCallback:
        """Reports the steps of one pass; with hires fix both passes count in one total."""
        # With the safety filter on, no live preview: it would show the picture before the checker has.
        every = 0 if self._safety is not None and self._safety.enabled else self._preview_every

        def on_step(step: int, steps: int, latents) -> bool:
            preview = latent_preview(latents, size) if every and step % every == 0 else None
            job.report(step=done_before + step, steps=done_before + steps + steps_after,
                       **({"preview": preview} if preview else {}))
            return job.cancelled or job.skipping

        return on_step

    def _job_networks(self, prompt: str, negative_prompt: str, pipe, loaded: LoadedModel) -> JobNetworks:
        if self._networks is None:
            return JobNetworks()
        return job_networks(self._networks, prompt, negative_prompt, pipe.tokenizer, loaded.text_width)


def _notes(entry: ModelEntry) -> list[str]:
    if entry.demo:
        return [
            f"'{entry.title}' is a tiny random demo model ({entry.family.label} architecture): "
            "its images are noise. Put a real checkpoint into the models folder to make pictures."
        ]
    return []
