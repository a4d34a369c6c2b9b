"""A worker: one Ray Serve replica running an Engine of its own over its machine's models folder.

The worker is one more caller of the Engine's door: each turn the front end sends becomes a job on
the worker's Engine (one batch of a generation, or an upscale), followed as the page follows one,
its progress streamed back and its pictures returned as bytes (the worker saves nothing; the front
end is the one writer). Its checkpoint is Serve's multiplexed model, so Serve's router knows what
each replica holds (app.cluster.routing). Interrupt, skip and "someone watches" arrive through the
board (app.cluster.board), which the replica reads while a job runs; the replica posts its status
there every second.
"""

import asyncio
import logging
import os
import socket
import threading
from dataclasses import dataclass, replace

import torch
from ray import serve

from app.cluster.board import board
from app.cluster.wire import Failed, Finished, Picture, Started, Stepped, Turn, png_bytes
from app.engine import Engine, create_engine
from app.errors import EaselError
from app.jobs import Job, JobState
from app.kinds import JobKind
from app.models.families import Family
from app.models.loader import pipeline_class
from app.settings import load_settings
from app.workers import WorkerStatus

log = logging.getLogger(__name__)

SIGNAL_SECONDS = 0.2   # how often a running job reads the board for interrupt, skip and watch
POST_SECONDS = 1.0     # how often the replica posts its status
RESCAN_SECONDS = 10.0  # how often it looks at its models folder again (files added or removed)
ROUTER = "app.cluster.routing:CheckpointRouter"


@dataclass(frozen=True)
class WorkerConfig:
    """What the front end passes to every replica: settings overrides (its own paths stay its
    machine's, except where `overrides` names them, as a local cluster does) and torch threads."""

    overrides: dict
    threads: int = 1


