from .se import GATES, PLACEMENTS, SQUEEZES, SEBlock, ResidualSE, SEConfig, SqueezeExcite, make_se

__all__ = ["GATES", "PLACEMENTS", "SQUEEZES", "ResidualSE", "SEBlock", "SEConfig", "SqueezeExcite", "make_se"]
