"""Runs a generation job, one batch per turn: model → prompt embeddings → sampler → diffusion →
the finished pictures, through the output writer.

Each turn is one batch, so the queue can give other users a turn between two batches of a long
job; what a job has made so far waits in `job.partial` between its turns.
"""

import time
from dataclasses import dataclass, field, replace

from PIL import Image

from app.errors import InvalidRequest
from app.generation import samplers
from app.generation.a1111 import variation_keys
from app.generation.canvas import prepared
from app.generation.diffusers_internals import execution_device
from app.generation.diffusion import BatchImages, StepCallback, denoised_latents, run_batch
from app.generation.fast_mode import INFOTEXT_KEY as FAST_MODE_KEY
from app.generation.fast_mode import infotext_value, lcm_lora, taesd_note
from app.generation.hires import HiresFix, second_pass
from app.generation.job_networks import JobNetworks, infotext_keys, job_networks
from app.generation.lora_patch import carried_loras
from app.generation.memory_retry import with_memory_retry
from app.generation.noise import Variation, noise_maker
from app.generation.outputs import OutputWriter
from app.generation.previews import latent_preview, tiny_decoded, tiny_preview
from app.generation.prompts import PromptEmbeddings, encode_prompt_pair
from app.generation.requests import GenerationRequest
from app.generation.results import GeneratedImage, GenerationResult
from app.generation.safety import SafetyFilter
from app.generation.speed import SpeedMeter, StepTimer, calibrate, speed_key, steps_run, unet_passes
from app.jobs import UNFINISHED, Job, Unfinished
from app.memory import trim_heap
from app.models.compiled import eager_calls
from app.models.loaded import LoadedModel
from app.models.manager import ModelManager
from app.models.network_library import NetworkLibrary
from app.models.registry import ModelEntry
from app.models.taesd import TaesdSlot


