"""Where commands write what a user makes (trained models, codecs, metrics).

Never inside the installed package: an install may be read-only, shared by
several users, and replaced on upgrade. The root is ``$CFQA_DATA_HOME``,
else ``$XDG_DATA_HOME/cfqa``, else ``~/.local/share/cfqa``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def user_data_dir() -> Path:
    """The root folder for a user's trained artefacts (not created here)."""
    if os.environ.get("CFQA_DATA_HOME"):
        return Path(os.environ["CFQA_DATA_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser() / "cfqa"


def default_output(kind: str, name: str) -> Path:
    """A fresh folder ``<user data>/<kind>/<name>-<UTC time>`` for a command run without ``--out``.

    Time-stamped so that a second training run never overwrites the first.
    """
    return user_data_dir() / kind / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
