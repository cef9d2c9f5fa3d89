"""Which models a benchmark measures: specs (``name``, ``timm:name``, ``name[key=value,...]``),
building them, their MACs, and the paper's suite with each model's plain and timm twins."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import backbones
from backbones.errors import InputError
from backbones.weights.timm import TIMM_EQUIVALENTS

# timm name -> our registry name computing the same function (given the right conventions).
TIMM_TWINS: dict[str, str] = {
    "seresnet101": "se_resnet101",
    "seresnet152": "se_resnet152",
    "seresnext50_32x4d": "se_resnext50_32x4d",
    "seresnext101_32x4d": "se_resnext101_32x4d",
    "resnext50_32x4d": "resnext50_32x4d",
    "resnext101_32x4d": "resnext101_32x4d",
    "senet154": "senet154",
    **{timm_name: ours for timm_name, (ours, _) in TIMM_EQUIVALENTS.items()},
}

# Registry SE models whose plain baseline is not simply the name without "se_".
PLAIN_BASELINES = {"senet154": "senet154_plain"}

# The paper's models, each with its plain baseline and timm's model of the same architecture
# (the Caffe conventions of the legacy weights where timm only has those). Groups run one after
# the other; models within a group are interleaved.
SUITES: dict[str, dict[str, list[str]]] = {
    "paper": {
        "se_resnet50": [
            "se_resnet50", "resnet50", "se_resnet50[stride_in_1x1=False]",
            "resnet50[stride_in_1x1=False]", "timm:seresnet50", "timm:resnet50",
        ],
        "se_resnet152": [
            "se_resnet152[stem_pool_ceil=True]", "resnet152[stem_pool_ceil=True]",
            "timm:legacy_seresnet152",
        ],
        "se_resnext50_32x4d": ["se_resnext50_32x4d", "resnext50_32x4d", "timm:seresnext50_32x4d"],
        "senet154": ["senet154", "senet154_plain", "timm:legacy_senet154"],
        "se_preact_resnet110": ["se_preact_resnet110", "preact_resnet110"],
        "se_preact_resnet164": ["se_preact_resnet164", "preact_resnet164"],
        "se_wrn16_8": ["se_wrn16_8", "wrn16_8"],
    },
}


# ---------------------------------------------------------------------------------------------
# Model specs: "name", "timm:name", "name[key=value, ...]"

_SPEC = re.compile(r"^(?P<timm>timm:)?(?P<name>[A-Za-z0-9_.\-]+)(?:\[(?P<kwargs>.*)\])?$")


def _compact(value: Any) -> str:
    """repr without the spaces of lists, so a label can be pasted back into a shell."""
    if isinstance(value, (list, tuple)):
        inner = ",".join(_compact(v) for v in value)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model to measure: a registry or timm name and its keywords."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    timm: bool = False

    @property
    def label(self) -> str:
        keys = ",".join(f"{k}={_compact(v)}" for k, v in self.kwargs)
        return f"{'timm:' if self.timm else ''}{self.name}{f'[{keys}]' if keys else ''}"


def _parse_kwargs(inner: str, text: str) -> tuple[tuple[str, Any], ...]:
    try:
        call = ast.parse(f"f({inner})", mode="eval").body
    except SyntaxError:
        call = None
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise InputError(f"bad keywords in model spec {text!r}; expected NAME[key=value,...]")
    pairs = []
    for keyword in call.keywords:
        try:
            pairs.append((keyword.arg, ast.literal_eval(keyword.value)))
        except ValueError:
            raise InputError(
                f"value of {keyword.arg!r} in model spec {text!r} is not a Python literal "
                f"(expected e.g. True, 3, 0.5, 'avg', [3, 5])"
            ) from None
    return tuple(pairs)


def parse_spec(text: str) -> ModelSpec:
    """Parse ``name``, ``timm:name`` or ``name[key=value,...]``.

    Args:
        text (str): the spec; keyword values are Python literals (``ast.literal_eval``), e.g.
            ``se_resnet50[stride_in_1x1=False,se_stages=[3,5]]``.

    Returns:
        The spec, keywords sorted by key (one label per model).

    Raises:
        ValueError: naming the spec and what is wrong with it.
    """
    match = _SPEC.match(text.strip())
    if match is None:
        raise InputError(
            f"bad model spec {text!r}; expected NAME, timm:NAME or NAME[key=value,...]")
    kwargs = _parse_kwargs(match["kwargs"], text) if match["kwargs"] else ()
    # Sorted keywords: one label per model however its keywords were ordered.
    kwargs = tuple(sorted(kwargs, key=lambda kv: kv[0]))
    return ModelSpec(match["name"], kwargs, timm=bool(match["timm"]))


def _import_timm():
    try:
        import timm
    except ImportError:
        raise InputError("timm: models need timm installed (pip install timm)") from None
    return timm


def check_spec(spec: ModelSpec) -> None:
    """Raise ValueError naming an unknown model, before anything is built."""
    if not spec.timm:
        accepted = backbones.accepted_kwargs(backbones.model_class(spec.name))  # names close ones
        unknown = [key for key, _ in spec.kwargs if key not in accepted]
        if unknown:
            raise InputError(f"{spec.label}: {spec.name} does not accept {unknown}; "
                             f"accepted keywords: {', '.join(accepted)}")
        return
    timm = _import_timm()
    if not timm.is_model(spec.name):
        close = difflib.get_close_matches(spec.name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise InputError(f"unknown timm model {spec.name!r}{hint} (see timm.list_models())")


def build_model(spec: ModelSpec) -> nn.Module:
    """Build ``spec`` on the CPU with random weights."""
    kwargs = dict(spec.kwargs)
    if not spec.timm:
        return backbones.create_model(spec.name, **kwargs)
    try:
        return _import_timm().create_model(spec.name, pretrained=False, **kwargs)
    except TypeError as err:
        # timm checks no keyword: an unknown one surfaces as Python's TypeError from the model
        # class. Only that one is the user's; any other TypeError is a bug and propagates.
        if "unexpected keyword argument" not in str(err):
            raise
        raise InputError(f"timm:{spec.name} does not accept {sorted(kwargs)}: {err}") from None


def native_input_size(spec: ModelSpec, model: nn.Module) -> tuple[int, int, int]:
    if spec.timm:
        return tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    return tuple(model.default_input_size)


def count_macs(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int]:
    """(MACs per image, parameters) in the paper's convention, for registry and timm models.

    ``model_complexity`` counts every Conv2d and Linear of any model, and our SE blocks' rescale;
    timm's SE modules get their rescale (one multiply per element) counted here.
    """
    rescale = 0

    def add_rescale(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal rescale
        rescale += output.numel()

    hooks = [m.register_forward_hook(add_rescale) for m in model.modules()
             if type(m).__name__ == "SEModule" and type(m).__module__.startswith("timm.")]
    try:
        counted = backbones.model_complexity(model, input_size)
    finally:
        for hook in hooks:
            hook.remove()
    return counted["macs"] + rescale, counted["params"]
