"""COCO box and mask AP with pycocotools' COCOeval, under detectron2's metric names, in percent."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backbones.errors import InputError

from .coco import load_coco

__all__ = ["AP_KEYS", "IOU_TYPES", "coco_ap", "coco_box_ap", "coco_index"]

# The first six of COCOeval.stats, named as detectron2's COCOEvaluator names them.
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Boxes, and masks (detections with a "segmentation" RLE, e.g. Mask R-CNN's).
IOU_TYPES = ("bbox", "segm")


def coco_index(document: dict[str, Any], *, verbose: bool = False) -> COCO:
    """pycocotools' COCO index over a parsed instances file (``coco.load_coco``'s), so a file is
    parsed once (``COCO(path)`` would parse it again); without its prints by default."""
    coco = COCO()
    coco.dataset = document
    with _quiet(verbose):
        coco.createIndex()
    return coco


@contextlib.contextmanager
def _quiet(verbose: bool = False) -> Any:
    """pycocotools prints while it indexes and evaluates: silence it unless ``verbose``."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def coco_box_ap(
    coco_gt: COCO | str | Path,
    detections: list[dict[str, Any]],
    *,
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Box AP of detections against COCO ground truth: ``coco_ap`` with ``iou_type="bbox"``."""
    return coco_ap(coco_gt, detections, iou_type="bbox", image_ids=image_ids, verbose=verbose)


def coco_ap(
    coco_gt: COCO | str | Path,
    detections: list[dict[str, Any]],
    *,
    iou_type: str = "bbox",
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Box or mask AP of detections against COCO ground truth, as detectron2 reports it.

    Args:
        coco_gt (COCO | str | Path): the ground truth, or the path of its instances JSON (with
            ``segmentation`` polygons or RLE for mask AP).
        detections (list[dict[str, Any]]): COCO results: ``image_id``, ``category_id`` (the
            dataset's own ids), ``bbox`` ``[x, y, w, h]`` in original image pixels, ``score``
            and, for mask AP, ``segmentation`` (an RLE in original image pixels).
        iou_type (str): "bbox" (box AP) or "segm" (mask AP) ("bbox").
        image_ids (Sequence[int] | None): evaluate these images only, e.g. the ones a shortened
            validation run saw (None: every image of the ground truth, as detectron2 does).
        verbose (bool): let pycocotools print its progress and summary table (False).

    Returns:
        ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` in percent. Without detections all
        are 0.0. A size range with no ground truth box is NaN (pycocotools' -1), as in
        detectron2.
    """
    if iou_type not in IOU_TYPES:
        raise InputError(f"iou_type={iou_type!r} is not supported; expected one of {IOU_TYPES}")
    if not isinstance(coco_gt, COCO):
        coco_gt = coco_index(load_coco(coco_gt), verbose=verbose)
    if not detections:
        # COCO.loadRes cannot index an empty result list; nothing detected is 0 AP.
        return {key: 0.0 for key in AP_KEYS}
    if iou_type == "segm":
        coco_gt = _annotations_copied(coco_gt)
    with _quiet(verbose):
        coco_dt = coco_gt.loadRes(_plain(detections, iou_type))
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted({int(i) for i in image_ids})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        key: (100.0 * float(value) if value >= 0 else math.nan)
        for key, value in zip(AP_KEYS, evaluator.stats[: len(AP_KEYS)])
    }


def _annotations_copied(coco_gt: COCO) -> COCO:
    """An index over copies of the annotations: mask AP replaces each ground-truth polygon by
    its RLE in place, which would break other readers of the index (the data module's dataset
    decodes the polygons into training masks)."""
    annotations = [dict(a) for a in coco_gt.dataset.get("annotations", [])]
    return coco_index({**coco_gt.dataset, "annotations": annotations})


def _plain(detections: list[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """Python scalars only: loadRes copies the dicts and numpy/tensor values break its area.

    Mask results carry no ``bbox``: loadRes takes any result with one for a box result.
    """
    if iou_type == "segm":
        missing = sum("segmentation" not in d for d in detections)
        if missing:
            raise InputError(
                f"mask AP needs a segmentation in every detection; {missing} have none"
            )
    return [_plain_result(d, iou_type) for d in detections]


def _plain_result(detection: dict[str, Any], iou_type: str) -> dict[str, Any]:
    result = {
        "image_id": int(detection["image_id"]),
        "category_id": int(detection["category_id"]),
        "score": float(detection["score"]),
    }
    if iou_type == "segm":
        result["segmentation"] = detection["segmentation"]
    else:
        result["bbox"] = [float(v) for v in detection["bbox"]]
    return result
