"""Multi-scale feature extraction (``features_only=True``), with timm's FeatureInfo semantics.

The extractor and its ``feature_info`` behave as timm's ``FeatureListNet`` and ``FeatureInfo`` so
that code written for timm trunks (transformers' ``TimmBackbone``, mmdet's ``TIMMBackbone``,
detectors that read ``feature_info.channels()``) takes ours unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._base import Backbone, OutIndices, feature_indices
from ._registry import model_families
from .errors import InputError


class FeatureInfo:
    """Channels, reductions and module names of a model's feature levels (timm's API).

    ``info`` lists every level of the model (dicts with ``num_chs``, ``reduction``, ``module``
    and ``index``); ``out_indices`` selects the ones an extractor returns. The accessors
    (``channels()``, ``reduction()``, ``module_name()``, ``get_dicts()``) describe the selected
    levels by default, or the levels ``idx`` names.
    """

    def __init__(self, feature_info: list[dict], out_indices: Sequence[int]) -> None:
        reductions = [f["reduction"] for f in feature_info]
        if any(b < a for a, b in zip(reductions, reductions[1:])):
            raise AssertionError(f"feature reductions must not decrease: {reductions}")
        self.info = [dict(f, index=i) for i, f in enumerate(feature_info)]
        self.out_indices = tuple(out_indices)

    def from_other(self, out_indices: OutIndices) -> FeatureInfo:
        """The same levels with another selection."""
        modules = [f["module"] for f in self.info]
        return FeatureInfo(self.info, feature_indices(modules, out_indices))

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """``key`` of the selected levels (None), of level ``idx`` (int) or of levels ``idx``."""
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(
        self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None
    ) -> Any:
        """The info dicts (only ``keys`` if given) of the selected levels, or of ``idx``."""
        if idx is None:
            chosen = [self.info[i] for i in self.out_indices]
        elif isinstance(idx, int):
            chosen = self.info[idx]
        else:
            chosen = [self.info[i] for i in idx]
        if keys is None:
            return chosen
        if isinstance(chosen, dict):
            return {k: chosen[k] for k in keys}
        return [{k: d[k] for k in keys} for d in chosen]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __len__(self) -> int:
        return len(self.info)

    def __getitem__(self, i: int) -> dict:
        return self.info[i]


def _feature_levels(model: nn.Module, name: str) -> list[dict]:
    levels = getattr(model, "feature_info", None)
    if not levels:
        # Every registered family records its levels (tests/test_models.py checks each).
        raise InputError(
            f"{name} ({type(model).__name__}) records no feature_info, so it cannot give "
            f"features (features_only=True); families that can: {', '.join(model_families())}"
        )
    return list(levels.info if isinstance(levels, FeatureInfo) else levels)


class FeatureListNet(nn.ModuleDict):
    """Runs a model's top-level children in order and returns the selected feature maps.

    Children after the deepest selected feature (the head) are dropped, so the extractor holds
    no classifier weights, and a state dict of the full model loads into it: the dropped
    children's keys are ignored. The maps come in order of depth. As in timm, ``return_layers``
    maps a module name to its output id (the level index as a string); a caller may replace it
    to get other levels (transformers' ``TimmBackbone`` does, for ``output_hidden_states``).

    Args:
        model (Backbone): the model; its ``feature_info`` lists the levels.
        out_indices (int | Sequence[int] | None): the levels to return (None: all); see
            ``feature_indices``.
    """

    def __init__(self, model: Backbone, out_indices: OutIndices | None = None) -> None:
        name = getattr(model, "model_name", type(model).__name__)
        levels = _feature_levels(model, name)
        selected = feature_indices([f["module"] for f in levels], out_indices, name)
        wanted = {levels[i]["module"]: str(i) for i in selected}
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        remaining = set(wanted)
        for child_name, module in model.named_children():
            if not remaining:
                break
            layers[child_name] = module
            remaining.discard(child_name)
        if remaining:
            raise InputError(f"feature modules {sorted(remaining)} are not top-level children")
        super().__init__(layers)
        self.return_layers = wanted
        self.feature_info = FeatureInfo(levels, selected)
        self.default_input_size = model.default_input_size
        self.dropped_children = [n for n, _ in model.named_children() if n not in layers]
        # The private hook API: the public one needs torch 2.5, the project supports 2.4.
        self._register_load_state_dict_pre_hook(self._drop_head_keys)

    def _drop_head_keys(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for key in list(state_dict):
            if key.startswith(prefix) and key[len(prefix):].split(".")[0] in self.dropped_children:
                del state_dict[key]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out.append(x)
        return out
