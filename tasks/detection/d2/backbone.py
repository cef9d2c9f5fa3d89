"""Registry ResNet-family trunks as detectron2 backbones: C4 (stem..res4) and FPN (res2..res5).

The trunk keeps the registry model's own modules (SE blocks included) under detectron2's stage
names: ``stem`` (the registry ``stem``), ``pool`` (its max-pool, no weights), ``res2``..``res5``
(``layer1``..``layer4``), and saves and loads in detectron2's own parameter names
(``res2.0.conv1.norm.weight``; ``weights.py``), so detectron2's checkpoints load as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from torch import nn

from backbones.errors import InputError
from backbones.resnet import ResNet

from .config import create_trunk, sebench_model_args
from .weights import use_detectron2_names

STAGES = ("stem", "res2", "res3", "res4", "res5")
# Registry module of each detectron2 stage; "stem" also runs the registry "pool".
REGISTRY_STAGE = {"stem": "stem", "res2": "layer1", "res3": "layer2", "res4": "layer3",
                  "res5": "layer4"}
# MODEL.RESNETS.NORM values for the registry trunks: they are built with BatchNorm, which these
# replace layer by layer keeping the statistics. "" (no norm) and GN would change the model.
SUPPORTED_NORMS = ("FrozenBN", "BN", "SyncBN", "naiveSyncBN", "nnSyncBN")


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Replace every BatchNorm2d of ``module`` by detectron2's ``norm`` layer (in place).

    Args:
        module (nn.Module): a registry trunk or a part of it.
        norm (str): a ``MODEL.RESNETS.NORM`` value from ``SUPPORTED_NORMS``.

    Returns:
        ``module`` converted (a new module if ``module`` itself is a BatchNorm2d).

    Raises:
        ValueError: an unsupported ``norm``.
    """
    if norm not in SUPPORTED_NORMS:
        raise InputError(
            f"MODEL.RESNETS.NORM={norm!r} is not supported by the registry trunks (built with "
            f"BatchNorm); expected one of {list(SUPPORTED_NORMS)}"
        )
    if norm == "FrozenBN":
        return to_frozen_batchnorm(module)
    if norm == "BN":
        return module
    return _replace_batchnorm(module, norm)


def _replace_batchnorm(module: nn.Module, norm: str) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d):
        replacement = get_norm(norm, module.num_features)
        replacement.load_state_dict(module.state_dict())
        replacement.eps, replacement.momentum = module.eps, module.momentum
        return replacement
    for name, child in module.named_children():
        new_child = _replace_batchnorm(child, norm)
        if new_child is not child:
            module.add_module(name, new_child)
    return module


def to_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm2d -> FrozenBatchNorm2d, with no ``num_batches_tracked`` left behind.

    ``convert_frozen_batchnorm`` copies the counter into the frozen layer, which a natively built
    FrozenBatchNorm2d does not have: dropping it keeps the state_dict names detectron2's (and
    the converted checkpoints') own.
    """
    module = FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    for layer in module.modules():
        if isinstance(layer, FrozenBatchNorm2d):
            layer.num_batches_tracked = None
    return module


def freeze_module(module: nn.Module) -> nn.Module:
    """No gradients and FrozenBatchNorm2d everywhere, like detectron2's ``CNNBlockBase.freeze``."""
    for param in module.parameters():
        param.requires_grad = False
    return to_frozen_batchnorm(module)


