"""The job queue takes turns between owners: order, multi-batch jobs, positions, ETAs, limits."""

import threading
import time

import pytest

from app.errors import QueueFull
from app.job_queue import JobQueue
from app.jobs import UNFINISHED, Job, JobState


class Recorder:
    """A run function that records each turn; the first turn waits for `release` so a test can
    queue everything before anything else runs."""

    def __init__(self):
        self.turns: list[str] = []
        self.release = threading.Event()
        self.first_started = threading.Event()

    def __call__(self, job: Job):
        if not self.turns:
            self.first_started.set()
            assert self.release.wait(10)
        self.turns.append(job.request)
        time.sleep(0.002)
        return UNFINISHED if job.turns_left > 1 else job.request


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def queue(recorder):
    queue = JobQueue(recorder, max_size=20, max_per_owner=5)
    yield queue
    recorder.release.set()
    queue.close()


def submit(queue, owner, name, turns=1, cost=1.0):
    return queue.submit(Job(name, "txt2img", owner, turns=turns, turn_cost=cost))


def test_owners_take_turns_instead_of_first_come_first_served(queue, recorder):
    submit(queue, "ann", "ann-0")
    assert recorder.first_started.wait(5)
    jobs = [submit(queue, "ann", f"ann-{i}") for i in (1, 2, 3)]
    jobs += [submit(queue, "bob", "bob-1"), submit(queue, "cid", "cid-1")]
    recorder.release.set()
    for job in jobs:
        job.wait(10)
    # Ann queued three more before Bob and Cid asked, yet each of them waits for one of hers at most.
    assert recorder.turns == ["ann-0", "bob-1", "cid-1", "ann-1", "ann-2", "ann-3"]


def test_a_long_job_gives_way_between_its_batches(queue, recorder):
    long = submit(queue, "ann", "ann-batches", turns=4)
    assert recorder.first_started.wait(5)
    short = submit(queue, "bob", "bob-1")
    recorder.release.set()
    assert long.wait(10) == "ann-batches" and short.wait(10) == "bob-1"
    assert recorder.turns == ["ann-batches", "bob-1", "ann-batches", "ann-batches", "ann-batches"]
    assert long.state is JobState.DONE


def test_positions_count_jobs_ahead_and_the_eta_follows_measured_speed(queue, recorder):
    first = submit(queue, "ann", "ann-0", turns=3, cost=2.0)
    assert recorder.first_started.wait(5)
    ann_next = submit(queue, "ann", "ann-1", cost=1.0)
    bob = submit(queue, "bob", "bob-1", cost=1.0)
    # Running: ann-0 (turn 1 of 3). Next: bob (other owner first), then ann-0's turns, then ann-1.
    assert queue.position(first) == 0
    assert queue.position(bob) == 2
    assert queue.position(ann_next) == 3
    assert queue.eta_seconds(bob) is None  # nothing timed yet
    recorder.release.set()
    ann_next.wait(10)
    queue._seconds_per_cost["txt2img"] = 10.0  # as if measured: 10 s per unit of work
    blocker = threading.Event()
    queue._run = lambda job: blocker.wait(10) and job.request
    running = submit(queue, "cid", "cid-1", cost=3.0)
    waiting = submit(queue, "dan", "dan-1", cost=1.0)
    while queue.running is not running:
        time.sleep(0.01)
    eta = queue.eta_seconds(waiting)
    assert 25 < eta <= 30  # cid's turn: 3 units at 10 s, a moment of it already done
    blocker.set()


def test_one_person_cannot_fill_the_queue_and_a_full_queue_says_so(queue, recorder):
    submit(queue, "ann", "ann-0")
    assert recorder.first_started.wait(5)
    for index in range(5):
        submit(queue, "ann", f"ann-{index + 1}")
    with pytest.raises(QueueFull, match="You already have 5 jobs waiting"):
        submit(queue, "ann", "ann-6")
    queue.jobs_of("ann")[-1].cancel()  # a cancelled job makes room at once
    submit(queue, "ann", "ann-6")
    for index in range(15):
        submit(queue, f"user-{index}", "x")
    with pytest.raises(QueueFull, match="Easel is busy: 20 jobs are already waiting"):
        submit(queue, "zed", "z")


def test_each_owner_sees_only_their_own_jobs(queue, recorder):
    first = submit(queue, "ann", "ann-0")
    assert recorder.first_started.wait(5)
    second = submit(queue, "bob", "bob-1")
    assert queue.jobs_of("ann") == [first]
    assert queue.jobs_of("bob") == [second]
    assert queue.jobs_of("cid") == []


def test_a_cancelled_waiting_job_no_longer_counts_ahead_of_others(queue, recorder):
    submit(queue, "ann", "ann-0")
    assert recorder.first_started.wait(5)
    bob = submit(queue, "bob", "bob-1")
    cid = submit(queue, "cid", "cid-1")
    assert queue.position(cid) == 3
    bob.cancel()
    assert queue.position(cid) == 2
    recorder.release.set()
    assert bob.wait(10) is None and bob.state is JobState.CANCELLED
    assert cid.wait(10) == "cid-1"
    assert "bob-1" not in recorder.turns
