"""A job: one request from one user, its state, its progress, and how to cancel or skip it.

Every tab and the HTTP API follow the same `Job` and read the same `Progress`, so what a user sees
in the page and what a client polls can never disagree. The queue that runs jobs is app.job_queue.
"""

import threading
import time
import uuid
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from PIL import Image

from app.kinds import JobKind


class Unfinished:
    """What a job's run returns when it has more turns to go: put it back in line."""


UNFINISHED = Unfinished()
# A page polls several times a second and an API client about once; a preview read this long ago
# still counts as someone watching.
WATCH_SECONDS = 5.0


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
    step_seconds: float | None = None  # the current pass's measured seconds per step

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

    def __init__(self, request: Any, kind: JobKind, owner: str = "local", turns: int = 1, turn_cost: float = 1.0,
                 rate_key: str | None = None):
        self.id = uuid.uuid4().hex
        self.request = request
        self.kind = JobKind(kind)
        self.owner = owner
        self.turns_left = max(1, turns)  # turns it still needs (batches left)
        self.turn_cost = turn_cost       # work in one turn, in the engine's units for ETAs
        self.rate_key = rate_key or self.kind.value  # jobs with the same key run at the same speed per unit
        self.started = False             # had a turn already (it may hold partial results)
        self.partial: Any = None         # the engine's state between turns
        self.state = JobState.QUEUED
        self.progress = Progress()
        self.result: Any = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._skip = threading.Event()
        self._changed = threading.Condition()
        self._version = 0
        self._watched_until = 0.0

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

    def watch(self) -> None:
        """Someone is reading the live preview (the page's poll, an API progress call): make them
        for the next few seconds. Nobody watching, nobody pays for them."""
        self._watched_until = time.monotonic() + WATCH_SECONDS

    @property
    def watched(self) -> bool:
        return time.monotonic() < self._watched_until

    @property
    def finished(self) -> bool:
        return self.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)

    @property
    def waiting(self) -> bool:
        """In the queue: not started yet, or between two of its turns."""
        return self.state is JobState.QUEUED

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
