"""Textual-inversion embeddings inside a prompt, as A1111's `modules/textual_inversion` and
`sd_hijack_clip.py` place them: where an embedding's name appears in the token stream, its tokens
give way to the embedding's vectors (one position each), in the token-embedding output, before
CLIP adds the positions and runs its layers.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PromptEmbedding:
    name: str
    vectors: torch.Tensor  # (count, width)


class EmbeddingLookup:
    """Finds embeddings by their name's token ids, longest match first (A1111's `ids_lookup`)."""

    def __init__(self, tokenizer, embeddings: list[PromptEmbedding]):
        self._by_first: dict[int, list[tuple[list[int], PromptEmbedding]]] = {}
        for embedding in embeddings:
            ids = tokenizer(embedding.name, add_special_tokens=False, verbose=False).input_ids
            if ids:
                self._by_first.setdefault(ids[0], []).append((list(ids), embedding))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda candidate: -len(candidate[0]))

    def at(self, tokens: list[int], position: int) -> tuple[PromptEmbedding | None, int]:
        """The embedding whose name starts at `position`, and how many tokens its name takes."""
        for ids, embedding in self._by_first.get(tokens[position], ()):
            if tokens[position : position + len(ids)] == ids:
                return embedding, len(ids)
        return None, 0


@contextmanager
def vectors_in_place(text_encoder, fixes: list[tuple[int, torch.Tensor]]):
    """Within the block, the text encoder's token embeddings at each fix's offset (counted after the
    start token) are the fix's vectors (A1111's `EmbeddingsWithFixes`)."""
    if not fixes:
        yield
        return

    def replaced(module, inputs, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for offset, vectors in fixes:
            count = min(output.shape[1] - offset - 1, vectors.shape[0])
            output[:, offset + 1 : offset + 1 + count] = vectors[:count].to(output.device, output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replaced)
    try:
        yield
    finally:
        handle.remove()
