"""Edge ONNX exports kept in the user's cache, so the edge runs without torch after the first use.

``cached_export_dir(model)`` names a folder per model weights: the resolved
path of the weights plus their size and modification time, so retrained or
replaced weights get a fresh export. ``ensure_export`` writes a split's graph
there once (that needs torch); afterwards ``find_export`` answers from the
file system alone, and the ONNX backend needs neither torch nor the model
code. Nothing here imports torch or numpy at module level.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from cfqa_core.errors import ModelError

ONNX_META_FILE = "meta.json"  # same name as cfqa_edge.backends.ONNX_META_FILE (kept import-free here)
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".json")


def cache_root() -> Path:
    """``$CFQA_EDGE_ONNX_CACHE``, else ``$CFQA_CACHE_DIR/edge-onnx``, else ``$XDG_CACHE_HOME/cfqa/edge-onnx``
    (default ``~/.cache/cfqa/edge-onnx``)."""
    explicit = os.environ.get("CFQA_EDGE_ONNX_CACHE")
    if explicit:
        return Path(explicit)
    shared = os.environ.get("CFQA_CACHE_DIR")
    if shared:
        return Path(shared) / "edge-onnx"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cfqa" / "edge-onnx"


def model_source(spec: str) -> Path:
    """The weights file or folder that ``load_model(spec)`` reads ('embedded' is the package's)."""
    if spec == "embedded":
        import cfqa_core

        return Path(cfqa_core.__file__).resolve().parent / "weights" / "embedded"
    path = Path(spec)
    if not path.exists():
        raise ModelError(f"unknown model '{spec}': not 'embedded' and no such file or folder")
    return path.resolve()


def _fingerprint(source: Path) -> str:
    """Hash of the path, size and mtime of every weights file (not their bytes: ViT-g is gigabytes)."""
    files = [source] if source.is_file() else sorted(
        p for p in source.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    h = hashlib.sha256(str(source).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_export_dir(spec: str) -> Path:
    """The cache folder of ``spec``'s edge graphs (it may not exist yet)."""
    source = model_source(spec)
    stem = source.stem if source.is_file() else source.name
    return cache_root() / f"{stem}-{_fingerprint(source)}"


def has_split(folder: str | Path, split: int) -> bool:
    """Whether ``folder`` holds an export with the graph of ``split``."""
    folder = Path(folder)
    meta_path = folder / ONNX_META_FILE
    if not (folder / f"edge_split{split}.onnx").is_file() or not meta_path.is_file():
        return False
    try:
        return str(split) in json.loads(meta_path.read_text()).get("splits", {})
    except (OSError, json.JSONDecodeError):
        return False


def find_export(spec: str, split: int | None) -> Path | None:
    """The cached export folder of ``spec`` holding ``split`` (None: the model's last block), or None.

    ``split=None`` is answered from the cached ``meta.json`` (its model depth),
    so it too needs no torch.
    """
    folder = cached_export_dir(spec)
    if split is None:
        try:
            split = int(json.loads((folder / ONNX_META_FILE).read_text())["model"]["depth"])
        except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError):
            return None
    return folder if has_split(folder, split) else None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``folder`` so that concurrent first uses export once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_export(spec: str, split: int | None, model=None) -> Path:
    """The cached export of ``spec`` holding ``split``, exporting it now (with torch) when missing.

    ``model`` is the loaded ``SplitModel`` of ``spec`` when the caller has it.
    """
    found = find_export(spec, split)
    if found is not None:
        return found
    folder = cached_export_dir(spec)
    try:
        from cfqa_core.models import load_model
        from cfqa_edge.onnx_export import export_edge
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"no cached edge export of model '{spec}' (split {split}) in {folder}, and exporting one needs "
            f"'{exc.name}'; run 'cfqa edge export' where torch is installed and pass --onnx-dir"
        ) from None
    with _locked(folder):
        model = model if model is not None else load_model(spec)
        split = model.depth if split is None else split
        if not has_split(folder, split):  # another process may have exported it while we waited
            export_edge(model, split, folder)
    return folder
