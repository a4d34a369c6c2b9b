"""The job queue: one turn at a time on the device, fair between users; positions and ETAs.

Fairness: the device runs one *turn* at a time, and turns go round-robin between the owners who
have work waiting. A turn is one batch of a generation (a job with batch count 50 has 50 turns)
or a whole upscale, so one person's long job never holds the device for more than a batch while
a colleague waits. One rule, `turn_order`, both picks the next turn and tells each waiting job its
position and ETA, so what a user is told is what happens.
"""

import collections
import logging
import threading
import time
from typing import Any, Callable

from app.errors import EaselError, QueueFull
from app.jobs import UNFINISHED, Job, JobState

log = logging.getLogger(__name__)


def turn_order(lines: dict[str, list[Job]], served: dict[str, int], running: Job | None = None) -> list[Job]:
    """Every waiting turn in the order it will run (a job appears once per turn it needs).

    `lines`: each owner's waiting jobs, front first, owners in the order they first asked.
    `served`: the number of the last turn each owner had. Owners take turns, one turn each per
    round, the least recently served first (those never served by when they first asked). The
    running job's remaining turns come first in its owner's line, and that owner was served last.
    """
    lines = {owner: list(line) for owner, line in lines.items()}
    if running is not None and running.turns_left > 1 and not running.cancelled:
        lines[running.owner] = [running, *lines.get(running.owner, [])]
    left = {id(job): job.turns_left - (job is running) for line in lines.values() for job in line}
    rotation = [lines[owner] for owner in sorted(lines, key=lambda owner: served.get(owner, -1)) if lines[owner]]
    order: list[Job] = []
    while rotation:
        for line in rotation:
            job = line[0]
            order.append(job)
            left[id(job)] -= 1
            if left[id(job)] <= 0:
                line.pop(0)
        rotation = [line for line in rotation if line]
    return order


