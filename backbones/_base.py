"""The API every registry model shares: features, head, classifier reset, feature_info."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .layers.se import SEBlock


class Backbone(nn.Module):
    """Base of every registry model.

    A family builds its trunk as top-level children in forward order (so features can be taken
    from them by name), records ``feature_info`` while it builds, implements ``forward_features``
    and calls ``init_head``. The head is ``global_pool`` -> ``head_drop`` -> ``fc``.

    Class attributes read by the builder before a model is built:
        default_input_size: the native (C, H, W) of the family.
        se_stage_ids: the stage numbers ``se_stages`` may name.
        se_placements: the ``se_placement`` values the family's blocks implement.
    """

    default_input_size: ClassVar[tuple[int, int, int]] = (3, 224, 224)
    se_stage_ids: ClassVar[tuple[int, ...]] = ()
    se_placements: ClassVar[tuple[str, ...]] = ("standard",)

    num_features: int
    feature_info: list[dict]

    def init_head(
        self, num_features: int, num_classes: int, drop_rate: float = 0.0, pool_size: int = 1
    ) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.global_pool = nn.AdaptiveAvgPool2d(pool_size)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def add_feature(self, num_chs: int, reduction: int, module: str) -> None:
        if not hasattr(self, "feature_info"):
            self.feature_info = []
        self.feature_info.append(dict(num_chs=num_chs, reduction=reduction, module=module))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: no classifier)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def init_weights(model: nn.Module) -> None:
    """He (fan-out) init for convs and SE layers, unit BN, small-normal classifiers.

    The SE block's two FC layers are 1x1 convolutions in the paper's (Caffe) models and in timm's,
    and get the convolutions' He init here too. The classifier's small-normal init would leave
    every gate at sigmoid(~0) = 0.5 with gradients through both FC layers near zero, so SE would
    start close to inert.
    """
    se_layers = {id(fc) for m in model.modules() if isinstance(m, SEBlock) for fc in (m.fc1, m.fc2)}
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or id(m) in se_layers:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
