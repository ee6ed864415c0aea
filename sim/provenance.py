"""What a run was made from, for ``summary.json``: code, model, data and settings.

Every input file is identified by its sha256, so two run folders can be
compared without trusting file names: the package version and git commit
(when the code runs from a checkout), the model weights (live mode), the
benchmark table (replay mode), each link's trace, the scenario file and the
scenario as run (overrides applied), the seed, the timing profile and the
trained files of any learned codec the nodes use.
"""
from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from cfqa_sim.scenario import REPO_ROOT, LoadedScenario

_CHUNK = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".onnx")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (cached per path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha256_cached(str(p), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"path": str(Path(path).resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cfqa-edgecloud")
    except PackageNotFoundError:
        return None


def git_commit(root: Path = REPO_ROOT) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout the code runs from; None outside a git checkout."""
    if not (root / ".git").exists():
        return None  # an installed package: its version identifies the code
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def model_weights(name: str) -> dict[str, Any]:
    """The weight files of a live-mode model: the embedded default, a file, or a folder."""
    from cfqa_core.models.zoo import EMBEDDED_DIR

    path = EMBEDDED_DIR if name == "embedded" else Path(name).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _WEIGHT_SUFFIXES)
    else:
        files = []
    return {"name": name, "files": [_file_entry(p) for p in files]}


def codec_weights(codecs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The trained files of the learned codecs among ``codecs`` (block codecs have none)."""
    from cfqa_core.codecs.learned import WEIGHTS_DIR

    out = {}
    for name in codecs:
        folder = WEIGHTS_DIR / name
        if folder.is_dir():
            out[name] = [_file_entry(p) for p in sorted(folder.rglob("*")) if p.is_file()]
    return out


def provenance(loaded: LoadedScenario) -> dict[str, Any]:
    """The provenance block of a run's ``summary.json``."""
    from cfqa_sim.traces import find_trace

    s = loaded.scenario
    traces: dict[str, Any] = {}
    for name, link in s.links.items():
        if isinstance(link.trace, str):
            traces[name] = _file_entry(find_trace(link.trace, (loaded.base_dir, REPO_ROOT)))
        else:
            traces[name] = {"synthetic": link.trace.model_dump(mode="json")}
    as_run = yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False).encode()
    out: dict[str, Any] = {
        "package_version": package_version(),
        "git": git_commit(),
        "scenario_file": _file_entry(loaded.path) if loaded.path else None,
        "scenario_as_run_sha256": hashlib.sha256(as_run).hexdigest(),
        "seed": s.seed,
        "mode": s.mode,
        "traces": traces,
        "timing_profile": (
            {"name": s.timing.profile, **_file_entry(loaded.timing_path())}
            if s.timing.profile else {"name": "scenario constants (timing.*)"}
        ),
    }
    if s.mode == "live":
        out["model"] = model_weights(s.live.model if s.live else "embedded")
    learned = codec_weights(sorted({g.codec for g in s.nodes}))
    if learned:
        out["codec_weights"] = learned
    if s.replay is not None:
        out["replay_table"] = {"images": s.replay.images, **_file_entry(loaded.table_path())}
    from cfqa_core.metrics.proxy import DEFAULT_WEIGHTS
    from cfqa_edge.policies.plan import DEFAULT_PLANS

    out["rate_plans"] = _file_entry(DEFAULT_PLANS) if DEFAULT_PLANS.is_file() else None
    out["proxy_metric"] = _file_entry(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else None
    return out
