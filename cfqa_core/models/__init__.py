"""DINOv2 backbone, task heads and model loading (torch)."""
from cfqa_core.models.dinov2 import CONFIGS, DinoVisionTransformer, ViTConfig, build_backbone  # noqa: F401
from cfqa_core.models.split_model import ModelMeta, SplitModel  # noqa: F401
from cfqa_core.models.zoo import EMBEDDED_DIR, MODELS, load_model, model_names, save_model  # noqa: F401
