"""detectron2's own checkpoints in our trunks: detectron2's R50 (built from its model-zoo
config, random weights) saved as an MSRA/Caffe2 ImageNet ``.pkl`` (what ``R-50.pkl`` holds), as a
model-zoo ``.pkl`` and as a training ``.pth``, loaded by detectron2's ``DetectionCheckpointer``
into our ``resnet50`` FPN and C4 detectors (``configs/coco/faster_rcnn_resnet50_*_2x.yaml``).

Every tensor must be used and both detectors must then compute the same thing: res2..res5 and
detections are compared with ``torch.equal`` (max abs difference 0 in float32: the same
operations run in the same order).
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest

pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (build it from source, see README)"
)

import torch
from _coco import write_tiny_coco
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from torch import nn

from tasks.detection.d2.train import main, setup_cfg
from tasks.detection.d2.weights import report_missing_weights

REPO = Path(__file__).resolve().parents[1]
OURS = {arch: REPO / "configs" / "coco" / f"faster_rcnn_resnet50_{arch}_2x.yaml"
        for arch in ("fpn", "c4")}  # fmt: skip
DETECTRON2 = {
    "fpn": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "c4": "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
}
# Small images and every detection kept (random heads score low), on the CPU. The pixel scaling
# keeps a random network's activations (and so its boxes) in range; both detectors get it.
TEST_TIME = [
    "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.PIXEL_STD", "[57.0, 57.0, 57.0]",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "300", "MODEL.RPN.POST_NMS_TOPK_TEST", "60",
]  # fmt: skip
SMALL = [*TEST_TIME, "MODEL.WEIGHTS", ""]  # the models built here start random
TRUNK_PREFIXES = {"fpn": ("backbone.bottom_up.",), "c4": ("backbone.", "roi_heads.res5.")}
IMAGE = torch.rand(3, 112, 144) * 255


def detectron2_cfg(meta_arch: str, *opts: str):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(DETECTRON2[meta_arch]))
    cfg.merge_from_list([*SMALL, *opts])
    return cfg


def detectron2_r50(meta_arch: str, *, folded_norms: bool) -> nn.Module:
    """detectron2's own R50 detector with random weights and random FrozenBN scales and biases;
    ``folded_norms`` keeps the statistics at mean 0 / variance 1, as Caffe2 weights imply."""
    model = build_model(detectron2_cfg(meta_arch)).eval()
    for name, layer in model.named_modules():
        if isinstance(layer, FrozenBatchNorm2d):
            # Small scales on each residual branch's last norm keep the sums in range, as
            # trained weights do.
            layer.weight.uniform_(*((0.05, 0.2) if name.endswith("conv3.norm") else (0.5, 1.5)))
            layer.bias.normal_(0.0, 0.2)
            if folded_norms:
                layer.running_mean.zero_()
                layer.running_var.fill_(1.0)
            else:
                layer.running_mean.normal_(0.0, 0.2)
                layer.running_var.uniform_(0.5, 2.0)
    return model


def our_r50(meta_arch: str, *opts: str) -> nn.Module:
    return build_model(setup_cfg(str(OURS[meta_arch]), [*SMALL, *opts])).eval()


def trunk_state(model: nn.Module, meta_arch: str) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: v for k, v in state.items() if k.startswith(TRUNK_PREFIXES[meta_arch])}


def caffe2_name(name: str) -> str:
    """detectron2's trunk name -> the MSRA/Caffe2 blob name (``res2_0_branch2a_bn_s``)."""
    stem = {"weight": "conv1_w", "norm.weight": "res_conv1_bn_s", "norm.bias": "res_conv1_bn_b"}
    if name.startswith("stem.conv1."):
        return stem[name.removeprefix("stem.conv1.")]
    stage, block, conv, rest = name.split(".", 3)
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}
    suffix = {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}[rest]
    return f"{stage}_{block}_{branch[conv]}_{suffix}"


