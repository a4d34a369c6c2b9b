"""The board: one small Ray actor beside the workers, for what cannot wait behind a running job.

A replica takes one job at a time (Serve queues anything else sent to it), so the front end's
interrupt, skip and "someone watches the preview" reach a running job through the board, which the
replica reads a few times a second; and each replica posts what it holds and does here, which the
front end reads for the page. Entries of replicas that stopped posting fade out. A front end on Ray
Client (--cluster ray://...) cannot stream a turn's progress: it reads it here instead.
"""

import time

import ray

from app.workers import WorkerStatus

BOARD_NAME = "easel-board"
NAMESPACE = "easel"
STALE_SECONDS = 10.0
MAX_EVENTS = 20  # progress kept per job between two reads  # a replica posts every second; one silent this long is gone


@ray.remote(num_cpus=0, max_restarts=-1)
class Board:
    def __init__(self):
        self._signals: dict[str, dict[str, bool]] = {}
        self._events: dict[str, list] = {}  # job id → progress not yet read (front ends on Ray Client)
        self._workers: dict[str, tuple[float, WorkerStatus]] = {}

    def signal(self, job_id: str, signals: dict[str, bool]) -> None:
        """The front end's latest word for a job: cancel, skip, watched."""
        self._signals[job_id] = signals

    def signals(self, job_id: str) -> dict[str, bool]:
        return self._signals.get(job_id, {})

    def forget(self, job_id: str) -> None:
        self._signals.pop(job_id, None)
        self._events.pop(job_id, None)

    def follow(self, job_id: str, event) -> None:
        """A running turn's progress, for a front end that cannot stream (the latest few are kept)."""
        self._events[job_id] = [*self._events.get(job_id, [])[-(MAX_EVENTS - 1):], event]

    def take(self, job_id: str) -> list:
        return self._events.pop(job_id, [])

    def post(self, replica: str, status: WorkerStatus) -> None:
        self._workers[replica] = (time.monotonic(), status)

    def leave(self, replica: str) -> None:
        self._workers.pop(replica, None)

    def workers(self) -> dict[str, WorkerStatus]:
        """The replicas that posted lately, by replica id."""
        now = time.monotonic()
        self._workers = {key: (at, status) for key, (at, status) in self._workers.items() if now - at < STALE_SECONDS}
        return {key: status for key, (at, status) in self._workers.items()}


def board() -> "ray.actor.ActorHandle":
    """The cluster's board, created by the first caller (the front end) and found by the others."""
    return Board.options(name=BOARD_NAME, namespace=NAMESPACE, get_if_exists=True).remote()