@serve.deployment(
    max_ongoing_requests=1,  # one job at a time: the front end's queue decides who goes next
    request_router_config={"request_router_class": ROUTER, "request_routing_stats_period_s": 1.0},
    health_check_period_s=2.0,
    graceful_shutdown_timeout_s=5.0,
)
class EaselWorker:
    def __init__(self, config: WorkerConfig):
        torch.set_num_threads(max(1, config.threads))
        # Before the replica counts as started: diffusers' pipeline classes take seconds to import, and
        # a first job should not look like a worker stuck loading.
        pipeline_class(Family.SD1)
        self._engine: Engine = create_engine(load_settings(config.overrides))
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._machine = socket.gethostname()
        self._board = board()
        self._job: Job | None = None
        self._swaps = 0
        self._stop = threading.Event()
        threading.Thread(target=self._post_status, name="easel-worker-status", daemon=True).start()

    # --- what Serve calls -------------------------------------------------------------------

    def record_routing_stats(self) -> dict:
        """For the router: which checkpoints this machine has, and the one in memory."""
        active = self._engine.active_checkpoint()
        return {"files": self._titles(), "holds": active.title if active else None}

    @serve.multiplexed(max_num_models_per_replica=1)
    async def checkpoint(self, title: str) -> str:
        """Serve's multiplexed model: the replica's Engine swaps to `title` (the previous one is freed)."""
        before = self._engine.active_checkpoint()
        if before is None or before.title != title:
            self._swaps += 1  # counted as it starts: the status shows the swap while it loads
        await asyncio.to_thread(self._engine.select_checkpoint, title)
        return title

    async def run(self, turn: Turn):
        """One turn: Stepped events while it runs, then Finished (or Failed, for the user to read)."""
        title = serve.get_multiplexed_model_id()
        try:
            if title and title not in self._titles():
                yield Failed("ModelNotFound", f"{self._machine} has no checkpoint '{title}' in its models folder.")
                return
            if title:
                await self.checkpoint(title)
            job = self._submitted(turn)
            yield Started(self._name(), title or None)
        except EaselError as error:
            yield Failed(type(error).__name__, error.message)
            return
        self._job = job
        relay = asyncio.create_task(self._relay_signals(job, turn.job_id))
        try:
            async for event in self._followed(job):
                yield event
        finally:
            relay.cancel()
            self._job = None

    async def run_posted(self, turn: Turn) -> Finished | Failed:
        """The same turn for a front end on Ray Client, which cannot stream: its outcome is returned,
        its progress posted to the board for the front end to read."""
        async for event in self.run(turn):
            if isinstance(event, (Started, Stepped)):
                self._board.follow.remote(turn.job_id, event)
            else:
                return event
        return Failed("EaselError", f"The worker on {self._machine} ended the job without a result.")

    def __del__(self):
        self._stop.set()
        try:
            self._board.leave.remote(self._replica)
            self._engine.close()
        except Exception:  # shutting down: nothing left to tell
            pass

    # --- a turn ------------------------------------------------------------------------------

    def _submitted(self, turn: Turn) -> Job:
        self._engine.set_safety_filter(turn.safety_filter)
        if turn.vae != self._engine.vae_choice():
            self._engine.select_vae(turn.vae)
        request = replace(turn.request, save=False)  # the front end writes every output
        if turn.kind is JobKind.UPSCALE:
            return self._engine.submit_upscale(request, owner=turn.owner)
        return self._engine.submit(request, owner=turn.owner)

    async def _followed(self, job: Job):
        version, shown = 0, None
        last = None
        while not job.finished:
            version = await asyncio.to_thread(job.wait_for_change, version, 0.5)
            progress = job.progress
            preview = progress.preview if progress.preview is not None and progress.preview is not shown else None
            shown = progress.preview
            now = (progress.step, progress.steps, progress.message)
            if now != last or preview is not None:
                last = now
                yield Stepped(progress.step, progress.steps, progress.message, progress.step_seconds,
                              png_bytes(preview) if preview is not None else None)
        yield self._outcome(job)

    def _outcome(self, job: Job) -> Finished | Failed:
        if job.state is JobState.CANCELLED:
            return Finished([], self._name(), interrupted=True)
        if job.error is not None:
            if isinstance(job.error, EaselError):
                return Failed(type(job.error).__name__, job.error.message)
            return Failed("EaselError", f"The worker on {self._machine} failed: {job.error}")
        result = job.result
        if job.kind is JobKind.UPSCALE:
            return Finished([Picture(png_bytes(result.image), result.seed, result.parameters)], self._name())
        pictures = [Picture(png_bytes(image.image), image.seed, image.parameters) for image in result.images]
        return Finished(pictures, self._name(), notes=list(result.notes), model=result.model,
                        interrupted=result.interrupted)

    async def _relay_signals(self, job: Job, job_id: str) -> None:
        """The front end's interrupt, skip and watch, read from the board while the job runs."""
        skipped = False
        while not job.finished:
            try:
                signals = await self._board.signals.remote(job_id)
            except Exception:  # the board restarting: the next read will do
                signals = {}
            if signals.get("cancel"):
                job.cancel()
            if signals.get("skip") and not skipped:
                skipped = True
                job.skip()
            if signals.get("watched"):
                job.watch()
            await asyncio.sleep(SIGNAL_SECONDS)

    # --- status --------------------------------------------------------------------------------

    def _titles(self) -> list[str]:
        return [entry.title for entry in self._engine.checkpoints() if entry.usable]

    def _name(self) -> str:
        return f"{self._machine} ({self._replica[:4]})"

    def _status(self) -> WorkerStatus:
        status = self._engine.status()
        return WorkerStatus(
            name=self._name(),
            machine=self._machine,
            holds=status.model.title if status.model else None,
            doing=self._doing(status.loading.title if status.loading else None),
            checkpoints=tuple(entry for entry in self._engine.checkpoints() if entry.usable),
            swaps=self._swaps,
            device=status.device,
            pid=os.getpid(),
        )

    def _doing(self, loading: str | None) -> str:
        if loading:
            return f"loading {loading}"
        job = self._job
        if job is None:
            return "idle"
        progress = job.progress
        what = "upscaling" if job.kind is JobKind.UPSCALE else "generating"
        steps = f", step {progress.step} of {progress.steps}" if progress.steps else ""
        return f"{what} for {job.owner}{steps}"

    def _post_status(self) -> None:
        waited = 0.0
        while not self._stop.wait(POST_SECONDS):
            waited += POST_SECONDS
            try:
                if waited >= RESCAN_SECONDS and self._job is None:
                    waited = 0.0
                    self._engine.refresh_models()
                self._board.post.remote(self._replica, self._status())
            except Exception:  # a status line must never take the worker down
                log.exception("Posting the worker's status failed")
