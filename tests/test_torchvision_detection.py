"""torchvision Faster R-CNN on registry trunks: backbone, data module, Lightning and the CLI.

Everything is real and tiny: a one-block-per-stage SE-ResNet-50 trunk, a 32-channel FPN,
96x128 JPEGs written in the COCO layout, torchvision's CocoDetection, Lightning's Trainer (with
2-process CPU DDP) and pycocotools.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import lightning
import numpy as np
import pytest
import torch
import yaml
from _coco import write_tiny_coco
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader
from torchvision.ops import FrozenBatchNorm2d

import backbones
from tasks._nonfinite import NonFiniteGuard
from tasks.detection.evaluation import AP_KEYS
from tasks.detection.lightning import (
    COCODetectionDataModule,
    DetectionModule,
    collate_detection,
    detections_to_coco,
)
from tasks.detection.torchvision_model import RegistryFPNBackbone, build_faster_rcnn
from tasks.detection.tv_cli import main

TINY_TRUNK = {"layers": [1, 1, 1, 1], "base_width": 16}
# Small proposal and sampling counts: the defaults (2000 proposals, 512 ROIs) cost seconds.
TINY_DETECTOR = {
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 32,
}
TINY_MODEL = {
    "model_kwargs": TINY_TRUNK,
    "out_channels": 32,
    "min_size": 64,
    "max_size": 96,
    "detector_kwargs": TINY_DETECTOR,
    "lr": 0.01,
    "warmup_steps": 2,
}
CONFIGS = sorted(Path(__file__).parents[1].glob("configs/coco/tv_faster_rcnn_*.yaml"))


@pytest.fixture
def tiny_coco(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "coco"
    train_json, train_images = write_tiny_coco(root, num_images=4, split="train")
    val_json, val_images = write_tiny_coco(root, num_images=3, split="val", seed=1)
    return {
        "train_json": str(train_json),
        "train_images": str(train_images),
        "val_json": str(val_json),
        "val_images": str(val_images),
    }


def _trainer(**kwargs: Any) -> lightning.Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return lightning.Trainer(**{**defaults, **kwargs})


# -- backbone -------------------------------------------------------------------------------


def test_fpn_backbone_levels_channels_and_strides() -> None:
    backbone = RegistryFPNBackbone("se_resnet50", model_kwargs=TINY_TRUNK, out_channels=32)
    assert backbone.out_channels == 32
    assert backbone.in_channels == [256, 512, 1024, 2048]
    assert backbone.strides == [4, 8, 16, 32, 64]
    features = backbone(torch.rand(1, 3, 64, 128))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    for (name, feature), stride in zip(features.items(), backbone.strides):
        assert feature.shape == (1, 32, 64 // stride, 128 // stride), name


def test_frozen_batchnorm_and_trainable_stages() -> None:
    num_bn = sum(
        isinstance(m, nn.BatchNorm2d)
        for m in backbones.create_model("se_resnet50", features_only=True, **TINY_TRUNK).modules()
    )
    backbone = RegistryFPNBackbone("se_resnet50", model_kwargs=TINY_TRUNK)
    trunk = backbone.trunk
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in trunk.modules()) == num_bn
    # trainable_stages=3 trains layer2..layer4 (and the FPN): torchvision's trainable_layers=3.
    assert backbone.frozen_children == ["stem", "pool", "layer1"]
    trainable = {
        n.split(".")[1]
        for n, p in backbone.named_parameters()
        if p.requires_grad and n.startswith("trunk.")
    }
    assert trainable == {"layer2", "layer3", "layer4"}
    assert all(p.requires_grad for p in backbone.fpn.parameters())

    frozen = RegistryFPNBackbone("se_resnet50", model_kwargs=TINY_TRUNK, trainable_stages=0)
    assert not any(p.requires_grad for p in frozen.trunk.parameters())
    every = RegistryFPNBackbone("se_resnet50", model_kwargs=TINY_TRUNK, trainable_stages=None)
    assert all(p.requires_grad for p in every.trunk.parameters())


def test_plain_batchnorm_keeps_frozen_stages_in_eval_mode() -> None:
    backbone = RegistryFPNBackbone(
        "resnet50", model_kwargs=TINY_TRUNK, norm="bn", trainable_stages=2
    ).train()
    assert isinstance(backbone.trunk["stem"].bn1, nn.BatchNorm2d)
    assert not backbone.trunk["layer2"].training and not backbone.trunk["stem"].bn1.training
    assert backbone.trunk["layer3"].training and backbone.trunk["layer4"][0].bn1.training
    assert backbone.trunk["layer3"][0].conv1.weight.requires_grad
    assert not backbone.trunk["layer2"][0].conv1.weight.requires_grad


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("se_resnet5O", {}, "unknown model 'se_resnet5O'"),
        ("se_preact_resnet110", {}, "feature strides"),  # a CIFAR trunk: strides 1..4
        ("se_resnet50", {"features_only": True}, "must not contain 'features_only'"),
        ("se_resnet50", {"se_reduciton": 8}, "Did you mean se_reduction"),
    ],
)
def test_bad_trunks_are_clear_errors(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_faster_rcnn(name, 2, model_kwargs=kwargs)


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="trainable_stages=6 is out of range"):
        RegistryFPNBackbone("resnet50", model_kwargs=TINY_TRUNK, trainable_stages=6)
    with pytest.raises(ValueError, match="norm='gn'"):
        RegistryFPNBackbone("resnet50", model_kwargs=TINY_TRUNK, norm="gn")


def test_trunk_weights_from_a_classification_checkpoint(tmp_path: Path) -> None:
    classifier = backbones.create_model("se_resnet50", num_classes=7, **TINY_TRUNK)
    with torch.no_grad():
        classifier.layer2[0].bn1.running_mean.fill_(0.25)
        classifier.layer3[0].conv1.weight.mul_(3.0)
    state = classifier.state_dict()
    torch.save(state, tmp_path / "plain.pth")
    # A `sebench fit` checkpoint: the backbone sits under the module's `model.` prefix.
    lightning_state = {f"model.{k}": v for k, v in state.items()}
    torch.save({"state_dict": lightning_state, "epoch": 3}, tmp_path / "fit.ckpt")
    for path in (tmp_path / "plain.pth", tmp_path / "fit.ckpt"):
        backbone = RegistryFPNBackbone("se_resnet50", model_kwargs=TINY_TRUNK, weights=path)
        trunk = backbone.trunk
        assert torch.equal(trunk["layer3"][0].conv1.weight, state["layer3.0.conv1.weight"])
        # The frozen norm keeps the loaded statistics.
        assert isinstance(trunk["layer2"][0].bn1, FrozenBatchNorm2d)
        assert torch.all(trunk["layer2"][0].bn1.running_mean == 0.25)


def test_trunk_weights_of_another_model_are_rejected(tmp_path: Path) -> None:
    plain = backbones.create_model("resnet50", **TINY_TRUNK)
    torch.save(plain.state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(ValueError, match=r"(?s)do not fit se_resnet50.*missing from the checkpoint: layer1\.0\.se\.fc1"):
        RegistryFPNBackbone(
            "se_resnet50", model_kwargs=TINY_TRUNK, weights=tmp_path / "resnet50.pth"
        )
    with pytest.raises(ValueError, match="nothing.pth"):
        RegistryFPNBackbone("se_resnet50", weights=tmp_path / "nothing.pth")


# -- data -----------------------------------------------------------------------------------


def test_data_module_maps_categories_and_drops_bad_boxes(tiny_coco: dict[str, str]) -> None:
    val_json = Path(tiny_coco["val_json"])
    document = json.loads(val_json.read_text())
    annotations = document["annotations"]
    by_image: dict[int, list[dict]] = {}
    for a in annotations:
        by_image.setdefault(a["image_id"], []).append(a)
    # Image 1: its first box becomes degenerate, image 2: its first box a crowd region.
    by_image[1][0]["bbox"][2] = 0.0
    by_image[2][0]["iscrowd"] = 1
    val_json.write_text(json.dumps(document))

    data = COCODetectionDataModule(**tiny_coco, num_workers=0)
    assert data.num_classes == 2 and data.category_ids == [1, 3]
    data.setup("validate")
    assert data.summaries["val"].degenerate_annotation_ids == [by_image[1][0]["id"]]
    dataset = data.val_dataloader().dataset
    for index, image_id in enumerate(sorted(by_image)):
        image, target = dataset[index]
        assert target["image_id"] == image_id
        assert image.dtype == torch.float32 and image.shape == (3, 96, 128)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        expected = [a for a in by_image[image_id] if a["bbox"][2] > 0 and not a["iscrowd"]]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in expected)]
        labels = [{1: 1, 3: 2}[a["category_id"]] for a in expected]
        assert target["boxes"].tolist() == boxes
        assert target["labels"].tolist() == labels


def test_data_module_skips_or_keeps_images_without_boxes(tiny_coco: dict[str, str]) -> None:
    train_json = Path(tiny_coco["train_json"])
    document = json.loads(train_json.read_text())
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != 2]
    train_json.write_text(json.dumps(document))

    skipping = COCODetectionDataModule(**tiny_coco, num_workers=0, horizontal_flip=0.0)
    skipping.setup("fit")
    assert len(skipping.train_dataloader().dataset) == 3
    keeping = COCODetectionDataModule(
        **tiny_coco, num_workers=0, horizontal_flip=0.0, keep_empty_train_images=True
    )
    keeping.setup("fit")
    whole = DataLoader(keeping.train_dataloader().dataset, 4, collate_fn=collate_detection)
    images, targets = next(iter(whole))
    assert len(images) == 4
    empty = next(t for t in targets if t["image_id"] == 2)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_data_module_parses_each_json_once(
    tiny_coco: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # COCO's train JSON takes seconds and GBs to parse: categories, checks, the pycocotools
    # index and the test split (the val file by default) all share one parse per file, and the
    # test split reuses the val split's dataset.
    parsed: list[str] = []
    real_read_text = Path.read_text

    def counting_read_text(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.suffix == ".json":
            parsed.append(path.name)
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting_read_text)
    data = COCODetectionDataModule(**tiny_coco, num_workers=0)
    assert data.num_classes == 2
    for stage in ("fit", "validate", "test"):
        data.setup(stage)
    json_names = {Path(tiny_coco[key]).name for key in ("train_json", "val_json")}
    assert sorted(parsed) == sorted(json_names)
    assert len(data.coco_gt("test").getImgIds()) == 3
    assert data.coco_gt("test") is data.coco_gt("val")  # one index, one check for both
    _, target = data.val_dataloader().dataset[0]
    assert target["boxes"].shape[1] == 4


def test_data_module_builds_a_test_split_of_its_own_files(
    tiny_coco: dict[str, str], tmp_path: Path
) -> None:
    val_json = Path(tiny_coco["val_json"])
    document = json.loads(val_json.read_text())
    document["images"] = document["images"][:1]
    kept = {document["images"][0]["id"]}
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] in kept]
    test_json = tmp_path / "test.json"
    test_json.write_text(json.dumps(document))
    data = COCODetectionDataModule(**tiny_coco, test_json=str(test_json), num_workers=0)
    data.setup("validate")
    data.setup("test")
    assert data.coco_gt("test") is not data.coco_gt("val")
    assert len(data.coco_gt("test").getImgIds()) == 1
    assert len(data.test_dataloader().dataset) == 1


def test_data_module_rejects_mismatched_categories(tiny_coco: dict[str, str]) -> None:
    train_json = Path(tiny_coco["train_json"])
    document = json.loads(train_json.read_text())
    document["categories"].append({"id": 9, "name": "extra", "supercategory": "shape"})
    train_json.write_text(json.dumps(document))
    data = COCODetectionDataModule(**tiny_coco, num_workers=0)
    with pytest.raises(ValueError, match=r"categories \[1, 3, 9\] differ"):
        data.setup("fit")


def test_detections_to_coco_maps_boxes_and_categories_back() -> None:
    output = {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 5.0, 8.0]]),
        "labels": torch.tensor([2, 1]),
        "scores": torch.tensor([0.9, 0.4]),
    }
    detections = detections_to_coco(output, image_id=7, category_ids=[1, 3])
    assert detections == [
        {"image_id": 7, "category_id": 3, "bbox": [10.0, 20.0, 40.0, 40.0], "score": ANY},
        {"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 8.0], "score": ANY},
    ]
    assert [d["score"] for d in detections] == pytest.approx([0.9, 0.4])


# -- Lightning ------------------------------------------------------------------------------


def _independent_box_ap(model: nn.Module, json_file: str, image_dir: str) -> dict[str, float]:
    """Box AP computed without the data module, the Lightning module or ``coco_box_ap``: the
    detector run on each JPEG by hand, labels mapped to category ids by hand, pycocotools'
    COCOeval called directly."""
    gt = COCO(json_file)
    category_ids = sorted(gt.getCatIds())
    results = []
    model.eval()
    with torch.no_grad():
        for image_id in sorted(gt.getImgIds()):
            path = Path(image_dir) / gt.imgs[image_id]["file_name"]
            image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
            (output,) = model([image.float() / 255])
            for (x0, y0, x1, y1), label, score in zip(
                output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist()
            ):
                bbox = [x0, y0, x1 - x0, y1 - y0]
                category = category_ids[label - 1]
                results.append(
                    {"image_id": image_id, "category_id": category, "bbox": bbox, "score": score}
                )
    evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {k: 100.0 * float(v) for k, v in zip(AP_KEYS, evaluator.stats) if v >= 0}


def test_fit_overfits_two_images_and_ap_matches_an_independent_evaluation(
    tmp_path: Path,
) -> None:
    # Two training images, evaluated on themselves: a working pipeline (targets, labels,
    # box coordinates, the detector, the COCO conversion) learns them in a few dozen steps; a
    # broken one (boxes scaled or flipped wrongly, labels off by one, ids mixed up) cannot.
    json_file, image_dir = map(str, write_tiny_coco(tmp_path / "coco", num_images=2))
    files = {"train_json": json_file, "train_images": image_dir}
    files.update(val_json=json_file, val_images=image_dir)
    data = COCODetectionDataModule(**files, batch_size=2, num_workers=0, horizontal_flip=0.0)
    overfit = {"trainable_stages": None, "warmup_steps": 5, "milestones": [1.0], "lr": 0.02}
    module = DetectionModule(
        "se_resnet50", num_classes=data.num_classes, **{**TINY_MODEL, **overfit}
    )
    trainer = _trainer(max_steps=60, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 60
    # The non-finite guard rides on the fused SGD's found_inf (tasks/_nonfinite.py).
    assert trainer.optimizers[0].defaults["fused"] is True
    assert any(isinstance(c, NonFiniteGuard) for c in trainer.callbacks)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    # A new trainer: the first one skips validation (limit_val_batches=0) for speed.
    (metrics,) = _trainer().validate(module, datamodule=data, verbose=False)
    assert set(metrics) == {f"val/{key}" for key in AP_KEYS}
    assert module.last_num_images == 2
    ap = module.last_ap
    # Untrained, this detector scores AP50 0-20 here; after 60 steps 90-100 (seeds 0-3).
    assert ap["AP50"] >= 75.0 and ap["AP"] >= 35.0, f"training-set AP after 60 steps: {ap}"
    independent = _independent_box_ap(module.model, json_file, image_dir)
    for key, value in independent.items():
        assert ap[key] == pytest.approx(value, abs=0.05), f"{key}: {ap} vs {independent}"


class _RecordAP(lightning.Callback):
    """Each rank writes the AP it logged, to compare the ranks afterwards."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_validation_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        record = {
            "ap": pl_module.last_ap,
            "num_images": pl_module.last_num_images,
            "logged": {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
            },
        }
        path = self.folder / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))


