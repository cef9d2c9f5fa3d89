"""SE-Net backbones: one registry of every architecture of the paper, plain and with SE."""

from . import (  # noqa: F401  (families register their models on import)
    bn_inception,
    inception_resnet_v2,
    mobilenet,
    preact_resnet,
    resnet,
    shake_shake,
    shufflenet,
    vgg,
    wide_resnet,
)

# isort: split
# After the families: registers them with timm (now if timm is imported, else when it is).
from . import timm_bridge  # noqa: F401
from ._base import Backbone
from ._builder import accepted_kwargs, create_model, format_kwargs, parse_kwargs
from ._features import FeatureInfo, FeatureListNet
from ._registry import is_model, list_models, model_class, register_model
from .complexity import model_complexity
from .errors import InputError, MissingFileError
from .layers import SEBlock, SEConfig
from .prune import IdentitySE, prune_se, se_blocks, se_sites, select_se_blocks
from .weights import TIMM_EQUIVALENTS, create_from_timm, load_timm_weights

__all__ = [
    "TIMM_EQUIVALENTS",
    "Backbone",
    "FeatureInfo",
    "FeatureListNet",
    "IdentitySE",
    "InputError",
    "SEBlock",
    "SEConfig",
    "accepted_kwargs",
    "create_from_timm",
    "create_model",
    "format_kwargs",
    "is_model",
    "list_models",
    "load_timm_weights",
    "MissingFileError",
    "model_class",
    "model_complexity",
    "parse_kwargs",
    "prune_se",
    "register_model",
    "se_blocks",
    "se_sites",
    "select_se_blocks",
]
