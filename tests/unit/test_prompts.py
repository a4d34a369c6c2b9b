"""Prompt parsing and encoding, on the real CLIP tokenizer and a tiny random CLIP text encoder."""

import copy
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from app.generation.prompt_syntax import parse_prompt_attention
from app.generation.prompts import (
    PromptEmbeddings,
    chunk_ids_and_weights,
    count_tokens,
    encode_prompt,
    encode_prompt_pair,
    prompt_chunks,
)

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tok2():
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        hidden_act="quick_gelu",
        projection_dim=32,
    )
    return CLIPTextModel(config).eval()


def standard_encoding(tokenizer, encoder, prompt):
    """What diffusers' own pipeline computes for a short prompt."""
    ids = tokenizer(prompt, padding="max_length", max_length=77).input_ids
    with torch.no_grad():
        return encoder(torch.tensor([ids])).last_hidden_state


# --------------------------------------------------------------------------- parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        (
            "a (very beautiful:1.3) [[cat]]",
            [("a ", 1.0), ("very beautiful", 1.3), (" ", 1.0), ("cat", 1 / 1.1 / 1.1)],
        ),
        ("((a)(b))", [("ab", 1.1 * 1.1)]),
        ("", [("", 1.0)]),
        ("a \\\\ b", [("a \\ b", 1.0)]),
        ("word:1.2)", [("word:1.2)", 1.0)]),  # a weight without '(' is plain text
        ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ],
)
def test_parser_matches_a1111(text, expected):
    assert parse_prompt_attention(text) == expected


def test_break_is_a_marker_only_as_an_uppercase_word():
    assert parse_prompt_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1), ("b", 1.0)]
    assert parse_prompt_attention("a break b") == [("a break b", 1.0)]
    assert parse_prompt_attention("a BREAKING b") == [("a BREAKING b", 1.0)]


def test_break_inside_brackets_stays_a_break():
    # A1111 would weight the marker and then encode the word "BREAK" at -1.1.
    assert parse_prompt_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1), ("b", 1.1)]


def test_malformed_weight_is_text_not_an_error():
    assert parse_prompt_attention("(cat:1.2.3)") == [("cat:1.2.3", 1.1)]
    assert parse_prompt_attention("(cat:.)") == [("cat:.", 1.1)]


# --------------------------------------------------------------------------- chunks and counts


def test_count_tokens(tok):
    assert count_tokens(tok, "") == (0, 75)
    assert count_tokens(tok, "a (photo:1.3) of a cat") == (5, 75)
    assert count_tokens(tok, "cat " * 80) == (80, 150)
    assert count_tokens(tok, "a BREAK b") == (76, 150)  # as A1111: a broken chunk counts 75


def test_overflow_moves_text_after_a_late_comma_to_the_next_chunk(tok):
    prompt = "cat " * 70 + ", " + "dog " * 10
    chunks, _ = prompt_chunks(tok, prompt)
    assert [len(c.tokens) for c in chunks] == [71, 10]
    assert chunks[0].tokens[-1] == tok(",", add_special_tokens=False).input_ids[0]


def test_overflow_without_a_nearby_comma_splits_at_75(tok):
    prompt = "cat , " + "dog " * 90
    chunks, _ = prompt_chunks(tok, prompt)
    assert [len(c.tokens) for c in chunks] == [75, 17]


# --------------------------------------------------------------------------- encoding


def test_short_unweighted_prompt_matches_the_standard_pipeline_encoding(tok, enc):
    prompt = "a photo of an astronaut riding a horse"
    ours = encode_prompt(tok, enc, prompt)
    assert ours.shape == (1, 77, 32)
    assert torch.equal(ours, standard_encoding(tok, enc, prompt))


def test_sd2_tokenizer_pads_with_zero_and_matches_its_standard_encoding(tok, tok2, enc):
    prompt = "a red cube"
    chunks, _ = prompt_chunks(tok2, prompt)
    ids, _ = chunk_ids_and_weights(tok2, chunks[0])
    assert ids[:5] == [49406, *tok2(prompt, add_special_tokens=False).input_ids, 49407]
    assert ids[5:] == [0] * 72
    ours = encode_prompt(tok2, enc, prompt)
    assert torch.equal(ours, standard_encoding(tok2, enc, prompt))
    assert not torch.equal(ours, encode_prompt(tok, enc, prompt))


def test_weight_one_is_a_no_op_and_other_weights_change_the_embedding(tok, enc):
    plain = encode_prompt(tok, enc, "a cat")
    assert torch.equal(encode_prompt(tok, enc, "a (cat:1.0)"), plain)
    assert not torch.allclose(encode_prompt(tok, enc, "a (cat:1.5)"), plain)
    assert not torch.allclose(encode_prompt(tok, enc, "a [cat]"), plain)


