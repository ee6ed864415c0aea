"""argparse types shared by the command groups: bounded numbers with one-line errors.

Import-free beyond the standard library, so that building the ``cfqa`` parser stays light.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def bounded(kind: type, lo: float, hi: float, *, name: str = "", low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) in ``[lo, hi]`` (``(lo, hi]`` if ``low_open``).

    Errors are one line: ``not an integer: 'x'``, ``port must be in 0..65535, got 99999``.
    """
    noun = name or ("integer" if kind is int else "number")
    article = "an" if noun[0] in "aeiou" else "a"
    interval = f"({lo:g}, {hi:g}]" if low_open else f"{lo:g}..{hi:g}"
    prefix = f"{name} " if name else ""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {article} {noun}: '{text}'") from None
        inside = lo < value <= hi if low_open else lo <= value <= hi
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"{prefix}must be in {interval}, got {text}")
        return value

    return parse
