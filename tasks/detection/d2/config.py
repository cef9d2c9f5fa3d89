"""detectron2 config of the registry trunks: ``MODEL.SEBENCH.NAME`` and ``MODEL.SEBENCH.KWARGS``.

``KWARGS`` is a list of ``"key=value"`` strings, not a mapping: yacs refuses keys a node does not
already have on the command line, so a mapping could only be set from YAML. A list loads from
both::

    # YAML
    MODEL:
      SEBENCH:
        NAME: se_resnet50
        KWARGS: ["se_reduction=8", "stride_in_1x1=False"]

    # command line (yacs reads the value as a Python literal)
    MODEL.SEBENCH.KWARGS '["se_reduction=8", "stride_in_1x1=False"]'

Each value is read as a Python literal (``8``, ``False``, ``(3, 4)``), else kept as a string
(``se_gate=tanh``); see ``backbones.parse_kwargs``.
"""

from __future__ import annotations

import difflib
from typing import Any

from detectron2.config import CfgNode

import backbones

# The kwargs helpers live beside the weight converter, which must import without detectron2.
from backbones import format_kwargs, parse_kwargs
from backbones.errors import InputError
from backbones.resnet import ResNet

from ..convert_weights import resnet_family_models

# create_model keywords the detectron2 builders set themselves: the trunk has no classifier and
# the stages are taken from the full model, never a features_only extractor.
RESERVED_KWARGS = ("num_classes", "features_only", "out_indices")


def add_sebench_config(cfg: CfgNode) -> None:
    """Add the project's keys to a detectron2 config (in place), before merging its YAML files.

    ``MODEL.SEBENCH.NAME`` and ``MODEL.SEBENCH.KWARGS``: the registry trunk and its keywords.
    ``SOLVER.AMP.PRECISION``: "float16", "bfloat16" or "" (float16 on CUDA, bfloat16 on the
    CPU), used when ``SOLVER.AMP.ENABLED`` is True; detectron2's config has no such key (its
    ``AMPTrainer`` takes the dtype as an argument, float16 by default).

    Args:
        cfg (CfgNode): a config from ``detectron2.config.get_cfg()``, changed in place.
    """
    cfg.MODEL.SEBENCH = CfgNode()
    # A registry name of the ResNet family (ResNet, ResNeXt, SENet-154), plain or SE.
    cfg.MODEL.SEBENCH.NAME = "se_resnet50"
    # Extra backbones.create_model keywords as "key=value" strings, e.g. "se_reduction=8".
    cfg.MODEL.SEBENCH.KWARGS = []
    cfg.SOLVER.AMP.PRECISION = ""


def sebench_model_args(cfg: CfgNode) -> tuple[str, dict[str, Any]]:
    """The registry name and keywords of ``cfg.MODEL.SEBENCH``, checked against the registry.

    Catches an unknown or unsupported name, a malformed item and an unknown or reserved keyword
    before anything is built; bad values (e.g. ``se_reduction=0``) are caught by
    ``check_sebench_config``, which builds the trunk.

    Raises:
        ValueError: naming the bad key and what was expected.
    """
    if "SEBENCH" not in cfg.MODEL:
        raise InputError(
            "the config has no MODEL.SEBENCH; call "
            "tasks.detection.d2.config.add_sebench_config(cfg) before merging the YAML"
        )
    name = cfg.MODEL.SEBENCH.NAME
    if not backbones.is_model(name):
        close = difflib.get_close_matches(str(name), resnet_family_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InputError(
            f"MODEL.SEBENCH.NAME={name!r} is not a registry model.{hint} "
            f"Supported: {', '.join(resnet_family_models())}"
        )
    if backbones.model_class(name) is not ResNet:
        raise InputError(
            f"MODEL.SEBENCH.NAME={name!r} ({backbones.model_class(name).__name__}) has no "
            f"detectron2 trunk; supported (ResNet family): {', '.join(resnet_family_models())}"
        )
    items = cfg.MODEL.SEBENCH.KWARGS
    if isinstance(items, str):
        raise InputError(
            f"MODEL.SEBENCH.KWARGS must be a list of 'key=value' strings, got the string "
            f"{items!r}; on a detectron2 command line write MODEL.SEBENCH.KWARGS '[\"{items}\"]'"
        )
    kwargs = parse_kwargs(items, "MODEL.SEBENCH.KWARGS")
    accepted = [k for k in backbones.accepted_kwargs(ResNet) if k not in RESERVED_KWARGS]
    for key in kwargs:
        if key in RESERVED_KWARGS:
            raise InputError(
                f"MODEL.SEBENCH.KWARGS must not set {key!r}: the detectron2 trunk sets it "
                f"(reserved: {', '.join(RESERVED_KWARGS)})"
            )
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise InputError(
                f"MODEL.SEBENCH.KWARGS has an unknown keyword {key!r} for {name}.{hint} "
                f"Accepted: {', '.join(accepted)}"
            )
    return name, kwargs


def create_trunk(cfg: CfgNode) -> ResNet:
    """The registry model of ``cfg.MODEL.SEBENCH`` without a classifier (BatchNorm as built).

    Raises:
        ValueError: a bad name or keyword (see ``sebench_model_args``) or a bad keyword value,
            prefixed with the config key.
    """
    name, kwargs = sebench_model_args(cfg)
    try:
        return backbones.create_model(name, num_classes=0, **kwargs)
    except (ValueError, TypeError) as err:
        raise InputError(
            f"MODEL.SEBENCH (NAME={name!r}, KWARGS={format_kwargs(kwargs)}): {err}"
        ) from err


def check_sebench_config(cfg: CfgNode) -> None:
    """Fail early on a bad ``MODEL.SEBENCH`` (builds the trunk once, on the CPU, and drops it)."""
    create_trunk(cfg)
