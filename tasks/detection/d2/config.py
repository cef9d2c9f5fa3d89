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
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode

import backbones

# The kwargs helpers live beside the weight converter, which must import without detectron2.
from backbones import format_kwargs, parse_kwargs
from backbones.errors import InputError
from backbones.resnet import ResNet
from backbones.weights import TIMM_EQUIVALENTS
from backbones.weights.detectron2 import resnets_keys

from ..convert_weights import resnet_family_models

# create_model keywords the detectron2 builders set themselves: the trunk has no classifier and
# the stages are taken from the full model, never a features_only extractor.
RESERVED_KWARGS = ("num_classes", "features_only", "out_indices")
# MODEL.RESNETS keys that describe detectron2's own ResNet and that the registry trunk (named by
# MODEL.SEBENCH) already fixes: a value other than detectron2's default must agree with the
# trunk. DEPTH is always checked (every config says which depth it means).
ARCHITECTURE_KEYS = {
    "NUM_GROUPS": 1,
    "WIDTH_PER_GROUP": 64,
    "RES2_OUT_CHANNELS": 256,
    "STEM_OUT_CHANNELS": 64,
}
# detectron2's ImageNet weights of its MSRA ResNets (the MODEL.WEIGHTS of its R50/R101 configs),
# and the input they were trained on: BGR, 0..255, mean subtracted, no scaling.
MSRA_WEIGHTS = {
    "resnet50": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    "resnet101": "detectron2://ImageNetPretrained/MSRA/R-101.pkl",
}
MSRA_PIXEL_MEAN = [103.53, 116.28, 123.675]
MSRA_PIXEL_STD = [1.0, 1.0, 1.0]
MSRA_PIXEL_FORMAT = [
    "INPUT.FORMAT", "BGR",
    "MODEL.PIXEL_MEAN", str(MSRA_PIXEL_MEAN),
    "MODEL.PIXEL_STD", str(MSRA_PIXEL_STD),
]  # fmt: skip
# MODEL.RESNETS keys with no counterpart in the registry trunks: only the default is accepted.
UNSUPPORTED_KEYS = {"DEFORM_MODULATED": False, "DEFORM_NUM_GROUPS": 1}


def add_sebench_config(cfg: CfgNode) -> None:
    """Add the project's keys to a detectron2 config (in place), before merging its YAML files.

    ``MODEL.SEBENCH.NAME`` and ``MODEL.SEBENCH.KWARGS``: the registry trunk and its keywords.
    ``MODEL.SEBENCH.ALLOW_RANDOM_INIT`` and ``ALLOW_PARTIAL_LOAD``: opt-ins for trunks that start
    (partly) from random weights. ``SOLVER.AMP.PRECISION``: "float16", "bfloat16" or ""
    (float16 on CUDA, bfloat16 on the CPU), used when ``SOLVER.AMP.ENABLED`` is True;
    detectron2's config has no such key (its ``AMPTrainer`` takes the dtype as an argument,
    float16 by default).

    Args:
        cfg (CfgNode): a config from ``detectron2.config.get_cfg()``, changed in place.
    """
    cfg.MODEL.SEBENCH = CfgNode()
    # A registry name of the ResNet family (ResNet, ResNeXt, SENet-154), plain or SE.
    cfg.MODEL.SEBENCH.NAME = "se_resnet50"
    # Extra backbones.create_model keywords as "key=value" strings, e.g. "se_reduction=8".
    cfg.MODEL.SEBENCH.KWARGS = []
    # Train with an empty MODEL.WEIGHTS although the trunk is frozen (MODEL.BACKBONE.FREEZE_AT > 0
    # or MODEL.RESNETS.NORM FrozenBN): `sebench detect train` then unfreezes it (FREEZE_AT 0,
    # NORM BN), since random stages and statistics cannot stay frozen. Without it that is an error.
    cfg.MODEL.SEBENCH.ALLOW_RANDOM_INIT = False
    # Accept weights that leave trunk tensors unloaded (e.g. ImageNet ResNet-50 weights in an SE
    # trunk): they keep their random init and a warning lists them. Without it that is an error.
    cfg.MODEL.SEBENCH.ALLOW_PARTIAL_LOAD = False
    cfg.SOLVER.AMP.PRECISION = ""


