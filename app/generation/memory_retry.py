"""Out of memory during a job: step the memory mode down and run the same work again, never losing it.

Shared by every kind of job. The step down (app.models.manager.ModelManager.degrade) moves
everything loaded one rung down the ladder (GPU → offload → CPU) and raises when there is no rung left.
"""

from typing import Callable, TypeVar

from app.memory import is_out_of_memory

T = TypeVar("T")


def with_memory_retry(attempt: Callable[[], T], step_down: Callable[[], str], notes: list[str] | None = None) -> T:
    """`attempt()`, again after each `step_down()` while it runs out of memory.

    Each step down adds a sentence for the user to `notes`."""
    while True:
        try:
            return attempt()
        except Exception as error:
            if not is_out_of_memory(error):
                raise
        # Outside the handler: the error's traceback (and the tensors it holds) is gone by now.
        mode = step_down()
        if notes is not None:
            notes.append(f"Ran out of memory, so Easel switched to a leaner mode and ran the batch again: {mode}")
