"""Easel on a local Ray cluster of two CPU workers (`--cluster local:2`), with tiny models.

One cluster for the module (starting Ray and two replicas takes most of the time; test.sh runs each
file on one worker, in order); the test that kills a replica runs last. Every test waits on the job, never on a clock.
"""

import os
import signal
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the cluster packages (pip install -e .[cluster]) are not installed")

from app.cluster.connect import connect  # noqa: E402
from app.cluster.front import LOST  # noqa: E402
from app.engine import create_engine  # noqa: E402
from app.errors import ModelNotFound  # noqa: E402
from app.generation.requests import GenerationRequest  # noqa: E402
from app.models.families import Family  # noqa: E402
from tests.conftest import CPU_ONLY, make_engine, make_settings  # noqa: E402
from tools.tiny_models import save_tiny_model  # noqa: E402

A, B = "tiny-a", "tiny-b"
WORKERS_UP = 180  # seconds: two replicas import torch and scan the folder, on 2 busy cores


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"Gave up waiting for {what}.")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    models = tmp_path_factory.mktemp("cluster-models")
    save_tiny_model(models / "Stable-diffusion" / A, Family.SD1, seed=0)
    save_tiny_model(models / "Stable-diffusion" / B, Family.SD1, seed=1)
    return models


@pytest.fixture(scope="module")
def cluster(models_dir, tiny_configs_dir, tmp_path_factory):
    """The front end's Engine over `--cluster local:2`."""
    tmp = tmp_path_factory.mktemp("cluster")
    settings = make_settings(tmp, models_dir, model_configs_dir=str(tiny_configs_dir), preview_every=1)
    engine = create_engine(settings, CPU_ONLY, workers=connect("local:2", settings))
    try:
        wait_until(lambda: len(engine.status().workers) == 2, WORKERS_UP, "two workers to report")
        yield engine
    finally:
        engine.close()


def outputs(engine) -> list:
    return sorted(engine.outputs_folder().rglob("*.png"))


def swaps(engine) -> int:
    return sum(worker.swaps for worker in engine.status().workers)


def request(model: str, seed: int, **fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a lighthouse", "model": model, "width": 64, "height": 64, "steps": 3,
                                "seed": seed, **fields})


def test_the_same_seed_gives_the_same_pixels_and_text_as_one_machine(cluster, models_dir, tiny_configs_dir, tmp_path):
    before = outputs(cluster)
    remote = cluster.generate(request(A, 7, batch_count=2, subseed=3, subseed_strength=0.3), timeout=120)
    single = make_engine(make_settings(tmp_path, models_dir, model_configs_dir=str(tiny_configs_dir)))
    try:
        local = single.generate(request(A, 7, batch_count=2, subseed=3, subseed_strength=0.3), timeout=120)
    finally:
        single.close()
    assert [image.seed for image in remote.images] == [7, 8]
    for mine, theirs in zip(remote.images, local.images, strict=True):
        assert np.array_equal(np.asarray(mine.image), np.asarray(theirs.image))
        assert mine.parameters == theirs.parameters
    # Saved once, by the front end, in its own outputs folder.
    new = [path for path in outputs(cluster) if path not in before]
    assert sorted(new) == sorted(image.path for image in remote.images)


def test_each_user_is_served_by_the_worker_holding_their_checkpoint(cluster):
    for job in [cluster.submit(request(A, 1), owner="alice"), cluster.submit(request(B, 2), owner="bob")]:
        job.wait(180)
    wait_until(lambda: {worker.holds for worker in cluster.status().workers} == {A, B}, 30,
               "one worker to hold each checkpoint")
    started = swaps(cluster)
    alice, bob = [], []
    for seed in range(4):
        alice.append(cluster.submit(request(A, 10 + seed), owner="alice"))
        bob.append(cluster.submit(request(B, 20 + seed), owner="bob"))
    for job in alice + bob:
        job.wait(180)
    # Eight jobs taking turns between two checkpoints: a worker each could mean eight swaps; with
    # each job sent to the worker holding its checkpoint, none (one, if one user's last jobs are
    # left when the other's are done and the idle worker takes one rather than wait).
    assert swaps(cluster) - started <= 1
    assert all(job.result.model.title == A for job in alice)
    assert all(job.result.model.title == B for job in bob)