@dataclass
class _Partial:
    """A generation between its turns: what it has made so far, on which checkpoint."""

    started: float
    model_title: str | None = None
    batch: int = 0
    images: list[GeneratedImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # (prompt, negative) → its embeddings: encoded once per job, not once per batch. The job's LoRAs
    # are carried again before every batch, so the text encoder they were made with is the same.
    encodings: dict[tuple[str, str], PromptEmbeddings] = field(default_factory=dict)


@dataclass
class _Timing:
    """One batch's measured parts, for the speed meter."""

    steps: StepTimer
    decode: float | None = None  # seconds; None: not measured (hires fix, a float32 retry)


class GenerationRunner:
    def __init__(self, models: ModelManager, writer: OutputWriter, preview_every: int = 0,
                 safety: SafetyFilter | None = None, networks: NetworkLibrary | None = None,
                 speed: SpeedMeter | None = None, taesd: TaesdSlot | None = None):
        self._models = models
        self._taesd = taesd                  # the tiny decoder: fast mode's decode, and previews, when there
        self._speed = speed or SpeedMeter()  # measured speed: the estimates come from it
        self._clock = self._speed.clock
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
            self._calibrated(loaded)
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

    def calibrate(self, title: str | None = None) -> None:
        """Measure the speed of `title` (default: the active checkpoint) unless it is measured already."""
        with self._models.use(title) as loaded:
            self._calibrated(loaded)

    def _calibrated(self, loaded: LoadedModel) -> None:
        """A short calibration when a checkpoint (or its device plan) is new to the speed meter."""
        base = loaded.base
        if not self._speed.follow(speed_key(loaded.entry, self._models.plan)):
            return
        # Only text-to-image models: the others' UNets take more inputs (a class label, a depth map, a
        # mask), and their jobs teach the meter soon enough.
        if loaded.entry.family.makes_images:
            with eager_calls(loaded.compiled):  # its inputs are not a job's: compiling them would be wasted
                calibrate(self._speed, base.unet, base.vae, loaded.entry.family.native_size, execution_device(base),
                          getattr(base, "text_encoder", None))
            trim_heap()  # the calibration's activations go back to the system, not into the model's footprint

    def _next_batch(self, job: Job, loaded: LoadedModel, partial: _Partial) -> None:
        request: GenerationRequest = job.request
        started = self._clock()
        timing = _Timing(StepTimer(self._clock))
        pipe = self._models.pipeline_for(job.kind)
        networks = self._job_networks(request.prompt, request.negative_prompt, pipe, loaded)
        # A hires prompt of its own may name other LoRAs: A1111 swaps them in for the second pass.
        hires = second_pass(request) if request.enable_hr else request
        hires_networks = self._job_networks(hires.prompt, hires.negative_prompt, pipe, loaded) \
            if (hires.prompt, hires.negative_prompt) != (request.prompt, request.negative_prompt) else networks
        if request.easel_fast:  # the LCM-LoRA joins the job's LoRAs (both passes), never its prompt
            networks, hires_networks = self._with_lcm_lora(loaded, networks, hires_networks)
        tiny = self._taesd.decoder() if request.easel_fast and not request.enable_hr and self._taesd else None
        batch = partial.batch
        job.report(batch=batch, batches=request.batch_count, step=0)
        seeds = request.seeds()[batch * request.batch_size : (batch + 1) * request.batch_size]
        subseeds = request.subseeds()[batch * request.batch_size : (batch + 1) * request.batch_size]
        notes = list(dict.fromkeys(networks.notes + hires_networks.notes))
        if request.easel_fast and not request.enable_hr and tiny is None:
            notes.append(taesd_note(self._taesd.problem if self._taesd else None))
        embeddings_used: list[str] = []
        # The weights carry the job's LoRAs from here; the next job that asks for others (or none) swaps
        # them out first, so a job without a tag always runs on the checkpoint's own weights.
        loras = carried_loras(loaded)

        def first_pass_loras() -> None:
            loras.carry(pipe, networks.loras, loaded.entry.title, notes)

        def encode(prompt: str, negative: str) -> PromptEmbeddings:
            if (prompt, negative) not in partial.encodings:
                partial.encodings[prompt, negative] = encode_prompt_pair(
                    pipe.tokenizer, pipe.text_encoder, prompt, negative, request.clip_skip, networks.lookup)
            encoded = partial.encodings[prompt, negative]
            embeddings_used.extend(encoded.embeddings_used)
            return encoded

        def second_pass_loras() -> None:
            loras.carry(pipe, hires_networks.loras, loaded.entry.title, notes)

        def batch() -> list[Image.Image]:
            first_pass_loras()  # again on a retry after running out of memory: hires may have swapped them
            return self._batch(job, loaded, embeddings, seeds, subseeds, encode, second_pass_loras, timing, tiny)

        first_pass_loras()
        embeddings = encode(request.prompt, request.negative_prompt)
        pictures = with_memory_retry(batch, self._models.degrade, partial.notes)
        partial.notes += [note for note in notes if note not in partial.notes]
        network_keys = infotext_keys(self._networks, networks, hires_networks, embeddings_used) if self._networks else {}
        if request.easel_fast:
            network_keys[FAST_MODE_KEY] = infotext_value(taesd=tiny is not None)
        if self._safety is not None:  # before the watermark and the save: nothing unfiltered is written
            pictures, notes = self._safety.filtered(pictures)
            partial.notes += notes
        partial.images += [self._writer.generated(request, loaded.entry, loaded.vae, picture, seed,
                                                  extra={**variation_keys(request, subseed), **network_keys})
                           for picture, seed, subseed in zip(pictures, seeds, subseeds)]
        partial.batch += 1
        self._learn_overhead(request, self._clock() - started, timing)

    def _learn_overhead(self, request: GenerationRequest, seconds: float, timing: _Timing) -> None:
        """What a whole plain batch took beyond its steps and its decode (encoding, set-up, saving)."""
        per_step = timing.steps.seconds_per_step
        if timing.decode is None or per_step is None:
            return
        self._speed.learn_overhead(seconds - timing.decode - per_step * steps_run(request))

    def _batch(self, job: Job, loaded: LoadedModel, embeddings: PromptEmbeddings, seeds: list[int],
               subseeds: list[int], encode, second_pass_loras, timing: _Timing, tiny=None) -> list[Image.Image]:
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
        elif tiny is not None:  # fast mode: TAESD decodes in a fraction of the VAE's time
            on_step = self._on_step(job, (request.width, request.height), timer=timing.steps)
            latents = denoised_latents(pipe, request, embeddings, seeds, on_step, canvas.canvas, noise)
            batch = BatchImages(pipe.image_processor.postprocess(tiny_decoded(tiny, latents), output_type="pil"), False)
            timing.decode = self._clock() - timing.steps.last
            self._speed.learn_decode(timing.decode, request.width, request.height, len(seeds), tiny=True)
        else:
            on_step = self._on_step(job, (request.width, request.height), timer=timing.steps)
            batch = run_batch(pipe, request, embeddings, seeds, on_step, loaded.vae_float32, canvas.canvas, noise)
            if batch is not None and batch.vae_float32 == loaded.vae_float32:  # one decode, not a float32 retry
                timing.decode = self._clock() - timing.steps.last
                self._speed.learn_decode(timing.decode, request.width, request.height, len(seeds))
        job.skipped()
        if batch is None:
            return []
        if batch.vae_float32 and not loaded.vae_float32:
            self._models.remember_vae_float32()  # this model's VAE overflows in half precision
        return [canvas.finish(picture) for picture in batch.images]

    def _on_step(self, job: Job, size: tuple[int, int], done_before: int = 0, steps_after: int = 0,
                 timer: StepTimer | None = None) -> StepCallback:
        """Reports the steps of one pass; with hires fix both passes count in one total. Times them:
        the pass's seconds per step go to the progress and, at its last step, to the speed meter."""
        # With the safety filter on, no live preview: it would show the picture before the checker has.
        every = 0 if self._safety is not None and self._safety.enabled else self._preview_every
        timer = timer or StepTimer(self._clock)
        passes = unet_passes(job.request.cfg_scale)

        def on_step(step: int, steps: int, latents) -> bool:
            per_step = timer.stepped()
            if step == steps and per_step is not None:
                self._speed.learn_step(per_step, *size, len(latents) * passes)
            # Decoded only while someone watches (the page's poll, an API progress call asking for it).
            preview = self._preview(latents, size) if every and step % every == 0 and job.watched else None
            job.report(step=done_before + step, steps=done_before + steps + steps_after, step_seconds=per_step,
                       **({"preview": preview} if preview else {}))
            return job.cancelled or job.skipping

        return on_step

    def _preview(self, latents, size: tuple[int, int]) -> Image.Image:
        """TAESD's picture when it is there (truer, for a few ms), else the linear approximation."""
        tiny = self._taesd.decoder() if self._taesd is not None else None
        return tiny_preview(tiny, latents, size) if tiny is not None else latent_preview(latents, size)

    def _with_lcm_lora(self, loaded: LoadedModel, *passes: JobNetworks) -> list[JobNetworks]:
        """The passes' networks with the LCM-LoRA at weight 1 added (InvalidRequest, saying what to
        download, when it is not there)."""
        if self._networks is None:
            raise InvalidRequest("Fast mode needs the LoRA support, which this runner was built without.")
        lora, hash_item = lcm_lora(self._networks, loaded.entry.family)

        def with_lora(networks: JobNetworks) -> JobNetworks:
            if any(named.file is lora.file for named in networks.loras):
                return networks  # the prompt's own tag for it: its weight, not twice the LoRA
            return replace(networks, loras=[*networks.loras, lora], lora_hashes=[*networks.lora_hashes, hash_item])

        return [with_lora(networks) for networks in passes]

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
