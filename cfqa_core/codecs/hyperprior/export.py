"""Export of a trained network as a codec folder (ONNX graphs + entropy tables + codec.json), and reading it back."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cfqa_core.codecs.hyperprior.networks import HyperpriorConfig, HyperpriorModel, build_model
from cfqa_core.codecs.learned_format import CONFIG_FILE, FORMAT_VERSION, FP16_SUFFIX, STRIDE, TABLES_FILE
from cfqa_core.codecs.learned_format import TRANSFORM_IO as _IO
from cfqa_core.errors import ModelError

ONNX_OPSET = 17


def _input_channels(cfg: HyperpriorConfig) -> dict[str, int]:
    return {"g_a": 1, "h_a": cfg.M, "h_s": cfg.Nh, "g_s": cfg.M}


def _store_fp16(model_proto) -> None:
    """Store every initializer that float16 represents exactly as float16 plus a Cast.

    The conv weights were rounded to float16 values before export, so this
    halves the files without changing a single number; GDN parameters and
    anything else stay float32.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model_proto.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        half = arr.astype(np.float16)
        if arr.size < 16 or not np.array_equal(half.astype(np.float32), arr):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, name + FP16_SUFFIX))
        casts.append(helper.make_node("Cast", [name + FP16_SUFFIX], [name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model_proto)


def export_onnx(module: nn.Module, path, in_channels: int, names: tuple[str, str]) -> None:
    """Export one transform with dynamic height and width; initializers keep parameter names."""
    import warnings

    import onnx

    sample = torch.rand(1, in_channels, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (sample,), str(path), dynamo=False, do_constant_folding=False, opset_version=ONNX_OPSET,
            training=torch.onnx.TrainingMode.TRAINING,  # eval mode would merge equal-valued weights
            input_names=[names[0]], output_names=[names[1]],
            dynamic_axes={names[0]: {2: "h", 3: "w"}, names[1]: {2: "h", 3: "w"}},
        )
    proto = onnx.load(str(path))
    expected = set(module.state_dict())
    found = {i.name for i in proto.graph.initializer}
    if found != expected:
        raise ModelError(f"ONNX export of {path} renamed weights: {sorted(found ^ expected)}")
    _store_fp16(proto)
    onnx.save(proto, str(path))


@torch.no_grad()
def export_codec(model: HyperpriorModel, folder, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Freeze ``model`` (float16 conv weights, tabulated prior) and write the codec folder.

    Writes ``g_a/h_a/h_s/g_s.onnx``, ``tables.npz`` (prior PMFs, medians,
    gains, scale table) and ``codec.json``; returns the JSON content. The
    model is left in exactly the deployed state, so its
    :meth:`~HyperpriorModel.quantized_forward` is what the codec computes.
    """
    import json
    from pathlib import Path

    from cfqa_core.codecs.entropy import scale_table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.round_weights_fp16()
    prior = model.entropy_bottleneck.update()
    deploy = model.deploy_transforms()
    channels = _input_channels(model.cfg)
    for name, module in deploy.items():
        export_onnx(module, folder / f"{name}.onnx", channels[name], _IO[name])
    np.savez(folder / TABLES_FILE, scale_table=scale_table(), **prior, **model.gain_arrays())
    meta = {
        "format": FORMAT_VERSION,
        "family": "learned",
        "architecture": f"{model.cfg.variant}-hyperprior",
        "config": model.cfg.to_dict(),
        "stride": STRIDE,
        "io": {k: list(v) for k, v in _IO.items()},
        **(info or {}),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_deploy_transforms(folder, cfg: HyperpriorConfig) -> dict[str, nn.Sequential]:
    """The four transforms as torch modules whose weights are read from the ONNX files."""
    from pathlib import Path

    import onnx
    from onnx import numpy_helper

    template = build_model(cfg).deploy_transforms()
    for name, module in template.items():
        path = Path(folder) / f"{name}.onnx"
        try:
            proto = onnx.load(str(path))
        except Exception as exc:
            raise ModelError(f"cannot read {path}: {exc}") from None
        state = {}
        for init in proto.graph.initializer:
            key = init.name[: -len(FP16_SUFFIX)] if init.name.endswith(FP16_SUFFIX) else init.name
            state[key] = torch.from_numpy(numpy_helper.to_array(init).astype(np.float32))
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{path} does not match a {cfg.variant} hyperprior {cfg.to_dict()}: "
                             f"{str(exc).splitlines()[0]}") from None
    return template