def sebench_model_args(cfg: CfgNode) -> tuple[str, dict[str, Any]]:
    """The registry name and keywords of ``cfg.MODEL.SEBENCH``, checked against the registry.

    Catches an unknown or unsupported name, a malformed item and an unknown or reserved keyword
    before anything is built; bad values (e.g. ``se_reduction=0``) are caught by
    ``check_sebench_config``, which builds the trunk.

    Raises:
        InputError: naming the bad key and what was expected.
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


def _build(name: str, kwargs: dict[str, Any]) -> ResNet:
    # A bad keyword value is the user's; anything else (a TypeError deep in a constructor) is a
    # bug and keeps its own type and traceback.
    try:
        return backbones.create_model(name, num_classes=0, **kwargs)
    except InputError as err:
        raise InputError(
            f"MODEL.SEBENCH (NAME={name!r}, KWARGS={format_kwargs(kwargs)}): {err}"
        ) from err


def _check_architecture_keys(
    cfg: CfgNode, name: str, kwargs: dict[str, Any], built: dict[str, int | bool]
) -> None:
    resnets = cfg.MODEL.RESNETS
    if resnets.DEPTH != built["DEPTH"]:
        trunk = f"{name} {format_kwargs(kwargs)}" if kwargs else name
        raise InputError(
            f"MODEL.RESNETS.DEPTH is {resnets.DEPTH} but the trunk {trunk} has {built['DEPTH']} "
            f"layers; set MODEL.RESNETS.DEPTH {built['DEPTH']} (the depth comes from MODEL.SEBENCH)"
        )
    for key, default in ARCHITECTURE_KEYS.items():
        if resnets[key] != default and resnets[key] != built[key]:
            raise InputError(
                f"MODEL.RESNETS.{key} is {resnets[key]} but the trunk {name} has {built[key]}: "
                f"the registry model fixes it (choose another MODEL.SEBENCH.NAME or KWARGS, "
                f"e.g. cardinality=/base_width= for a ResNeXt); drop the key or set {built[key]}"
            )
    if any(resnets.DEFORM_ON_PER_STAGE):
        raise InputError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(resnets.DEFORM_ON_PER_STAGE)}: the registry "
            "trunks have no deformable convolutions; set it to [False, False, False, False]"
        )
    for key, default in UNSUPPORTED_KEYS.items():
        if resnets[key] != default:
            raise InputError(
                f"MODEL.RESNETS.{key}={resnets[key]!r} is not supported by the registry trunks "
                f"(no deformable convolutions); leave it at {default!r}"
            )


def _honoured_kwargs(
    cfg: CfgNode, name: str, kwargs: dict[str, Any], built: dict[str, int | bool]
) -> dict[str, Any]:
    """``kwargs`` plus the registry keywords of MODEL.RESNETS.STRIDE_IN_1X1 and RES5_DILATION."""
    resnets, kwargs = cfg.MODEL.RESNETS, dict(kwargs)
    wanted = bool(resnets.STRIDE_IN_1X1)
    if wanted != built["STRIDE_IN_1X1"]:
        if "stride_in_1x1" in kwargs:
            raise InputError(
                f"MODEL.RESNETS.STRIDE_IN_1X1 is {wanted} but MODEL.SEBENCH.KWARGS sets "
                f"stride_in_1x1={kwargs['stride_in_1x1']}: set MODEL.RESNETS.STRIDE_IN_1X1 "
                f"{kwargs['stride_in_1x1']} (detectron2's default is True)"
            )
        if wanted:  # detectron2's default against a registry model built the other way
            raise InputError(
                f"{name} puts the bottleneck stride on the 3x3 conv (the convention of its "
                "ImageNet weights) but MODEL.RESNETS.STRIDE_IN_1X1 is True (detectron2's "
                "default, for MSRA ResNets): set MODEL.RESNETS.STRIDE_IN_1X1 False, as "
                "detectron2's own ResNeXt configs do, or MODEL.SEBENCH.KWARGS "
                "'[\"stride_in_1x1=True\"]' for the Caffe-style variant"
            )
        kwargs["stride_in_1x1"] = False
    if resnets.RES5_DILATION not in (1, 2):
        raise InputError(
            f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {resnets.RES5_DILATION!r}"
        )
    if resnets.RES5_DILATION == 2:
        # detectron2 dilates every block of res5, the first one included.
        dilated = {"output_stride": 16, "dilate_first_block": True}
        clash = {k: kwargs[k] for k in dilated if k in kwargs and kwargs[k] != dilated[k]}
        if clash:
            raise InputError(
                f"MODEL.RESNETS.RES5_DILATION 2 means {format_kwargs(dilated)}, but "
                f"MODEL.SEBENCH.KWARGS sets {format_kwargs(clash)}"
            )
        kwargs.update(dilated)
    return kwargs


def create_trunk(cfg: CfgNode) -> ResNet:
    """The registry model of ``cfg.MODEL.SEBENCH`` without a classifier (BatchNorm as built),
    with the ``MODEL.RESNETS`` keys it can honour applied and the others checked.

    Honoured: ``STRIDE_IN_1X1`` (``stride_in_1x1``) and ``RES5_DILATION`` 2 (``output_stride=16``
    with every res5 block dilated, as detectron2 does); ``OUT_FEATURES`` and ``NORM`` are the
    builders'. Checked against the trunk: ``DEPTH``, and ``NUM_GROUPS``, ``WIDTH_PER_GROUP``,
    ``RES2_OUT_CHANNELS``, ``STEM_OUT_CHANNELS`` where they are not detectron2's defaults.
    Rejected unless default: ``DEFORM_ON_PER_STAGE``, ``DEFORM_MODULATED``, ``DEFORM_NUM_GROUPS``.

    Raises:
        InputError: a bad name, keyword or keyword value (see ``sebench_model_args``), prefixed
            with the config key, or a ``MODEL.RESNETS`` key the trunk cannot honour.
    """
    name, kwargs = sebench_model_args(cfg)
    with torch.device("meta"):  # the architecture alone: no memory, no initialisation cost
        built = resnets_keys(_build(name, kwargs))
    _check_architecture_keys(cfg, name, kwargs, built)
    return _build(name, _honoured_kwargs(cfg, name, kwargs, built))


def check_sebench_config(cfg: CfgNode) -> None:
    """Fail early on a bad ``MODEL.SEBENCH`` (builds the trunk once, on the CPU, and drops it)."""
    create_trunk(cfg)


def random_init_overrides(cfg: CfgNode) -> list[str]:
    """What training with an empty ``MODEL.WEIGHTS`` needs: nothing for a trainable trunk, the
    unfreezing overrides with ``MODEL.SEBENCH.ALLOW_RANDOM_INIT``, else an error.

    A frozen trunk (``MODEL.BACKBONE.FREEZE_AT`` > 0, ``MODEL.RESNETS.NORM`` FrozenBN) is only
    meaningful with pretrained weights: from random weights its frozen stem and statistics
    would stay random for the whole run.

    Returns:
        ``[KEY, VALUE, ...]`` overrides (``FREEZE_AT 0``, ``NORM BN``) to merge, possibly empty.

    Raises:
        InputError: a frozen trunk without weights and without the opt-in.
    """
    frozen = {}
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
        frozen["MODEL.BACKBONE.FREEZE_AT"] = "0"
    if cfg.MODEL.RESNETS.NORM == "FrozenBN":
        frozen["MODEL.RESNETS.NORM"] = "BN"
    if not frozen or cfg.MODEL.WEIGHTS:
        return []
    if not cfg.MODEL.SEBENCH.ALLOW_RANDOM_INIT:
        raise InputError(
            f"MODEL.WEIGHTS is empty but the trunk is frozen (MODEL.BACKBONE.FREEZE_AT "
            f"{cfg.MODEL.BACKBONE.FREEZE_AT}, MODEL.RESNETS.NORM {cfg.MODEL.RESNETS.NORM}): its "
            f"stem and statistics would stay random. Start from ImageNet weights: "
            f"{imagenet_weights_hint(cfg)}. To train from scratch on purpose, set "
            "MODEL.SEBENCH.ALLOW_RANDOM_INIT True (the trunk is then unfrozen)"
        )
    return [part for item in frozen.items() for part in item]


def check_pixel_format(cfg: CfgNode) -> None:
    """detectron2's MSRA ImageNet weights (``R-50.pkl``, ``R-101.pkl``) need the input they were
    trained on: BGR, mean [103.53, 116.28, 123.675], std 1.

    Raises:
        InputError: naming the keys to set, when the config feeds them anything else.
    """
    weights = cfg.MODEL.WEIGHTS
    if "ImageNetPretrained/MSRA/" not in weights and Path(weights).name not in (
        "R-50.pkl",
        "R-101.pkl",
    ):
        return
    given = (cfg.INPUT.FORMAT, list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD))
    if given != ("BGR", MSRA_PIXEL_MEAN, MSRA_PIXEL_STD):
        raise InputError(
            f"MODEL.WEIGHTS {weights} is detectron2's MSRA ImageNet model, trained on BGR images "
            f"with the mean subtracted and no scaling, but the config gives INPUT.FORMAT "
            f"{given[0]}, MODEL.PIXEL_MEAN {given[1]}, MODEL.PIXEL_STD {given[2]}: add "
            f"{' '.join(MSRA_PIXEL_FORMAT)}"
        )


def imagenet_weights_hint(cfg: CfgNode) -> str:
    """Where the ImageNet weights of the config's trunk come from, as a user would type it."""
    if "build_sebench" not in cfg.MODEL.BACKBONE.NAME:  # detectron2's own ResNet
        return f"MODEL.WEIGHTS detectron2://ImageNetPretrained/MSRA/R-{cfg.MODEL.RESNETS.DEPTH}.pkl"
    name = cfg.MODEL.SEBENCH.NAME
    if name in MSRA_WEIGHTS and cfg.MODEL.SEBENCH.KWARGS == []:
        pixels = " ".join(MSRA_PIXEL_FORMAT)
        return f"MODEL.WEIGHTS {MSRA_WEIGHTS[name]} {pixels} (detectron2's own)"
    meta_arch = "c4" if "c4" in cfg.MODEL.BACKBONE.NAME else "fpn"
    output = f"--meta-arch {meta_arch} --out weights/{name}_{meta_arch}.pth"
    timm_names = [timm for timm, (ours, _) in TIMM_EQUIVALENTS.items() if ours == name]
    if timm_names:
        source = f"--timm {timm_names[0]}"
    else:
        source = f"--ckpt YOUR_IMAGENET_CHECKPOINT --model {name}"
    return f"`sebench convert-weights {source} {output}` and the config lines it prints"
