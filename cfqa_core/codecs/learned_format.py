"""The learned codecs' folder and bitstream format: the writer (torch) and the reader (numpy) share it.

Torch-free: :mod:`cfqa_core.codecs.learned` reads codec folders and bitstreams
with these names and numbers; :mod:`cfqa_core.codecs.hyperprior.export` writes them.
"""
from __future__ import annotations

# Version of codec.json and of an encoded feature's metadata.
FORMAT_VERSION = 1
CONFIG_FILE = "codec.json"
TABLES_FILE = "tables.npz"
# The four transforms, one ONNX graph each, and their (input, output) names.
TRANSFORMS: tuple[str, ...] = ("g_a", "h_a", "h_s", "g_s")
TRANSFORM_IO: dict[str, tuple[str, str]] = {"g_a": ("x", "y"), "h_a": ("y", "z"), "h_s": ("z", "params"),
                                            "g_s": ("y", "x")}
STRIDE = 64  # 4 stride-2 layers in g_a and 2 more in h_a: frame sides are multiples of this
LATENT_STRIDE = 16  # the 4 stride-2 layers of g_a: y is the frame divided by this
# An initializer stored as float16 under this suffix and cast back to float32 in the graph.
FP16_SUFFIX = "__fp16"
