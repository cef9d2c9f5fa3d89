"""detectron2 integration: registry trunks as C4 and FPN backbones (Faster and Mask R-CNN) and
as RetinaNet's FPN backbone (P3..P7).

Importing this package registers ``build_sebench_c4_backbone``, ``build_sebench_fpn_backbone``
and ``build_sebench_retinanet_fpn_backbone`` in detectron2's ``BACKBONE_REGISTRY`` and
``SEBenchRes5ROIHeads`` in ``ROI_HEADS_REGISTRY``; ``add_sebench_config`` adds the
``MODEL.SEBENCH`` keys that pick the registry trunk.
"""

from __future__ import annotations

from .backbone import (
    SEBenchTrunk,
    build_sebench_c4_backbone,
    build_sebench_fpn_backbone,
    build_sebench_retinanet_fpn_backbone,
)
from .config import add_sebench_config, check_sebench_config, sebench_model_args
from .roi_heads import SEBenchRes5ROIHeads

__all__ = [
    "SEBenchRes5ROIHeads",
    "SEBenchTrunk",
    "add_sebench_config",
    "build_sebench_c4_backbone",
    "build_sebench_fpn_backbone",
    "build_sebench_retinanet_fpn_backbone",
    "check_sebench_config",
    "sebench_model_args",
]