class JobQueue:
    """One worker thread owns the device; waiting jobs take turns round-robin between owners."""

    def __init__(self, run: Callable[[Job], Any], max_size: int = 100, max_per_owner: int | None = None,
                 on_idle: Callable[[], None] | None = None, estimate: Callable[[Job], float | None] | None = None):
        self._run = run
        # Seconds left of a job's current turn (a waiting job: its whole next turn), from measured speed;
        # None where it has nothing to go by: then this queue's own timing of past turns of the kind.
        self._estimate = estimate or (lambda job: None)
        self._on_idle = on_idle  # called by the worker when a turn ends and no job waits
        self._max_size = max_size
        self._max_per_owner = max_per_owner or max_size
        # Owner → their waiting jobs (front runs first), in the order the owners first asked.
        self._queues: collections.OrderedDict[str, collections.deque[Job]] = collections.OrderedDict()
        self._served: dict[str, int] = {}  # owner → number of the last turn they had
        self._turn_number = 0
        self._running: Job | None = None
        self._turn_started: float | None = None
        self._seconds_per_cost: dict[str, float] = {}  # rate key → measured seconds per unit of work
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
            self._drop_cancelled()  # jobs cancelled while waiting no longer count against anyone
            waiting = self._waiting_jobs()
            if len(waiting) >= self._max_size:
                raise QueueFull(
                    f"Easel is busy: {len(waiting)} jobs are already waiting, the most this server takes. "
                    "Try again in a few minutes."
                )
            own = sum(1 for other in waiting if other.owner == job.owner)
            if own >= self._max_per_owner:
                raise QueueFull(
                    f"You already have {own} jobs waiting, the most one person may queue. Wait for some "
                    "to finish (or cancel them), then try again."
                )
            self._queues.setdefault(job.owner, collections.deque()).append(job)
            self._lock.notify_all()
        return job

    def position(self, job: Job) -> int:
        """0 while running (or done); else 1 + how many jobs have a turn before this job's next one."""
        with self._lock:
            order = self._turn_order()
            if job is self._running or job not in order:
                return 0
            ahead = {id(other) for other in order[: order.index(job)]}
            if self._running is not None:
                ahead.add(id(self._running))
            return len(ahead) + 1

    def eta_seconds(self, job: Job) -> float | None:
        """Roughly how long until `job`'s next turn starts; None when there is nothing to go by yet."""
        with self._lock:
            order = self._turn_order()
            if job is self._running or job not in order:
                return None
            turns = ([self._running] if self._running else []) + order[: order.index(job)]
            costs = [self._turn_seconds(turn) for turn in turns]
            return None if None in costs else sum(costs)

    def _turn_seconds(self, job: Job) -> float | None:
        """Seconds left of `job`'s running turn, or its whole next turn."""
        estimate = self._estimate(job)
        if estimate is not None:
            return estimate
        rate = self._seconds_per_cost.get(job.rate_key)
        if rate is None:
            return None
        cost = rate * job.turn_cost
        if job is self._running and self._turn_started is not None:
            cost -= min(time.monotonic() - self._turn_started, cost)  # part of it is done
        return cost

    def waiting_count(self) -> int:
        with self._lock:
            return len(self._waiting_jobs())

    def jobs_of(self, owner: str) -> list[Job]:
        """The owner's jobs that are running or waiting, in the order they will run."""
        with self._lock:
            jobs = [self._running] if self._running is not None and self._running.owner == owner else []
            return jobs + [job for job in self._queues.get(owner, ()) if job not in jobs]

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            for job in self._waiting_jobs():
                job.cancel()
                job._set_state(JobState.CANCELLED)
            self._queues.clear()
            self._lock.notify_all()
        if self._running is not None:
            self._running.cancel()
        self._worker.join(timeout)

    # --- the worker ------------------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        for owner, queue in list(self._queues.items()):
            for job in [job for job in queue if job.cancelled and not job.started]:
                queue.remove(job)
                job._set_state(JobState.CANCELLED)
            if not queue:
                del self._queues[owner]

    def _waiting_jobs(self) -> list[Job]:
        return [job for queue in self._queues.values() for job in queue]

    def _turn_order(self) -> list[Job]:
        lines = {owner: [job for job in queue if not (job.cancelled and not job.started)]
                 for owner, queue in self._queues.items()}
        return turn_order(lines, self._served, self._running)

    def _next(self) -> Job | None:
        """The job whose turn is next by `turn_order`, taken out of its owner's line."""
        with self._lock:
            while True:
                self._lock.wait_for(lambda: self._queues or self._closed)
                if self._closed:
                    return None
                self._drop_cancelled()
                if self._queues:
                    break
            job = self._turn_order()[0]
            queue = self._queues[job.owner]
            queue.remove(job)
            if not queue:
                del self._queues[job.owner]
            self._served[job.owner] = self._turn_number
            self._turn_number += 1
            self._running = job
            self._turn_started = time.monotonic()
            return job

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                again = self._execute(job)
            finally:
                with self._lock:
                    self._learn(job)
                    self._running = None
            if again:
                with self._lock:
                    if self._closed:
                        job._set_state(JobState.CANCELLED)
                        continue
                    # First in its owner's own line; the owner, just served, waits for everyone else.
                    self._queues.setdefault(job.owner, collections.deque()).appendleft(job)
                    job._set_state(JobState.QUEUED)
                    self._lock.notify_all()
            if self._on_idle is not None and not self._queues:
                try:
                    self._on_idle()  # the job's result is out already: nobody waits for this
                except Exception:
                    log.exception("The queue's idle task failed")

    def _learn(self, job: Job) -> None:
        """Update the measured speed of this kind of job (a running average over recent turns)."""
        if self._turn_started is None or job.turn_cost <= 0:
            return
        rate = (time.monotonic() - self._turn_started) / job.turn_cost
        previous = self._seconds_per_cost.get(job.rate_key)
        self._seconds_per_cost[job.rate_key] = rate if previous is None else 0.7 * previous + 0.3 * rate

    def _execute(self, job: Job) -> bool:
        """One turn of `job`; True when it needs another."""
        if job.cancelled and not job.started:
            job._set_state(JobState.CANCELLED)
            return False
        if not job.started:
            job.report(started_at=time.monotonic())
        job.started = True
        job._set_state(JobState.RUNNING)
        try:
            result = self._run(job)
        except EaselError as error:
            job._set_state(JobState.FAILED, error=error)
            return False
        except Exception as error:  # a bug: the worker must survive it, the user must hear of it
            log.exception("Job %s failed", job.id)
            job._set_state(JobState.FAILED, error=error)
            return False
        if result is UNFINISHED:
            job.turns_left = max(1, job.turns_left - 1)
            return True
        job._set_state(JobState.DONE, result=result)
        return False
