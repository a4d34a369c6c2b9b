"""The Engine: the one object the UI, the HTTP API and the launcher talk to.

Created once in launch.py (or a test) and passed down. It is a thin facade over named parts, and
everything its callers need is one of its methods (or a small typed value it returns):

- the job queue (app.job_queue), fair between users, which runs each job with
- the generation runner (app.generation.runner) or the upscale runner (app.generation.upscaling),
  both handing finished pictures to the output writer (app.generation.outputs);
- the model manager (app.models.manager): the active checkpoint, its VAE, the upscalers in memory;
- the registry (app.models.registry): what is in the models folders;
- the output store (app.images.store): the outputs folder.

Longer than 300 lines because it is the one door: every feature's entry point is one short method
here, and splitting the facade would give the UI and the API two doors.
"""

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from app.devices import DeviceOptions, MemoryMode, plan_device
from app.errors import EaselError, InvalidRequest, ModelNotFound, NoModelAvailable
from app.generation import samplers
from app.generation.fast_mode import lcm_lora
from app.generation.hires import check_upscaler, hires_upscaler_names, second_pass, second_pass_steps
from app.generation.infotext import PngInfo, png_info
from app.generation.outputs import OutputWriter
from app.generation.requests import GenerationRequest
from app.generation.results import GeneratedImage, GenerationResult
from app.generation.runner import GenerationRunner
from app.generation.safety import SafetyFilter
from app.generation.speed import Clock, SpeedMeter, batch_seconds_left, speed_key, speed_sentence
from app.generation.styles import Style, StyleBook, with_styles
from app.generation.upscale import SD_X4_PREFIX, UpscalerChoice, UpscaleRequest, output_size, resampler_choices
from app.generation.upscaling import UpscaleRunner
from app.hardware import HardwareFacts, probe_hardware
from app.images.store import OutputStore
from app.job_queue import JobQueue
from app.jobs import Job
from app.kinds import JobKind, UpscalerKind
from app.memory import trim_heap
from app.models.catalog import CatalogEntry, HelperEntry, load_catalog, load_helpers
from app.models.compiled import BackgroundCompiler, compile_sentence
from app.models.demo import DEMO_MODEL_NAME, save_demo_model
from app.models.detect import Prediction
from app.models.download import DownloadProgress, download_helper, download_model
from app.models.manager import ModelManager
from app.models.network_library import EmbeddingsReport, LoraEntry, NetworkFolders, NetworkLibrary
from app.models.registry import (
    ModelEntry,
    ModelFolders,
    ModelRegistry,
    VaeEntry,
    find_checkpoint,
    generating,
    selectable,
)
from app.models.safety_checker import SAFETY_CHECKER_ID, SafetyCheckerSlot
from app.models.taesd import TAESD_ID, TaesdSlot
from app.models.upscalers import UpscalerEntry
from app.settings import Settings
from app.workers import Workers, WorkerStatus


@dataclass(frozen=True)
class EngineStatus:
    device: str              # one sentence: where generation runs, in which precision
    model: ModelEntry | None
    queued: int
    running: bool
    speed: str = ""          # one sentence: what an image takes on this machine, measured
    compiling: str = ""      # one sentence while the compiled mode is prepared, ready or unavailable
    loading: ModelEntry | None = None  # the checkpoint being loaded now (jobs wait for it)
    workers: tuple[WorkerStatus, ...] = ()  # on a cluster: each worker, what it holds and does


