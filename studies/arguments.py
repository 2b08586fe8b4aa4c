"""Value types for the ``valley`` subcommands' options: each refuses a bad value with one line at parse time."""

from __future__ import annotations

import argparse
import json

DEVICE_TYPES = ("cpu", "cuda")


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` where torch sees that GPU; anything else is refused.

    Example:
        >>> device("cpu")
        'cpu'
    """
    import torch  # here, not at the top: building the parser must stay light (valley --help)

    if text == "auto":
        return text
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or auto") from None
    if parsed.type not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"valley computes on cpu or cuda, not on {text!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} was asked for but torch sees no CUDA device")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise argparse.ArgumentTypeError(f"{text!r}: torch sees {count} CUDA device(s), numbered from 0")
    return text


def json_object(text: str) -> dict:
    """A JSON object (``{...}``), e.g. the options of a model.

    Example:
        >>> json_object('{"widths": [8]}')
        {'widths': [8]}
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg} at character {error.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"widths\": [32]}}', got {text!r}")
    return value


def count(text: str) -> int:
    """A whole number of at least 1 (points, repeats, threads, ...); anything else is refused."""
    return _whole(text, 1)


def count_or_zero(text: str) -> int:
    """A whole number of at least 0 (0 usually skips the work it counts)."""
    return _whole(text, 0)


def _whole(text: str, least: int) -> int:
    if not text.strip().isdigit() or int(text) < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
    return int(text)


SEED_MAX = 2**63 - 1
SPAN_MAX = 1e300


def seed(text: str) -> int:
    """A whole number in ``[0, 2**63 - 1]``, the range torch's generators take."""
    if not text.strip().isdigit() or int(text) > SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole number in [0, 2**63 - 1], got {text!r}")
    return int(text)


def span(text: str) -> float:
    """A finite positive half width of at most 1e300 (wider grids overflow their own arithmetic).

    Example:
        >>> span("0.5")
        0.5
    """
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= SPAN_MAX:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected a positive number of at most {SPAN_MAX:g}, got {text!r}")
    return value
