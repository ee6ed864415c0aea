"""The task names in the paper's order: the one source every package and command uses.

Kept free of imports so that argument parsers and schemas can use it without
loading numpy (``cfqa --help`` stays light).
"""
from __future__ import annotations

from typing import Literal

TASKS: tuple[str, ...] = ("cls", "seg", "dpt")
# The same names as a type, for pydantic schemas and signatures.
TaskName = Literal["cls", "seg", "dpt"]
assert TaskName.__args__ == TASKS, "TaskName and TASKS must list the same tasks"