class Engine:
    def __init__(self, settings: Settings, models: ModelManager, store: OutputStore, clock: Clock = time.monotonic,
                 workers: Workers | None = None):
        """`clock`: what the speed meter times steps and decodes with (a test's fake one). `workers`: a
        cluster (app.cluster) that runs the jobs; this Engine then keeps the queue and writes the outputs,
        and loads no checkpoint itself."""
        self.settings = settings
        self._models = models
        self._registry = models.registry
        self._store = store
        self._workers = workers
        self._cluster_checkpoint: str | None = None  # on a cluster: the page's choice, for jobs naming none
        self._writer = writer = OutputWriter(store, watermark=settings.watermark)
        self._styles = StyleBook(settings.styles_file)
        self._safety = safety_filter(settings, models)
        self._networks = NetworkLibrary(self._registry.models_dir, settings.cache_dir / "network-facts.json")
        self._networks.refresh_loras()
        self._speed = SpeedMeter(clock)
        self._taesd = taesd_slot(settings, models)
        self._generation = GenerationRunner(models, writer, preview_every=settings.preview_every, safety=self._safety,
                                            networks=self._networks, speed=self._speed, taesd=self._taesd)
        self._upscaling = UpscaleRunner(models, writer)
        # When the queue runs dry, what the last job freed (activations, decoded pictures) goes back to
        # the system (a few ms): otherwise the C heap keeps it, and a swap after a job looks like growth.
        self._queue = JobQueue(self._run, max_size=settings.queue_size, max_per_owner=settings.queue_per_user,
                               on_idle=trim_heap, estimate=self._turn_seconds, slots=workers.slots() if workers else 1,
                               placement=workers.placement if workers else None)
        if workers is not None:  # one job per live worker: more when a machine joins
            workers.on_slots(self._queue.set_slots)

    # --- jobs -------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, owner: str = "local") -> Job:
        """Validate and queue; raises InvalidRequest (or ModelNotFound) at once for a request that cannot run.

        `owner` is who asked (a user name or address): the queue takes turns between owners."""
        request = with_styles(request, self._styles).validated()
        if request.model is not None:
            request.model = self._find(request.model).title  # unknown names fail now, not later
        elif self._workers is not None:  # a worker may hold any checkpoint: the job names the page's choice
            request.model = self._default_checkpoint().title
        check_upscaler(request, self.upscalers())
        if request.easel_fast:  # no LCM-LoRA: the sentence saying what to download now, not at its turn
            entry = self._find(request.model) if request.model else self._models.active
            if entry is not None:
                lcm_lora(self._networks, entry.family)
        strength = request.strength if request.is_img2img else 1.0
        cost = request.steps * strength * request.batch_size * request.width * request.height / 512**2
        if request.enable_hr:  # the second pass: fewer steps, more pixels
            width, height = request.hires_size
            cost += second_pass_steps(second_pass(request)) * request.batch_size * width * height / 512**2
        return self._queue.submit(Job(request, request.kind, owner, turns=request.batch_count, turn_cost=cost))

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> GenerationResult:
        """Submit and wait: for scripts and tests."""
        return self.submit(request).wait(timeout)

    def submit_upscale(self, request: UpscaleRequest, owner: str = "local") -> Job:
        """Validate and queue an upscale; raises InvalidRequest at once for one that cannot run."""
        request = request.validated(self.upscalers())
        width, height = output_size(request.image.size, request.scale)
        work = width * height / 512**2 * (request.steps if request.is_diffusion else 1)
        rate_key = f"{JobKind.UPSCALE.value}:{request.kind.value}"  # each kind runs at its own speed
        return self._queue.submit(Job(request, JobKind.UPSCALE, owner, turn_cost=work, rate_key=rate_key))

    def upscale(self, request: UpscaleRequest, timeout: float | None = None) -> GeneratedImage:
        """Submit and wait: for scripts and tests."""
        return self.submit_upscale(request).wait(timeout)

    def skip(self, owner: str | None = None) -> bool:
        """Finish the running jobs' current batches now and go on with their next ones.

        With `owner`, only that owner's jobs; returns whether a job was told."""
        jobs = [job for job in self._queue.running_jobs() if owner is None or job.owner == owner]
        for job in jobs:
            job.skip()
        return bool(jobs)

    def interrupt(self, owner: str | None = None) -> bool:
        """Stop every running job at its next step; what each made so far is kept.

        With `owner` (the HTTP API), stop only that owner's work: their running jobs, and their
        waiting jobs never start. A colleague's job is not theirs to stop. Returns whether any stopped."""
        if owner is None:
            running = self._queue.running_jobs()
            for job in running:
                job.cancel()
            return bool(running)
        jobs = self._queue.jobs_of(owner)
        for job in jobs:
            job.cancel()
        return bool(jobs)

    def jobs_of(self, owner: str) -> list[Job]:
        return self._queue.jobs_of(owner)

    def position(self, job: Job) -> int:
        return self._queue.position(job)

    def eta_seconds(self, job: Job) -> float | None:
        """Roughly how long until a waiting job's next turn (None: nothing measured to go by yet)."""
        return self._queue.eta_seconds(job)

    def estimate_seconds(self, request: GenerationRequest) -> float | None:
        """What `request` would take on this machine once its turn comes, from measured speed
        (None before anything was measured, or for a request that could not run)."""
        try:
            return self._speed.job_seconds(request.validated())
        except InvalidRequest:
            return None

    def seconds_left(self, job: Job) -> float | None:
        """Roughly how long until `job` is done: its wait, then its own remaining batches, from
        measured speed (a running one from its own measured step rate)."""
        batch = self._speed.batch(job.request) if job.kind is not JobKind.UPSCALE else None
        if batch is None:  # an upscale, or nothing measured here (on a cluster the workers measure)
            return job.progress.eta_seconds() if job in self._queue.running_jobs() else self.eta_seconds(job)
        if job in self._queue.running_jobs():
            now = self._turn_seconds(job)
            return None if now is None else now + batch.total * (job.turns_left - 1)
        wait = self.eta_seconds(job)
        return None if wait is None else wait + batch.total * job.turns_left

    def _turn_seconds(self, job: Job) -> float | None:
        """Seconds left of a generation's running batch, or its whole next batch (the queue's ETAs)."""
        if job.kind is JobKind.UPSCALE:
            return None  # the queue times upscales itself
        batch = self._speed.batch(job.request)
        if batch is None:
            return None
        return batch_seconds_left(batch, job.progress) if job in self._queue.running_jobs() else batch.total

    def running_jobs(self) -> list[Job]:
        """The jobs whose turn runs now (one per busy worker), in the order they started."""
        return self._queue.running_jobs()

    def status(self) -> EngineStatus:
        if self._workers is not None:
            return EngineStatus(device=self._workers.description(), model=self.active_checkpoint(),
                                queued=self._queue.waiting_count(), running=bool(self._queue.running_jobs()),
                                workers=tuple(self._workers.statuses()))
        return EngineStatus(
            device=self._models.plan.description,
            model=self._models.active,
            queued=self._queue.waiting_count(),
            running=bool(self._queue.running_jobs()),
            speed=self._speed_sentence(),
            compiling=compile_sentence(*self._models.compile_state()),
            loading=self._models.loading,
        )

    def wait_until_compiled(self, timeout: float | None = None) -> bool:
        """Wait until the compiles asked for so far are done (benches); False on timeout."""
        return self._models.wait_compiled(timeout)

    def _speed_sentence(self) -> str:
        active = self._models.active
        if active is None:
            return speed_sentence(self._speed, 512)
        self._speed.follow(speed_key(active, self._models.plan))  # figures of another model say nothing
        return speed_sentence(self._speed, active.family.native_size)

    # --- checkpoints and VAEs ---------------------------------------------------------------

    def checkpoints(self) -> list[ModelEntry]:
        """Every checkpoint file in the models folder, usable ones first; others carry the reason. On a
        cluster: every worker's usable checkpoints, merged (this machine's folder until they report)."""
        if self._workers is not None:
            return self._workers.checkpoints() or self._registry.entries
        return self._registry.entries

    def selectable_checkpoints(self) -> list[ModelEntry]:
        """The checkpoints that can be made the active one."""
        return selectable(self.checkpoints())

    def generating_checkpoints(self) -> list[ModelEntry]:
        """The checkpoints that make pictures from a prompt (the first is the default)."""
        return generating(self.checkpoints())

    def active_checkpoint(self) -> ModelEntry | None:
        """The checkpoint in memory; on a cluster, the page's choice that jobs naming none use."""
        if self._workers is not None:
            try:
                return self._default_checkpoint()
            except EaselError:
                return None
        return self._models.active

    def select_checkpoint(self, title: str | None = None) -> ModelEntry:
        """Make `title` (default: the first usable one) the active checkpoint, after the job running now,
        and measure its speed here (a short calibration). On a cluster: the checkpoint jobs use when
        they name none; the workers load it when a job comes."""
        if self._workers is not None:
            entry = self._find(title) if title else self._default_checkpoint()
            self._cluster_checkpoint = entry.title
            return entry
        entry = self._models.load(title)
        if entry.family.makes_images:
            self._generation.calibrate(entry.title)
        return entry

    def _find(self, title: str) -> ModelEntry:
        """A checkpoint by title, name or file name (ModelNotFound naming the ones there are, or on a
        cluster the machines that lack it)."""
        try:
            return find_checkpoint(self.checkpoints(), title)
        except ModelNotFound:
            lacking = self._workers.lacking(title) if self._workers is not None else None
            if lacking:
                raise ModelNotFound(lacking) from None
            raise

    def _default_checkpoint(self) -> ModelEntry:
        """On a cluster, the checkpoint for jobs that name none: the page's choice, else the first."""
        if self._cluster_checkpoint is not None:
            try:
                return self._find(self._cluster_checkpoint)
            except ModelNotFound:  # its file went away everywhere: fall back to the first
                self._cluster_checkpoint = None
        usable = self.generating_checkpoints() or self.selectable_checkpoints()
        if not usable:
            raise NoModelAvailable("No worker has a checkpoint yet. Put a Stable Diffusion model (.safetensors) "
                                   "into models/Stable-diffusion on a worker machine; the workers look again "
                                   "every few seconds.")
        return usable[0]

    def set_prediction(self, title: str, prediction: Prediction) -> ModelEntry:
        """The user's v-prediction or epsilon choice for an SD 2.x single file; reloads it if active."""
        was_active = self._models.active is not None and self._models.active.title == title
        entry = self._registry.set_prediction(title, prediction)
        return self._models.load(entry.title) if was_active else entry

    def vaes(self) -> list[VaeEntry]:
        return self._registry.vaes

    def vae_choice(self) -> str | None:
        """The VAE chosen from models/VAE/ (None: each checkpoint's own)."""
        return self._models.vae_choice

    def select_vae(self, title: str | None) -> None:
        self._models.select_vae(title)

    def refresh_models(self) -> list[ModelEntry]:
        """Scan the models folders again: files added or removed since appear or disappear."""
        return self._registry.refresh()

    def model_folders(self) -> ModelFolders:
        return self._registry.folders

    # --- LoRAs and textual-inversion embeddings ---------------------------------------------

    def loras(self) -> list[LoraEntry]:
        """The LoRA files (models/Lora/), usable ones first; the others carry the reason."""
        return self._networks.loras

    def refresh_loras(self) -> list[LoraEntry]:
        """Scan the LoRA folders again."""
        return self._networks.refresh_loras()

    def embeddings(self) -> EmbeddingsReport:
        """The embedding files, read again where changed, split as A1111 does for the active model:
        loaded (fit its text encoder), skipped (another width), and files that are no embedding."""
        self._networks.refresh_embeddings()
        loaded = self._models.loaded
        return self._networks.embeddings_for(loaded.text_width if loaded else None)

    def network_folders(self) -> NetworkFolders:
        return self._networks.folders

    # --- upscalers --------------------------------------------------------------------------

    def upscalers(self) -> list[UpscalerChoice]:
        """Resamplers, then the ESRGAN-family files, then the SD x4 diffusion upscalers."""
        networks = [
            UpscalerChoice(entry.name, UpscalerKind.NETWORK, entry.name, entry.scale, entry.architecture, entry.path)
            for entry in self._registry.networks()
        ]
        diffusion = [
            UpscalerChoice(SD_X4_PREFIX + entry.title, UpscalerKind.DIFFUSION, entry.title, 4, "SD x4", entry.path)
            for entry in self._registry.x4_upscalers()
        ]
        return [*resampler_choices(), *networks, *diffusion]

    def hires_upscalers(self) -> list[str]:
        """What hires fix can upscale with: A1111's latent upscalers, then the Upscale tab's but SD x4."""
        return hires_upscaler_names(self.upscalers())

    def unusable_upscalers(self) -> list[UpscalerEntry]:
        """Files in the upscaler folder that cannot be used, each with the reason."""
        return [entry for entry in self._registry.upscalers if entry.problem]

    # --- outputs, pictures, downloads, names -----------------------------------------------

    def outputs_folder(self) -> Path:
        return self._store.root

    def recent_outputs(self, category: str | None = None, limit: int = 50) -> list[Path]:
        """The latest saved pictures, newest first ("txt2img-images", ...; None: every category)."""
        return self._store.recent(category, limit=limit)

    def read_png_info(self, image: Image.Image) -> PngInfo:
        """How a picture was made (its A1111 text and watermark) and the request fields to make it again."""
        return png_info(image)

    def download_catalog(self) -> list[CatalogEntry]:
        """The default checkpoints Easel offers to download (nothing downloads unless asked)."""
        return load_catalog()

    def helper_downloads(self) -> list[HelperEntry]:
        """The models features need beside the checkpoints (the safety checker, the depth estimator)."""
        return load_helpers()

    def download_helper(
        self,
        helper_id: str,
        on_progress: Callable[[DownloadProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Path:
        """Download a helper model's files into its folder under the models folder (resumable);
        returns that folder."""
        helper = next((h for h in self.helper_downloads() if h.id == helper_id), None)
        if helper is None:
            raise ModelNotFound(f"There is no download called '{helper_id}'.")
        return download_helper(helper, self.settings.models_dir / helper.folder, cancel=cancel, on_progress=on_progress)

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
        path = download_model(entry, self._registry.checkpoint_dir, on_progress=on_progress, cancel=cancel)
        self._registry.refresh()
        return self._registry.find(path.name)

    # --- saved styles and the safety filter -------------------------------------------------

    def styles(self) -> list[Style]:
        """The saved styles (styles.csv), in the file's order; none while the file is malformed."""
        return self._styles.styles()

    def styles_problem(self) -> str | None:
        """Why the styles file gives no styles (a sentence naming the line to fix), or None."""
        return self._styles.problem()

    def save_style(self, name: str, prompt: str, negative_prompt: str) -> Style:
        """Save the prompts as a style; one of the same name is replaced, the others kept."""
        return self._styles.save(Style(name, prompt, negative_prompt))

    def apply_styles(self, prompt: str, negative_prompt: str, names: list[str]) -> tuple[str, str]:
        """The prompts with the named styles applied, as a generation would (InvalidRequest: unknown name)."""
        expanded = with_styles(GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, styles=names), self._styles)
        return expanded.prompt, expanded.negative_prompt

    def safety_filter_on(self) -> bool:
        return self._safety.enabled

    def set_safety_filter(self, on: bool) -> None:
        """Blur what the safety checker flags in every picture made from now on (everyone's)."""
        self._safety.set_enabled(on)

    def sampler_names(self) -> list[str]:
        return samplers.sampler_names()

    def schedule_names(self) -> list[str]:
        return samplers.schedule_names()

    def close(self) -> None:
        self._queue.close()
        if self._workers is not None:
            self._workers.close()
        self._models.close()
        self._safety.release()
        self._taesd.release()

    def _run(self, job: Job):
        if self._workers is not None:
            return self._workers.run(job, self._writer, self._safety.enabled, self._models.vae_choice)
        if job.kind is JobKind.UPSCALE:
            return self._upscaling.run(job)
        return self._generation.turn(job)


def model_manager(settings: Settings, facts: HardwareFacts | None = None) -> ModelManager:
    """The model manager for these settings: device plan, the models folders (plus the demo model
    with --demo), scanned."""
    facts = facts or probe_hardware()
    options = DeviceOptions(
        device=settings.device,
        lowvram=settings.lowvram,
        medvram=settings.medvram,
        full_precision=settings.precision == "full",
    )
    extra_roots: tuple[Path, ...] = ()
    if settings.demo:
        save_demo_model(settings.demo_models_dir / DEMO_MODEL_NAME)
        extra_roots = (settings.demo_models_dir,)
    registry = ModelRegistry(settings.models_dir, extra_roots, cache_file=settings.cache_dir / "model-facts.json")
    registry.refresh()
    compiler = BackgroundCompiler(settings.cache_dir / "torch-compile") if settings.torch_compile else None
    return ModelManager(registry, plan_device(facts, options), facts, settings.model_configs_dir, compiler)


def taesd_slot(settings: Settings, models: ModelManager) -> TaesdSlot:
    """The tiny decoder's slot (models/taesd/), beside the checkpoint in its device and precision."""
    on_gpu = models.plan.memory_mode is MemoryMode.FULL  # else the GPU is kept for the checkpoint
    return TaesdSlot(settings.models_dir / TAESD_ID, models.plan.device if on_gpu else "cpu",
                     models.plan.dtype if on_gpu or models.plan.device == "cpu" else torch.float32)


def safety_filter(settings: Settings, models: ModelManager) -> SafetyFilter:
    """The safety filter for these settings; its checker is loaded (and fetched) only on first use."""
    helper = next(entry for entry in load_helpers() if entry.id == SAFETY_CHECKER_ID)
    on_gpu = models.plan.memory_mode is MemoryMode.FULL  # else the GPU is kept for the checkpoint
    slot = SafetyCheckerSlot(helper, settings.models_dir / helper.folder, models.plan.device if on_gpu else "cpu",
                             models.plan.dtype if on_gpu else torch.float32, fetch=download_helper)
    return SafetyFilter(slot, enabled=settings.safety_filter)


def create_engine(settings: Settings, facts: HardwareFacts | None = None, workers: Workers | None = None) -> Engine:
    """The Engine for these settings (facts: the hardware, probed when not given; workers: a cluster
    that runs the jobs, app.cluster.connect)."""
    return Engine(settings, model_manager(settings, facts), OutputStore(settings.outputs_dir), workers=workers)
