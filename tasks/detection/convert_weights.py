"""``sebench convert-weights``: registry or timm weights -> a detectron2 checkpoint of our trunks.

Sources: a registry checkpoint (a plain ``state_dict`` .pth of a registry model, or a Lightning
.ckpt of ``tasks/classification``), or timm weights (``--timm legacy_seresnet50``, downloaded by
timm or read from ``--timm-checkpoint``). The output is a detectron2 checkpoint
(``{"model": ..., "__author__": "sebench", "matching_heuristics": False}``) in detectron2's own
names (``res2.0.conv1.norm.weight``, ``res2.0.shortcut.weight``: what our trunks' ``state_dict``
gives, ``backbones/weights/detectron2.py``) under the module names of one layout
(``--meta-arch``):

- ``fpn``: ``backbone.bottom_up.{stem,res2,res3,res4,res5}.*`` (``build_sebench_fpn_backbone``);
- ``c4``: ``backbone.{stem,res2,res3,res4}.*`` and ``roi_heads.res5.*``
  (``build_sebench_c4_backbone`` + ``SEBenchRes5ROIHeads``).

One layout per file, so ``DetectionCheckpointer`` reports no unexpected trunk keys. The
classifier is dropped, and so is ``num_batches_tracked`` (detectron2's default FrozenBN has none).
A plain ResNet converted this way also loads into detectron2's own ResNet (with the same
``MODEL.RESNETS`` keys). detectron2's own checkpoints (``R-50.pkl``, model-zoo detectors) need no
conversion: our trunks load them as they are. This module needs no detectron2: conversion only
renames tensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import backbones
from backbones import format_kwargs, parse_kwargs
from backbones.constants import IMAGENET_MEAN, IMAGENET_STD
from backbones.errors import InputError
from backbones.resnet import ResNet
from backbones.weights import TIMM_EQUIVALENTS, create_from_timm
from backbones.weights.checkpoint import check_state_dict, read_checkpoint
from backbones.weights.detectron2 import resnets_keys, to_detectron2_name

META_ARCHS = ("c4", "fpn")
# Registry stage -> detectron2 module name, per layout.
_LAYOUTS = {
    "fpn": {
        "stem": "backbone.bottom_up.stem",
        "layer1": "backbone.bottom_up.res2",
        "layer2": "backbone.bottom_up.res3",
        "layer3": "backbone.bottom_up.res4",
        "layer4": "backbone.bottom_up.res5",
    },
    "c4": {
        "stem": "backbone.stem",
        "layer1": "backbone.res2",
        "layer2": "backbone.res3",
        "layer3": "backbone.res4",
        "layer4": "roi_heads.res5",
    },
}
_BUILDERS = {
    "fpn": [("MODEL.BACKBONE.NAME", "build_sebench_fpn_backbone")],
    "c4": [
        ("MODEL.BACKBONE.NAME", "build_sebench_c4_backbone"),
        ("MODEL.ROI_HEADS.NAME", "SEBenchRes5ROIHeads"),
    ],
}
# Registry keywords that shape only the classifier, which a detection trunk does not have.
_HEAD_KWARGS = ("drop_rate",)


@dataclasses.dataclass
class ConvertedWeights:
    """A converted checkpoint and the detectron2 config it needs.

    Attributes:
        path: where the checkpoint was written.
        meta_arch: "c4" or "fpn", the layout of its names.
        model_name: the registry name (``MODEL.SEBENCH.NAME``).
        model_kwargs: registry keywords (``MODEL.SEBENCH.KWARGS``), without the stride position
            (``stride_in_1x1``), which ``MODEL.RESNETS.STRIDE_IN_1X1`` gives.
        depth: ``MODEL.RESNETS.DEPTH`` of the trunk.
        stride_in_1x1: ``MODEL.RESNETS.STRIDE_IN_1X1`` of the trunk.
        pixel_mean: RGB mean on detectron2's 0-255 scale (``MODEL.PIXEL_MEAN``).
        pixel_std: RGB std on the 0-255 scale (``MODEL.PIXEL_STD``).
    """

    path: Path
    meta_arch: str
    model_name: str
    model_kwargs: dict[str, Any]
    depth: int
    stride_in_1x1: bool
    pixel_mean: list[float]
    pixel_std: list[float]

    def config_items(self) -> list[tuple[str, str]]:
        """(key, value) pairs; each value is a string ``CfgNode.merge_from_list`` reads."""
        return [
            ("MODEL.WEIGHTS", str(self.path)),
            *_BUILDERS[self.meta_arch],
            ("MODEL.SEBENCH.NAME", self.model_name),
            ("MODEL.SEBENCH.KWARGS", json.dumps(format_kwargs(self.model_kwargs))),
            ("MODEL.RESNETS.DEPTH", str(self.depth)),
            ("MODEL.RESNETS.STRIDE_IN_1X1", str(self.stride_in_1x1)),
            ("MODEL.PIXEL_MEAN", json.dumps(self.pixel_mean)),
            ("MODEL.PIXEL_STD", json.dumps(self.pixel_std)),
            ("INPUT.FORMAT", "RGB"),
        ]

    def opts(self) -> list[str]:
        """A flat ``[KEY, VALUE, ...]`` list for ``cfg.merge_from_list`` or a command line."""
        return [part for item in self.config_items() for part in item]


def resnet_family_models() -> list[str]:
    """Registry names with detectron2 trunks: every ResNet, ResNeXt and SENet-154."""
    return [name for name in backbones.list_models() if backbones.model_class(name) is ResNet]


def detectron2_state_dict(
    state_dict: Mapping[str, torch.Tensor], meta_arch: str
) -> dict[str, torch.Tensor]:
    """Rename a registry trunk's ``state_dict`` (no classifier) to detectron2's names.

    Args:
        state_dict: keys ``stem.*`` and ``layer1.*``..``layer4.*`` of a registry ResNet.
        meta_arch (str): "fpn" or "c4" (see the module docstring).

    Raises:
        ValueError: an unknown layout or a key outside the trunk.
    """
    if meta_arch not in _LAYOUTS:
        raise InputError(
            f"meta_arch={meta_arch!r} is not supported; expected one of {list(META_ARCHS)}"
        )
    layout = _LAYOUTS[meta_arch]
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue  # FrozenBatchNorm2d (detectron2's default) has no such buffer
        stage, _, rest = key.partition(".")
        if stage not in layout:
            raise InputError(f"{key!r} is not a trunk weight (expected stem.* or layer1..4.*)")
        out[f"{layout[stage]}.{to_detectron2_name(rest)}"] = value
    return out


def _check_registry_name(name: str) -> None:
    if not backbones.is_model(name) or backbones.model_class(name) is not ResNet:
        raise InputError(
            f"model {name!r} has no detectron2 trunk; supported (ResNet family): "
            f"{', '.join(resnet_family_models())}"
        )


def _classification_stats(
    data_hparams: Mapping[str, Any],
) -> tuple[Sequence[float], Sequence[float]]:
    """Normalisation of a classification run: CIFAR's own statistics, else ImageNet's."""
    dataset = data_hparams.get("dataset")
    if dataset in ("cifar10", "cifar100"):
        from tasks.classification.data.cifar import MEAN, STD

        return MEAN[dataset], STD[dataset]
    return IMAGENET_MEAN, IMAGENET_STD


def _timm_model(timm_name: str, timm_checkpoint: str | Path | None) -> torch.nn.Module:
    import timm

    if timm_name not in TIMM_EQUIVALENTS:
        raise InputError(
            f"no registry equivalent for timm model {timm_name!r}; "
            f"known: {', '.join(sorted(TIMM_EQUIVALENTS))}"
        )
    model = timm.create_model(timm_name, pretrained=timm_checkpoint is None)
    if timm_checkpoint is not None:
        state = read_checkpoint(timm_checkpoint).state_dict
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise InputError(
                f"{str(timm_checkpoint)!r} does not fit timm's {timm_name}: {err}"
            ) from err
    return model.eval()


def _to_255(values: Sequence[float]) -> list[float]:
    return [round(float(v) * 255.0, 3) for v in values]


def convert(
    output: str | Path,
    *,
    meta_arch: str,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    timm_name: str | None = None,
    timm_checkpoint: str | Path | None = None,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> ConvertedWeights:
    """Write a detectron2 checkpoint of a registry trunk; return it with the config it needs.

    Args:
        output: the .pth file to write (its folder is created).
        meta_arch (str): "fpn" or "c4", the layout of the names (see the module docstring).
        checkpoint: a registry checkpoint (plain ``state_dict`` .pth, or Lightning .ckpt).
        model_name: registry name of a plain ``state_dict`` (a .ckpt names its own).
        model_kwargs: registry keywords of a plain ``state_dict``, e.g. ``{"se_reduction": 8}``.
        timm_name: instead of ``checkpoint``, a timm model of ``TIMM_EQUIVALENTS``
            (e.g. "legacy_seresnet50"); its weights are downloaded unless ``timm_checkpoint``.
        timm_checkpoint: an offline timm ``state_dict`` file for ``timm_name``.
        pixel_mean: RGB mean on the 0-255 scale (default: the timm model's pretrained_cfg; the
            CIFAR statistics for a CIFAR run; else ImageNet's 123.675, 116.28, 103.53).
        pixel_std: RGB std on the 0-255 scale (defaults as ``pixel_mean``; ImageNet's
            58.395, 57.12, 57.375).

    Returns:
        ConvertedWeights: the file and its ``MODEL.*`` / ``INPUT.FORMAT`` settings.

    Raises:
        ValueError: bad input, or weights that do not fit the named architecture (naming the
            missing, unexpected and mis-shaped keys).
    """
    if meta_arch not in META_ARCHS:
        raise InputError(
            f"meta_arch={meta_arch!r} is not supported; expected one of {list(META_ARCHS)}"
        )
    if (checkpoint is None) == (timm_name is None):
        raise InputError("give exactly one source: a registry checkpoint or a timm model name")
    if timm_checkpoint is not None and timm_name is None:
        raise InputError("a timm checkpoint needs the timm model name (--timm NAME)")
    output = Path(output)
    if output.suffix == ".pkl":
        raise InputError(
            f"{str(output)!r}: detectron2 reads .pkl files as Caffe2/Detectron weights; use .pth"
        )
    for key, values in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        if values is not None and len(values) != 3:
            raise InputError(
                f"{key} needs 3 values (R, G, B on the 0-255 scale), got {list(values)}"
            )

    if timm_name is not None:
        if model_name is not None or model_kwargs:
            raise InputError(
                "--model/--model-kwargs do not apply to timm weights (the timm name fixes them)"
            )
        timm_model = _timm_model(timm_name, timm_checkpoint)
        model = create_from_timm(timm_name, timm_model, num_classes=0)
        model_name, model_kwargs = (
            TIMM_EQUIVALENTS[timm_name][0],
            dict(TIMM_EQUIVALENTS[timm_name][1]),
        )
        state = model.state_dict()
        mean, std = timm_model.pretrained_cfg["mean"], timm_model.pretrained_cfg["std"]
    else:
        read = read_checkpoint(checkpoint, model_name=model_name, model_kwargs=model_kwargs)
        if read.model_name is None:
            raise InputError(
                f"{checkpoint} is a plain state_dict, which does not name its architecture; "
                "pass the registry name (--model NAME, and --model-kwargs if it was built with any)"
            )
        model_name, model_kwargs = read.model_name, read.model_kwargs
        # The classifier is not part of a detection trunk.
        state = {k: v for k, v in read.state_dict.items() if not k.startswith("fc.")}
        _check_registry_name(model_name)
        reserved = sorted(set(model_kwargs) & {"num_classes", "features_only", "out_indices"})
        if reserved:
            raise InputError(f"model keywords {reserved} do not apply to a detection trunk")
        model = backbones.create_model(model_name, num_classes=0, **model_kwargs)
        check_state_dict(
            model,
            state,
            f"{str(checkpoint)!r} does not fit {model_name} {format_kwargs(model_kwargs)}",
        )
        mean, std = _classification_stats(read.datamodule_hparams)

    converted = detectron2_state_dict(state, meta_arch)
    architecture = resnets_keys(model)
    trunk_kwargs = {
        k: v for k, v in model_kwargs.items() if k not in ("stride_in_1x1", *_HEAD_KWARGS)
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": converted,
            "__author__": "sebench",
            "matching_heuristics": False,
            "sebench": {
                "model_name": model_name,
                "model_kwargs": dict(model_kwargs),
                "meta_arch": meta_arch,
            },
        },
        output,
    )
    return ConvertedWeights(
        path=output,
        meta_arch=meta_arch,
        model_name=model_name,
        model_kwargs=trunk_kwargs,
        depth=int(architecture["DEPTH"]),
        stride_in_1x1=bool(architecture["STRIDE_IN_1X1"]),
        pixel_mean=[float(v) for v in pixel_mean] if pixel_mean is not None else _to_255(mean),
        pixel_std=[float(v) for v in pixel_std] if pixel_std is not None else _to_255(std),
    )


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-weights",
        help="registry or timm weights -> a detectron2 checkpoint of our C4/FPN trunks",
        description="Convert a registry checkpoint (plain state_dict .pth or a classification "
        ".ckpt) or timm SE weights into a detectron2 checkpoint for build_sebench_fpn_backbone "
        "(--meta-arch fpn) or build_sebench_c4_backbone + SEBenchRes5ROIHeads (--meta-arch c4), "
        "and print the config lines it needs.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--ckpt",
        "--checkpoint",
        dest="checkpoint",
        metavar="FILE",
        help="registry state_dict .pth (with --model) or a Lightning .ckpt of `sebench fit`",
    )
    source.add_argument(
        "--timm", metavar="NAME", help=f"timm model, one of {', '.join(sorted(TIMM_EQUIVALENTS))}"
    )
    parser.add_argument(
        "--timm-checkpoint",
        metavar="FILE",
        help="offline timm state_dict for --timm (default: timm downloads it)",
    )
    parser.add_argument("--model", metavar="NAME", help="registry name of a plain state_dict")
    parser.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="registry keywords of a plain state_dict, e.g. se_reduction=8 stride_in_1x1=False",
    )
    parser.add_argument(
        "--meta-arch", required=True, choices=META_ARCHS, help="name layout: fpn or c4"
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE.pth", help="detectron2 checkpoint to write"
    )
    parser.add_argument(
        "--pixel-mean", nargs=3, type=float, metavar=("R", "G", "B"), help="0-255 scale"
    )
    parser.add_argument(
        "--pixel-std", nargs=3, type=float, metavar=("R", "G", "B"), help="0-255 scale"
    )
    parser.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    converted = convert(
        args.out,
        meta_arch=args.meta_arch,
        checkpoint=args.checkpoint,
        model_name=args.model,
        model_kwargs=parse_kwargs(args.model_kwargs, "--model-kwargs"),
        timm_name=args.timm,
        timm_checkpoint=args.timm_checkpoint,
        pixel_mean=args.pixel_mean,
        pixel_std=args.pixel_std,
    )
    print(
        f"# wrote {converted.path}; detectron2 config (command-line overrides, or the YAML keys):"
    )
    for key, value in converted.config_items():
        print(f"{key} {shlex.quote(value)}")
    return 0
