"""Textual-inversion embedding files: their vectors and what A1111 reports about them, read the way
A1111's `modules/textual_inversion/textual_inversion.py` (`create_embedding_from_data`) reads them,
through the safe reader (a `.pt` that would run code is refused, never opened).

Formats: A1111's own `.pt` (`string_to_param: {'*': tensor}`, with `step`, `sd_checkpoint`,
`sd_checkpoint_name`), a single-tensor file (diffusers concepts, `emb_params` safetensors), one
vector or several.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from app.models.safe_weights import UnreadableWeights, read_pickled, read_tensors

EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")


@dataclass(frozen=True)
class EmbeddingData:
    vectors: torch.Tensor          # (count, width), float32 on the CPU
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def width(self) -> int:
        """The text encoder width it was made for (768 SD 1.x, 1024 SD 2.x): A1111's `shape`."""
        return int(self.vectors.shape[-1])

    @property
    def count(self) -> int:
        """How many tokens it stands for: A1111's `vectors`."""
        return int(self.vectors.shape[0])


def read_embedding(path: Path) -> EmbeddingData:
    """The embedding in the file. Raises UnreadableWeights with the reason."""
    path = Path(path)
    data = read_tensors(path) if path.suffix == ".safetensors" else read_pickled(path)
    return embedding_from_data(data)


def embedding_from_data(data: object) -> EmbeddingData:
    if not isinstance(data, dict):
        raise UnreadableWeights("it is not a textual-inversion embedding.")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # an nn.ParameterDict from old torch
        if not isinstance(params, dict) or len(params) != 1:
            raise UnreadableWeights("it holds several terms or none; an embedding holds one.")
        tensor = next(iter(params.values()))
    elif "clip_g" in data and "clip_l" in data:
        raise UnreadableWeights("it is an SDXL embedding, for a model family Easel does not run.")
    elif len(data) == 1 and isinstance(next(iter(data.values())), torch.Tensor):
        tensor = next(iter(data.values()))  # diffusers concepts, `emb_params` safetensors
    else:
        raise UnreadableWeights("it is neither an A1111 embedding nor a diffusers concept.")
    if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (1, 2) or tensor.numel() == 0:
        raise UnreadableWeights("its vectors are not a list of token embeddings.")
    vectors = tensor.detach().to("cpu", torch.float32)
    if vectors.dim() == 1:
        vectors = vectors.unsqueeze(0)
    if not bool(torch.isfinite(vectors).all()):
        raise UnreadableWeights("its vectors hold NaN or infinite values.")
    return EmbeddingData(
        vectors=vectors,
        step=_optional(data.get("step"), int),
        sd_checkpoint=_optional(data.get("sd_checkpoint"), str),
        sd_checkpoint_name=_optional(data.get("sd_checkpoint_name"), str),
    )


def _optional(value: object, kind: type):
    return value if isinstance(value, kind) and not isinstance(value, bool) else None
