"""The cluster code's pure parts, without a cluster: routing ranks, the --cluster flag, replica
shapes, worker settings, one batch of a request, what the front end tells the queue and the page,
and what travels on the wire. Nothing here starts Ray; it only imports it.
"""

import threading
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the cluster packages (pip install -e .[cluster]) are not installed")

from PIL import Image  # noqa: E402

from app import errors  # noqa: E402
from app.cluster.connect import (  # noqa: E402
    CLIENT_PORT,
    ClusterChoice,
    Shape,
    local_shape,
    parse_cluster,
    shape_for,
    unreachable_sentence,
    worker_config,
)
from app.cluster.front import ClusterWorkers, one_batch  # noqa: E402
from app.cluster.routing import Candidate, ranked  # noqa: E402
from app.cluster.wire import Failed, picture_of, png_bytes  # noqa: E402
from app.errors import EaselError  # noqa: E402
from app.generation.requests import GenerationRequest  # noqa: E402
from app.job_queue import Placement  # noqa: E402
from app.jobs import Job  # noqa: E402
from app.kinds import JobKind  # noqa: E402
from app.models.families import Family  # noqa: E402
from app.models.registry import ModelEntry  # noqa: E402
from app.settings import load_settings  # noqa: E402
from app.workers import WorkerStatus  # noqa: E402

CKPT = "tiny-a"

# --- routing: which replica takes a request ------------------------------------------------------


def candidate(key: str, holds=(), files=(), last_used: float = 0.0) -> Candidate:
    return Candidate(key, frozenset(holds), None if files is None else frozenset(files), last_used)


def test_the_holder_ranks_first():
    candidates = [candidate("has", files={CKPT}, last_used=1), candidate("holder", holds={CKPT}, files={CKPT}, last_used=9)]
    assert ranked(candidates, CKPT) == [["holder"], ["has"]]


def test_after_a_busy_holder_those_with_the_file_come_least_recently_used_first():
    candidates = [
        candidate("holder", holds={CKPT}, files={CKPT}, last_used=10),
        candidate("recent", holds={"tiny-b"}, files={CKPT, "tiny-b"}, last_used=8),
        candidate("old", files={CKPT}, last_used=3),
    ]
    assert ranked(candidates, CKPT) == [["holder"], ["old"], ["recent"]]


def test_a_replica_without_the_file_is_never_ranked_while_another_has_it():
    candidates = [candidate("lacks", files={"tiny-b"}, last_used=0), candidate("has", files={CKPT}, last_used=5)]
    ranks = ranked(candidates, CKPT)
    assert ranks == [["has"]]
    assert "lacks" not in [key for rank in ranks for key in rank]


def test_replicas_that_have_not_reported_their_files_rank_last():
    candidates = [candidate("unknown", files=None, last_used=0), candidate("has", files={CKPT}, last_used=5)]
    assert ranked(candidates, CKPT) == [["has"], ["unknown"]]


def test_when_nobody_has_the_file_every_replica_may_take_it_oldest_first():
    # The job is then answered with the sentence saying what is missing where, not left waiting.
    candidates = [candidate("b", files={"tiny-b"}, last_used=7), candidate("c", files=set(), last_used=2)]
    assert ranked(candidates, CKPT) == [["c", "b"]]


def test_without_a_checkpoint_an_upscale_goes_to_the_least_recently_used():
    candidates = [candidate("new", holds={CKPT}, files={CKPT}, last_used=9), candidate("old", files=None, last_used=1)]
    assert ranked(candidates, "") == [["old"], ["new"]]


# --- the --cluster flag ---------------------------------------------------------------------------


def test_parse_cluster_auto():
    assert parse_cluster(" auto ") == ClusterChoice("auto")
    assert not parse_cluster("auto").local


def test_parse_cluster_remote_head_keeps_its_port():
    assert parse_cluster("ray://head.example:4321") == ClusterChoice("ray://head.example:4321")


def test_parse_cluster_remote_head_without_a_port_takes_ray_clients():
    assert parse_cluster("ray://head.example") == ClusterChoice(f"ray://head.example:{CLIENT_PORT}")
    assert CLIENT_PORT == 10001


def test_parse_cluster_local():
    choice = parse_cluster("local:2")
    assert choice == ClusterChoice(None, 2)
    assert choice.local


@pytest.mark.parametrize("value", ["local:0", "local:x", "bogus", "ray://", "local:65"])
def test_parse_cluster_refuses_anything_else_naming_the_three_forms(value):
    with pytest.raises(EaselError) as raised:
        parse_cluster(value)
    sentence = raised.value.message
    assert "auto" in sentence and "ray://HOST:PORT" in sentence and "local:N" in sentence
    assert f"'{value}'" in sentence


