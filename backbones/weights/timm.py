"""Load timm weights (the official SENet weights live there as ``legacy_*``) into our models."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._builder import create_model
from ..errors import InputError
from ..resnet import ResNet
from . import resnet as resnet_map
from .checkpoint import state_dict_mismatches

TIMM_EQUIVALENTS = resnet_map.TIMM_EQUIVALENTS


def _family_map(model: nn.Module):
    """The weight map of the model's family (a ResNet, or its features_only extractor)."""
    children = dict(model.named_children())
    if isinstance(model, ResNet) or {"stem", "layer1"} <= children.keys():
        return resnet_map
    raise InputError(
        f"no timm weight map for {type(model).__name__}; supported: ResNet, ResNeXt, SENet-154 "
        f"(timm models {sorted(TIMM_EQUIVALENTS)})"
    )


def load_timm_weights(
    model: nn.Module, source: nn.Module | dict[str, torch.Tensor], *, exclude_classifier: bool = False
) -> nn.Module:
    """Copy timm weights into ``model`` (strict: every tensor must fit).

    Args:
        model (nn.Module): a registry model of the ResNet family, or its ``features_only`` form
            (the classifier weights are then dropped).
        source (nn.Module | dict): a timm model or its ``state_dict()``. With a model, the
            stride and pooling conventions are checked too; a state_dict cannot tell them.
        exclude_classifier (bool): leave our classifier as it is (e.g. another ``num_classes``).

    Returns:
        ``model``, loaded.

    Raises:
        ValueError: naming the first keys that are missing, unexpected or of another shape.
    """
    weight_map = _family_map(model)
    if isinstance(source, nn.Module):
        weight_map.check_timm_conventions(model, source)
        source = source.state_dict()
    state = weight_map.remap_timm_state_dict(source, model)
    ours = model.state_dict()
    if exclude_classifier or "fc.weight" not in ours:
        # Keep our own classifier (none at all in a features_only model).
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        state.update({k: v for k, v in ours.items() if k.startswith("fc.")})
    problems = state_dict_mismatches(ours, state, source="timm weights")
    if problems:
        shown = "\n  ".join(problems[:8])
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise InputError(
            f"timm weights do not fit {getattr(model, 'model_name', type(model).__name__)} "
            f"({len(problems)} problems):\n  {shown}{more}"
        )
    model.load_state_dict(state, strict=True)
    return model


def create_from_timm(timm_name: str, source: nn.Module | dict[str, torch.Tensor], **kwargs: Any) -> nn.Module:
    """Build our equivalent of timm model ``timm_name`` and load ``source`` into it."""
    if timm_name not in TIMM_EQUIVALENTS:
        raise InputError(f"no equivalent for timm model {timm_name!r}; known: {sorted(TIMM_EQUIVALENTS)}")
    name, conventions = TIMM_EQUIVALENTS[timm_name]
    model = create_model(name, **{**conventions, **kwargs})
    return load_timm_weights(model, source, exclude_classifier="num_classes" in kwargs)
