"""Registry ResNet-family names <-> detectron2's ResNet names (``modeling/backbone/resnet.py``).

detectron2 keeps each conv's norm inside the conv module (``conv1.norm``) and calls the projection
shortcut ``shortcut``; the registry blocks use timm's ``bn1`` and ``downsample.0`` / ``.1``. The
stage names (``stem``, ``res2``..``res5``) are the detectron2 trunk's own
(``tasks/detection/d2/backbone.py``), and SE layers (``se.fc1``, ``se.fc2``), which detectron2's
ResNet does not have, keep their names. Pure string maps: no detectron2 needed.
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["from_detectron2_name", "resnets_keys", "to_detectron2_name"]

_TO_DETECTRON2 = [
    (re.compile(r"(^|\.)bn(\d+)\."), r"\1conv\2.norm."),
    (re.compile(r"(^|\.)downsample\.0\."), r"\1shortcut."),
    (re.compile(r"(^|\.)downsample\.1\."), r"\1shortcut.norm."),
]
# shortcut.norm before shortcut: the second pattern would otherwise take both.
_FROM_DETECTRON2 = [
    (re.compile(r"(^|\.)conv(\d+)\.norm\."), r"\1bn\2."),
    (re.compile(r"(^|\.)shortcut\.norm\."), r"\1downsample.1."),
    (re.compile(r"(^|\.)shortcut\."), r"\1downsample.0."),
]


def _apply(rules: list[tuple[re.Pattern, str]], key: str) -> str:
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


def to_detectron2_name(key: str) -> str:
    """``res2.0.bn1.weight`` -> ``res2.0.conv1.norm.weight``; ``downsample.0`` -> ``shortcut``."""
    return _apply(_TO_DETECTRON2, key)


def from_detectron2_name(key: str) -> str:
    """The inverse of ``to_detectron2_name``; registry names pass through unchanged."""
    return _apply(_FROM_DETECTRON2, key)


def resnets_keys(model: nn.Module) -> dict[str, int | bool]:
    """What detectron2's ``MODEL.RESNETS`` keys say about a registry ResNet-family model.

    ``DEPTH`` counts the weighted layers on the main path, classifier included (50 for
    ResNet-50, 154 for SENet-154); ``NUM_GROUPS``, ``WIDTH_PER_GROUP`` and ``RES2_OUT_CHANNELS``
    are those of res2's first block; ``STRIDE_IN_1X1`` is the bottlenecks' stride position.
    """
    stem_convs = sum(isinstance(m, nn.Conv2d) for m in model.stem.modules())
    blocks = sum(len(getattr(model, f"layer{i}")) for i in range(1, 5))
    first = model.layer1[0]
    return {
        "DEPTH": stem_convs + 3 * blocks + 1,
        "NUM_GROUPS": first.conv2.groups,
        "WIDTH_PER_GROUP": first.conv2.out_channels // first.conv2.groups,
        "RES2_OUT_CHANNELS": first.conv3.out_channels,
        "STEM_OUT_CHANNELS": model.feature_info[0]["num_chs"],
        "STRIDE_IN_1X1": model.layer2[0].conv1.stride != (1, 1),
    }