def write_msra_pkl(model: nn.Module, meta_arch: str, path: Path) -> Path:
    """The trunk in the layout of detectron2's ``ImageNetPretrained/MSRA/R-50.pkl``: Caffe2 blob
    names, numpy arrays, norms as scale and bias only, and an ImageNet classifier."""
    names, blobs = [], {}
    for key, value in trunk_state(model, meta_arch).items():
        name = key.removeprefix("backbone.bottom_up.").removeprefix("backbone.")
        name = name.removeprefix("roi_heads.")
        if name.endswith(("running_mean", "running_var")):
            continue  # folded into the scale and bias (mean 0, variance 1 here)
        names.append(name)
        blobs[caffe2_name(name)] = value.numpy()
    # detectron2's own converter reads the names back as detectron2's.
    assert convert_basic_c2_names(list(blobs)) == names
    blobs["fc1000_w"] = torch.randn(1000, 2048).numpy()
    blobs["fc1000_b"] = torch.zeros(1000).numpy()
    with path.open("wb") as f:
        pickle.dump(blobs, f)
    return path


def write_detector(model: nn.Module, path: Path) -> Path:
    """A whole detector as detectron2 writes it: a training ``.pth`` (torch tensors, iteration)
    or a model-zoo ``.pkl`` (numpy arrays, ``__author__``)."""
    state = model.state_dict()
    if path.suffix == ".pkl":
        content = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test zoo"}
        with path.open("wb") as f:
            pickle.dump(content, f)
    else:
        torch.save({"model": state, "iteration": 89999}, path)
    return path


def features(model: nn.Module, meta_arch: str) -> dict[str, torch.Tensor]:
    x = ((IMAGE - model.pixel_mean) / model.pixel_std)[None]
    if meta_arch == "fpn":
        return model.backbone.bottom_up(x)
    res4 = model.backbone(x)["res4"]
    return {"res4": res4, "res5": model.roi_heads.res5(res4)}


def detections(model: nn.Module) -> dict[str, torch.Tensor]:
    (result,) = model([{"image": IMAGE, "height": 112, "width": 144}])
    instances = result["instances"]
    return {
        "boxes": instances.pred_boxes.tensor,
        "scores": instances.scores,
        "classes": instances.pred_classes,
    }


def assert_same_outputs(ours: nn.Module, theirs: nn.Module, meta_arch: str) -> None:
    with torch.no_grad():
        outputs = [{**features(m, meta_arch), **detections(m)} for m in (theirs, ours)]
    expected, got = outputs
    assert expected.keys() == got.keys()
    for key in expected:
        assert expected[key].shape == got[key].shape, key
        diff = (expected[key].float() - got[key].float()).abs().max().item()
        assert torch.equal(expected[key], got[key]), f"{key}: max abs difference {diff}"
    assert len(got["scores"]) > 10, "too few detections to compare"


def copy_heads(ours: nn.Module, theirs: nn.Module, meta_arch: str) -> None:
    """detectron2's random detection heads into ours (an ImageNet file has none)."""
    if meta_arch == "fpn":
        for name, child in theirs.backbone.named_children():
            if name != "bottom_up":
                getattr(ours.backbone, name).load_state_dict(child.state_dict())
    ours.proposal_generator.load_state_dict(theirs.proposal_generator.state_dict())
    ours.roi_heads.load_state_dict(theirs.roi_heads.state_dict())


@pytest.mark.parametrize("meta_arch", ["fpn", "c4"])
def test_msra_imagenet_pkl_loads_every_trunk_tensor(meta_arch: str, tmp_path: Path) -> None:
    theirs = detectron2_r50(meta_arch, folded_norms=True)
    pkl = write_msra_pkl(theirs, meta_arch, tmp_path / "R-50.pkl")
    ours = our_r50(meta_arch)
    # What detectron2 does with MODEL.WEIGHTS (.pkl: Caffe2 names, suffix matching heuristics).
    DetectionCheckpointer(ours).load(str(pkl))
    loaded, expected = trunk_state(ours, meta_arch), trunk_state(theirs, meta_arch)
    assert loaded.keys() == expected.keys(), "our trunk saves in detectron2's names"
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), f"{key} not loaded from {pkl.name}"
    copy_heads(ours, theirs, meta_arch)
    assert_same_outputs(ours, theirs, meta_arch)


