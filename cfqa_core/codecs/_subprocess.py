"""Running external encoders/decoders safely: private temp dirs, timeouts, clear errors."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cfqa_core.errors import CodecError

DEFAULT_TIMEOUT_S = 600.0


def find_executable(env_var: str | None, *names: str) -> str | None:
    """Path of a tool: ``$env_var`` if set (must exist), else the first of ``names`` on PATH."""
    if env_var and os.environ.get(env_var):
        path = os.environ[env_var]
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def private_dir() -> tempfile.TemporaryDirectory:
    """A fresh directory per call, so concurrent encodes never share files."""
    return tempfile.TemporaryDirectory(prefix="cfqa-codec-")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def run_tool(
    args: Sequence[str],
    *,
    what: str,
    cwd: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess:
    """Run ``args``; CodecError (one line) on a missing tool, timeout, crash or non-zero exit."""
    try:
        # No new session: with the kernel's autogroup scheduling a new session
        # would escape the caller's nice level. The encoders spawn no children,
        # so killing the process itself on timeout is enough.
        proc = subprocess.Popen(
            list(map(str, args)),
            cwd=cwd,
            stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        raise CodecError(f"{what}: executable not found: {args[0]}") from None
    except PermissionError:
        raise CodecError(f"{what}: executable not runnable: {args[0]}") from None
    try:
        out, err = proc.communicate(input=input_bytes, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CodecError(f"{what} timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        detail = _last_line(err.decode(errors="replace") or out.decode(errors="replace"))
        if proc.returncode < 0:
            raise CodecError(f"{what} crashed (signal {-proc.returncode}): {detail}")
        raise CodecError(f"{what} failed (exit {proc.returncode}): {detail}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def read_output(path: Path, what: str) -> bytes:
    """Bytes of a tool's output file; CodecError when it wrote nothing."""
    if not path.is_file() or path.stat().st_size == 0:
        raise CodecError(f"{what} produced no output")
    return path.read_bytes()
