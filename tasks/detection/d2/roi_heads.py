"""C4 ROI head whose per-region res5 is the registry trunk's own ``layer4`` (SE blocks included).

detectron2's ``Res5ROIHeads`` builds a plain detectron2 res5 from ``MODEL.RESNETS``; this head
only replaces that construction, so pooling (``ROI_BOX_HEAD.POOLER_RESOLUTION`` 14, res5's
stride 2 -> 7x7), the box predictor and the losses stay detectron2's.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

from backbones.errors import InputError

from .backbone import convert_norm
from .config import create_trunk
from .weights import use_detectron2_names


@ROI_HEADS_REGISTRY.register()
class SEBenchRes5ROIHeads(Res5ROIHeads):
    """``Res5ROIHeads`` with res5 = ``layer4`` of ``MODEL.SEBENCH`` (its name and keywords).

    ``MODEL.RESNETS.NORM`` applies to res5's BatchNorm layers as in the trunk; res5 is never
    frozen (as detectron2's C4 head). Its weights load from ``roi_heads.res5.*`` in detectron2's
    names, as the trunk's (``weights.py``).
    """

    @classmethod
    def _build_res5_block(cls, cfg: CfgNode) -> tuple[nn.Module, int]:
        if cfg.MODEL.RESNETS.RES5_DILATION != 1:
            raise InputError(
                "MODEL.RESNETS.RES5_DILATION applies to a trunk that runs res5 on the image; "
                "the C4 model runs it per region with stride 2, as detectron2's Res5ROIHeads "
                "does: set RES5_DILATION 1"
            )
        # The same registry model as the C4 backbone's, built once more and split: the backbone
        # keeps stem..layer3, this head layer4, so registry weights map one to one.
        model = create_trunk(cfg)
        res5 = convert_norm(model.layer4, cfg.MODEL.RESNETS.NORM)
        use_detectron2_names(
            res5,
            what=f"C4 head's res5 ({model.model_name})",
            allow_partial_load=cfg.MODEL.SEBENCH.ALLOW_PARTIAL_LOAD,
        )
        return res5, model.feature_info[-1]["num_chs"]
