"""Model registry: the embedded default and user-supplied DINOv2 weights.

``load_model`` accepts
- a name registered in ``MODELS`` (a :class:`~cfqa_core.registry.Registry`;
  ``model_names()`` lists them): ``"embedded"``, the small DINOv2-architecture
  model shipped with the package (``cfqa_core/weights/embedded``);
- a folder written by ``save_model`` (``model.safetensors`` + ``meta.json``);
- a local Hugging Face ``Dinov2Model`` folder (``config.json`` + safetensors);
- an official ``dinov2_vitX14*_pretrain.pth`` file.
Foreign backbones come without our heads: only feature extraction and
split-consistency work on them until heads are trained for them.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cfqa_core.errors import ModelError
from cfqa_core.models.checkpoint import (
    backbone_from_hf_folder,
    backbone_from_official,
    infer_config,
    load_backbone_state,
    read_state_dict,
)
from cfqa_core.models.dinov2 import DinoVisionTransformer
from cfqa_core.models.split_model import ModelMeta, SplitModel
from cfqa_core.registry import Registry

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
EMBEDDED_DIR = WEIGHTS_DIR / "embedded"
_WEIGHTS_FILE = "model.safetensors"
_META_FILE = "meta.json"


def save_model(model: SplitModel, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``meta.json`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / _WEIGHTS_FILE))
    (folder / _META_FILE).write_text(json.dumps(model.meta.to_dict(), indent=2) + "\n")
    return folder


def _load_project_folder(folder: Path) -> SplitModel:
    meta = ModelMeta.from_dict(json.loads((folder / _META_FILE).read_text()))
    model = SplitModel(DinoVisionTransformer(meta.config), meta)
    state = read_state_dict(folder / _WEIGHTS_FILE)
    backbone_state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    load_backbone_state(model.backbone, backbone_state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"{folder}: head weights do not match: missing {missing}, unexpected {unexpected}")
    return model


def _foreign(backbone: DinoVisionTransformer, name: str) -> SplitModel:
    return SplitModel(backbone, ModelMeta(name=name, config=backbone.cfg))


MODELS: Registry[Callable[..., SplitModel]] = Registry("model", ModelError)


@MODELS.register("embedded")
def embedded() -> SplitModel:
    """The small DINOv2-architecture model shipped with the package (``cfqa_core/weights/embedded``), eval mode."""
    if not (EMBEDDED_DIR / _WEIGHTS_FILE).is_file():
        raise ModelError(f"embedded weights missing at {EMBEDDED_DIR}; run 'cfqa train' to create them")
    return _load_project_folder(EMBEDDED_DIR).eval()


def model_names(filter: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally those matching an fnmatch pattern."""
    return MODELS.names(filter)


def load_model(name_or_path: str | Path = "embedded") -> SplitModel:
    """Load a model by registered name or local path (see module docstring); eval mode, CPU."""
    key = str(name_or_path)
    if key in MODELS:
        return MODELS.create(key).eval()
    path = Path(key)
    if not path.exists():
        known = ", ".join(model_names())
        raise ModelError(f"unknown model '{key}': no such file or folder, nor a registered model (known: {known})")
    if path.is_dir():
        if (path / _META_FILE).is_file():
            model = _load_project_folder(path)
        elif (path / "config.json").is_file():
            model = _foreign(backbone_from_hf_folder(path), path.name)
        else:
            raise ModelError(f"{path} holds neither meta.json (cfqa model) nor config.json (Hugging Face)")
    elif path.suffix in (".pth", ".pt", ".safetensors"):
        model = _foreign(backbone_from_official(path), path.stem)
    else:
        raise ModelError(f"unrecognised weights file '{path}' (expected .pth, .pt or .safetensors)")
    return model.eval()


__all__ = ["MODELS", "load_model", "model_names", "save_model", "infer_config", "EMBEDDED_DIR"]
