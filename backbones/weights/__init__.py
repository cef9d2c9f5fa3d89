from .timm import TIMM_EQUIVALENTS, create_from_timm, load_timm_weights

__all__ = ["TIMM_EQUIVALENTS", "create_from_timm", "load_timm_weights"]
