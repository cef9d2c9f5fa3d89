"""The API every registry model shares: features, head, classifier reset, feature_info."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from .errors import InputError
from .layers.se import SEBlock

# Global pooling of the head, by timm's names ("" and "catavgmax" change the head's output).
GLOBAL_POOLS = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}
# timm's out_indices / indices: level indices (negative ones from the deepest) or an int n for
# the last n levels.
OutIndices = int | Sequence[int]


def feature_indices(
    modules: Sequence[str], indices: OutIndices | None, name: str = "model"
) -> list[int]:
    """Absolute, sorted level indices of ``indices`` (None: all levels), as timm reads them.

    Args:
        modules (Sequence[str]): the module name of each of the model's feature levels.
        indices (int | Sequence[int] | None): level indices, negative ones counted from the
            deepest; an int n means the last n levels; None means all.
        name (str): the model, for messages.

    Raises:
        ValueError: an index out of range, naming the valid range and the levels.
    """
    num_levels = len(modules)
    levels = ", ".join(f"{i}={module}" for i, module in enumerate(modules))
    if indices is None:
        return list(range(num_levels))
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise InputError(
                f"{name}: out_indices={indices} asks for the last {indices} levels; an int must "
                f"be in 1..{num_levels}, the model has {num_levels} feature levels: {levels}"
            )
        return list(range(num_levels - indices, num_levels))
    bad = [i for i in indices if not -num_levels <= i < num_levels]
    if bad or not indices:
        raise InputError(
            f"{name}: out_indices {list(indices)} has {bad or 'no index'} out of range; valid "
            f"indices are 0..{num_levels - 1} (or -{num_levels}..-1 from the deepest), the "
            f"model has {num_levels} feature levels: {levels}"
        )
    return sorted({i % num_levels for i in indices})


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

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: no classifier).

        Args:
            num_classes (int): classifier outputs; 0 for none (``forward`` returns the pooled
                features).
            global_pool (str | None): also change the pooling, as ``set_global_pool`` (None:
                keep it).
        """
        if global_pool is not None:
            self.set_global_pool(global_pool)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def set_global_pool(self, pool_type: str) -> None:
        """Pool the last feature map by "avg" (the default) or "max" before the classifier.

        The pooled size stays the family's (1x1; VGG's 7x7), so the classifier keeps its shape.
        """
        if pool_type not in GLOBAL_POOLS:
            raise InputError(
                f"global_pool={pool_type!r} is not supported by {type(self).__name__}; expected "
                f"one of {list(GLOBAL_POOLS)} (for unpooled maps use forward_features or "
                "features_only=True)"
            )
        self.global_pool = GLOBAL_POOLS[pool_type](self.global_pool.output_size)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: OutIndices | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates``: the final features and the chosen feature levels.

        Args:
            x (torch.Tensor): input images.
            indices (int | Sequence[int] | None): levels of ``feature_info`` (None: all; an int
                n: the last n).
            norm (bool): timm's flag to normalise intermediates; the registry models have no
                separate final norm (it is part of the last level), so it changes nothing.
            stop_early (bool): stop after the deepest chosen level; the "final" output is then
                that level's map.
            output_fmt (str): "NCHW", the only layout.
            intermediates_only (bool): return only the list of maps.

        Returns:
            ``(forward_features(x), maps)``, or ``maps`` with ``intermediates_only``.
        """
        if output_fmt != "NCHW":
            raise InputError(f"output_fmt={output_fmt!r} is not supported; expected 'NCHW'")
        levels = [f["module"] for f in self.feature_info]
        take = feature_indices(levels, indices, getattr(self, "model_name", type(self).__name__))
        last = levels[take[-1] if stop_early else -1]
        wanted = {levels[i] for i in take}
        intermediates = []
        # The top-level children in order up to the last level are forward_features
        # (tests/test_models.py checks it for every model), as for features_only.
        for name, child in self.named_children():
            x = child(x)
            if name in wanted:
                intermediates.append(x)
            if name == last:
                break
        return intermediates if intermediates_only else (x, intermediates)


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