# --- replica shapes -------------------------------------------------------------------------------


def test_one_replica_per_gpu():
    assert shape_for({"GPU": 3.0, "CPU": 32.0}, cpu_cores=4) == Shape(replicas=3, cpus=1, gpus=1)


def test_cpu_only_one_replica_per_share_of_cores():
    shape = shape_for({"CPU": 16.0}, cpu_cores=4)
    assert shape == Shape(replicas=4, cpus=4, gpus=0)
    assert shape.threads == 4


def test_fewer_cores_than_a_share_still_make_one_replica_of_all_of_them():
    assert shape_for({"CPU": 2.0}, cpu_cores=4) == Shape(replicas=1, cpus=2, gpus=0)


def test_a_local_cluster_shares_this_machines_cores_between_its_workers():
    shape = local_shape(2, 2, 0)
    assert shape == Shape(replicas=2, cpus=1, gpus=0)
    assert shape.threads == 1


# --- settings each worker takes -------------------------------------------------------------------


def test_a_local_clusters_workers_share_this_machines_folders(tmp_path):
    settings = load_settings({"models_dir": str(tmp_path / "models"), "cache_dir": str(tmp_path / "cache")})
    config = worker_config(settings, parse_cluster("local:2"), threads=3)
    assert config.overrides["models_dir"] == str(tmp_path / "models")
    assert config.overrides["cache_dir"] == str(tmp_path / "cache")
    assert isinstance(config.overrides["models_dir"], str)  # plain values travel, not Paths
    assert config.overrides["device"] == settings.device
    assert config.threads == 3


def test_a_remote_clusters_workers_keep_their_own_folders(tmp_path):
    settings = load_settings({"models_dir": str(tmp_path / "models")})
    config = worker_config(settings, parse_cluster("auto"), threads=1)
    assert "models_dir" not in config.overrides
    assert "cache_dir" not in config.overrides
    assert config.overrides["precision"] == settings.precision
    assert not any(isinstance(value, Path) for value in config.overrides.values())


def test_unreachable_sentences_say_what_to_do():
    auto = unreachable_sentence(ClusterChoice("auto"), ConnectionError("no head"))
    assert "ray start --head" in auto and "--cluster local:2" in auto and "no head" in auto
    remote = unreachable_sentence(ClusterChoice("ray://head.example:10001"), ConnectionError("refused"))
    assert "ray://head.example:10001" in remote and "refused" in remote


# --- one batch of a request -----------------------------------------------------------------------


def test_one_batch_carries_that_batchs_seeds():
    request = GenerationRequest(prompt="a cat", batch_size=2, batch_count=3, seed=100, subseed=7,
                                styles=["kept here"]).validated()
    batch = one_batch(request, 1, CKPT)
    assert (batch.seed, batch.subseed) == (102, 9)
    assert batch.batch_count == 1 and batch.batch_size == 2
    assert batch.model == CKPT
    assert batch.styles == []  # the front end expanded them already
    assert batch.seeds() == request.seeds()[2:4]
    assert batch.subseeds() == request.subseeds()[2:4]


# --- what the front end tells the queue and the page -----------------------------------------------


def entry(title: str, name: str | None = None, model_hash: str | None = None) -> ModelEntry:
    name = name or title
    return ModelEntry(title=title, name=name, path=Path("/models") / f"{name}.safetensors", family=Family.SD1,
                      model_hash=model_hash)


def status(name: str, machine: str, holds: str | None = None, checkpoints=()) -> WorkerStatus:
    return WorkerStatus(name=name, machine=machine, holds=holds, doing="idle", checkpoints=tuple(checkpoints))


def workers(*statuses: WorkerStatus, holding=None, busy=None, sent=None) -> ClusterWorkers:
    """A ClusterWorkers as its watcher would leave it, without the watcher (no cluster to watch)."""
    front = object.__new__(ClusterWorkers)
    front._lock = threading.Lock()
    front._statuses = {s.name: s for s in statuses}
    front._holding = dict(holding or {})
    front._busy = dict(busy or {})
    front._sent = dict(sent or {})
    return front


def generation(model: str | None = CKPT) -> Job:
    return Job(GenerationRequest(prompt="a cat", model=model), JobKind.TXT2IMG, "ann")


