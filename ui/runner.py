"""Runs a job for a tab: submit to the engine, follow it while it waits and runs, show the results.

The engine does the work; this module only turns its `Job` into what the page shows. `submitted`,
`followed` and `outcome` are the one submit-and-poll loop every tab uses.
"""

import logging
from collections.abc import Callable, Iterator

import gradio as gr

from app.engine import Engine
from app.errors import EaselError
from app.generation.requests import GenerationRequest
from app.generation.results import GenerationResult
from app.generation.speed import duration
from app.jobs import Job

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25


def page_error(message: str) -> gr.Error:
    """An error shown in the page. A user's mistake is not a crash: no traceback in the terminal."""
    return gr.Error(message, print_exception=False)


def user_message(error: BaseException) -> str:
    """What the page says about an error: ours say what to do; anything else is a bug we own up to."""
    if isinstance(error, EaselError):
        return error.message
    return (
        f"Something went wrong inside Easel ({type(error).__name__}: {error}). Your settings are kept; "
        "try again, and if it happens again, the terminal window shows the details for a bug report."
    )


def owner_of(request: gr.Request | None) -> str:
    """Who is using this page, for the fair queue: the signed-in name, else the computer's address
    (the same owner as that computer's HTTP API calls)."""
    if request is None:
        return "local"
    if getattr(request, "username", None):
        return request.username
    client = getattr(request, "client", None)
    return f"guest@{client.host if client else 'unknown'}"


def submitted(submit: Callable[[], Job]) -> Job:
    """The job `submit()` queued; a request the engine refuses becomes a message in the page."""
    try:
        return submit()
    except EaselError as error:
        raise page_error(error.message) from None


def followed(job: Job) -> Iterator[Job]:
    """The job again each time something about it changes (its place in the queue, its progress),
    until it is finished. The page shows its live preview: it watches the job while it follows."""
    seen = -1
    while not job.finished:
        job.watch()
        seen = job.wait_for_change(seen, timeout=POLL_SECONDS)
        yield job


def outcome(job: Job):
    """The finished job's result; its error as a message in the page (a bug is logged as one)."""
    try:
        return job.wait()
    except Exception as error:  # shown in the page, never as a stack trace
        if not isinstance(error, EaselError):
            log.exception("A job failed")
        raise page_error(user_message(error)) from None


def waiting_line(engine: Engine, job: Job) -> str:
    position = engine.position(job)
    eta = engine.eta_seconds(job)
    wait = f", about {duration(eta)} to wait" if eta is not None else ""
    started = "Your next batch waits" if job.started else "Waiting"
    return f"{started} in the queue: position {position}{wait}. Others' jobs take turns with yours."


def progress_line(engine: Engine, job: Job) -> str:
    if job.waiting:
        return waiting_line(engine, job)
    p = job.progress
    if not p.steps:
        return "Loading the model and preparing…"
    eta = engine.seconds_left(job)
    parts = [f"Step {p.step}/{p.steps}"]
    if p.batches > 1:
        parts.append(f"batch {p.batch + 1}/{p.batches}")
    if eta is not None:
        parts.append(f"about {duration(eta)} left")
    return " · ".join(parts)


def result_status(result: GenerationResult) -> str:
    count = len(result.images)
    seeds = ", ".join(str(s) for s in result.seeds[:8]) + ("…" if count > 8 else "")
    head = f"Interrupted: kept {count} image(s)" if result.interrupted else f"Done: {count} image(s)"
    lines = [f"{head} in {result.seconds:.1f} s. Seed(s): {seeds}."]
    lines += [f"**Note:** {note}" for note in result.notes]
    return "\n\n".join(lines)


def generate(engine: Engine, request: GenerationRequest, progress: gr.Progress, owner: str = "local"):
    """A Gradio generator: yields (job, *ResultsPanel.outputs()) as the job runs."""
    unchanged = (gr.skip(),) * 4  # info, parameters, paths, seeds
    job = submitted(lambda: engine.submit(request, owner=owner))
    for job in followed(job):
        p = job.progress
        if p.steps:
            progress(p.fraction, desc=progress_line(engine, job))
        preview = gr.update(value=p.preview, visible=True) if p.preview is not None else gr.skip()
        yield job, gr.skip(), preview, progress_line(engine, job), *unchanged, gr.skip()
    try:
        result: GenerationResult = outcome(job)
    except gr.Error as error:
        yield None, gr.skip(), gr.update(visible=False), f"**Could not generate.** {error.message}", *unchanged, gr.skip()
        raise
    if result is None:  # cancelled before it started
        yield None, gr.skip(), gr.update(visible=False), "Cancelled before it started.", *unchanged, gr.skip()
        return
    gallery = [(str(image.path), f"Seed {image.seed}") for image in result.images]
    parameters = [image.parameters for image in result.images]
    paths = [str(image.path) for image in result.images]
    first = parameters[0] if parameters else ""
    hidden = gr.update(value=None, visible=False)
    yield None, gallery, hidden, result_status(result), first, parameters, paths, result.seeds, 0


def skip(job: Job | None) -> str:
    """Ends this page's current batch now; the job goes on with its next batch."""
    if job is None or job.finished:
        return "Nothing is running."
    job.skip()
    return "Skipping to the next batch…"


def interrupt(job: Job | None) -> str:
    """Stops this page's own job; what it made so far is kept."""
    if job is None or job.finished:
        return "Nothing is running."
    job.cancel()
    return "Interrupting… the images finished so far are kept."
