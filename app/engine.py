"""The Engine: the one object every tab and the HTTP API talk to.

Created once in launch.py (or a test) and passed down. It validates requests, queues them, and
runs each job: model → prompt embeddings → sampler → diffusion → watermark → PNG with parameters.
"""

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from app import __version__
from app.devices import DeviceOptions, DevicePlan, HardwareFacts, is_out_of_memory, plan_device, probe_hardware
from app.errors import EaselError, ModelNotFound
from app.generation import samplers
from app.generation.canvas import prepared
from app.generation.diffusion import run_batch, run_x4
from app.generation.networks import network_upscaled
from app.generation.previews import latent_preview
from app.generation.prompts import PromptEmbeddings, encode_prompt_pair
from app.generation.requests import ONLY_MASKED, GenerationRequest
from app.generation.upscale import (
    RESAMPLERS,
    SD_X4_PREFIX,
    X4_FACTOR,
    UpscaleRequest,
    lanczos,
    network_pass_sizes,
    output_size,
    padded,
    postprocess_parameters,
    resampled,
)
from app.images.metadata import GenerationInfo, infotext
from app.images.store import OutputStore
from app.images.tiles import tile_grid, tiled
from app.images.watermark import apply_watermark
from app.jobs import UNFINISHED, Job, JobQueue
from app.models.download import CatalogEntry, DownloadProgress, download_model, load_catalog
from app.models.families import LABELS, SD1, watermark_key
from app.models.manager import IMG2IMG, INPAINT, TXT2IMG, LoadedModel, ModelManager
from app.models.registry import ModelEntry, ModelRegistry, VaeEntry
from app.settings import Settings

UPSCALE = "upscale"

_CATEGORIES = {TXT2IMG: "txt2img-images", IMG2IMG: "img2img-images", INPAINT: "img2img-images"}


@dataclass
class _Partial:
    """A generation between its turns: what it has made so far, on which checkpoint."""

    started: float
    model_title: str | None = None
    batch: int = 0
    images: list["GeneratedImage"] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Interrupted(Exception):
    """Raised from a step callback to stop a pipeline that has no interrupt flag (the x4 upscaler)."""


@dataclass
class GeneratedImage:
    image: Image.Image
    path: Path | None        # None when the request asked not to save
    seed: int
    parameters: str          # the A1111 infotext written into the PNG


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)   # things the user should know (e.g. demo noise)
    seconds: float = 0.0
    model: ModelEntry | None = None                   # the checkpoint that made them

    @property
    def seeds(self) -> list[int]:
        return [image.seed for image in self.images]


@dataclass(frozen=True)
class EngineStatus:
    device: str              # one sentence: where generation runs and how fast to expect it
    model: ModelEntry | None
    queued: int
    running: bool


