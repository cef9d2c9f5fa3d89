"""COCO instances files: the format checks and the pycocotools box AP, on tiny real data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _coco import write_tiny_coco

from tasks.detection.coco import COCOFormatError, check_coco
from tasks.detection.evaluation import AP_KEYS, coco_box_ap


def _edit(json_path: Path, change) -> None:
    document = json.loads(json_path.read_text())
    change(document)
    json_path.write_text(json.dumps(document))


def _ground_truth_as_detections(json_path: Path) -> list[dict]:
    document = json.loads(json_path.read_text())
    keys = ("image_id", "category_id", "bbox")
    return [{**{k: a[k] for k in keys}, "score": 1.0} for a in document["annotations"]]


def test_tiny_coco_layout_and_summary(tmp_path: Path) -> None:
    json_path, image_dir = write_tiny_coco(tmp_path / "coco", num_images=3, split="val")
    assert json_path == tmp_path / "coco" / "annotations" / "instances_val2017.json"
    assert image_dir == tmp_path / "coco" / "val2017"
    assert len(list(image_dir.glob("*.jpg"))) == 3
    summary = check_coco(json_path, image_dir)
    assert summary.num_images == 3
    assert summary.categories == {1: "colour0", 3: "colour1"}
    assert summary.num_annotations >= 3
    assert summary.degenerate_annotation_ids == []
    assert "3 images" in summary.describe()


def test_missing_top_level_key_is_named(tmp_path: Path) -> None:
    json_path, image_dir = write_tiny_coco(tmp_path)
    _edit(json_path, lambda d: d.pop("categories"))
    with pytest.raises(COCOFormatError, match=r"instances_train2017\.json.*categories"):
        check_coco(json_path, image_dir)


def test_non_positive_boxes_are_counted_not_rejected(tmp_path: Path) -> None:
    json_path, image_dir = write_tiny_coco(tmp_path)

    def flatten(document: dict) -> None:
        document["annotations"][0]["bbox"][2] = 0.0
        document["annotations"][1]["bbox"][3] = -2.0

    _edit(json_path, flatten)
    summary = check_coco(json_path, image_dir)
    assert summary.degenerate_annotation_ids == [1, 2]
    assert "2 degenerate boxes" in summary.describe()


def test_unknown_category_names_the_annotation(tmp_path: Path) -> None:
    json_path, image_dir = write_tiny_coco(tmp_path)
    # 2 lies between the valid non-contiguous ids 1 and 3: a contiguous-label mix-up.
    _edit(json_path, lambda d: d["annotations"][2].update(category_id=2))
    with pytest.raises(COCOFormatError) as info:
        check_coco(json_path, image_dir)
    message = str(info.value)
    assert "instances_train2017.json" in message
    assert "annotation id 3" in message
    assert "category_id 2" in message and "[1, 3]" in message


def test_bad_bbox_names_the_annotation(tmp_path: Path) -> None:
    json_path, image_dir = write_tiny_coco(tmp_path)
    _edit(json_path, lambda d: d["annotations"][1].update(bbox=[1, 2, 3]))
    with pytest.raises(COCOFormatError, match="annotation id 2: bbox must be 4 numbers"):
        check_coco(json_path, image_dir)


def test_missing_image_file_is_named(tmp_path: Path) -> None:
    json_path, image_dir = write_tiny_coco(tmp_path)
    (image_dir / "000000000002.jpg").unlink()
    with pytest.raises(COCOFormatError) as info:
        check_coco(json_path, image_dir)
    message = str(info.value)
    assert "instances_train2017.json" in message and "image id 2" in message
    assert str(image_dir / "000000000002.jpg") in message


def test_missing_json_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        check_coco(tmp_path / "nothing.json", tmp_path)


def test_ground_truth_as_detections_scores_100(tmp_path: Path) -> None:
    json_path, _ = write_tiny_coco(tmp_path, num_images=4)
    ap = coco_box_ap(json_path, _ground_truth_as_detections(json_path))
    assert set(ap) == set(AP_KEYS)
    for key in ("AP", "AP50", "AP75"):
        assert ap[key] == pytest.approx(100.0)


def test_shifted_boxes_score_lower(tmp_path: Path) -> None:
    json_path, _ = write_tiny_coco(tmp_path, num_images=4)
    detections = _ground_truth_as_detections(json_path)
    for d in detections:
        x, y, w, h = d["bbox"]
        d["bbox"] = [x + 0.3 * w, y, w, h]  # IoU 0.54: found at IoU 0.5, missed from 0.55 up
    ap = coco_box_ap(json_path, detections)
    assert ap["AP50"] == pytest.approx(100.0)
    assert ap["AP75"] == pytest.approx(0.0)
    assert 0.0 < ap["AP"] < 20.0


def test_empty_detections_score_zero(tmp_path: Path) -> None:
    json_path, _ = write_tiny_coco(tmp_path)
    ap = coco_box_ap(json_path, [])
    assert ap == {key: 0.0 for key in AP_KEYS}


def test_image_subset_and_missing_size_range(tmp_path: Path) -> None:
    json_path, _ = write_tiny_coco(tmp_path, num_images=4)
    detections = [d for d in _ground_truth_as_detections(json_path) if d["image_id"] == 1]
    assert coco_box_ap(json_path, detections, image_ids=[1])["AP"] == pytest.approx(100.0)
    assert coco_box_ap(json_path, detections)["AP"] < 100.0
    # Boxes of at most half of a 96x128 image are under 96^2 pixels: no large ones -> NaN.
    assert math.isnan(coco_box_ap(json_path, detections)["APl"])
