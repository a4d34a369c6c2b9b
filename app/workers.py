"""Workers elsewhere: what the Engine needs to hand its jobs to a cluster instead of running them here.

Plain values and one protocol, with no Ray in sight: the Engine, the page and the API import this
module whether or not a cluster is used, and importing Ray costs seconds (app.cluster does, and only
launch.py's `--cluster` imports it).
"""

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from app.generation.outputs import OutputWriter
from app.job_queue import Placement
from app.jobs import Job
from app.models.registry import ModelEntry


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as the page shows it."""

    name: str                     # "worker 1 on host-a"
    machine: str                  # the host name: its own models/ folder
    holds: str | None             # the checkpoint in its memory
    doing: str                    # one sentence: idle, loading X, a job's step
    checkpoints: tuple[ModelEntry, ...]  # the usable checkpoints in its models folder
    swaps: int = 0                # checkpoints it has loaded so far (the first one counts)
    device: str = ""              # where it generates, in which precision
    pid: int = 0                  # its process on its machine (for whoever looks after the machines)


class Workers(Protocol):
    """The cluster as the Engine sees it (app.cluster.front.ClusterWorkers)."""

    def slots(self) -> int:
        """How many jobs may run at once: one per live worker (at least 1, so jobs wait rather than fail)."""

    def on_slots(self, callback: Callable[[int], None]) -> None:
        """Call `callback(n)` whenever the number of live workers changes."""

    def placement(self, job: Job) -> Placement:
        """Whether a free worker holds the job's checkpoint, only a busy one, or none (the queue's hint)."""

    def run(self, job: Job, writer: OutputWriter, safety_filter: bool = False, vae: str | None = None) -> Any:
        """One turn of `job` on a worker, its pictures saved here by `writer`: the result, or UNFINISHED
        while batches remain. `safety_filter` and `vae`: the front end's switch and VAE choice, now."""

    def statuses(self) -> list[WorkerStatus]:
        ...

    def checkpoints(self) -> list[ModelEntry]:
        """Every checkpoint some worker has, once per title (the workers' lists merged)."""

    def lacking(self, title: str) -> str | None:
        """None when some worker has `title`; else the sentence saying which machines lack it."""

    def description(self) -> str:
        """One sentence: where generation runs."""

    def close(self) -> None:
        ...
