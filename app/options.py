"""Argparse type functions for the command line: each checks one kind of value and says what it wants.

    p.add_argument("-k", type=at_least(1), ...)          # a whole number >= 1
    p.add_argument("--min-score", type=number(-1, 1))    # a finite number in [-1, 1]
    p.add_argument("--port", type=port)
    p.add_argument("text", type=text)                     # valid UTF-8 (argv can hold any bytes)

A bad value ends the command with one line (``error: argument -k: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def at_least(low: int) -> Callable[[str], int]:
    """A whole number >= ``low``."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants a whole number >= {low}, got {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"wants a whole number >= {low}, got {value!r}")
        return n

    parse.__name__ = f"whole number >= {low}"
    return parse


def number(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """A finite number within [low, high] (either bound may be None); nan and inf are refused."""
    if low is not None and high is not None:
        wanted = f"a number from {low:g} to {high:g}"
    elif low is not None:
        wanted = f"a number >= {low:g}"
    elif high is not None:
        wanted = f"a number <= {high:g}"
    else:
        wanted = "a finite number"

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants {wanted}, got {value!r}") from None
        if not math.isfinite(x) or (low is not None and x < low) or (high is not None and x > high):
            raise argparse.ArgumentTypeError(f"wants {wanted}, got {value!r}")
        return x

    parse.__name__ = wanted
    return parse


def port(value: str) -> int:
    """A TCP port, 1-65535."""
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"wants a port from 1 to 65535, got {value!r}")
    return n


def text(value: str) -> str:
    """Text that is valid UTF-8. Arguments that are not arrive with surrogate escapes (PEP 383) and
    would fail deep inside the tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise argparse.ArgumentTypeError(
            f"'{shown}' is not valid UTF-8 text: retype it, or set a UTF-8 locale (e.g. LANG=C.UTF-8)") from None
    return value


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``error: ...``, as every other error of the
    app) pointing at --help, instead of the usage block followed by the message."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")
