"""What travels between the front end and a worker: one turn asked for, the events it streams back.

Plain dataclasses of bytes, strings and numbers (and the request, itself a dataclass), so nothing
depends on both sides holding the same objects: pictures travel as PNG bytes, errors as their
app.errors type name and sentence.
"""

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from app import errors
from app.kinds import JobKind
from app.models.registry import ModelEntry


@dataclass(frozen=True)
class Turn:
    """One queue turn for a worker: one batch of a generation, or a whole upscale."""

    job_id: str
    owner: str
    kind: JobKind
    request: Any                 # GenerationRequest (one batch, nothing saved) or UpscaleRequest
    safety_filter: bool = False  # the front end's switch, as it is now
    vae: str | None = None       # the VAE chosen in the page (None: each checkpoint's own)


@dataclass(frozen=True)
class Picture:
    png: bytes
    seed: int | None
    parameters: str


@dataclass(frozen=True)
class Started:
    """The turn reached a worker, which holds `holds` now (the front end's picture of who holds what)."""

    worker: str
    holds: str | None


@dataclass(frozen=True)
class Stepped:
    """How far the turn is; `preview` only when a new one was made (someone watches)."""

    step: int
    steps: int
    message: str = ""
    step_seconds: float | None = None
    preview: bytes | None = None


@dataclass(frozen=True)
class Finished:
    pictures: list[Picture]
    worker: str
    notes: list[str] = field(default_factory=list)
    model: ModelEntry | None = None
    interrupted: bool = False


@dataclass(frozen=True)
class Failed:
    """An error meant for the user (an app.errors type): the turn is not run again elsewhere."""

    error_type: str
    message: str

    def error(self) -> errors.EaselError:
        kind = getattr(errors, self.error_type, errors.EaselError)
        if not (isinstance(kind, type) and issubclass(kind, errors.EaselError)) or kind is errors.TooManyAttempts:
            kind = errors.EaselError
        return kind(self.message)


def png_bytes(picture: Image.Image) -> bytes:
    """Lossless and quick: the front end writes the final file with its own metadata."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def picture_of(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()
        return picture.copy() if picture.mode in ("RGB", "RGBA", "L") else picture.convert("RGB")