def test_the_fair_queue_holds_across_workers(cluster):
    """Two workers: alice's first two jobs take both; bob, asking next, goes before alice's third."""
    alice = [cluster.submit(request(A, seed, steps=20), owner="alice") for seed in range(30, 34)]
    bob = cluster.submit(request(A, 40, steps=20), owner="bob")
    for job in [*alice, bob]:
        job.wait(240)
    started = {job.id: job.progress.started_at for job in [*alice, bob]}
    assert started[bob.id] < started[alice[2].id]
    assert started[bob.id] < started[alice[3].id]


def test_a_checkpoint_no_worker_has_is_refused_with_a_sentence(cluster):
    with pytest.raises(ModelNotFound, match="No worker has the checkpoint 'nowhere': .+ lacks it"):
        cluster.submit(request("nowhere", 1))


def test_live_previews_stream_back_and_interrupt_reaches_the_worker(cluster):
    job = cluster.submit(request(A, 50, steps=150, width=128, height=128), owner="carol")

    def watched_preview():
        job.watch()  # as the page's poll does: the worker makes previews while someone watches
        return job.progress.preview is not None or job.finished

    wait_until(watched_preview, 120, "a live preview from the worker")
    assert job.progress.preview is not None and job.progress.preview.size == (128, 128)
    assert cluster.interrupt("carol")
    result = job.wait(60)
    assert result.interrupted
    assert job.progress.step < 150


def test_skip_ends_the_batch_on_the_worker_and_the_next_batch_runs(cluster):
    job = cluster.submit(request(A, 70, steps=150, width=128, height=128, batch_count=2), owner="erin")
    wait_until(lambda: job.progress.step >= 2 or job.finished, 120, "the first batch to start stepping")
    assert cluster.skip("erin")
    first_batch_steps = 0
    while not job.finished:
        if job.progress.batch == 0:
            first_batch_steps = max(first_batch_steps, job.progress.step)
        job.wait_for_change(job.version, timeout=1)
    result = job.wait(0)
    assert not result.interrupted
    assert [image.seed for image in result.images] == [70, 71]
    assert 2 <= first_batch_steps < 150


def test_an_upscale_runs_on_a_worker_and_is_saved_here(cluster):
    from PIL import Image

    from app.generation.upscale import UpscaleRequest

    source = Image.new("RGB", (40, 30), (200, 30, 90))
    before = outputs(cluster)
    result = cluster.upscale(UpscaleRequest(image=source, scale=2, upscaler="Lanczos"), timeout=120)
    assert result.image.size == (80, 60)
    assert result.image.getpixel((40, 30)) == (200, 30, 90)
    assert [path for path in outputs(cluster) if path not in before] == [result.path]


def test_the_page_shows_each_worker_what_it_holds_and_does(cluster):
    from ui.header import model_status

    cluster.generate(request(A, 5), timeout=120)
    lines = wait_until(lambda: [line for line in model_status(cluster).split("\n") if line.startswith("Worker ")
                                and f"holds **{A}**" in line] and model_status(cluster), 30, "a worker line")
    assert "Generation runs on a local Ray cluster on this machine: 2 workers." in lines
    assert "Worker 1 (" in lines and "Worker 2 (" in lines
    assert "idle" in lines


def test_a_killed_worker_loses_no_job_and_nothing_is_saved_twice(cluster):
    before = outputs(cluster)
    job = cluster.submit(request(A, 60, steps=60, width=128, height=128, batch_count=2), owner="dave")
    running = wait_until(lambda: next((w for w in cluster.status().workers if "dave" in w.doing and w.pid), None),
                         120, "a worker to run dave's job")
    os.kill(running.pid, signal.SIGKILL)
    messages = set()
    while not job.finished:
        job.wait_for_change(job.version, timeout=1)
        messages.add(job.progress.message)
    result = job.wait(0)
    assert LOST in messages
    assert not result.interrupted
    assert [image.seed for image in result.images] == [60, 61]
    new = [path for path in outputs(cluster) if path not in before]
    assert sorted(new) == sorted(image.path for image in result.images)
    # Serve starts a replacement; it reports in and takes jobs again.
    wait_until(lambda: len(cluster.status().workers) == 2 and running.pid not in {w.pid for w in cluster.status().workers},
               WORKERS_UP, "the replacement worker")
    # The worker that joined takes jobs: two at once, one of them is its.
    replacement = next(w.name for w in cluster.status().workers if w.pid != running.pid and w.swaps == 0)
    jobs = [cluster.submit(request(A, 80), owner="dave"), cluster.submit(request(B, 81), owner="erin")]
    for job in jobs:
        job.wait(180)
    wait_until(lambda: next(w for w in cluster.status().workers if w.name == replacement).holds, 30,
               "the new worker to hold a checkpoint")
