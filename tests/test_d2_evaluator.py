"""detectron2's COCOEvaluator (pycocotools) on a tiny COCO set: the ground truth scores AP 100.

Also home of ``write_mixed_size_coco``, a tiny set with small, medium and large boxes so that
all six COCO APs (AP, AP50, AP75, APs, APm, APl) are defined; ``test_d2_train`` uses it too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (build it from source, see README)"
)

import torch
from _coco import write_tiny_coco
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances

from tasks.detection.d2.data import DatasetFiles, register_datasets
from tasks.detection.evaluation import AP_KEYS

# Image sizes whose boxes (1/4 to 1/2 of each side) all fall in COCO's small (< 32^2), medium
# and large (> 96^2) areas.
IMAGE_SIZES = ((48, 64), (128, 160), (384, 480))


def write_mixed_size_coco(root: Path, *, split: str, num_images: int = 2) -> tuple[Path, Path]:
    """``write_tiny_coco`` at three image sizes (``num_images`` each) merged into one split under
    ``root`` (``annotations/instances_<split>2017.json``, ``<split>2017/``).

    Returns:
        (json_path, image_dir).
    """
    image_dir = root / f"{split}2017"
    json_path = root / "annotations" / f"instances_{split}2017.json"
    image_dir.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    merged: dict = {"images": [], "annotations": [], "categories": []}
    for part, size in enumerate(IMAGE_SIZES):
        part_json, part_images = write_tiny_coco(
            root / f"part{part}", num_images=num_images, size=size, seed=part, split=split
        )
        document = json.loads(part_json.read_text())
        image_ids = {}
        for image in document["images"]:
            image_ids[image["id"]] = len(merged["images"]) + 1
            file_name = f"{part}_{image['file_name']}"
            shutil.copy(part_images / image["file_name"], image_dir / file_name)
            merged["images"].append({**image, "id": image_ids[image["id"]], "file_name": file_name})
        for annotation in document["annotations"]:
            merged["annotations"].append(
                {
                    **annotation,
                    "id": len(merged["annotations"]) + 1,
                    "image_id": image_ids[annotation["image_id"]],
                }
            )
        merged["categories"] = document["categories"]
    json_path.write_text(json.dumps(merged))
    return json_path, image_dir


@pytest.fixture(scope="module")
def val_set(tmp_path_factory: pytest.TempPathFactory) -> DatasetFiles:
    json_path, image_dir = write_mixed_size_coco(tmp_path_factory.mktemp("coco"), split="val")
    files = DatasetFiles("sebench_test_evaluator_val", str(json_path), str(image_dir))
    register_datasets([files])
    # Loading the data set sets its category id mapping in the metadata (as a test loader does).
    DatasetCatalog.get(files.name)
    return files


def _ground_truth_predictions(files: DatasetFiles, shift: float) -> list[tuple[dict, dict]]:
    """(input, output) pairs as the model would give them: the ground truth boxes, moved right by
    ``shift`` times their width, score 1, classes in detectron2's contiguous ids."""
    document = json.loads(Path(files.json_file).read_text())
    to_contiguous = MetadataCatalog.get(files.name).thing_dataset_id_to_contiguous_id
    pairs = []
    for image in document["images"]:
        annotations = [a for a in document["annotations"] if a["image_id"] == image["id"]]
        boxes = torch.tensor(
            [
                [x + shift * w, y, x + w + shift * w, y + h]
                for x, y, w, h in (a["bbox"] for a in annotations)
            ]
        )
        instances = Instances((image["height"], image["width"]))
        instances.pred_boxes = Boxes(boxes)
        instances.scores = torch.ones(len(annotations))
        instances.pred_classes = torch.tensor(
            [to_contiguous[a["category_id"]] for a in annotations]
        )
        pairs.append(({"image_id": image["id"]}, {"instances": instances}))
    return pairs


def _evaluate(files: DatasetFiles, shift: float, output_dir: Path) -> dict[str, float]:
    evaluator = COCOEvaluator(
        files.name, tasks=("bbox",), distributed=False, output_dir=str(output_dir)
    )
    evaluator.reset()
    for inputs, outputs in _ground_truth_predictions(files, shift):
        evaluator.process([inputs], [outputs])
    return evaluator.evaluate()["bbox"]


def test_ground_truth_scores_ap_100(val_set: DatasetFiles, tmp_path: Path) -> None:
    metrics = _evaluate(val_set, shift=0.0, output_dir=tmp_path)
    for key in AP_KEYS:
        assert metrics[key] == pytest.approx(100.0), (key, metrics)
    # COCOEvaluator saved the predictions it scored, in COCO's results format.
    saved = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(saved) == len(json.loads(Path(val_set.json_file).read_text())["annotations"])


def test_shifted_boxes_score_what_coco_defines(val_set: DatasetFiles, tmp_path: Path) -> None:
    # IoU of a box with itself shifted by 20% of its width: 0.8 / 1.2 = 0.67, so every box
    # counts at the IoU thresholds 0.50, 0.55, 0.60, 0.65 (precision 1 there) and misses at the
    # six from 0.70 on: COCO's AP, the mean over the ten thresholds, is exactly 40, in every
    # size range. A wrong box format, scale or category mapping cannot give these values.
    shifted = _evaluate(val_set, shift=0.2, output_dir=tmp_path / "shifted")
    assert shifted["AP50"] == pytest.approx(100.0)
    assert shifted["AP75"] == pytest.approx(0.0)
    for key in ("AP", "APs", "APm", "APl"):
        assert shifted[key] == pytest.approx(40.0), (key, shifted)
    far = _evaluate(val_set, shift=1.5, output_dir=tmp_path / "far")  # no overlap at all
    assert far["AP"] == pytest.approx(0.0)
