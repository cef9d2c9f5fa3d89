from .checkpoint import RegistryCheckpoint, check_state_dict, read_checkpoint
from .timm import TIMM_EQUIVALENTS, create_from_timm, load_timm_weights

__all__ = [
    "TIMM_EQUIVALENTS",
    "RegistryCheckpoint",
    "check_state_dict",
    "create_from_timm",
    "load_timm_weights",
    "read_checkpoint",
]