@pytest.mark.parametrize("meta_arch", ["fpn", "c4"])
def test_detectron2_detector_pth_gives_the_same_detector(meta_arch: str, tmp_path: Path) -> None:
    """A detectron2 training checkpoint (``model_final.pth``); the model-zoo ``.pkl`` layout is
    ``test_eval_of_a_model_zoo_checkpoint_gives_detectron2s_detections``'s."""
    theirs = detectron2_r50(meta_arch, folded_norms=False)
    path = write_detector(theirs, tmp_path / "model_final.pth")
    ours = our_r50(meta_arch)
    assert DetectionCheckpointer(ours).load(str(path))["iteration"] == 89999
    state, expected = ours.state_dict(), theirs.state_dict()
    assert state.keys() == expected.keys(), set(state) ^ set(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    assert_same_outputs(ours, theirs, meta_arch)
    # And back: our checkpoints are detectron2's (its own R50 loads ours, strictly).
    detectron2_r50(meta_arch, folded_norms=False).load_state_dict(state)


@pytest.fixture
def tasks_log(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """Our modules' log records (``sebench detect`` makes the "tasks" logger stop propagating)."""
    monkeypatch.setattr(logging.getLogger("tasks"), "propagate", True)
    caplog.set_level(logging.INFO, logger="tasks")
    return caplog


def test_partial_trunk_load_is_an_error_naming_the_keys(tmp_path: Path) -> None:
    pkl = write_msra_pkl(detectron2_r50("fpn", folded_norms=True), "fpn", tmp_path / "R-50.pkl")
    model = build_model(setup_cfg(str(OURS["fpn"]), [*SMALL, "MODEL.SEBENCH.NAME", "se_resnet50"]))
    pattern = (
        r"leave 64 of the 329 tensors of the trunk \(se_resnet50\) unloaded .*: "
        r"backbone\.bottom_up\.res2\.0\.se\.fc1\.weight, .*ALLOW_PARTIAL_LOAD True"
    )
    with pytest.raises(ValueError, match=pattern):
        DetectionCheckpointer(model).load(str(pkl))


def test_partial_load_opt_in_says_what_stayed_random(tmp_path: Path, tasks_log) -> None:
    theirs = detectron2_r50("c4", folded_norms=True)
    pkl = write_msra_pkl(theirs, "c4", tmp_path / "R-50.pkl")
    opts = ["MODEL.SEBENCH.NAME", "se_resnet50", "MODEL.SEBENCH.ALLOW_PARTIAL_LOAD", "True"]
    model = build_model(setup_cfg(str(OURS["c4"]), [*SMALL, *opts]))
    se_before = model.roi_heads.res5[0].se.fc1.weight.clone()
    DetectionCheckpointer(model).load(str(pkl))
    warnings = [
        r.getMessage()
        for r in tasks_log.records
        if r.levelno == logging.WARNING and r.name.startswith("tasks.")
    ]
    # One line per trunk part: the backbone (stem..res4) and the C4 head's res5.
    assert len(warnings) == 2, warnings
    assert "52 of the 267 tensors of the trunk (se_resnet50)" in warnings[0]
    assert "backbone.res2.0.se.fc1.weight" in warnings[0]
    assert "12 of the 62 tensors of the C4 head's res5 (se_resnet50)" in warnings[1]
    assert torch.equal(model.roi_heads.res5[0].se.fc1.weight, se_before), "SE stays random"
    loaded = model.roi_heads.res5.state_dict()["0.conv2.norm.weight"]
    assert torch.equal(loaded, theirs.roi_heads.res5.state_dict()["0.conv2.norm.weight"])


def test_training_says_once_that_the_heads_start_random(tmp_path: Path, tasks_log) -> None:
    pkl = write_msra_pkl(detectron2_r50("fpn", folded_norms=True), "fpn", tmp_path / "R-50.pkl")
    model = our_r50("fpn")
    report_missing_weights(model, heads_may_be_random=True)
    checkpoint = DetectionCheckpointer(model)._load_file(str(pkl))
    incompatible = DetectionCheckpointer(model)._load_model(checkpoint)
    assert incompatible.missing_keys == [], "said once, not listed again by detectron2"
    (line,) = [r.getMessage() for r in tasks_log.records if "random initialisation" in r.message]
    assert "tensors outside the trunk" in line and "backbone.fpn_lateral*.* (8)" in line
    assert "proposal_generator.* (6)" in line and "roi_heads.* (8)" in line


def coco80_val_set(root: Path) -> list[str]:
    """A tiny COCO val set that lists COCO's 80 categories, as a model-zoo detector expects."""
    json_path, image_dir = write_tiny_coco(root, num_images=3, size=(112, 144), split="val")
    categories = [
        {"id": c["id"], "name": c["name"], "supercategory": "coco"}
        for c in COCO_CATEGORIES
        if c["isthing"]
    ]
    document = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**document, "categories": categories}))
    return ["--val-json", str(json_path), "--val-images", str(image_dir)]


