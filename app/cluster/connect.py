"""Starting or joining the cluster that `--cluster` names, and deploying the workers on it.

    --cluster local:N        a Ray cluster on this machine with N workers (trying it; the tests)
    --cluster auto           the Ray cluster this machine joined with `ray start`
    --cluster ray://HOST:PORT  a remote head, through Ray Client

One replica per GPU in the cluster; on CPU-only clusters one per `cluster_cpu_cores` cores (a local
cluster shares this machine's cores between its N workers). Serve runs without its HTTP proxy and
Ray without its dashboard where Easel starts it: users talk to the front end only.
"""

import logging
import os
from dataclasses import dataclass

import ray
from ray import serve
from ray.serve import RunTarget

from app.cluster.board import NAMESPACE, board
from app.cluster.front import ClusterWorkers
from app.cluster.worker import EaselWorker, WorkerConfig
from app.errors import EaselError
from app.hardware import threads_for_torch
from app.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "easel-workers"
CLIENT_PORT = 10001
# Settings every worker takes from the front end; paths stay each machine's own, but a local
# cluster's workers share this machine's folders and so take those too.
SHARED_SETTINGS = ("device", "lowvram", "medvram", "precision", "watermark", "preview_every", "demo", "torch_compile")
LOCAL_SETTINGS = ("models_dir", "cache_dir", "model_configs_dir")


class ClusterUnreachable(EaselError):
    """The cluster --cluster names could not be reached (the launcher offers to run alone)."""


@dataclass(frozen=True)
class ClusterChoice:
    address: str | None  # None: a local cluster; "auto"; "ray://host:port"
    workers: int = 0     # a local cluster's workers

    @property
    def local(self) -> bool:
        return self.address is None

    @property
    def client(self) -> bool:
        """Through Ray Client, which cannot stream a response."""
        return bool(self.address) and self.address.startswith("ray://")

    def description(self) -> str:
        if self.local:
            return "Generation runs on a local Ray cluster on this machine"
        where = "the Ray cluster this machine joined" if self.address == "auto" else f"the Ray cluster at {self.address}"
        return f"Generation runs on {where}"


def parse_cluster(value: str) -> ClusterChoice:
    """The --cluster flag's value; EaselError with the forms it takes otherwise."""
    text = value.strip()
    if text == "auto":
        return ClusterChoice("auto")
    if text.startswith("ray://") and len(text) > len("ray://"):
        return ClusterChoice(text if ":" in text[len("ray://"):] else f"{text}:{CLIENT_PORT}")
    if text.startswith("local:") and text[len("local:"):].isdigit() and 1 <= int(text[len("local:"):]) <= 64:
        return ClusterChoice(None, int(text[len("local:"):]))
    raise EaselError(f"--cluster takes auto, ray://HOST:PORT or local:N (N workers, 1 to 64), not '{value}'.")


def worker_config(settings: Settings, choice: ClusterChoice, threads: int) -> WorkerConfig:
    names = SHARED_SETTINGS + (LOCAL_SETTINGS if choice.local else ())
    return WorkerConfig({name: _plain(getattr(settings, name)) for name in names}, threads=threads)


def _plain(value):
    return str(value) if isinstance(value, os.PathLike) else value


@dataclass(frozen=True)
class Shape:
    """How many replicas, and what each takes."""

    replicas: int
    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


def shape_for(resources: dict, cpu_cores: int) -> Shape:
    """One replica per GPU; without GPUs, one per `cpu_cores` CPUs (at least one)."""
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return Shape(gpus, 1, 1)
    cpus = int(resources.get("CPU", 1))
    cores = max(1, min(cpu_cores, cpus))
    return Shape(max(1, cpus // cores), cores, 0)


def local_shape(workers: int, cores: int, gpus: int) -> Shape:
    """N workers on this machine: its cores shared out (at least one each), and its GPUs."""
    return Shape(workers, max(1, cores // workers), gpus / workers if gpus else 0)


def unreachable_sentence(choice: ClusterChoice, error: BaseException) -> str:
    if choice.address == "auto":
        return ("Easel could not find a Ray cluster on this machine (--cluster auto). Start one with "
                "'.venv/bin/ray start --head' (see the README's team cluster section), or use --cluster local:2 "
                f"to try workers on this machine. ({error})")
    return (f"Easel could not reach the Ray cluster at {choice.address}. Check that its head runs "
            f"('ray start --head') and that this machine can reach that port. ({error})")


class Deployment:
    """The workers' Serve application, kept at one replica per GPU (or share of CPU cores)."""

    def __init__(self, choice: ClusterChoice, settings: Settings, fixed: Shape | None = None):
        self._choice = choice
        self._settings = settings
        self._fixed = fixed  # a local cluster's: N workers, whatever Ray counts
        self._shape: Shape | None = None
        self.handle = None

    def scale(self) -> None:
        """Deploy, or redeploy with more replicas when machines joined (existing replicas keep running)."""
        shape = self._fixed or shape_for(ray.cluster_resources(), self._settings.cluster_cpu_cores)
        if shape == self._shape:
            return
        if self._shape is not None:
            log.info("The cluster changed: %d workers from now on.", shape.replicas)
        options = {"num_cpus": shape.cpus, "num_gpus": shape.gpus}
        app = EaselWorker.options(num_replicas=shape.replicas, ray_actor_options=options).bind(
            worker_config(self._settings, self._choice, shape.threads))
        # Not waiting for the replicas to start (each loads torch and scans its models folder): the page
        # opens meanwhile and says so, and a job sent now waits in Serve for the first free replica.
        self.handle = serve.run_many([RunTarget(app, name=APP_NAME, route_prefix=None)],
                                     wait_for_applications_running=False)[0]
        self._shape = shape


def connect(value: str, settings: Settings) -> ClusterWorkers:
    """Start or join the cluster, deploy the workers; ClusterUnreachable when it cannot be reached."""
    choice = parse_cluster(value)
    fixed = local_shape(choice.workers, threads_for_torch(), _local_gpus(settings)) if choice.local else None
    try:
        if fixed is not None:
            ray.init(num_cpus=int(fixed.cpus) * fixed.replicas, num_gpus=round(fixed.gpus * fixed.replicas),
                     include_dashboard=False, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address=choice.address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as error:  # Ray raises ConnectionError, RuntimeError, grpc errors... all mean "not there"
        raise ClusterUnreachable(unreachable_sentence(choice, error)) from error
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # a terminal for people: Easel's lines, not Serve's
    serve.start(proxy_location="Disabled")
    deployment = Deployment(choice, settings, fixed)
    deployment.scale()
    return ClusterWorkers(deployment.handle, board(), choice.description(),
                          scale=None if choice.local else deployment.scale, on_close=disconnect,
                          streaming=not choice.client)


def _local_gpus(settings: Settings) -> int:
    if settings.device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count()


def disconnect() -> None:
    """Take the workers down and leave the cluster (a local one stops with it)."""
    try:
        serve.delete(APP_NAME)
    except Exception as error:  # already gone with the cluster
        log.debug("Removing the workers: %s", error)
    ray.shutdown()
