"""torchvision RetinaNet, FCOS and Mask R-CNN on registry trunks: pyramids, data with instance
masks, Lightning training and pycocotools evaluation (box AP, and mask AP for Mask R-CNN).

Everything is real and tiny: one-block-per-stage SE-ResNet-50 trunks, 32- or 64-channel FPNs,
96x128 JPEGs of ellipses written in the COCO layout (so masks are not boxes), torchvision's
CocoDetection and detectors, Lightning's Trainer and pycocotools.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _coco import write_tiny_coco
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from test_torchvision_detection import TINY_DETECTOR, TINY_TRUNK, _trainer

from backbones import SEBlock
from tasks.detection.evaluation import AP_KEYS, coco_ap
from tasks.detection.lightning import COCODetectionDataModule, DetectionModule, masks_to_rle
from tasks.detection.torchvision_model import RegistryFPNBackbone, build_detector
from tasks.detection.tv_cli import main

# Few candidates and detections; a score threshold of 0 keeps detections of an untrained model,
# so pycocotools has something to score.
TINY_HEADS = {
    "retinanet": {"score_thresh": 0.0, "topk_candidates": 50, "detections_per_img": 20},
    # FCOS's heads use GroupNorm(32): 64 FPN channels keep 2 per group on the 1x1 P7 map.
    "fcos": {"score_thresh": 0.0, "topk_candidates": 50, "detections_per_img": 20},
    "mask_rcnn": {**TINY_DETECTOR, "box_score_thresh": 0.0, "box_detections_per_img": 20},
}
OUT_CHANNELS = {"retinanet": 32, "fcos": 64, "mask_rcnn": 32}
CONFIGS = sorted(
    path
    for head in ("retinanet", "fcos", "mask_rcnn")
    for path in Path(__file__).parents[1].glob(f"configs/coco/tv_{head}_*.yaml")
)


@pytest.fixture
def tiny_coco(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "coco"
    train_json, train_images = write_tiny_coco(root, num_images=4, split="train", shape="ellipse")
    val_json, val_images = write_tiny_coco(
        root, num_images=3, split="val", seed=1, shape="ellipse"
    )
    return {
        "train_json": str(train_json),
        "train_images": str(train_images),
        "val_json": str(val_json),
        "val_images": str(val_images),
    }


@pytest.mark.parametrize(
    ("pyramid", "strides", "extra"),
    [("p2-p6", [4, 8, 16, 32, 64], ["pool"]), ("p3-p7", [8, 16, 32, 64, 128], ["p6", "p7"]),
     ("p3-p7-p5", [8, 16, 32, 64, 128], ["p6", "p7"])],
)
def test_pyramids(pyramid: str, strides: list[int], extra: list[str]) -> None:
    backbone = RegistryFPNBackbone(
        "se_resnet50", model_kwargs=TINY_TRUNK, out_channels=32, pyramid=pyramid
    )
    assert backbone.strides == strides
    features = backbone(torch.rand(1, 3, 128, 256))
    assert list(features)[-len(extra):] == extra
    for (name, feature), stride in zip(features.items(), strides, strict=True):
        assert feature.shape == (1, 32, math.ceil(128 / stride), math.ceil(256 / stride)), name
    # P6 from C5 convolves the trunk's 2048-channel map, from P5 the FPN's 32-channel one.
    if extra == ["p6", "p7"]:
        expected = 2048 if pyramid == "p3-p7" else 32
        assert backbone.fpn.extra_blocks.p6.in_channels == expected


def test_bad_pyramid_and_detector_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"pyramid='p4-p8' is not supported; expected one of"):
        RegistryFPNBackbone("resnet50", model_kwargs=TINY_TRUNK, pyramid="p4-p8")
    with pytest.raises(ValueError, match=r"detector='yolo' is not supported"):
        build_detector("yolo", "resnet50", 2)
    # A CIFAR trunk (strides 1..4) has no stride-8 maps: the message names trunks that have.
    with pytest.raises(ValueError, match=r"strides \[1, 1, 2, 4\].*stride >= 8.*ResNet"):
        build_detector("retinanet", "se_preact_resnet110", 2)


def test_data_module_loads_instance_masks(tiny_coco: dict[str, str]) -> None:
    data = COCODetectionDataModule(**tiny_coco, num_workers=0, masks=True, horizontal_flip=0.0)
    data.setup("validate")
    document = json.loads(Path(tiny_coco["val_json"]).read_text())
    image, target = data.val_dataloader().dataset[0]
    annotations = [a for a in document["annotations"] if a["image_id"] == target["image_id"]]
    masks = target["masks"]
    assert masks.shape == (len(annotations), 96, 128) and masks.dtype == torch.uint8
    for mask, annotation in zip(masks, annotations, strict=True):
        # An ellipse fills about pi/4 of its box: its mask is the polygon, not the box.
        area = int(mask.sum())
        assert area == pytest.approx(annotation["area"], rel=0.1)
        assert area < 0.85 * annotation["bbox"][2] * annotation["bbox"][3]

    document["annotations"][0].pop("segmentation")
    Path(tiny_coco["val_json"]).write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"1 annotations have no segmentation \(ids \[1\]\)"):
        COCODetectionDataModule(**tiny_coco, num_workers=0, masks=True).setup("validate")


def test_mask_ap_of_the_ground_truth_is_100(tiny_coco: dict[str, str]) -> None:
    """The RLEs of masks_to_rle, scored by pycocotools against the polygons they come from."""
    document = json.loads(Path(tiny_coco["val_json"]).read_text())
    detections = []
    for annotation in document["annotations"]:
        rle = mask_utils.frPyObjects(annotation["segmentation"], 96, 128)
        mask = torch.from_numpy(mask_utils.decode(mask_utils.merge(rle)).astype(np.float32))
        (segmentation,) = masks_to_rle(mask[None, None])
        detections.append({**annotation, "segmentation": segmentation, "score": 1.0})
    gt = COCO(tiny_coco["val_json"])
    segm = coco_ap(gt, detections, iou_type="segm")
    assert segm["AP"] == pytest.approx(100.0)
    # COCOeval turns ground-truth polygons into RLEs in place: not in the caller's index,
    # which the data module's dataset reads masks from.
    assert all(isinstance(a["segmentation"], list) for a in gt.anns.values())
    shifted = [{**d, "bbox": [d["bbox"][0] + 8, *d["bbox"][1:]]} for d in detections]
    assert coco_ap(tiny_coco["val_json"], shifted, iou_type="segm")["AP"] == pytest.approx(100.0)
    assert coco_ap(tiny_coco["val_json"], shifted, iou_type="bbox")["AP"] < 100.0


@pytest.mark.parametrize("detector", ["retinanet", "fcos", "mask_rcnn"])
def test_fit_then_validate_through_the_trainer(detector: str, tiny_coco: dict[str, str]) -> None:
    with_masks = detector == "mask_rcnn"
    data = COCODetectionDataModule(**tiny_coco, batch_size=2, num_workers=0, masks=with_masks)
    module = DetectionModule(
        "se_resnet50",
        num_classes=data.num_classes,
        detector=detector,
        model_kwargs=TINY_TRUNK,
        out_channels=OUT_CHANNELS[detector],
        min_size=64,
        max_size=96,
        detector_kwargs=TINY_HEADS[detector],
        lr=0.01,
        warmup_steps=2,
    )
    assert any(isinstance(m, SEBlock) for m in module.model.backbone.trunk.modules())
    trainer = _trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    if with_masks:
        assert math.isfinite(float(trainer.callback_metrics["train/loss_mask"]))

    (metrics,) = _trainer().validate(module, datamodule=data, verbose=False)
    expected = {f"val/{key}" for key in AP_KEYS}
    if with_masks:
        expected |= {f"val/segm_{key}" for key in AP_KEYS}
    assert set(metrics) == expected
    assert module.last_num_images == 3
    for ap in (module.last_ap, module.last_segm_ap) if with_masks else (module.last_ap,):
        assert set(ap) == set(AP_KEYS)
        assert all(math.isnan(v) or 0.0 <= v <= 100.0 for v in ap.values()), ap
    assert bool(module.last_segm_ap) == with_masks
    # Score threshold 0: every image had detections, so pycocotools scored them (an empty
    # list is 0 AP without COCOeval).
    image, _ = data.val_dataloader().dataset[0]
    with torch.no_grad():
        (output,) = module.eval()([image])
    assert len(output["boxes"]) > 0 and ("masks" in output) == with_masks


def test_mask_rcnn_without_masks_in_the_data_is_a_clear_error(tiny_coco: dict) -> None:
    data = COCODetectionDataModule(**tiny_coco, num_workers=0)
    module = DetectionModule(
        "resnet50", num_classes=2, detector="mask_rcnn", model_kwargs=TINY_TRUNK, out_channels=32
    )
    with pytest.raises(ValueError, match=r"mask_rcnn trains on instance masks.*masks=True"):
        _trainer(max_steps=1).fit(module, datamodule=data)


def test_cli_trains_mask_rcnn_and_writes_mask_ap(tiny_coco: dict[str, str], tmp_path: Path) -> None:
    """``sebench tv-detect fit``: model.detector mask_rcnn switches data.masks on by itself."""
    config = {
        "model": {
            "model_name": "se_resnet50",
            "detector": "mask_rcnn",
            "model_kwargs": TINY_TRUNK,
            "out_channels": 32,
            "min_size": 64,
            "max_size": 96,
            "detector_kwargs": TINY_HEADS["mask_rcnn"],
            "warmup_steps": 1,
        },
        "data": {**tiny_coco, "batch_size": 2, "num_workers": 0},
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 1,
            "max_epochs": -1,
            "default_root_dir": str(tmp_path / "runs"),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        },
    }
    path = tmp_path / "tv_mask_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0
    results = json.loads(
        (tmp_path / "runs" / "coco" / "tv_mask_tiny" / "version_0" / "results.json").read_text()
    )
    assert results["detector"] == "mask_rcnn" and results["num_images"] == 3
    assert set(results["box_ap"]) == set(results["segm_ap"]) == set(AP_KEYS)
    assert results["paper"] is None and results["paper_line"] is None  # Table 7 is Faster R-CNN


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_head_configs_parse(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]
    assert config.stem == f"tv_{model['detector']}_{model['model_name']}_fpn"
    assert printed["trainer"]["max_steps"] == 90000
    assert printed["model"]["milestones"] == [0.6667, 0.8889]
