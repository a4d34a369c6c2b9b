"""A1111's prompt syntax: `(word)` x1.1, `[word]` /1.1, `(word:1.3)`, `\\(` escapes, `BREAK`.

`parse_prompt_attention` splits a prompt into (text, weight) runs exactly as A1111's
`modules/prompt_parser.py` does, so a prompt copied from A1111 means the same here.
"""

from __future__ import annotations

import math
import re

BREAK_WEIGHT = -1.0
"""Weight of the `("BREAK", -1)` marker that `parse_prompt_attention` emits for `BREAK`."""

_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1

# A1111's tokenizer of the attention syntax, alternative for alternative, so edge cases
# (stray ':' or '\', a weight without an opening bracket) split the same way.
_ATTENTION_TOKEN = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:([+-]?[.\d]+)\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


# --------------------------------------------------------------------------- parsing


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs, as A1111's parser does.

    >>> parse_prompt_attention('a (very beautiful:1.3) [[cat]]')
    [('a ', 1.0), ('very beautiful', 1.3), (' ', 1.0), ('cat', 0.8264462809917354)]
    """
    segments: list[list] = []
    round_starts: list[int] = []
    square_starts: list[int] = []

    for match in _ATTENTION_TOKEN.finditer(text or ""):
        token, weight_text = match.group(0), match.group(1)
        weight = _explicit_weight(weight_text)
        if token.startswith("\\"):
            segments.append([token[1:], 1.0])
        elif token == "(":
            round_starts.append(len(segments))
        elif token == "[":
            square_starts.append(len(segments))
        elif weight is not None and round_starts:
            _multiply_from(segments, round_starts.pop(), weight)
        elif weight_text is not None and round_starts:
            # A1111 crashes on a weight like ':1.2.3)'; read it as the text ':1.2.3' and a ')'.
            segments.append([token[:-1], 1.0])
            _multiply_from(segments, round_starts.pop(), _ROUND_MULTIPLIER)
        elif token == ")" and round_starts:
            _multiply_from(segments, round_starts.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and square_starts:
            _multiply_from(segments, square_starts.pop(), _SQUARE_MULTIPLIER)
        else:
            segments.extend(_text_with_breaks(token))

    # Unclosed brackets still count, as in A1111: '(unbalanced' is weighted 1.1.
    for start in round_starts:
        _multiply_from(segments, start, _ROUND_MULTIPLIER)
    for start in square_starts:
        _multiply_from(segments, start, _SQUARE_MULTIPLIER)

    return _merged_runs(segments) or [("", 1.0)]


def _explicit_weight(weight_text: str | None) -> float | None:
    """The number in `(word:1.3)`, or None when absent or not a finite number."""
    if weight_text is None:
        return None
    try:
        weight = float(weight_text)
    except ValueError:
        return None
    return weight if math.isfinite(weight) else None


def _text_with_breaks(text: str) -> list[list]:
    """Plain text as segments, with a BREAK marker wherever the word BREAK stands alone."""
    segments: list[list] = []
    for index, part in enumerate(_BREAK.split(text)):
        if index > 0:
            segments.append(["BREAK", BREAK_WEIGHT])
        segments.append([part, 1.0])
    return segments


def _multiply_from(segments: list[list], start: int, multiplier: float) -> None:
    # A1111 multiplies BREAK markers too, which turns '(a BREAK b)' into the word "BREAK"
    # weighted -1.1 instead of a chunk break; markers keep their sentinel weight here.
    for segment in segments[start:]:
        if not is_break(segment):
            segment[1] *= multiplier


def _merged_runs(segments: list[list]) -> list[tuple[str, float]]:
    """Neighbouring segments of equal weight joined into one run (markers never join)."""
    runs: list[list] = []
    for segment in segments:
        if runs and runs[-1][1] == segment[1] and not is_break(segment) and not is_break(runs[-1]):
            runs[-1][0] += segment[0]
        else:
            runs.append(list(segment))
    return [(text, weight) for text, weight in runs]


def is_break(segment) -> bool:
    return segment[0] == "BREAK" and segment[1] == BREAK_WEIGHT
