"""detectron2 RetinaNet and Mask R-CNN FPN on registry trunks: the configs of configs/coco/, and
``sebench detect train`` on a tiny COCO set of ellipses (so masks are not boxes), on the CPU.

Real detectron2 (its RetinaNet and GeneralizedRCNN, trainer, COCOEvaluator with pycocotools);
only the images (64 px), trunks (one block per stage), batches and proposal counts are tiny.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (build it from source, see README)"
)

from _coco import write_tiny_coco
from detectron2.modeling import build_model
from test_d2_train import detect

from backbones import SEBlock
from tasks.detection.d2.backbone import SEBenchTrunk
from tasks.detection.d2.train import AP_KEYS, setup_cfg
from tasks.detection.evaluation import coco_ap

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "coco"
HEADS = sorted([*CONFIGS.glob("retinanet_*.yaml"), *CONFIGS.glob("mask_rcnn_*.yaml")])
SCHEDULES = {"1x": (90000, (60000, 80000)), "3x": (270000, (210000, 250000))}
# One bottleneck per stage; RetinaNet keeps every detection of an untrained model, so
# pycocotools has something to score.
SMALL = [
    "MODEL.SEBENCH.KWARGS", "['layers=(1, 1, 1, 1)']", "MODEL.RESNETS.DEPTH", "14",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "50",
    "TEST.DETECTIONS_PER_IMAGE", "20",
]  # fmt: skip


def assert_ap(results: dict, output: Path, iou_type: str = "bbox") -> None:
    """The run's APs are those an independent evaluation of the detections it saved gives (the
    project's plain-pycocotools ``coco_ap``, against detectron2's COCOEvaluator in the run); AP,
    AP50 and AP75 defined, a size range may have no object (NaN)."""
    ap = results["segm"] if iou_type == "segm" else {key: results[key] for key in AP_KEYS}
    assert all(math.isfinite(ap[key]) for key in ("AP", "AP50", "AP75")), ap
    (dataset,) = results["test_dataset"]
    saved = output / "inference" / dataset / "coco_instances_results.json"
    predictions = json.loads(saved.read_text())
    assert predictions, "the model detected nothing: the comparison would be vacuous"
    expected = coco_ap(results["datasets"][dataset]["json_file"], predictions, iou_type=iou_type)
    assert ap == pytest.approx(expected, abs=1e-6, nan_ok=True), (iou_type, ap, expected)


@pytest.fixture(scope="module")
def ellipses(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DETECTRON2_DATASETS root: coco/{annotations,train2017,val2017} of ellipses, 2 classes."""
    root = tmp_path_factory.mktemp("datasets")
    write_tiny_coco(root / "coco", num_images=4, split="train", shape="ellipse")
    write_tiny_coco(root / "coco", num_images=3, split="val", seed=1, shape="ellipse")
    return root


@pytest.mark.parametrize("config", HEADS, ids=[p.stem for p in HEADS])
def test_head_configs_build(config: Path) -> None:
    cfg = setup_cfg(str(config), ["MODEL.DEVICE", "cpu"])
    arch = "retinanet" if config.stem.startswith("retinanet_") else "mask_rcnn"
    trunk_name, schedule = config.stem.removeprefix(f"{arch}_").split("_fpn_")
    assert cfg.MODEL.SEBENCH.NAME == trunk_name
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == SCHEDULES[schedule]
    assert cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.SOLVER.BASE_LR == (0.01 if arch == "retinanet" else 0.02)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)  # the zoo's multi-scale
    assert cfg.OUTPUT_DIR == f"output/coco/{config.stem}"
    model = build_model(cfg)
    assert isinstance(model.backbone.bottom_up, SEBenchTrunk)
    assert any(isinstance(m, SEBlock) for m in model.modules()) == trunk_name.startswith("se_")
    if arch == "retinanet":
        assert type(model).__name__ == "RetinaNet"
        assert model.backbone.output_shape().keys() == {"p3", "p4", "p5", "p6", "p7"}
        # P6 convolves res5 (C5, 2048 channels), as the paper and detectron2.
        assert model.backbone.top_block.p6.in_channels == 2048
    else:
        assert cfg.MODEL.MASK_ON and model.roi_heads.mask_on


@pytest.mark.slow
def test_retinanet_trains_and_evaluates(ellipses: Path, tmp_path: Path) -> None:
    config = CONFIGS / "retinanet_se_resnet50_fpn_1x.yaml"
    results = detect("train", config, ellipses, tmp_path, overrides=SMALL)
    assert_ap(results, tmp_path)
    assert results["architecture"] == "RetinaNet" and results["iterations"] == 2
    assert results["config"]["MODEL"]["RETINANET"]["NUM_CLASSES"] == 2  # from the data
    assert "segm" not in results
    # The paper's figures are Faster R-CNN's: no comparison for RetinaNet.
    assert results["paper_line"].endswith("| - | - | - |")


@pytest.mark.slow
def test_mask_rcnn_trains_and_evaluates_masks(ellipses: Path, tmp_path: Path) -> None:
    config = CONFIGS / "mask_rcnn_se_resnet50_fpn_1x.yaml"
    results = detect("train", config, ellipses, tmp_path, overrides=SMALL)
    assert_ap(results, tmp_path)
    assert results["architecture"] == "Mask R-CNN FPN"
    assert_ap(results, tmp_path, "segm")
    assert results["paper_line"].endswith("| - | - | - |")
    metrics = (tmp_path / "metrics.json").read_text()
    assert '"loss_mask"' in metrics


def test_retinanet_backbone_needs_res5() -> None:
    cfg = setup_cfg(
        str(CONFIGS / "retinanet_se_resnet50_fpn_1x.yaml"),
        ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.OUT_FEATURES", "['res3', 'res4']",
         "MODEL.FPN.IN_FEATURES", "['res3', 'res4']"],
    )
    with pytest.raises(ValueError, match=r"must include 'res5'.*P6 and P7"):
        build_model(cfg)
