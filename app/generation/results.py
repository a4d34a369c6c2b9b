"""What a finished job hands back: the pictures, where they were saved, and how they were made."""

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from app.models.registry import ModelEntry


@dataclass
class GeneratedImage:
    image: Image.Image
    path: Path | None        # None when the request asked not to save
    seed: int
    parameters: str          # the A1111 infotext written into the PNG


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)   # things the user should know (e.g. demo noise)
    seconds: float = 0.0
    model: ModelEntry | None = None                   # the checkpoint that made them

    @property
    def seeds(self) -> list[int]:
        return [image.seed for image in self.images]
