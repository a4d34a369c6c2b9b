"""The job queue: a turn at a time on each worker, fair between users; positions and ETAs.

Fairness: each worker (the device, or one Ray Serve replica per slot) runs one *turn* at a time,
and turns go round-robin between the owners who have work waiting. A turn is one batch of a
generation (a job with batch count 50 has 50 turns) or a whole upscale, so one person's long job
never holds a worker for more than a batch while a colleague waits. One rule, `turn_order`, both
picks the next turn and tells each waiting job its position and ETA, so what a user is told is what
happens. With several slots a free one takes the first *waiting* job in that order: a job's own
turns never run at once, so its batches stay in order. On a cluster, `next_turn` may let a job
whose checkpoint a free worker holds go before one whose holder is busy (see `Placement`).

Longer than 300 lines because the worker threads, positions and ETAs share one lock and one rule.
"""

import collections
import enum
import logging
import threading
import time
from typing import Any, Callable, Sequence

from app.errors import EaselError, QueueFull
from app.jobs import UNFINISHED, Job, JobState

log = logging.getLogger(__name__)


def turn_order(lines: dict[str, list[Job]], served: dict[str, int], running: Sequence[Job] = ()) -> list[Job]:
    """Every waiting turn in the order it will run (a job appears once per turn it needs).

    `lines`: each owner's waiting jobs, front first, owners in the order they first asked.
    `served`: the number of the last turn each owner had. Owners take turns, one turn each per
    round, the least recently served first (those never served by when they first asked). Each
    running job's remaining turns come first in its owner's line (in the order they started), and
    that owner was served last.
    """
    lines = {owner: list(line) for owner, line in lines.items()}
    ahead: dict[str, list[Job]] = {}
    for job in running:
        if job.turns_left > 1 and not job.cancelled:
            ahead.setdefault(job.owner, []).append(job)
    for owner, jobs in ahead.items():
        lines[owner] = [*jobs, *lines.get(owner, [])]
    now = {id(job) for job in running}
    left = {id(job): job.turns_left - (id(job) in now) for line in lines.values() for job in line}
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


class Placement(enum.Enum):
    """Where a waiting job would run now (a cluster's answer; one machine: always ANY)."""

    READY = "ready"      # a free worker holds its checkpoint
    WAITING = "waiting"  # only busy workers hold it: it would rather wait for one than make another swap
    ANY = "any"          # nobody holds it: whichever worker takes it loads it


def next_turn(order: list[Job], placement: Callable[[Job], Placement]) -> Job | None:
    """The turn a free worker takes: the first in `order`, unless that one would rather wait for the
    busy worker holding its checkpoint and a later one is READY for a free worker. It never waits
    longer than its holder's current turn: then it is READY, and first again."""
    if not order:
        return None
    first = order[0]
    if placement(first) is not Placement.WAITING:
        return first
    return next((job for job in order[1:] if placement(job) is Placement.READY), first)


