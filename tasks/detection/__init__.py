"""COCO detection with registry trunks: detectron2's Faster R-CNN (C4 and FPN), RetinaNet and
Mask R-CNN, and torchvision's Faster R-CNN, Mask R-CNN, RetinaNet and FCOS.

``import tasks.detection`` registers the detectron2 backbones and ROI heads in detectron2's own
registries where detectron2 is importable; without it the torchvision path still imports.
"""

from __future__ import annotations

import importlib.util
import warnings

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None

if HAS_DETECTRON2:
    with warnings.catch_warnings():
        # detectron2 scripts a few functions at import; current torch deprecates that, noisily.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        from . import d2  # noqa: F401  (registers builders in detectron2's registries)