def test_lacking_names_every_machine_and_the_file():
    front = workers(status("worker 1 on host-a", "host-a", checkpoints=[entry("tiny-b")]),
                    status("worker 2 on host-b", "host-b"),
                    status("worker 3 on host-b", "host-b"))
    sentence = front.lacking(CKPT)
    assert sentence is not None
    assert f"'{CKPT}'" in sentence
    assert "host-a, host-b lack it" in sentence
    assert "models/Stable-diffusion" in sentence


def test_lacking_one_machine():
    sentence = workers(status("worker 1 on host-a", "host-a")).lacking(CKPT)
    assert sentence is not None and "host-a lacks it" in sentence


@pytest.mark.parametrize("asked", ["sd/tiny-a.safetensors", "tiny-a", "sd/tiny-a.safetensors [0123456789]"])
def test_nothing_lacks_when_some_worker_has_the_checkpoint(asked):
    front = workers(status("worker 1 on host-a", "host-a"),
                    status("worker 1 on host-b", "host-b",
                           checkpoints=[entry("sd/tiny-a.safetensors", name="tiny-a", model_hash="0123456789")]))
    assert front.lacking(asked) is None


def test_nothing_lacks_before_any_worker_reported():
    assert workers().lacking(CKPT) is None  # the job waits for the workers rather than failing now


def test_checkpoints_merges_the_workers_lists_once_per_title():
    front = workers(status("worker 1 on host-a", "host-a", checkpoints=[entry("tiny-a"), entry("tiny-b")]),
                    status("worker 1 on host-b", "host-b", checkpoints=[entry("tiny-b"), entry("tiny-c")]))
    assert sorted(e.title for e in front.checkpoints()) == ["tiny-a", "tiny-b", "tiny-c"]


def test_ready_when_an_idle_worker_holds_the_checkpoint():
    front = workers(status("w1", "host-a", holds="tiny-b"), status("w2", "host-b", holds=CKPT),
                    busy={"someone-else": "w1"})
    assert front.placement(generation()) is Placement.READY


def test_waiting_when_only_a_busy_worker_holds_it():
    front = workers(status("w1", "host-a", holds=CKPT), status("w2", "host-b", holds="tiny-b"),
                    busy={"someone-else": "w1"})
    assert front.placement(generation()) is Placement.WAITING


def test_waiting_when_a_turn_for_it_was_sent_and_has_not_started():
    front = workers(status("w1", "host-a", holds="tiny-b"), sent={"someone-else": CKPT})
    assert front.placement(generation()) is Placement.WAITING


def test_the_front_ends_own_turns_know_sooner_than_the_posts():
    # w1 posted it holds tiny-b, but a turn that started since loaded tiny-a there.
    front = workers(status("w1", "host-a", holds="tiny-b"), holding={"w1": CKPT})
    assert front.placement(generation()) is Placement.READY
    assert front.placement(generation("tiny-b")) is Placement.ANY


def test_any_when_nobody_holds_it():
    front = workers(status("w1", "host-a", holds="tiny-b"), status("w2", "host-b", holds=None))
    assert front.placement(generation()) is Placement.ANY


def test_an_upscale_may_go_anywhere():
    front = workers(status("w1", "host-a", holds=CKPT))
    upscale = Job(GenerationRequest(model=CKPT), JobKind.UPSCALE, "ann")
    assert front.placement(upscale) is Placement.ANY


# --- the wire ---------------------------------------------------------------------------------------


def test_a_failure_comes_back_as_its_own_error_type():
    error = Failed("ModelNotFound", "There is no checkpoint named 'x'.").error()
    assert type(error) is errors.ModelNotFound
    assert error.message == "There is no checkpoint named 'x'."


@pytest.mark.parametrize("name", ["NoSuchError", "__name__", "TooManyAttempts"])
def test_an_unknown_or_unsuitable_type_name_comes_back_as_a_plain_easel_error(name):
    error = Failed(name, "Something went wrong.").error()
    assert type(error) is EaselError
    assert error.message == "Something went wrong."


def test_pictures_travel_as_png_without_loss():
    picture = Image.new("RGB", (5, 3), (10, 20, 30))
    picture.putpixel((4, 2), (255, 0, 128))
    back = picture_of(png_bytes(picture))
    assert back.mode == "RGB" and back.size == (5, 3)
    assert list(back.getdata()) == list(picture.getdata())


def test_a_palette_picture_comes_back_as_rgb():
    picture = Image.new("RGB", (4, 4), (200, 100, 50)).convert("P")
    back = picture_of(png_bytes(picture))
    assert back.mode == "RGB"
    assert back.getpixel((0, 0)) == picture.convert("RGB").getpixel((0, 0))