class JobQueue:
    """`slots` worker threads, one per device or replica; waiting jobs take turns round-robin
    between owners. Everything shared is read and written under one Condition."""

    def __init__(self, run: Callable[[Job], Any], max_size: int = 100, max_per_owner: int | None = None,
                 on_idle: Callable[[], None] | None = None, estimate: Callable[[Job], float | None] | None = None,
                 slots: int = 1, placement: Callable[[Job], Placement] | None = None):
        self._run = run
        self._placement = placement or (lambda job: Placement.ANY)
        # Seconds left of a job's current turn (a waiting job: its whole next turn), from measured speed;
        # None where it has nothing to go by: then this queue's own timing of past turns of the kind.
        self._estimate = estimate or (lambda job: None)
        self._on_idle = on_idle  # called when a turn ends, no job waits and no other turn runs
        self._max_size = max_size
        self._max_per_owner = max_per_owner or max_size
        # Owner → their waiting jobs (front runs first), in the order the owners first asked.
        self._queues: collections.OrderedDict[str, collections.deque[Job]] = collections.OrderedDict()
        self._served: dict[str, int] = {}  # owner → number of the last turn they had
        self._turn_number = 0
        self._started: dict[Job, float] = {}  # running job → when its turn started, in the order they started
        self._seconds_per_cost: dict[str, float] = {}  # rate key → measured seconds per unit of work
        self._lock = threading.Condition()
        self._closed = False
        self._slots = 0
        self._workers: dict[int, threading.Thread] = {}  # slot index → its thread, until it stops
        self.set_slots(slots)

    @property
    def slots(self) -> int:
        return self._slots

    def set_slots(self, slots: int) -> None:
        """Run up to `slots` turns at once from now on. A surplus worker finishes its turn, then stops."""
        if slots < 1:
            raise ValueError(f"A job queue needs at least one slot, not {slots}.")
        with self._lock:
            self._slots = slots
            for index in range(slots):
                if index not in self._workers and not self._closed:
                    worker = threading.Thread(target=self._work, args=(index,), name=f"easel-jobs-{index}", daemon=True)
                    self._workers[index] = worker
                    worker.start()
            self._lock.notify_all()  # surplus idle workers wake up and stop

    def running_jobs(self) -> list[Job]:
        """The jobs whose turn runs now, in the order they started."""
        with self._lock:
            return list(self._started)

    @property
    def running(self) -> Job | None:  # the first of them, for callers that assume one device
        with self._lock:
            return next(iter(self._started), None)

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
        """0 while running (or done); else 1 + how many jobs have a turn before this job's next one
        (every running job counts as ahead)."""
        with self._lock:
            order = self._turn_order()
            if job in self._started or job not in order:
                return 0
            ahead = {id(other) for other in order[: order.index(job)]} | {id(other) for other in self._started}
            return len(ahead) + 1

    def eta_seconds(self, job: Job) -> float | None:
        """Roughly how long until `job`'s next turn starts; None when there is nothing to go by yet.
        The turns ahead (running ones included) shared evenly between the slots: rough, but honest."""
        with self._lock:
            order = self._turn_order()
            if job in self._started or job not in order:
                return None
            turns = list(self._started) + order[: order.index(job)]
            costs = [self._turn_seconds(turn) for turn in turns]
            return None if None in costs else sum(costs) / self._slots

    def _turn_seconds(self, job: Job) -> float | None:
        """Seconds left of `job`'s running turn, or its whole next turn."""
        estimate = self._estimate(job)
        if estimate is not None:
            return estimate
        rate = self._seconds_per_cost.get(job.rate_key)
        if rate is None:
            return None
        cost = rate * job.turn_cost
        started = self._started.get(job)
        if started is not None:
            cost -= min(time.monotonic() - started, cost)  # part of it is done
        return cost

    def waiting_count(self) -> int:
        with self._lock:
            return len(self._waiting_jobs())

    def jobs_of(self, owner: str) -> list[Job]:
        """The owner's jobs that are running or waiting, in the order they will run."""
        with self._lock:
            jobs = [job for job in self._started if job.owner == owner]
            return jobs + [job for job in self._queues.get(owner, ()) if job not in jobs]

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything, running or waiting, and wait (up to `timeout` in all) for the workers."""
        with self._lock:
            self._closed = True
            for job in self._waiting_jobs():
                job.cancel()
                job._set_state(JobState.CANCELLED)
            self._queues.clear()
            for job in self._started:
                job.cancel()
            workers = list(self._workers.values())
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))

    # --- the workers -----------------------------------------------------------------------

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
        return turn_order(lines, self._served, list(self._started))

    def _takeable(self) -> Job | None:  # a running job's next turn waits for this one to end
        return next_turn([job for job in self._turn_order() if job not in self._started], self._placement)

    def _ready(self, index: int) -> bool:
        """Whether worker `index` must stop or has a turn to take. Each look drops the jobs cancelled
        while waiting, so they are told so even when no turn may start now."""
        self._drop_cancelled()
        return self._closed or index >= self._slots or self._takeable() is not None

    def _next(self, index: int) -> Job | None:
        """The job whose turn is next by `turn_order`, taken out of its owner's line; None: stop."""
        with self._lock:
            self._lock.wait_for(lambda: self._ready(index))
            if self._closed or index >= self._slots:
                del self._workers[index]
                return None
            job = self._takeable()
            queue = self._queues[job.owner]
            queue.remove(job)
            if not queue:
                del self._queues[job.owner]
            self._served[job.owner] = self._turn_number
            self._turn_number += 1
            self._started[job] = time.monotonic()
            return job

    def _work(self, index: int) -> None:
        try:
            while (job := self._next(index)) is not None:
                again = False
                try:
                    again = self._execute(job)
                finally:
                    idle = self._turn_ended(job, again)
                if idle and self._on_idle is not None:
                    try:
                        self._on_idle()  # the job's result is out already: nobody waits for this
                    except Exception:
                        log.exception("The queue's idle task failed")
        finally:  # a worker that died of something worse than a job's error frees its slot for set_slots
            with self._lock:
                if self._workers.get(index) is threading.current_thread():
                    del self._workers[index]

    def _turn_ended(self, job: Job, again: bool) -> bool:
        """Learn from the turn, put the job back in line when it needs another; True when all is idle."""
        with self._lock:
            self._learn(job)
            del self._started[job]
            if again and self._closed:
                job._set_state(JobState.CANCELLED)
                return False
            if again:
                # First in its owner's own line; the owner, just served, waits for everyone else.
                self._queues.setdefault(job.owner, collections.deque()).appendleft(job)
                job._set_state(JobState.QUEUED)
            self._lock.notify_all()  # its next turn, or a job that waited for it, may be takeable now
            return not self._queues and not self._started

    def _learn(self, job: Job) -> None:
        """Update the measured speed of this kind of job (a running average over recent turns)."""
        started = self._started.get(job)
        if started is None or job.turn_cost <= 0:
            return
        rate = (time.monotonic() - started) / job.turn_cost
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