class SEBenchTrunk(Backbone):
    """The stages of a registry ResNet-family model up to the deepest requested feature.

    Args:
        model (ResNet): a registry model (``backbones.create_model``), e.g. from
            ``config.create_trunk``; its stages are taken over, not copied.
        out_features (Sequence[str]): names among "stem", "res2".."res5" to return.
        freeze_at (int): 0 trains everything; 1 freezes the stem, 2 the stem and res2, and so
            on (``MODEL.BACKBONE.FREEZE_AT``).
        norm (str): ``MODEL.RESNETS.NORM``, applied to every BatchNorm2d ("FrozenBN").
        allow_partial_load (bool): a load that leaves trunk tensors unloaded warns instead of
            raising (``MODEL.SEBENCH.ALLOW_PARTIAL_LOAD``; False).
    """

    def __init__(
        self, model: ResNet, out_features: Sequence[str], *, freeze_at: int = 0,
        norm: str = "FrozenBN", allow_partial_load: bool = False,
    ) -> None:
        super().__init__()
        out_features = list(out_features)
        bad = [f for f in out_features if f not in STAGES]
        if bad or not out_features:
            raise InputError(
                f"unknown trunk feature(s) {bad or out_features}; expected names among "
                f"{list(STAGES)}"
            )
        self._out_features = out_features
        self.num_stages = max(STAGES.index(f) for f in out_features) + 1
        info = {entry["module"]: entry for entry in model.feature_info}
        self._out_feature_channels: dict[str, int] = {}
        self._out_feature_strides: dict[str, int] = {}
        for stage in STAGES[: self.num_stages]:
            source = REGISTRY_STAGE[stage]
            self.add_module(stage, getattr(model, source))
            self._out_feature_channels[stage] = info[source]["num_chs"]
            # The stem's stride is 4 after the pool, as in detectron2; a dilated stage
            # (output_stride) keeps its input's.
            self._out_feature_strides[stage] = 4 if stage == "stem" else info[source]["reduction"]
        self.pool = model.pool
        convert_norm(self, norm)
        self.freeze(freeze_at)
        name = getattr(model, "model_name", type(model).__name__)
        use_detectron2_names(
            self, what=f"trunk ({name})", allow_partial_load=allow_partial_load
        )

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem and the first ``freeze_at - 1`` residual stages."""
        for stage in STAGES[: min(freeze_at, self.num_stages)]:
            self.add_module(stage, freeze_module(getattr(self, stage)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        x = self.pool(self.stem(x))
        if "stem" in self._out_features:
            outputs["stem"] = x
        for stage in STAGES[1 : self.num_stages]:
            x = getattr(self, stage)(x)
            if stage in self._out_features:
                outputs[stage] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def _trunk_from_cfg(cfg: CfgNode, out_features: Sequence[str]) -> SEBenchTrunk:
    """The ``MODEL.SEBENCH`` trunk up to the deepest of ``out_features``, with
    ``MODEL.BACKBONE.FREEZE_AT``, ``MODEL.RESNETS.*`` (see ``config.create_trunk``) and
    ``MODEL.SEBENCH.ALLOW_PARTIAL_LOAD``: what every builder of a detectron2 meta-architecture
    calls."""
    return SEBenchTrunk(
        create_trunk(cfg),
        out_features,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=cfg.MODEL.RESNETS.NORM,
        allow_partial_load=cfg.MODEL.SEBENCH.ALLOW_PARTIAL_LOAD,
    )


@BACKBONE_REGISTRY.register()
def build_sebench_c4_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> SEBenchTrunk:
    """stem..res4 of ``MODEL.SEBENCH``; res5 is ``SEBenchRes5ROIHeads``'s (C4 Faster R-CNN).

    Honours ``MODEL.RESNETS.OUT_FEATURES`` (["res4"]), ``MODEL.BACKBONE.FREEZE_AT`` and
    ``MODEL.RESNETS.NORM``.
    """
    _check_input_channels(cfg, input_shape)
    out_features = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    if "res5" in out_features:
        raise InputError(
            "MODEL.RESNETS.OUT_FEATURES must not include 'res5' with build_sebench_c4_backbone: "
            "the C4 trunk ends at res4 and res5 runs per region in SEBenchRes5ROIHeads "
            "(use build_sebench_fpn_backbone for res5 features)"
        )
    return _trunk_from_cfg(cfg, out_features)


@BACKBONE_REGISTRY.register()
def build_sebench_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """``MODEL.SEBENCH`` res2..res5 under detectron2's FPN with a max-pooled P6.

    Honours ``MODEL.RESNETS.OUT_FEATURES`` (the bottom-up outputs), ``MODEL.FPN.IN_FEATURES``,
    ``OUT_CHANNELS``, ``NORM`` and ``FUSE_TYPE``, ``MODEL.BACKBONE.FREEZE_AT`` and
    ``MODEL.RESNETS.NORM``.
    """
    return _fpn_from_cfg(cfg, input_shape, lambda trunk: LastLevelMaxPool())


def _fpn_from_cfg(
    cfg: CfgNode, input_shape: ShapeSpec, top_block: Callable[[SEBenchTrunk], nn.Module]
) -> FPN:
    """detectron2's FPN over the ``MODEL.SEBENCH`` trunk, ``top_block(trunk)`` adding levels."""
    _check_input_channels(cfg, input_shape)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    bottom_up_features = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    missing = [f for f in in_features if f not in bottom_up_features]
    if missing:
        raise InputError(
            f"MODEL.FPN.IN_FEATURES {in_features} asks for {missing}, which "
            f"MODEL.RESNETS.OUT_FEATURES {bottom_up_features} does not produce"
        )
    bottom_up = _trunk_from_cfg(cfg, bottom_up_features)  # checks RES5_DILATION is 1 or 2
    if "res5" in in_features and cfg.MODEL.RESNETS.RES5_DILATION != 1:
        raise InputError(
            "MODEL.RESNETS.RES5_DILATION 2 keeps res5 at res4's stride (16), but detectron2's "
            "FPN needs strides that double from level to level: drop res5 from "
            "MODEL.FPN.IN_FEATURES or set RES5_DILATION 1"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block(bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def _check_input_channels(cfg: CfgNode, input_shape: ShapeSpec) -> None:
    in_chans = sebench_model_args(cfg)[1].get("in_chans", 3)
    if input_shape.channels is not None and input_shape.channels != in_chans:
        raise InputError(
            f"the input has {input_shape.channels} channels (len(MODEL.PIXEL_MEAN)) but the trunk "
            f"expects in_chans={in_chans}; set MODEL.SEBENCH.KWARGS 'in_chans=...' to match"
        )


@BACKBONE_REGISTRY.register()
def build_sebench_retinanet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """``MODEL.SEBENCH`` res3..res5 under detectron2's FPN with P6 and P7 from res5 (RetinaNet).

    detectron2's ``build_retinanet_resnet_fpn_backbone`` on a registry trunk: P6 is a stride-2
    3x3 conv on res5 (C5), P7 one on ReLU(P6), as in the RetinaNet paper. Honours the same keys
    as ``build_sebench_fpn_backbone``; ``MODEL.RESNETS.OUT_FEATURES`` must include "res5".
    """
    if "res5" not in cfg.MODEL.RESNETS.OUT_FEATURES:
        raise InputError(
            f"MODEL.RESNETS.OUT_FEATURES {list(cfg.MODEL.RESNETS.OUT_FEATURES)} must include "
            "'res5' with build_sebench_retinanet_fpn_backbone: P6 and P7 are computed from it"
        )

    def p6_p7(trunk: SEBenchTrunk) -> nn.Module:
        return LastLevelP6P7(trunk.output_shape()["res5"].channels, cfg.MODEL.FPN.OUT_CHANNELS)

    return _fpn_from_cfg(cfg, input_shape, p6_p7)
