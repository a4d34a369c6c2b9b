"""The job queue: one generation at a time on the device, progress and previews, cancel.

Every tab and (later) the HTTP API submit `Job`s here and read the same `Progress`, so what a
user sees in the page and what a client polls can never disagree.
"""

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Callable

from PIL import Image

from app.errors import EaselError, QueueFull

log = logging.getLogger(__name__)


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Progress:
    step: int = 0            # denoising steps done in the current batch
    steps: int = 0           # denoising steps per batch
    batch: int = 0           # index of the current batch (0-based)
    batches: int = 1
    preview: Image.Image | None = None
    started_at: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float:
        if not self.steps:
            return 0.0
        return min(1.0, (self.batch * self.steps + self.step) / (self.batches * self.steps))

    def eta_seconds(self, now: float | None = None) -> float | None:
        if self.started_at is None or self.fraction <= 0:
            return None
        elapsed = (now or time.monotonic()) - self.started_at
        return elapsed * (1 - self.fraction) / self.fraction


class Job:
    """One request from one user. Thread-safe: the worker writes, any thread reads and waits."""

    def __init__(self, request: Any, kind: str, owner: str = "local"):
        self.id = uuid.uuid4().hex
        self.request = request
        self.kind = kind
        self.owner = owner
        self.state = JobState.QUEUED
        self.progress = Progress()
        self.result: Any = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._skip = threading.Event()
        self._changed = threading.Condition()
        self._version = 0

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def skipping(self) -> bool:
        return self._skip.is_set()

    def skip(self) -> None:
        """Finish the current batch now and go on with the next one (A1111's Skip)."""
        self._skip.set()
        self._bump()

    def skipped(self) -> None:
        """The worker took the skip; the next batch runs in full."""
        self._skip.clear()

    @property
    def finished(self) -> bool:
        return self.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)

    @property
    def version(self) -> int:
        return self._version

    def cancel(self) -> None:
        """Stop as soon as possible: a queued job never starts, a running one stops at the next step."""
        self._cancel.set()
        self._bump()

    def report(self, **changes) -> None:
        """The worker's one way to tell everyone how far the job is."""
        self.progress = replace(self.progress, **changes)
        self._bump()

    def wait_for_change(self, seen_version: int, timeout: float | None = None) -> int:
        """Block until something changed since `seen_version` (or timeout); returns the new version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen_version or self.finished, timeout)
            return self._version

    def wait(self, timeout: float | None = None) -> Any:
        """The job's result; raises the job's error, or TimeoutError."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.finished, timeout):
                raise TimeoutError(f"Job {self.id} did not finish within {timeout} s.")
        if self.error is not None:
            raise self.error
        return self.result

    def _set_state(self, state: JobState, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.state = result, error, state
        self._bump()

    def _bump(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()


class JobQueue:
    """First come, first served; one worker thread owns the device."""

    def __init__(self, run: Callable[[Job], Any], max_size: int = 100):
        self._run = run
        self._max_size = max_size
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._lock = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="easel-jobs", daemon=True)
        self._worker.start()

    @property
    def running(self) -> Job | None:
        return self._running

    def submit(self, job: Job) -> Job:
        with self._lock:
            if self._closed:
                raise EaselError("Easel is shutting down and takes no new jobs. Start it again, then retry.")
            if len(self._waiting) >= self._max_size:
                raise QueueFull(
                    f"{len(self._waiting)} jobs are already waiting, the most this server takes. "
                    "Try again in a few minutes."
                )
            self._waiting.append(job)
            self._lock.notify_all()
        return job

    def position(self, job: Job) -> int:
        """0 while running (or done), else how many jobs run before it, plus one."""
        with self._lock:
            for index, waiting in enumerate(self._waiting):
                if waiting is job:
                    return index + 1 + (self._running is not None)
        return 0

    def waiting_count(self) -> int:
        return len(self._waiting)

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            for job in self._waiting:
                job.cancel()
                job._set_state(JobState.CANCELLED)
            self._waiting.clear()
            self._lock.notify_all()
        if self._running is not None:
            self._running.cancel()
        self._worker.join(timeout)

    def _next(self) -> Job | None:
        with self._lock:
            self._lock.wait_for(lambda: self._waiting or self._closed)
            if self._closed:
                return None
            self._running = self._waiting.popleft()
            return self._running

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                self._execute(job)
            finally:
                with self._lock:
                    self._running = None

    def _execute(self, job: Job) -> None:
        if job.cancelled:
            job._set_state(JobState.CANCELLED)
            return
        job.report(started_at=time.monotonic())
        job._set_state(JobState.RUNNING)
        try:
            result = self._run(job)
        except EaselError as error:
            job._set_state(JobState.FAILED, error=error)
        except Exception as error:  # a bug: the worker must survive it, the user must hear of it
            log.exception("Job %s failed", job.id)
            job._set_state(JobState.FAILED, error=error)
        else:
            job._set_state(JobState.DONE, result=result)
