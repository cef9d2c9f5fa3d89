"""``pretrained_cfg``: the preprocessing a registry model expects, in timm's terms.

timm consumers (``timm.data.resolve_data_config``, transformers' image processors built from
timm, mmpretrain) read ``model.pretrained_cfg`` for the input size, the interpolation, the crop
and the normalisation. The registry models have no weights of their own, so the cfg describes
the project's training recipes: ImageNet-style models take 224 px (299 for Inception-ResNet-v2)
centre crops of images resized by 1 / 0.875 (256 for 224, bilinear, as the Places365 module
does), normalised with ImageNet's statistics; the 32 px CIFAR models take whole CIFAR images,
normalised with CIFAR-10's statistics (``dataset="cifar100"``: CIFAR-100's).
"""

from __future__ import annotations

from typing import Any

from ._base import Backbone
from .constants import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from .errors import InputError

PAPER = "arXiv:1709.01507"
CIFAR_SIDE = 32
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
IMAGENET_CROP_PCT = 0.875
# Keys that describe a classifier, dropped from a features_only extractor's cfg (as in timm).
CLASSIFIER_KEYS = ("num_classes", "classifier")


def datasets_of(model_cls: type[Backbone]) -> tuple[str, ...]:
    """The data sets a family is trained on here, its default first."""
    if model_cls.default_input_size[1] == CIFAR_SIDE:
        return tuple(CIFAR_CLASSES)
    return ("imagenet",)


def pretrained_cfg(
    model_cls: type[Backbone], name: str, *, dataset: str | None = None, in_chans: int = 3
) -> dict[str, Any]:
    """The ``pretrained_cfg`` dict of registry model ``name`` (timm's ``PretrainedCfg`` fields).

    Args:
        model_cls (type[Backbone]): the model's family.
        name (str): the registry name, the cfg's ``architecture``.
        dataset (str | None): "imagenet", "cifar10" or "cifar100", one of ``datasets_of``
            (None: the first).
        in_chans (int): the model's input channels; other than 3, the mean and std are the RGB
            ones averaged (as timm adapts a stem's weights by summing over RGB).

    Returns:
        ``architecture``, ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``,
        ``mean``, ``std``, ``num_classes``, ``classifier`` and ``paper_ids``.
    """
    choices = datasets_of(model_cls)
    dataset = dataset or choices[0]
    if dataset not in choices:
        raise InputError(f"{name} is trained on {list(choices)}, not {dataset!r}")
    if dataset == "imagenet":
        mean, std, crop_pct = IMAGENET_MEAN, IMAGENET_STD, IMAGENET_CROP_PCT
        num_classes = 1000
    else:
        mean, std, crop_pct = CIFAR_MEAN[dataset], CIFAR_STD[dataset], 1.0
        num_classes = CIFAR_CLASSES[dataset]
    if in_chans != 3:
        mean, std = ((sum(v) / len(v),) * in_chans for v in (mean, std))
    _, height, width = model_cls.default_input_size
    return {
        "architecture": name,
        "input_size": (in_chans, height, width),
        "interpolation": "bilinear",
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "mean": tuple(mean),
        "std": tuple(std),
        "num_classes": num_classes,
        "classifier": "fc",
        "paper_ids": PAPER,
    }


def features_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """A model's cfg for its ``features_only`` extractor: no classifier keys."""
    return {k: v for k, v in cfg.items() if k not in CLASSIFIER_KEYS}
