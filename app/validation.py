"""Checking the numbers and text a user or a client sends, with one wording for every request.

Each check returns the value in its proper type or raises InvalidRequest with a sentence that names
the field, the allowed range and what was sent.
"""

import math

from app.errors import InvalidRequest

MAX_PROMPT_CHARS = 20_000


def number(value, what: str, low: float, high: float) -> float:
    limits = f"between {plain(low)} and {plain(high)}"
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too big for a float
        raise InvalidRequest(f"{what} must be a number {limits}.") from None
    if not math.isfinite(result) or not low <= result <= high:
        raise InvalidRequest(f"{what} must be {limits}; got {shown(value)}.")
    return result


def integer(value, what: str, low: int, high: int) -> int:
    result = number(value, what, low, high)
    if result != int(result):
        raise InvalidRequest(f"{what} must be a whole number between {low} and {high}; got {shown(value)}.")
    return int(result)


def text(value, what: str, limit: int = MAX_PROMPT_CHARS) -> str:
    """Text of at most `limit` characters; None counts as empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"The {what} must be text.")
    if len(value) > limit:
        raise InvalidRequest(f"The {what} is {len(value):,} characters long; the limit is {limit:,}. Shorten it.")
    return value


def plain(limit: float) -> str:
    """4294967295, not 4.29497e+09: a user should read the exact limit."""
    return str(int(limit)) if float(limit).is_integer() else f"{limit:g}"


def shown(value) -> str:
    """The offending value, cut short: a megabyte-long value has no place in a message."""
    result = str(value)
    return result if len(result) <= 40 else result[:37] + "..."
