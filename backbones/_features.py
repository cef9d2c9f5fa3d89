"""Multi-scale feature extraction (``features_only=True``), with timm's FeatureInfo semantics."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ._base import Backbone
from .errors import InputError


class FeatureInfo:
    """Channels, reductions and module names of the selected feature maps."""

    def __init__(self, feature_info: list[dict], out_indices: Sequence[int]) -> None:
        reductions = [f["reduction"] for f in feature_info]
        if any(b < a for a, b in zip(reductions, reductions[1:])):
            raise AssertionError(f"feature reductions must not decrease: {reductions}")
        self.info = [dict(feature_info[i]) for i in out_indices]
        self.out_indices = tuple(out_indices)

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.info]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self.info]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self.info]

    def __len__(self) -> int:
        return len(self.info)

    def __getitem__(self, i: int) -> dict:
        return self.info[i]


class FeatureListNet(nn.ModuleDict):
    """Runs a model's top-level children in order and returns the selected feature maps.

    Children after the last selected feature (the head) are dropped, so the extractor holds no
    classifier weights.
    """

    def __init__(self, model: Backbone, out_indices: Sequence[int] | None = None) -> None:
        all_info = model.feature_info
        if out_indices is None:
            out_indices = tuple(range(len(all_info)))
        bad = [i for i in out_indices if not -len(all_info) <= i < len(all_info)]
        if bad:
            raise InputError(
                f"out_indices {list(out_indices)} has {bad} out of range; this model has "
                f"{len(all_info)} feature levels: "
                + ", ".join(f"{i}={f['module']}" for i, f in enumerate(all_info))
            )
        out_indices = tuple(i % len(all_info) for i in out_indices)
        wanted = {all_info[i]["module"]: i for i in out_indices}
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        remaining = set(wanted)
        for name, module in model.named_children():
            if not remaining:
                break
            layers[name] = module
            remaining.discard(name)
        if remaining:
            raise InputError(f"feature modules {sorted(remaining)} are not top-level children")
        super().__init__(layers)
        self.return_layers = wanted
        self.feature_info = FeatureInfo(all_info, out_indices)
        self.default_input_size = model.default_input_size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return [out[i] for i in self.feature_info.out_indices]
