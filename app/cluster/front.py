"""The front end's side of the cluster: the Engine's queue turns, run on workers.

The front end keeps the one fair queue (app.job_queue, one slot per live worker) and writes every
output. A generation's turn is one batch: the front end sends that batch alone (its seeds, the
checkpoint fixed at the job's first turn) to Serve, which routes it to a replica holding the
checkpoint; progress and previews stream back into the front end's `Job`, as if it ran here; the
finished pictures are saved here. A replica lost mid-turn (killed, its machine gone) is Ray's
error, not a `Failed` event: the same turn is sent again, and nothing was saved for it yet, so
nothing is lost or written twice.
"""

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import ray

from app.cluster.wire import Failed, Finished, Started, Stepped, Turn, picture_of
from app.errors import EaselError, ModelNotFound
from app.generation.outputs import OutputWriter
from app.generation.requests import GenerationRequest
from app.generation.results import GeneratedImage, GenerationResult
from app.generation.upscaling import INTERRUPTED
from app.job_queue import Placement
from app.jobs import UNFINISHED, Job
from app.kinds import JobKind
from app.models.registry import ModelEntry, find_checkpoint
from app.workers import WorkerStatus

log = logging.getLogger(__name__)

ATTEMPTS = 3               # a turn whose worker is lost this many times in a row fails, saying so
WATCH_SECONDS = 1.0        # how often the front end reads the board for the workers' status
POLL_SECONDS = 0.25        # on Ray Client, how often a running turn's progress is read from the board
LOST = "A worker stopped during this job; it continues on another worker."


