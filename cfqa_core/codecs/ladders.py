"""Rate ladders: which rate points a codec is run at, from the highest quality down.

Two ladders per block codec:

- ``operating`` (the default for rate control, calibration, replay tables,
  the simulator and the benchmark): from task-lossless to task-broken for the
  embedded model, dense where its outputs change. Measured on 12 bench
  images per task with HEVC: Dpt output moves by 0.7 % of the mean depth at
  QP 10, 3.6 % at QP 20 and 50 % at QP 51; Seg keeps 99.9 % of its pixel
  labels at QP 10, 97.8 % at QP 26, 86 % (everything background) from QP 41;
  Cls keeps every top-1 label up to QP 26 and 8 % of them at QP 51. The
  steps are 3 QP (about 1.4x in bytes) between QP 14 and 38, wider outside.
- ``paper``: the CFQA paper's QP 2..20 (``--ladder paper``), where the
  embedded model's tasks are nearly untouched.

AV1's quantizer ``q`` (0..63) spans a different scale (``cfqa_core.codecs.av1``);
its operating ladder covers the same task range as HEVC's. Learned codecs run
at their trained lambdas on both ladders.
"""
from __future__ import annotations

PAPER_LADDER: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 14, 16, 18, 20)
HEVC_OPERATING_LADDER: tuple[int, ...] = (6, 10, 14, 17, 20, 23, 26, 29, 32, 35, 38, 42, 46, 51)
VVC_OPERATING_LADDER: tuple[int, ...] = (6, 10, 14, 17, 20, 23, 26, 29, 32, 35, 38, 42, 48, 56)
AV1_PAPER_LADDER: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 11, 13)
AV1_OPERATING_LADDER: tuple[int, ...] = (4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 50, 56, 63)
LADDER_NAMES: tuple[str, ...] = ("operating", "paper")
DEFAULT_LADDER = "operating"


def ladder_of(codec, name: str = DEFAULT_LADDER) -> tuple[int, ...]:
    """The rate points of ``codec`` on the named ladder (``operating`` or ``paper``)."""
    from cfqa_core.errors import DataError

    if name == "operating":
        return tuple(codec.ladder)
    if name == "paper":
        return tuple(getattr(codec, "paper_ladder", codec.ladder))
    raise DataError(f"unknown ladder '{name}' (one of {', '.join(LADDER_NAMES)})")
