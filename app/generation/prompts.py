"""A1111-style prompts turned into CLIP text embeddings for diffusers' `prompt_embeds` (the syntax
itself is read by app.generation.prompt_syntax).

We encode prompts ourselves instead of letting diffusers do it: diffusers knows no `(word:1.3)`
weighting, truncates at 77 tokens, and its `clip_skip` is broken with transformers 5 (and applied
to the positive prompt only, where A1111 applies it to both). The behaviour follows A1111's
`modules/prompt_parser.py` and `modules/sd_hijack_clip.py` so that a prompt copied from A1111
gives the same conditioning here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from app.generation.diffusers_internals import module_execution_device
from app.generation.extra_networks import without_extra_networks
from app.generation.prompt_syntax import is_break, parse_prompt_attention
from app.generation.textual_inversion import EmbeddingLookup, vectors_in_place

CHUNK_LENGTH = 75
"""Prompt tokens per chunk; with the start and end tokens a chunk fills CLIP's 77 positions."""

COMMA_BACKTRACK = 20
"""A1111's default `comma_padding_backtrack`: how far back a comma may pull a chunk's end."""

# --------------------------------------------------------------------------- chunking


@dataclass
class PromptChunk:
    """Up to 75 prompt token ids with their weights, before start/end/padding are added."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    # Embeddings in the chunk: (offset in `tokens`, vectors), whose placeholder tokens they replace.
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    used: list[str] = field(default_factory=list)  # their names, for the infotext's TI hashes


@dataclass
class PromptEmbeddings:
    positive: torch.Tensor  # (1, 77*k, hidden)
    negative: torch.Tensor  # (1, 77*k, hidden), same shape as positive
    embeddings_used: tuple[str, ...] = ()  # textual-inversion embeddings the prompts named


def prompt_chunks(tokenizer, prompt: str, lookup: EmbeddingLookup | None = None) -> tuple[list[PromptChunk], int]:
    """The prompt's 75-token chunks and A1111's token count for it (the UI's "23/75").

    Follows A1111's `tokenize_line`: a chunk that would overflow ends after its last comma when
    that comma is within the last 20 tokens, so phrases are not cut in half; BREAK ends a chunk.
    Extra-network tags (`<lora:…>`) are not CLIP's to see; an embedding's name (with `lookup`)
    takes as many positions as it has vectors, all in one chunk.
    """
    comma = _comma_token_id(tokenizer)
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    last_comma = -1
    token_count = 0

    for tokens, weight in _weighted_token_runs(tokenizer, without_extra_networks(prompt)):
        if tokens is None:
            chunks.append(chunk)
            token_count += CHUNK_LENGTH
            chunk, last_comma = PromptChunk(), -1
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (
                len(chunk.tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK
            ):
                cut = last_comma + 1
                head, chunk = _split_chunk(chunk, cut)
                chunks.append(head)
                token_count += CHUNK_LENGTH
                last_comma = -1
            if len(chunk.tokens) == CHUNK_LENGTH:
                chunks.append(chunk)
                token_count += CHUNK_LENGTH
                chunk, last_comma = PromptChunk(), -1
            embedding, name_length = lookup.at(tokens, position) if lookup else (None, 0)
            if embedding is None:
                chunk.tokens.append(token)
                chunk.weights.append(weight)
                position += 1
                continue
            count = embedding.vectors.shape[0]
            if len(chunk.tokens) + count > CHUNK_LENGTH:
                chunks.append(chunk)
                token_count += CHUNK_LENGTH
                chunk, last_comma = PromptChunk(), -1
            chunk.fixes.append((len(chunk.tokens), embedding.vectors))
            chunk.used.append(embedding.name)
            chunk.tokens += [0] * count  # placeholders (A1111's too): the vectors replace them
            chunk.weights += [weight] * count
            position += name_length

    # A trailing BREAK adds no empty chunk, but an empty prompt still gets one.
    if chunk.tokens or not chunks:
        chunks.append(chunk)
        token_count += len(chunk.tokens)
    return chunks, token_count


def _split_chunk(chunk: PromptChunk, cut: int) -> tuple[PromptChunk, PromptChunk]:
    """A chunk cut at a comma; embeddings after the cut move with their tokens."""
    head = PromptChunk(chunk.tokens[:cut], chunk.weights[:cut], [f for f in chunk.fixes if f[0] < cut])
    tail = PromptChunk(chunk.tokens[cut:], chunk.weights[cut:], [(o - cut, v) for o, v in chunk.fixes if o >= cut])
    head.used, tail.used = chunk.used, []  # names are only counted, never positioned
    return head, tail


def count_tokens(tokenizer, prompt: str) -> tuple[int, int]:
    """(tokens used, limit rounded up to a multiple of 75), as A1111 shows "23/75"."""
    _, used = prompt_chunks(tokenizer, prompt)
    return used, math.ceil(max(used, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


def _weighted_token_runs(tokenizer, prompt: str) -> list[tuple[list[int] | None, float]]:
    """Token ids of each parsed run with its weight; None in place of ids marks a BREAK."""
    runs = parse_prompt_attention(prompt)
    texts = [text for text, _ in runs]
    # verbose=False: prompts longer than 77 tokens are expected here, not worth a warning.
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids
    return [
        (None, weight) if is_break((text, weight)) else (list(tokens), weight)
        for tokens, (text, weight) in zip(ids, runs)
    ]


def _comma_token_id(tokenizer) -> int | None:
    ids = tokenizer(",", add_special_tokens=False, verbose=False).input_ids
    return ids[0] if len(ids) == 1 else None


def chunk_ids_and_weights(tokenizer, chunk: PromptChunk) -> tuple[list[int], list[float]]:
    """The 77 ids the text encoder sees: start, tokens, end, then padding; weights alike.

    Padding after the end token with `pad_token_id` is what A1111 ends up with for both
    families (SD1 pads with the end token itself, SD2 with "!") and what the tokenizer gives
    with padding="max_length", so an unweighted prompt encodes exactly as diffusers would.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    padding = CHUNK_LENGTH - len(chunk.tokens)
    ids = [bos, *chunk.tokens, eos] + [pad] * padding
    weights = [1.0, *chunk.weights, 1.0] + [1.0] * padding
    return ids, weights


# --------------------------------------------------------------------------- encoding


def encode_prompt(
    tokenizer, text_encoder, prompt: str, clip_skip: int = 1, min_chunks: int = 1,
    lookup: EmbeddingLookup | None = None,
) -> torch.Tensor:
    """Embeddings (1, 77*k, hidden) of a prompt, k >= min_chunks, padded with empty chunks."""
    chunks, _ = prompt_chunks(tokenizer, prompt, lookup)
    embeddings = [_chunk_embedding(tokenizer, text_encoder, chunk, clip_skip) for chunk in chunks]
    return _padded_to_chunks(tokenizer, text_encoder, embeddings, min_chunks, clip_skip)


def encode_prompt_pair(
    tokenizer, text_encoder, prompt: str, negative_prompt: str, clip_skip: int = 1,
    lookup: EmbeddingLookup | None = None,
) -> PromptEmbeddings:
    """Positive and negative embeddings of equal shape, as diffusers requires for CFG.

    The shorter one is padded with embeddings of the empty prompt, as A1111 pads the
    unconditional side (its `pad_cond_uncond`). `lookup`: the textual-inversion embeddings.
    """
    positive_chunks, _ = prompt_chunks(tokenizer, prompt, lookup)
    negative_chunks, _ = prompt_chunks(tokenizer, negative_prompt, lookup)
    chunk_count = max(len(positive_chunks), len(negative_chunks))
    positive = [_chunk_embedding(tokenizer, text_encoder, c, clip_skip) for c in positive_chunks]
    negative = [_chunk_embedding(tokenizer, text_encoder, c, clip_skip) for c in negative_chunks]
    return PromptEmbeddings(
        positive=_padded_to_chunks(tokenizer, text_encoder, positive, chunk_count, clip_skip),
        negative=_padded_to_chunks(tokenizer, text_encoder, negative, chunk_count, clip_skip),
        embeddings_used=tuple(dict.fromkeys(name for c in positive_chunks + negative_chunks for name in c.used)),
    )


def _padded_to_chunks(
    tokenizer, text_encoder, embeddings: list[torch.Tensor], chunk_count: int, clip_skip: int
) -> torch.Tensor:
    """Chunk embeddings joined along the sequence axis, filled up with empty chunks."""
    missing = chunk_count - len(embeddings)
    if missing > 0:
        empty = _chunk_embedding(tokenizer, text_encoder, PromptChunk(), clip_skip)
        embeddings = embeddings + [empty] * missing
    return torch.cat(embeddings, dim=1)


def _chunk_embedding(tokenizer, text_encoder, chunk: PromptChunk, clip_skip: int) -> torch.Tensor:
    ids, weights = chunk_ids_and_weights(tokenizer, chunk)
    device = module_execution_device(text_encoder)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.no_grad(), vectors_in_place(text_encoder, chunk.fixes):
        hidden = _hidden_states(text_encoder, input_ids, clip_skip)
        return emphasized(hidden, torch.tensor([weights], device=device))


def _hidden_states(text_encoder, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    """Last layer's output, or with clip_skip > 1 an earlier layer's, normalised as A1111 does."""
    if clip_skip <= 1:
        return text_encoder(input_ids)[0]
    out = text_encoder(input_ids, output_hidden_states=True)
    # hidden_states[0] is the embedding layer; a skip beyond it would index past the front.
    layers = out.hidden_states
    hidden = layers[-min(clip_skip, len(layers))]
    norm = final_layer_norm(text_encoder)
    return norm(hidden) if norm is not None else hidden


def final_layer_norm(text_encoder) -> torch.nn.Module | None:
    """The encoder's final LayerNorm, wherever this transformers version keeps it.

    transformers 5 puts it on `CLIPTextModel` itself; older versions and
    `CLIPTextModelWithProjection` keep it under `.text_model`.
    """
    for owner in (text_encoder, getattr(text_encoder, "text_model", None)):
        norm = getattr(owner, "final_layer_norm", None)
        if isinstance(norm, torch.nn.Module):
            return norm
    for name, module in text_encoder.named_modules():
        if name.endswith("final_layer_norm"):
            return module
    return None


def emphasized(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """z scaled per token by its weight, then rescaled to keep z's mean (A1111's "Original").

    Computed in float32 as A1111 does (its weights are float32 even for a half model), and
    returned in z's dtype. A rescale that would divide by zero is skipped rather than filling
    the embedding with inf.
    """
    if bool((weights == 1.0).all()):
        return z
    z32 = z.float()
    original_mean = z32.mean()
    weighted = z32 * weights.to(torch.float32)[..., None]
    new_mean = weighted.mean()
    if new_mean != 0 and torch.isfinite(original_mean / new_mean):
        weighted = weighted * (original_mean / new_mean)
    return weighted.to(z.dtype)
