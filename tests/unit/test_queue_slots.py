"""The job queue with several slots (one per worker): turns at once, still fair, a job's own turns
never at once, slots added while running, positions and ETAs.

Every turn is held by a threading.Event until the test lets it go, so "at once" means both started
before either was released; every wait has a timeout so a regression fails instead of hanging.
"""

import threading

import pytest

from app.job_queue import JobQueue, Placement, next_turn, turn_order
from app.jobs import UNFINISHED, Job, JobState
from app.kinds import JobKind

TIMEOUT = 5.0


class Gate:
    """A run function that holds every turn until `release` is set; it records the turns in the order
    they started, and any turn that started while another turn of the same job was still running."""

    def __init__(self):
        self.started: list[str] = []
        self.overlaps: list[str] = []
        self.release = threading.Event()
        self._running: set[int] = set()
        self._changed = threading.Condition()

    def __call__(self, job: Job):
        with self._changed:
            if id(job) in self._running:
                self.overlaps.append(job.request)
            self._running.add(id(job))
            self.started.append(job.request)
            self._changed.notify_all()
        assert self.release.wait(TIMEOUT), "the test never released the turn"
        with self._changed:
            self._running.discard(id(job))
        return UNFINISHED if job.turns_left > 1 else job.request

    def wait_started(self, count: int) -> list[str]:
        """The first `count` turns to start, once they have."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.started) >= count, TIMEOUT), self.started
            return self.started[:count]


@pytest.fixture
def gate():
    return Gate()


@pytest.fixture
def make(gate):
    made: list[JobQueue] = []

    def make_queue(slots: int) -> JobQueue:
        made.append(JobQueue(gate, max_size=20, slots=slots))
        return made[-1]

    yield make_queue
    gate.release.set()
    for queue in made:
        queue.close(TIMEOUT)


def submit(queue, owner, name, turns=1, cost=1.0):
    return queue.submit(Job(name, "txt2img", owner, turns=turns, turn_cost=cost))


def test_two_slots_run_two_turns_at_once(make, gate):
    queue = make(2)
    first, second = submit(queue, "ann", "ann-1"), submit(queue, "bob", "bob-1")
    assert sorted(gate.wait_started(2)) == ["ann-1", "bob-1"]  # neither released yet
    assert queue.running_jobs() == [first, second] or queue.running_jobs() == [second, first]
    assert queue.running in (first, second)
    assert {thread.name for thread in threading.enumerate()} >= {"easel-jobs-0", "easel-jobs-1"}
    gate.release.set()
    assert first.wait(TIMEOUT) == "ann-1" and second.wait(TIMEOUT) == "bob-1"


def test_the_first_two_turns_go_to_two_owners_not_to_whoever_asked_first(make, gate):
    queue = make(2)
    with queue._lock:  # both slots see all four jobs at once, as after a busy moment
        jobs = [submit(queue, "ann", "ann-1"), submit(queue, "ann", "ann-2"),
                submit(queue, "bob", "bob-1"), submit(queue, "bob", "bob-2")]
    assert sorted(gate.wait_started(2)) == ["ann-1", "bob-1"]
    gate.release.set()
    for job in jobs:
        job.wait(TIMEOUT)
    assert sorted(gate.started[2:]) == ["ann-2", "bob-2"]


def test_a_free_slot_skips_the_running_jobs_next_turn_and_takes_a_waiting_job(make, gate):
    queue = make(2)
    long = submit(queue, "ann", "ann-batches", turns=3)
    gate.wait_started(1)
    # Turn order now: ann-batches' next turns (first in Ann's line), then ann-1. The free slot may
    # not run ann-batches beside itself: it takes ann-1.
    short = submit(queue, "ann", "ann-1")
    assert gate.wait_started(2) == ["ann-batches", "ann-1"]
    assert queue.position(short) == 0 and queue.position(long) == 0
    gate.release.set()
    assert long.wait(TIMEOUT) == "ann-batches" and short.wait(TIMEOUT) == "ann-1"
    assert gate.started.count("ann-batches") == 3
    assert gate.overlaps == []


def test_a_job_alone_never_runs_two_of_its_turns_at_once(make, gate):
    queue = make(2)
    gate.release.set()  # turns run freely: the other slot sits idle between them
    long = submit(queue, "ann", "ann-batches", turns=3)
    assert long.wait(TIMEOUT) == "ann-batches" and long.state is JobState.DONE
    assert gate.started == ["ann-batches"] * 3
    assert gate.overlaps == []


def test_a_slot_added_while_running_starts_the_next_job_beside_the_held_one(make, gate):
    queue = make(1)
    first = submit(queue, "ann", "ann-1")
    gate.wait_started(1)
    second = submit(queue, "bob", "bob-1")
    assert queue.running_jobs() == [first] and second.state is JobState.QUEUED
    queue.set_slots(2)
    assert queue.slots == 2
    assert gate.wait_started(2) == ["ann-1", "bob-1"]  # ann-1 is still held
    assert queue.running_jobs() == [first, second]
    gate.release.set()
    assert first.wait(TIMEOUT) == "ann-1" and second.wait(TIMEOUT) == "bob-1"


def test_a_removed_slot_takes_no_new_turns_after_its_current_one(make, gate):
    queue = make(2)
    jobs = [submit(queue, "ann", "ann-1"), submit(queue, "bob", "bob-1")]
    gate.wait_started(2)
    surplus = queue._workers[1]
    queue.set_slots(1)
    jobs += [submit(queue, "cid", "cid-1"), submit(queue, "dan", "dan-1")]
    gate.release.set()
    for job in jobs:
        assert job.wait(TIMEOUT) == job.request
    surplus.join(TIMEOUT)
    assert not surplus.is_alive() and queue.slots == 1
    with pytest.raises(ValueError, match="at least one slot"):
        queue.set_slots(0)


def test_positions_count_every_running_job_and_the_eta_is_shared_between_slots(make, gate):
    queue = make(2)
    queue._seconds_per_cost["txt2img"] = 10.0  # as if measured: 10 s per unit of work
    running = [submit(queue, "ann", "ann-1"), submit(queue, "bob", "bob-1")]
    gate.wait_started(2)
    cid, dan = submit(queue, "cid", "cid-1"), submit(queue, "dan", "dan-1")
    assert [queue.position(job) for job in (*running, cid, dan)] == [0, 0, 3, 4]
    # cid waits for the two running turns (10 s each, a moment of them done), shared by two slots.
    assert 5 < queue.eta_seconds(cid) <= 10
    # dan waits for those and cid's turn: 30 s of work between two slots.
    assert 10 < queue.eta_seconds(dan) <= 15
    assert queue.eta_seconds(running[0]) is None


def test_close_cancels_every_running_job(make, gate):
    queue = make(2)
    jobs = [submit(queue, "ann", "ann-1"), submit(queue, "bob", "bob-1"), submit(queue, "cid", "cid-1")]
    gate.wait_started(2)
    queue.close(0.0)
    assert all(job.cancelled for job in jobs)
    assert jobs[2].state is JobState.CANCELLED


def test_turn_order_puts_each_running_jobs_turns_first_in_its_owners_line():
    ann, bob = Job("ann", "txt2img", "ann", turns=2), Job("bob", "txt2img", "bob", turns=3)
    cid = Job("cid", "txt2img", "cid")
    order = turn_order({"cid": [cid]}, {"ann": 1, "bob": 2}, running=[ann, bob])
    # cid was never served; ann's one turn left, then bob's two.
    assert [job.request for job in order] == ["cid", "ann", "bob", "bob"]


# --- next_turn: a job whose checkpoint's holder is busy lets a READY one go first ---------------


def placed(**placements: Placement):
    """Jobs named by their request, and a placement function answering from `placements` (ANY otherwise)."""
    jobs = [Job(name, JobKind.TXT2IMG, "ann") for name in placements]
    return jobs, lambda job: placements.get(job.request, Placement.ANY)


@pytest.mark.parametrize("first", [Placement.READY, Placement.ANY])
def test_next_turn_is_the_first_unless_it_waits(first):
    jobs, placement = placed(a=first, b=Placement.READY)
    assert next_turn(jobs, placement) is jobs[0]


def test_next_turn_lets_a_later_ready_job_go_before_one_that_waits():
    jobs, placement = placed(a=Placement.WAITING, b=Placement.ANY, c=Placement.READY, d=Placement.READY)
    assert next_turn(jobs, placement) is jobs[2]


def test_next_turn_is_the_waiting_first_when_nothing_later_is_ready():
    # Nothing else could use a free worker without a swap: the first job goes (and loads its checkpoint).
    jobs, placement = placed(a=Placement.WAITING, b=Placement.ANY, c=Placement.WAITING)
    assert next_turn(jobs, placement) is jobs[0]


def test_next_turn_of_nothing_is_none():
    assert next_turn([], lambda job: Placement.READY) is None