@dataclass
class _Partial:
    """A generation between its turns, here on the front end."""

    started: float
    model: ModelEntry | None = None
    batch: int = 0
    images: list[GeneratedImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def one_batch(request: GenerationRequest, batch: int, checkpoint: str) -> GenerationRequest:
    """Batch `batch` of a validated request as a request of its own: the same seeds, so the same pixels
    (and the same infotext) as the batch the single-machine Engine would run."""
    first = batch * request.batch_size
    return replace(request, seed=request.seeds()[first], subseed=request.subseeds()[first], batch_count=1,
                   model=checkpoint, styles=[])


class ClusterWorkers:
    """`app.workers.Workers` over a Serve deployment of `EaselWorker`s and the board."""

    def __init__(self, handle, board, description: str, scale: Callable[[], None] | None = None,
                 on_close: Callable[[], None] | None = None, streaming: bool = True):
        self._handle = handle
        self._streaming = streaming      # False on Ray Client: progress is read from the board
        self._board = board
        self._description = description
        self._scale = scale              # grows the deployment when machines joined (auto clusters)
        self._on_close = on_close        # leaves the cluster (a local one stops)
        self._statuses: dict[str, WorkerStatus] = {}
        # Who holds what and who is busy, as this front end's own turns tell it (sooner than the posts).
        self._holding: dict[str, str | None] = {}
        self._busy: dict[str, str] = {}  # job id → the worker running its turn
        self._sent: dict[str, str] = {}  # job id → the checkpoint of its turn, sent but not started yet
        self._slots = 1
        self._slot_listeners: list[Callable[[int], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="easel-cluster-status", daemon=True)
        self._watcher.start()

    # --- app.workers.Workers -------------------------------------------------------------------

    def slots(self) -> int:
        return self._slots

    def on_slots(self, callback: Callable[[int], None]) -> None:
        self._slot_listeners.append(callback)

    def statuses(self) -> list[WorkerStatus]:
        with self._lock:
            return sorted(self._statuses.values(), key=lambda status: status.name)

    def checkpoints(self) -> list[ModelEntry]:
        merged: dict[str, ModelEntry] = {}
        for status in self.statuses():
            for entry in status.checkpoints:
                merged.setdefault(entry.title, entry)
        return list(merged.values())

    def placement(self, job: Job) -> Placement:
        """Whether a free worker holds the job's checkpoint (READY), only a busy one (WAITING: the
        queue lets another job that is READY go first), or none (ANY: a free worker loads it)."""
        checkpoint = _checkpoint_of(job)
        if not checkpoint:
            return Placement.ANY
        with self._lock:
            holding = {status.name: self._holding.get(status.name, status.holds) for status in self._statuses.values()}
            busy = set(self._busy.values())
            on_the_way = checkpoint in self._sent.values()  # a worker is loading it for a job now
        holders = [name for name, holds in holding.items() if holds == checkpoint]
        if any(name not in busy for name in holders):
            return Placement.READY
        return Placement.WAITING if holders or on_the_way else Placement.ANY

    def lacking(self, title: str) -> str | None:
        statuses = self.statuses()
        if not statuses or any(_has(status, title) for status in statuses):
            return None  # no worker has reported yet: the job waits for them rather than failing now
        machines = sorted({status.machine for status in statuses})
        return (f"No worker has the checkpoint '{title}': {', '.join(machines)} "
                f"{'lacks' if len(machines) == 1 else 'lack'} it. Put the file into models/Stable-diffusion on "
                "one of them (or choose another checkpoint).")

    def description(self) -> str:
        count = len(self.statuses())
        workers = f"{count} worker{'s' if count != 1 else ''}" if count else "no worker has started yet"
        return f"{self._description}: {workers}."

    def run(self, job: Job, writer: OutputWriter, safety_filter: bool = False, vae: str | None = None) -> Any:
        if job.kind is JobKind.UPSCALE:
            turn = Turn(job.id, job.owner, job.kind, job.request, safety_filter, vae)
            finished = self._streamed(job, turn, checkpoint="")
            if not finished.pictures:
                raise EaselError(INTERRUPTED)
            picture = finished.pictures[0]
            return writer.made_elsewhere(picture_of(picture.png), picture.parameters, job.kind, picture.seed,
                                         job.request.save)
        return self._generation_turn(job, writer, safety_filter, vae)

    def close(self) -> None:
        self._stop.set()
        self._watcher.join(timeout=WATCH_SECONDS + 6)
        if self._on_close is not None:
            self._on_close()

    # --- a generation's turn -----------------------------------------------------------------------

    def _generation_turn(self, job: Job, writer: OutputWriter, safety_filter: bool, vae: str | None) -> Any:
        request: GenerationRequest = job.request
        partial: _Partial = job.partial or _Partial(started=time.monotonic())
        job.partial = partial
        if not job.cancelled:
            job.report(batch=partial.batch, batches=request.batch_count, step=0)
            # The checkpoint is fixed at the first turn: later batches never switch to another choice.
            checkpoint = partial.model.title if partial.model else request.model
            turn = Turn(job.id, job.owner, job.kind, one_batch(request, partial.batch, checkpoint),
                        safety_filter, vae)
            finished = self._streamed(job, turn, checkpoint)
            partial.model = finished.model or partial.model
            partial.images += [writer.made_elsewhere(picture_of(p.png), p.parameters, job.kind, p.seed, request.save)
                               for p in finished.pictures]
            partial.notes += [note for note in finished.notes if note not in partial.notes]
            partial.batch += 1
        if partial.batch < request.batch_count and not job.cancelled:
            return UNFINISHED
        return GenerationResult(images=partial.images, interrupted=job.cancelled, notes=partial.notes,
                                seconds=time.monotonic() - partial.started, model=partial.model)

    def _streamed(self, job: Job, turn: Turn, checkpoint: str) -> Finished:
        """The turn on a worker, its progress into `job`; sent again when its worker is lost."""
        relay = _SignalRelay(self._board, job)
        attempt = 1
        try:
            while True:
                try:
                    return self._followed(job, turn, checkpoint)
                except EaselError:
                    raise
                except Exception as error:  # Ray's: the replica died or could not be reached
                    log.warning("A worker was lost during job %s (attempt %d): %s", job.id, attempt, error)
                    if attempt == ATTEMPTS:
                        raise EaselError(f"The job's worker stopped {ATTEMPTS} times in a row, so Easel gave up on "
                                         "it. Check the workers (the page lists them), then try again.") from error
                    job.report(step=0, message=LOST)
                    attempt += 1
        finally:
            relay.stop()
            job.skipped()
            with self._lock:
                self._busy.pop(job.id, None)
                self._sent.pop(job.id, None)

    def _followed(self, job: Job, turn: Turn, checkpoint: str) -> Finished:
        with self._lock:
            self._sent[job.id] = checkpoint
        if self._streaming:
            events = self._handle.options(stream=True, multiplexed_model_id=checkpoint).run.remote(turn)
        else:
            events = self._posted(job, self._handle.options(multiplexed_model_id=checkpoint).run_posted.remote(turn))
        for event in events:
            if isinstance(event, Finished):
                return event
            if isinstance(event, Failed):
                raise event.error()
            self._follow(job, event)
        raise ConnectionError("The worker's stream ended without a result.")

    def _posted(self, job: Job, response):
        """A turn's events as a stream would give them, read from the board while its outcome is awaited."""
        while True:
            try:
                outcome = response.result(timeout_s=POLL_SECONDS)
            except TimeoutError:
                outcome = None
            yield from ray.get(self._board.take.remote(job.id), timeout=30)
            if outcome is not None:
                yield outcome
                return

    def _follow(self, job: Job, event: Started | Stepped) -> None:
        if isinstance(event, Started):
            with self._lock:
                self._holding[event.worker] = event.holds
                self._busy[job.id] = event.worker
                self._sent.pop(job.id, None)
        else:
            preview = {"preview": picture_of(event.preview)} if event.preview else {}
            job.report(step=event.step, steps=event.steps, step_seconds=event.step_seconds, **preview,
                       **({"message": event.message} if event.message else {}))

    # --- status ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Read the workers' posts every second; tell the queue when their number changes."""
        while not self._stop.wait(WATCH_SECONDS):
            try:
                posted = ray.get(self._board.workers.remote(), timeout=5)
                if self._scale is not None:
                    self._scale()
            except Exception as error:  # the cluster went away for a moment: keep the last picture
                log.debug("Could not read the workers' status: %s", error)
                continue
            with self._lock:
                self._statuses = dict(posted)
            slots = max(1, len(posted))
            if slots != self._slots:
                self._slots = slots
                for listener in self._slot_listeners:
                    listener(slots)


def _checkpoint_of(job: Job) -> str:
    """The checkpoint a job's next turn runs on ("" for an upscale: any worker will do)."""
    if job.kind is JobKind.UPSCALE:
        return ""
    partial = job.partial
    return partial.model.title if partial is not None and partial.model is not None else job.request.model or ""


def _has(status: WorkerStatus, title: str) -> bool:
    try:
        find_checkpoint(list(status.checkpoints), title)
        return True
    except ModelNotFound:
        return False


class _SignalRelay:
    """Carries a job's interrupt, skip and watch to the board while its turn runs on a worker."""

    def __init__(self, board, job: Job):
        self._board = board
        self._job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="easel-signal-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()  # the thread notices within its wait; the turn does not wait for it
        try:
            self._board.forget.remote(self._job.id)
        except Exception:  # the board is gone with the cluster: nothing to forget
            pass

    def _relay(self) -> None:
        job, sent, version = self._job, None, 0
        while not self._stop.is_set():
            signals = {"cancel": job.cancelled, "skip": job.skipping, "watched": job.watched}
            if signals != sent:
                try:
                    self._board.signal.remote(job.id, signals)
                    sent = signals
                except Exception as error:
                    log.warning("Could not signal job %s: %s", job.id, error)
            version = job.wait_for_change(version, timeout=0.25)
