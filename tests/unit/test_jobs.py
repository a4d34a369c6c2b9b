"""JobQueue and Job with a fake run function: order, positions, limits, failures, cancel, close.

No models here. Timing is controlled with threading.Event; every wait has a timeout so a
regression shows up as a failure, never as a hung test run.
"""

import threading
import time

import pytest

from app.errors import EaselError, InvalidRequest, QueueFull
from app.job_queue import JobQueue
from app.jobs import Job, JobState, Progress

TIMEOUT = 5.0


class FakeRun:
    """A run function that records the order of calls and can hold a job until released."""

    def __init__(self, hold: set[str] = frozenset()):
        self.calls: list[str] = []
        self.started: dict[str, threading.Event] = {}
        self.release: dict[str, threading.Event] = {}
        self.hold = set(hold)
        self._lock = threading.Lock()

    def event(self, table: dict, name: str) -> threading.Event:
        with self._lock:
            return table.setdefault(name, threading.Event())

    def __call__(self, job: Job):
        name = job.request
        self.calls.append(name)
        self.event(self.started, name).set()
        if name in self.hold:
            assert self.event(self.release, name).wait(TIMEOUT), f"{name} was never released"
        if isinstance(name, str) and name.startswith("easel-error"):
            raise InvalidRequest(f"bad request {name}")
        if isinstance(name, str) and name.startswith("crash"):
            raise ZeroDivisionError("a bug in run")
        return f"result of {name}"

    def wait_started(self, name: str) -> None:
        assert self.event(self.started, name).wait(TIMEOUT), f"{name} never started"

    def let_go(self, name: str) -> None:
        self.event(self.release, name).set()


@pytest.fixture
def queues():
    made: list[JobQueue] = []

    def make(run, **kwargs) -> JobQueue:
        queue = JobQueue(run, **kwargs)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close(timeout=TIMEOUT)


def job(name: str) -> Job:
    return Job(name, "txt2img")


def test_jobs_run_first_in_first_out_and_return_their_results(queues):
    run = FakeRun(hold={"a"})
    queue = queues(run)
    a, b, c = queue.submit(job("a")), queue.submit(job("b")), queue.submit(job("c"))
    run.wait_started("a")
    run.let_go("a")
    assert [j.wait(TIMEOUT) for j in (a, b, c)] == ["result of a", "result of b", "result of c"]
    assert run.calls == ["a", "b", "c"]
    assert all(j.state is JobState.DONE for j in (a, b, c))
    assert a.progress.started_at is not None


def test_position_counts_the_running_job_and_those_ahead(queues):
    run = FakeRun(hold={"a"})
    queue = queues(run)
    a = queue.submit(job("a"))
    run.wait_started("a")
    b, c = queue.submit(job("b")), queue.submit(job("c"))

    assert queue.running is a
    assert a.state is JobState.RUNNING
    assert queue.position(a) == 0
    assert queue.position(b) == 2
    assert queue.position(c) == 3
    assert queue.waiting_count() == 2

    run.let_go("a")
    c.wait(TIMEOUT)
    assert queue.position(b) == 0 and queue.position(c) == 0
    assert queue.waiting_count() == 0


def test_queue_full_when_max_size_jobs_are_waiting(queues):
    run = FakeRun(hold={"a"})
    queue = queues(run, max_size=2)
    queue.submit(job("a"))
    run.wait_started("a")  # the running job does not count against the waiting limit
    queue.submit(job("b"))
    c = queue.submit(job("c"))
    with pytest.raises(QueueFull) as caught:
        queue.submit(job("d"))
    assert "2 jobs" in caught.value.message
    assert queue.waiting_count() == 2

    run.let_go("a")
    c.wait(TIMEOUT)  # once the line is empty again, jobs are taken again
    queue.submit(job("e")).wait(TIMEOUT)
    assert "d" not in run.calls
    assert run.calls == ["a", "b", "c", "e"]


def test_easel_error_fails_the_job_and_wait_reraises_it(queues):
    queue = queues(FakeRun())
    failing = queue.submit(job("easel-error-1"))
    with pytest.raises(InvalidRequest, match="bad request easel-error-1"):
        failing.wait(TIMEOUT)
    assert failing.state is JobState.FAILED
    assert isinstance(failing.error, InvalidRequest)
    assert failing.result is None


def test_unexpected_exception_fails_the_job_and_the_worker_keeps_serving(queues, caplog):
    run = FakeRun()
    queue = queues(run)
    crashing = queue.submit(job("crash-1"))
    after = queue.submit(job("after"))
    with pytest.raises(ZeroDivisionError):
        crashing.wait(TIMEOUT)
    assert crashing.state is JobState.FAILED
    assert after.wait(TIMEOUT) == "result of after"
    assert after.state is JobState.DONE
    # The bug is logged with its traceback, so it can be reported.
    assert any(crashing.id in r.getMessage() and r.levelname == "ERROR" and r.exc_info for r in caplog.records)