class Engine:
    def __init__(self, settings: Settings, manager: ModelManager, store: OutputStore):
        self.settings = settings
        self.models = manager
        self.store = store
        self._queue = JobQueue(self._run, max_size=settings.queue_size, max_per_owner=settings.queue_per_user)

    # --- what the UI and the API call -------------------------------------------------------

    def submit(self, request: GenerationRequest, owner: str = "local") -> Job:
        """Validate and queue; raises InvalidRequest (or ModelNotFound) at once for a request that cannot run.

        `owner` is who asked (a user name or address): the queue takes turns between owners."""
        request = request.validated()
        if request.model is not None:
            request.model = self.models.registry.find(request.model).title  # unknown names fail now, not later
        kind = INPAINT if request.is_inpaint else IMG2IMG if request.is_img2img else TXT2IMG
        strength = request.strength if request.is_img2img else 1.0
        cost = request.steps * strength * request.batch_size * request.width * request.height / 512**2
        return self._queue.submit(Job(request, kind, owner, turns=request.batch_count, turn_cost=cost))

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> GenerationResult:
        """Submit and wait: for scripts and tests."""
        return self.submit(request).wait(timeout)

    def upscaler_names(self) -> list[str]:
        """Resamplers, then the ESRGAN-family files, then the SD x4 diffusion upscalers."""
        networks = [entry.name for entry in self.models.network_upscalers()]
        return [*RESAMPLERS, *networks, *(SD_X4_PREFIX + entry.title for entry in self.models.upscalers())]

    def submit_upscale(self, request: UpscaleRequest, owner: str = "local") -> Job:
        """Validate and queue an upscale; raises InvalidRequest at once for one that cannot run."""
        request = request.validated(self.upscaler_names())
        width, height = output_size(request.image.size, request.scale)
        work = width * height / 512**2 * (request.steps if request.is_diffusion else 1)
        speed = "diffusion" if request.is_diffusion else "network" if request.is_network else "resample"
        return self._queue.submit(Job(request, UPSCALE, owner, turn_cost=work, rate_key=f"{UPSCALE}:{speed}"))

    def upscale(self, request: UpscaleRequest, timeout: float | None = None) -> GeneratedImage:
        """Submit and wait: for scripts and tests."""
        return self.submit_upscale(request).wait(timeout)

    def skip(self, owner: str | None = None) -> bool:
        """Finish the running job's current batch now and go on with its next one.

        With `owner`, only that owner's job; returns whether a job was told."""
        job = self._queue.running
        if job is None or (owner is not None and job.owner != owner):
            return False
        job.skip()
        return True

    def interrupt(self, owner: str | None = None) -> bool:
        """Stop the running job at its next step; what it made so far is kept.

        With `owner` (the HTTP API), stop only that owner's work: their running job, and their
        waiting jobs never start. A colleague's job is not theirs to stop. Returns whether any stopped."""
        if owner is None:
            job = self._queue.running
            if job is not None:
                job.cancel()
            return job is not None
        jobs = self._queue.jobs_of(owner)
        for job in jobs:
            job.cancel()
        return bool(jobs)

    def jobs_of(self, owner: str) -> list[Job]:
        return self._queue.jobs_of(owner)

    def position(self, job: Job) -> int:
        return self._queue.position(job)

    def eta_seconds(self, job: Job) -> float | None:
        """Roughly how long until a waiting job runs (None until Easel has timed a similar job)."""
        return self._queue.eta_seconds(job)

    @property
    def running_job(self) -> Job | None:
        return self._queue.running

    def status(self) -> EngineStatus:
        return EngineStatus(
            device=self.plan.description,
            model=self.models.active,
            queued=self._queue.waiting_count(),
            running=self._queue.running is not None,
        )

    @property
    def plan(self) -> DevicePlan:
        return self.models.plan

    def download_catalog(self) -> list[CatalogEntry]:
        """The default checkpoints Easel offers to download (nothing downloads unless asked)."""
        return load_catalog()

    def download_model(
        self,
        catalog_id: str,
        on_progress: Callable[[DownloadProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> ModelEntry:
        """Download a catalog checkpoint into the models folder (resumable, hash-verified), then list it."""
        entry = next((e for e in self.download_catalog() if e.id == catalog_id), None)
        if entry is None:
            raise ModelNotFound(f"There is no download called '{catalog_id}'.")
        path = download_model(entry, self.models.registry.checkpoint_dir, on_progress=on_progress, cancel=cancel)
        self.models.refresh()
        return self.models.registry.find(path.name)

    def sampler_names(self) -> list[str]:
        return samplers.sampler_names()

    def schedule_names(self) -> list[str]:
        return samplers.schedule_names()

    def close(self) -> None:
        self._queue.close()
        self.models.unload()
        self.models.unload_upscaler()

    # --- one job ----------------------------------------------------------------------------

    def _run(self, job: Job):
        if job.kind == UPSCALE:
            return self._upscale(job)
        return self._generate(job)

    def _upscale(self, job: Job) -> GeneratedImage:
        request: UpscaleRequest = job.request
        size = output_size(request.image.size, request.scale)
        if request.is_diffusion:
            with self.models.use_upscaler(request.model_title) as pipe:
                picture = lanczos(self._x4_upscaled(job, pipe), size)
        elif request.is_network:
            picture = lanczos(self._network_upscaled_with_retry(job, size), size)
        else:
            picture = resampled(request.image, size, request.upscaler)
        parameters = postprocess_parameters(request)
        path = self.store.save(picture, parameters, "extras-images", seed=None) if request.save else None
        return GeneratedImage(image=picture, path=path, seed=request.seed, parameters=parameters)

    def _network_upscaled_with_retry(self, job: Job, size: tuple[int, int]) -> Image.Image:
        """An ESRGAN-family network towards `size`; out of memory steps the memory mode down and retries."""
        while True:
            try:
                with self.models.use_network(job.request.upscaler) as network:
                    return self._network_upscaled(job, network, size)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                self.models.degrade()  # raises when there is no lower mode

    def _network_upscaled(self, job: Job, network, size: tuple[int, int]) -> Image.Image:
        request: UpscaleRequest = job.request
        passes = network_pass_sizes(request.image.size, size, network.scale)
        tiles = sum(len(tile_grid(pass_size, request.tile, request.overlap)) for pass_size in passes)
        tiles_done = 0

        def report(done: int, total: int) -> None:
            nonlocal tiles_done
            tiles_done += 1
            job.report(step=tiles_done, steps=tiles)
            if job.cancelled:
                raise Interrupted()

        picture = request.image
        try:
            for pass_size in passes:
                picture = network_upscaled(network, lanczos(picture, pass_size), request.tile, request.overlap, report)
        except Interrupted:
            raise EaselError("The upscale was interrupted; nothing was saved.") from None
        return picture

    def _x4_upscaled(self, job: Job, pipe) -> Image.Image:
        """The SD x4 diffusion upscaler over the picture, tile by tile, one seed for every tile."""
        request: UpscaleRequest = job.request
        embeddings = encode_prompt_pair(pipe.tokenizer, pipe.text_encoder, request.prompt, request.negative_prompt)
        tiles = len(tile_grid(request.image.size, request.tile, request.overlap))
        tiles_done = 0

        def report(step: int, timestep, latents) -> None:
            if job.cancelled:
                raise Interrupted()
            job.report(step=tiles_done * request.steps + step + 1, steps=tiles * request.steps)

        def one_tile(tile: Image.Image) -> Image.Image:
            nonlocal tiles_done
            # The model needs sides that are multiples of 8: pad with the edge, crop the result.
            result = run_x4(pipe, padded(tile, 8), request, embeddings, report)
            tiles_done += 1
            return result.crop((0, 0, tile.width * X4_FACTOR, tile.height * X4_FACTOR))

        try:
            return tiled(request.image, one_tile, X4_FACTOR, request.tile, request.overlap)
        except Interrupted:
            raise EaselError("The upscale was interrupted; nothing was saved.") from None

    def _generate(self, job: Job) -> GenerationResult:
        """One turn of a generation: its next batch. Returns UNFINISHED while batches remain, so the
        queue can give other users a turn in between; the images so far wait in `job.partial`."""
        request: GenerationRequest = job.request
        partial: _Partial = job.partial or _Partial(started=time.monotonic())
        job.partial = partial
        # The checkpoint is fixed at the first turn: later batches never switch to another user's choice.
        with self.models.use(partial.model_title or request.model) as loaded:
            partial.model_title = loaded.entry.title
            if not job.cancelled and partial.batch < request.batch_count:
                pipe = self.models.pipeline_for(job.kind)
                embeddings = encode_prompt_pair(
                    pipe.tokenizer, pipe.text_encoder, request.prompt, request.negative_prompt, request.clip_skip
                )
                batch = partial.batch
                job.report(batch=batch, batches=request.batch_count, step=0)
                seeds = request.seeds()[batch * request.batch_size : (batch + 1) * request.batch_size]
                pictures = self._batch_with_retry(job, loaded, embeddings, seeds, partial.notes)
                partial.images += [self._save(job, loaded.entry, p, seed) for p, seed in zip(pictures, seeds)]
                partial.batch += 1
            if partial.batch < request.batch_count and not job.cancelled:
                return UNFINISHED
            return GenerationResult(
                images=partial.images,
                interrupted=job.cancelled,
                notes=self._notes(loaded.entry) + partial.notes,
                seconds=time.monotonic() - partial.started,
                model=loaded.entry,
            )

    def _batch_with_retry(self, job: Job, loaded: LoadedModel, embeddings, seeds: list[int], notes: list[str]):
        """One batch; out of memory steps the memory mode down and runs the same batch again."""
        while True:
            pipe = self.models.pipeline_for(job.kind)  # again: a step down may have moved it
            try:
                return self._batch(job, pipe, loaded, embeddings, seeds)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                mode = self.models.degrade()  # raises when there is no lower mode
                notes.append(f"Ran out of memory, so Easel switched to a leaner mode and ran the batch again: {mode}")

    def _batch(self, job: Job, pipe, loaded: LoadedModel, embeddings: PromptEmbeddings, seeds: list[int]):
        request: GenerationRequest = job.request
        pipe.scheduler = samplers.build_scheduler(
            samplers.SamplerChoice(request.sampler, request.schedule), loaded.scheduler_config, seeds
        )
        every = self.settings.preview_every

        def on_step(step: int, steps: int, latents) -> bool:
            preview = latent_preview(latents, (request.width, request.height)) if every and step % every == 0 else None
            job.report(step=step, steps=steps, **({"preview": preview} if preview else {}))
            return job.cancelled or job.skipping

        canvas = prepared(request)
        batch = run_batch(pipe, request, embeddings, seeds, on_step, loaded.vae_float32, canvas.canvas)
        job.skipped()
        if batch.vae_float32 and not loaded.vae_float32:
            self.models.remember_vae_float32()  # this model's VAE overflows in half precision
        return [canvas.finish(picture) for picture in batch.images]

    def _save(self, job: Job, entry: ModelEntry, picture: Image.Image, seed: int) -> GeneratedImage:
        if self.settings.watermark:
            picture = apply_watermark(picture, watermark_key(entry.family))
        loaded = self.models.loaded
        parameters = infotext(self._info(job.request, entry, seed, loaded.vae if loaded else None))
        path = self.store.save(picture, parameters, _CATEGORIES[job.kind], seed) if job.request.save else None
        return GeneratedImage(image=picture, path=path, seed=seed, parameters=parameters)

    @staticmethod
    def _info(request: GenerationRequest, entry: ModelEntry, seed: int, vae: VaeEntry | None) -> GenerationInfo:
        return GenerationInfo(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            steps=request.steps,
            sampler=request.sampler,
            schedule_type=request.schedule,
            cfg_scale=request.cfg_scale,
            seed=seed,
            width=request.width,
            height=request.height,
            model_name=entry.name,
            model_hash=entry.model_hash,
            denoising_strength=request.strength if request.is_img2img else None,
            clip_skip=request.clip_skip,
            extra={
                "VAE": vae.path.stem if vae else None,
                **_inpaint_keys(request),
                "RNG": "CPU",  # noise comes from CPU generators, whatever the device
            },
            version=f"Easel {__version__}",
        )

    @staticmethod
    def _notes(entry: ModelEntry) -> list[str]:
        if entry.demo:
            return [
                f"'{entry.title}' is a tiny random demo model ({LABELS[entry.family]} architecture): "
                "its images are noise. Put a real checkpoint into the models folder to make pictures."
            ]
        return []



def _inpaint_keys(request: GenerationRequest) -> dict:
    """A1111's infotext keys for inpainting settings."""
    if not request.is_inpaint:
        return {}
    return {
        "Mask blur": request.mask_blur,
        "Inpaint area": "Only masked" if request.inpaint_area == ONLY_MASKED else None,
        "Masked area padding": request.masked_padding if request.inpaint_area == ONLY_MASKED else None,
    }


DEMO_MODEL_NAME = "Easel demo - tiny random SD 1.x (draws noise)"


def create_engine(settings: Settings, facts: HardwareFacts | None = None) -> Engine:
    """The Engine for these settings: device plan, models (plus the demo model with --demo), outputs."""
    facts = facts or probe_hardware()
    options = DeviceOptions(
        device=settings.device, lowvram=settings.lowvram, medvram=settings.medvram, no_half=settings.no_half
    )
    plan = plan_device(facts, options)
    extra_roots: tuple[Path, ...] = ()
    if settings.demo:
        from app.models.tiny import save_tiny_model  # only the demo needs it

        save_tiny_model(settings.demo_models_dir / DEMO_MODEL_NAME, SD1)
        extra_roots = (settings.demo_models_dir,)
    registry = ModelRegistry(settings.models_dir, extra_roots, cache_file=settings.cache_dir / "model-facts.json")
    registry.refresh()
    manager = ModelManager(registry, plan, facts, settings.model_configs_dir)
    return Engine(settings, manager, OutputStore(settings.outputs_dir))