def test_eval_of_a_model_zoo_checkpoint_gives_detectron2s_detections(tmp_path: Path) -> None:
    """``sebench detect eval`` with our resnet50 FPN config on a detectron2 model-zoo file: the
    way to check an installation against detectron2's published AP."""
    theirs = detectron2_r50("fpn", folded_norms=False)
    weights = write_detector(theirs, tmp_path / "model_final_zoo.pkl")
    data = coco80_val_set(tmp_path / "coco")
    output = tmp_path / "ours"
    argv = ["eval", "--config-file", str(OURS["fpn"]), *data, *TEST_TIME]
    assert main([*argv, "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(output)]) == 0
    ours = json.loads((output / "results.json").read_text())

    # detectron2's own model on the same registered data set, with its own evaluator.
    cfg = detectron2_cfg("fpn", "DATASETS.TEST", "('sebench_coco_val',)")
    evaluator = COCOEvaluator(
        "sebench_coco_val", distributed=False, output_dir=str(tmp_path / "d2")
    )
    loader = build_detection_test_loader(cfg, "sebench_coco_val")
    expected = inference_on_dataset(theirs, loader, evaluator)["bbox"]

    predictions = [
        json.loads((folder / "coco_instances_results.json").read_text())
        for folder in (output / "inference" / "sebench_coco_val", tmp_path / "d2")
    ]
    assert len(predictions[0]) == 300  # 100 detections on each of the 3 images
    assert predictions[0] == predictions[1], "the same boxes, scores and classes"
    for key in ("AP", "AP50", "AP75"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-9, nan_ok=True), key


def test_eval_refuses_imagenet_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    theirs = detectron2_r50("fpn", folded_norms=True)
    pkl = write_msra_pkl(theirs, "fpn", tmp_path / "imagenet.pkl")
    data = coco80_val_set(tmp_path / "coco")
    argv = ["eval", "--config-file", str(OURS["fpn"]), *data, *TEST_TIME, "MODEL.WEIGHTS", str(pkl)]
    try:  # raised in the evaluating process, or reported by the command in one line
        code, message = main([*argv, "OUTPUT_DIR", str(tmp_path / "out")]), capsys.readouterr().err
    except ValueError as err:
        code, message = 2, str(err)
    assert code == 2
    assert "have nothing for 30 tensors of the detector" in message, message
    assert "backbone.fpn_lateral*.* (8), backbone.fpn_output*.* (8)" in message
