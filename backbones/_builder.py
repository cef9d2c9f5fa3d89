"""``create_model``: validate the name and every keyword, then build (optionally as features)."""

from __future__ import annotations

import ast
import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ._base import Backbone
from ._features import FeatureListNet
from ._pretrained_cfg import features_cfg, pretrained_cfg
from ._registry import model_entrypoint
from .errors import InputError
from .layers.se import SEConfig

# create_model keywords that configure the SE block; `se` switches it on or off.
SE_KWARGS = ("se_reduction", "se_squeeze", "se_gate", "se_placement", "se_stages")
BUILD_KWARGS = ("features_only", "out_indices")


def accepted_kwargs(model_cls: type[Backbone]) -> list[str]:
    """Every keyword ``create_model`` accepts for a model of this class."""
    params = [p for p in inspect.signature(model_cls).parameters if p != "se"]
    return sorted(params + ["se", *SE_KWARGS, *BUILD_KWARGS])


def _check_kwargs(model_cls: type[Backbone], kwargs: dict[str, Any], name: str) -> None:
    accepted = accepted_kwargs(model_cls)
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise InputError(
                f"{name} ({model_cls.__name__}) got an unexpected keyword {key!r}.{hint} "
                f"Accepted keywords: {', '.join(accepted)}"
            )


def _se_config(model_cls: type[Backbone], kwargs: dict[str, Any], name: str) -> SEConfig | None:
    """Pop the SE keywords from ``kwargs`` into an SEConfig (None for a plain model)."""
    knobs = {k[len("se_"):]: kwargs.pop(k) for k in SE_KWARGS if k in kwargs}
    if not kwargs.pop("se", False):
        if knobs:
            raise InputError(
                f"{name} has SE switched off, so {sorted('se_' + k for k in knobs)} would do "
                f"nothing; use the se_ model or pass se=True"
            )
        return None
    if knobs.get("stages") is not None:
        stages = tuple(int(s) for s in knobs["stages"])
        bad = [s for s in stages if s not in model_cls.se_stage_ids]
        if bad or not stages:
            raise InputError(
                f"se_stages={list(stages)} is not valid for {name}: stages are numbered "
                f"{list(model_cls.se_stage_ids)}"
            )
        knobs["stages"] = stages
    config = SEConfig(**knobs)
    if config.placement not in model_cls.se_placements:
        raise InputError(
            f"se_placement={config.placement!r} is not implemented for {name} "
            f"({model_cls.__name__}); expected one of {list(model_cls.se_placements)}"
        )
    return config


def build_model(
    model_cls: type[Backbone], name: str, defaults: dict[str, Any], kwargs: dict[str, Any]
) -> nn.Module:
    """Build ``model_cls`` from an entrypoint's ``defaults`` overridden by the caller's ``kwargs``."""
    _check_kwargs(model_cls, kwargs, name)
    args = {**defaults, **kwargs}
    features_only = args.pop("features_only", False)
    out_indices: Sequence[int] | None = args.pop("out_indices", None)
    if out_indices is not None and not features_only:
        raise InputError(f"{name}: out_indices is only used with features_only=True")
    args["se"] = _se_config(model_cls, args, name)
    model = model_cls(**args)
    model.model_name = name
    model.pretrained_cfg = model.default_cfg = pretrained_cfg(
        model_cls, name, in_chans=args.get("in_chans", 3)
    )
    if features_only:
        feature_net = FeatureListNet(model, out_indices)
        feature_net.model_name = name
        feature_net.pretrained_cfg = feature_net.default_cfg = features_cfg(model.pretrained_cfg)
        return feature_net
    return model


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registry model by name.

    Args:
        name (str): a name from ``list_models()``, e.g. "se_resnet50".
        **kwargs: the model class's constructor arguments (``num_classes``, ``in_chans``,
            ``stride_in_1x1``, ...), the SE knobs (``se``, ``se_reduction``, ``se_squeeze``,
            ``se_gate``, ``se_placement``, ``se_stages``), and ``features_only``/``out_indices``.

    Returns:
        The model, or with ``features_only=True`` a module returning a list of feature maps
        described by its ``feature_info``. Both carry timm's ``pretrained_cfg`` (alias
        ``default_cfg``): input size, interpolation, crop, mean and std of the model's recipe.

    Raises:
        ValueError: unknown name or keyword (with close matches), or an invalid SE knob.
    """
    # The entrypoint's build_model checks every keyword against the class before building.
    return model_entrypoint(name)(**kwargs)


def parse_kwargs(
    items: Sequence[str] | Mapping[str, Any], key: str = "model keywords"
) -> dict[str, Any]:
    """``["se_reduction=8", "se_gate=tanh"]`` -> ``{"se_reduction": 8, "se_gate": "tanh"}``.

    Each value is read as a Python literal (``8``, ``False``, ``(3, 4, 6, 3)``), else kept as a
    string. A mapping is passed through.

    Args:
        items: ``"key=value"`` strings.
        key: the option's name, for messages.

    Raises:
        ValueError: an item not of the form ``key=value``, or a keyword given twice.
    """
    if isinstance(items, Mapping):
        return dict(items)
    if isinstance(items, str):
        raise InputError(  # noqa: TRY004  (bad config input: the CLIs report ValueError)
            f"{key} must be a list of 'key=value' strings, got the string {items!r}"
        )
    kwargs: dict[str, Any] = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise InputError(
                f"{key} item {item!r} is not of the form 'key=value' (e.g. 'se_reduction=8')"
            )
        if name in kwargs:
            raise InputError(f"{key} gives {name!r} twice")
        kwargs[name] = _literal(text.strip())
    return kwargs


def format_kwargs(kwargs: Mapping[str, Any]) -> list[str]:
    """The inverse of ``parse_kwargs``: ``{"se_reduction": 8}`` -> ``["se_reduction=8"]``."""
    items = []
    for name, value in sorted(kwargs.items()):
        # Strings stay bare where parse_kwargs reads them back as the same string.
        text = value if isinstance(value, str) and _literal(value) == value else repr(value)
        items.append(f"{name}={text}")
    return items


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