def test_weight_scales_only_its_tokens_then_the_mean_is_restored(tok, enc):
    plain = encode_prompt(tok, enc, "a cat sitting")
    weighted = encode_prompt(tok, enc, "a (cat:1.5) sitting")
    # Same ids, so the encoder output is the same: the weight is a per-position scale
    # (1.5 at "cat", position 2 after the start token) times one global mean-restoring factor.
    scale = torch.ones(77)
    scale[2] = 1.5
    factor = plain.mean() / (plain * scale[None, :, None]).mean()
    assert torch.allclose(weighted, plain * scale[None, :, None] * factor, atol=1e-6)
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)
    assert factor != 1.0


def test_an_80_token_prompt_takes_two_chunks(tok, enc):
    prompt = "cat " * 80
    out = encode_prompt(tok, enc, prompt)
    assert out.shape == (1, 154, 32)
    # The second chunk is encoded on its own: it equals the 5 leftover tokens as a prompt.
    assert torch.equal(out[:, 77:], standard_encoding(tok, enc, "cat " * 5))


def test_break_starts_a_new_chunk(tok, enc):
    out = encode_prompt(tok, enc, "a red cube BREAK a blue sphere")
    assert out.shape == (1, 154, 32)
    assert torch.equal(out[:, :77], standard_encoding(tok, enc, "a red cube"))
    assert torch.equal(out[:, 77:], standard_encoding(tok, enc, "a blue sphere"))


def test_trailing_break_adds_no_chunk(tok, enc):
    assert encode_prompt(tok, enc, "a cat BREAK").shape == (1, 77, 32)


def test_min_chunks_pads_with_empty_prompt_chunks(tok, enc):
    out = encode_prompt(tok, enc, "a cat", min_chunks=3)
    empty = encode_prompt(tok, enc, "")
    assert out.shape == (1, 231, 32)
    assert torch.equal(out[:, 77:154], empty) and torch.equal(out[:, 154:], empty)


def test_pair_is_padded_to_equal_shapes_with_empty_chunks(tok, enc):
    pair = encode_prompt_pair(tok, enc, "cat " * 80, "blurry", clip_skip=2)
    assert isinstance(pair, PromptEmbeddings)
    assert pair.positive.shape == pair.negative.shape == (1, 154, 32)
    assert torch.equal(pair.negative[:, :77], encode_prompt(tok, enc, "blurry", clip_skip=2))
    assert torch.equal(pair.negative[:, 77:], encode_prompt(tok, enc, "", clip_skip=2))

    flipped = encode_prompt_pair(tok, enc, "", "dog " * 160)
    assert flipped.positive.shape == flipped.negative.shape == (1, 231, 32)


def test_clip_skip_two_is_the_normalised_penultimate_layer(tok, enc):
    prompt = "a photo of a cat"
    skipped = encode_prompt(tok, enc, prompt, clip_skip=2)
    assert not torch.allclose(skipped, encode_prompt(tok, enc, prompt, clip_skip=1))

    ids = torch.tensor([tok(prompt, padding="max_length", max_length=77).input_ids])
    with torch.no_grad():
        hidden = enc(ids, output_hidden_states=True).hidden_states
        expected = torch.nn.functional.layer_norm(
            hidden[-2],
            (32,),
            enc.final_layer_norm.weight,
            enc.final_layer_norm.bias,
            enc.config.layer_norm_eps,
        )
    assert torch.allclose(skipped, expected, atol=1e-6)


def test_clip_skip_past_the_first_layer_does_not_raise(tok, enc):
    assert encode_prompt(tok, enc, "a cat", clip_skip=99).shape == (1, 77, 32)
    assert torch.equal(encode_prompt(tok, enc, "a cat", clip_skip=0), encode_prompt(tok, enc, "a cat"))


def test_output_follows_the_encoder_dtype_and_has_no_grad(tok, enc):
    half = copy.deepcopy(enc).to(torch.bfloat16)
    out = encode_prompt(tok, half, "a (cat:1.4)")
    assert out.dtype == torch.bfloat16
    assert not out.requires_grad


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "   ",
        "((((((",
        "))))]]]][[[",
        "\\",
        "(:)",
        "(cat:)",
        "(cat:-1)",
        "(cat:0)",
        "(cat:" + "9" * 400 + ")",
        "BREAK",
        "BREAK BREAK BREAK",
        "<|endoftext|><|startoftext|>",
        "日本語のプロンプト, 😀🎨🔥, naïve café",
        "\x00\t\n\r\u200b",
        "masterpiece, (best quality:1.2), " * 300,  # ~10k characters
    ],
)
def test_hostile_prompts_encode(tok, enc, prompt):
    pair = encode_prompt_pair(tok, enc, prompt, prompt)
    assert pair.positive.shape[1] % 77 == 0 and pair.positive.shape[1] >= 77
    assert torch.isfinite(pair.positive).all()
    used, limit = count_tokens(tok, prompt)
    assert 0 <= used <= limit and limit % 75 == 0
