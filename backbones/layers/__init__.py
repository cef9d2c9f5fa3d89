from .conv import conv_bn_act
from .se import GATES, PLACEMENTS, SQUEEZES, ResidualSE, SEBlock, SEConfig, SqueezeExcite, make_se

__all__ = [
    "GATES",
    "PLACEMENTS",
    "SQUEEZES",
    "ResidualSE",
    "SEBlock",
    "SEConfig",
    "SqueezeExcite",
    "conv_bn_act",
    "make_se",
]