def test_cancel_while_queued_never_runs_the_job(queues):
    run = FakeRun(hold={"a"})
    queue = queues(run)
    queue.submit(job("a"))
    run.wait_started("a")
    b = queue.submit(job("b"))
    c = queue.submit(job("c"))
    b.cancel()
    assert b.cancelled
    run.let_go("a")
    assert c.wait(TIMEOUT) == "result of c"
    assert b.wait(TIMEOUT) is None
    assert b.state is JobState.CANCELLED
    assert "b" not in run.calls


def test_cancel_of_a_running_job_is_seen_by_run(queues):
    seen = threading.Event()

    def run(job: Job):
        job.report(step=1, steps=10)
        assert job._cancel.wait(TIMEOUT)
        seen.set()
        return "stopped early"

    queue = queues(run)
    running = queue.submit(job("a"))
    version = 0
    while running.progress.step < 1:
        version = running.wait_for_change(version, TIMEOUT)
        assert not running.finished
    running.cancel()
    assert running.wait(TIMEOUT) == "stopped early"
    assert seen.is_set()
    assert running.state is JobState.DONE  # an interrupted job keeps what it made


def test_close_cancels_waiting_jobs_and_stops_the_running_one(queues):
    run_started = threading.Event()

    def run(job: Job):
        run_started.set()
        assert job._cancel.wait(TIMEOUT), "close() did not cancel the running job"
        return "partial"

    queue = JobQueue(run)
    running = queue.submit(job("a"))
    assert run_started.wait(TIMEOUT)
    waiting = [queue.submit(job(name)) for name in ("b", "c")]
    queue.close(timeout=TIMEOUT)

    assert running.wait(TIMEOUT) == "partial"
    for waiter in waiting:
        assert waiter.wait(TIMEOUT) is None
        assert waiter.state is JobState.CANCELLED
    assert queue.waiting_count() == 0


def test_submit_after_close_is_refused_with_a_message():
    run = FakeRun()
    queue = JobQueue(run)
    queue.close(timeout=TIMEOUT)
    late = job("late")
    with pytest.raises(EaselError, match="shutting down"):
        queue.submit(late)
    assert late.state is JobState.QUEUED and not late.finished and run.calls == []  # never accepted, never run
    assert queue.waiting_count() == 0


def test_wait_times_out_with_timeout_error(queues):
    run = FakeRun(hold={"a"})
    queue = queues(run)
    slow = queue.submit(job("a"))
    with pytest.raises(TimeoutError):
        slow.wait(0.05)
    run.let_go("a")
    assert slow.wait(TIMEOUT) == "result of a"


def test_wait_for_change_returns_on_report_and_on_timeout():
    watched = Job("x", "txt2img")
    start = watched.version
    # Nothing changes: returns after the timeout with the same version.
    assert watched.wait_for_change(start, timeout=0.05) == start

    reporter = threading.Timer(0.01, lambda: watched.report(step=3, steps=4))
    reporter.start()
    try:
        new_version = watched.wait_for_change(start, timeout=TIMEOUT)
    finally:
        reporter.join(TIMEOUT)
    assert new_version > start
    assert watched.progress.step == 3 and watched.progress.steps == 4


def test_progress_fraction_counts_batches_and_eta():
    assert Progress().fraction == 0.0
    halfway = Progress(step=5, steps=10, batch=1, batches=2)
    assert halfway.fraction == pytest.approx(0.75)
    assert Progress(step=10, steps=10, batch=1, batches=2).fraction == 1.0
    assert Progress(step=5, steps=10).eta_seconds() is None  # not started
    timed = Progress(step=5, steps=10, started_at=100.0)
    assert timed.eta_seconds(now=110.0) == pytest.approx(10.0)


def test_the_idle_task_runs_once_the_queue_runs_dry_not_between_waiting_jobs(queues):
    run = FakeRun(hold={"a"})
    idle: list[list[str]] = []  # what had run each time the queue went idle
    queue = queues(run, on_idle=lambda: idle.append(list(run.calls)))
    a, b = queue.submit(job("a")), queue.submit(job("b"))
    run.wait_started("a")
    run.let_go("a")
    assert a.wait(TIMEOUT) == "result of a" and b.wait(TIMEOUT) == "result of b"
    deadline = time.monotonic() + TIMEOUT
    while not idle and time.monotonic() < deadline:
        time.sleep(0.01)
    assert idle == [["a", "b"]]  # not after "a": "b" was waiting


def test_a_failing_idle_task_does_not_stop_the_queue(queues):
    def broken():
        raise RuntimeError("trim failed")

    queue = queues(FakeRun(), on_idle=broken)
    assert queue.submit(job("a")).wait(TIMEOUT) == "result of a"
    assert queue.submit(job("b")).wait(TIMEOUT) == "result of b"