@pytest.mark.slow
def test_two_process_cpu_ddp_gathers_detections(tiny_coco: dict[str, str], tmp_path: Path) -> None:
    data = COCODetectionDataModule(**tiny_coco, batch_size=1, num_workers=0)
    module = DetectionModule("se_resnet50", num_classes=data.num_classes, **TINY_MODEL)
    trainer = _trainer(
        devices=2, strategy="ddp_spawn", max_steps=2, callbacks=[_RecordAP(tmp_path)]
    )
    trainer.fit(module, datamodule=data)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Three validation images on two ranks (one padded duplicate): all three, counted once.
    assert records[0]["num_images"] == records[1]["num_images"] == 3
    assert records[0]["logged"] == pytest.approx(records[1]["logged"], nan_ok=True)
    assert set(records[0]["logged"]) == {f"val/{key}" for key in AP_KEYS}
    # The gathered evaluation equals one process evaluating the same weights (the validation
    # ran after the last step; ddp_spawn hands the weights back to this process).
    (single,) = _trainer().validate(module, datamodule=data, verbose=False)
    assert single == pytest.approx(records[0]["logged"], nan_ok=True, abs=1e-4)


# -- CLI ------------------------------------------------------------------------------------


def _tiny_config(tmp_path: Path, tiny_coco: dict[str, str], **model: Any) -> Path:
    config = {
        "model": {"model_name": "se_resnet50", **TINY_MODEL, **model},
        "data": {**tiny_coco, "batch_size": 2, "num_workers": 0},
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "max_epochs": -1,
            "default_root_dir": str(tmp_path / "runs"),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
        },
    }
    path = tmp_path / "tv_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_fit_writes_results_and_resumes_validate(
    tiny_coco: dict[str, str], tmp_path: Path
) -> None:
    config = _tiny_config(tmp_path, tiny_coco)
    assert main(["fit", "--config", str(config)]) == 0
    experiment = tmp_path / "runs" / "coco" / "tv_tiny"
    last = experiment / "checkpoints" / "last.ckpt"
    assert last.exists()
    results = json.loads((experiment / "version_0" / "results.json").read_text())
    assert results["model_name"] == "se_resnet50" and results["stage"] == "fit"
    assert set(results["box_ap"]) == set(AP_KEYS) and results["num_images"] == 3
    assert results["trained_steps"] == 2
    assert results["paper"] == {"AP": 40.4, "AP50": 61.0}
    assert results["paper_line"].startswith("| se_resnet50 |")
    assert main(["validate", "--config", str(config), "--ckpt_path", str(last)]) == 0
    validated = json.loads((experiment / "version_1" / "results.json").read_text())
    assert validated["stage"] == "validate" and validated["trained_steps"] == 2
    # Resume the latest state for one more step; it ends inside an epoch, yet the final
    # weights are saved and evaluated.
    resume = ["--ckpt_path", "last", "--trainer.max_steps", "3"]
    assert main(["fit", "--config", str(config), *resume]) == 0
    resumed = json.loads((experiment / "version_2" / "results.json").read_text())
    assert resumed["trained_steps"] == resumed["evaluated_at_step"] == 3
    assert torch.load(last, weights_only=False)["global_step"] == 3
    # One best, one latest and its link: the resumed run re-saved step 2 without a last-v1.ckpt
    # (a link to the removed step 2 file) beside last.ckpt.
    names = sorted(path.name for path in last.parent.iterdir())
    assert names == ["best-step0000002.ckpt", "last.ckpt", "step0000003.ckpt"]


def test_cli_bad_input_exits_2_with_one_line(
    tiny_coco: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _tiny_config(tmp_path, tiny_coco, model_name="se_resnet5O")
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sebench tv-detect fit: error:") and "se_resnet5O" in err
    config = _tiny_config(tmp_path, {**tiny_coco, "val_json": str(tmp_path / "missing.json")})
    assert main(["validate", "--config", str(config)]) == 2
    assert "missing.json" in capsys.readouterr().err


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_coco_configs_parse(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["milestones"] == [0.6667, 0.8889]
    assert printed["trainer"]["max_steps"] == 180000
    assert printed["model"]["model_name"] in config.stem
