"""Registry trunks in detectron2's Faster R-CNN: C4 and FPN backbones, the SE res5 head, config."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (optional, from source)")

import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

import tasks.detection  # noqa: F401  (registers the builders)
from backbones import SEBlock
from tasks.detection.d2.config import add_sebench_config, check_sebench_config

BASE = {"c4": "Base-RCNN-C4.yaml", "fpn": "Base-RCNN-FPN.yaml"}
BUILDERS = {
    "c4": ["MODEL.BACKBONE.NAME", "build_sebench_c4_backbone",
           "MODEL.ROI_HEADS.NAME", "SEBenchRes5ROIHeads"],
    "fpn": ["MODEL.BACKBONE.NAME", "build_sebench_fpn_backbone"],
}
TINY = '["layers=(1, 1, 1, 1)"]'  # one block per stage: fast, same structure
# MODEL.RESNETS.DEPTH must say the trunk's depth: 1 + 3 x 4 blocks + 1.
TINY_OPTS = ["MODEL.SEBENCH.KWARGS", TINY, "MODEL.RESNETS.DEPTH", "14"]


def make_cfg(meta_arch: str, name: str = "se_resnet50", *opts: str):
    """detectron2's own Base-RCNN config with our trunk, small images, on the CPU."""
    cfg = get_cfg()
    add_sebench_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(BASE[meta_arch]))
    cfg.merge_from_list([*BUILDERS[meta_arch], "MODEL.SEBENCH.NAME", name, "MODEL.DEVICE", "cpu",
                         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
                         "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
                         "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
                         "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", *opts])
    return cfg


def batch(sizes=((64, 80), (72, 64))) -> list[dict]:
    inputs = []
    for h, w in sizes:
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 30.0]]))
        instances.gt_classes = torch.tensor([0, 2])
        image = torch.randint(0, 256, (3, h, w)).float()
        inputs.append({"image": image, "instances": instances, "height": h, "width": w})
    return inputs


def res5_of(model: nn.Module, meta_arch: str) -> nn.Module:
    return model.roi_heads.res5 if meta_arch == "c4" else model.backbone.bottom_up.res5


def count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_builders_are_registered() -> None:
    assert "build_sebench_c4_backbone" in BACKBONE_REGISTRY
    assert "build_sebench_fpn_backbone" in BACKBONE_REGISTRY
    assert "SEBenchRes5ROIHeads" in ROI_HEADS_REGISTRY


@pytest.mark.parametrize("meta_arch", ["c4", "fpn"])
@pytest.mark.parametrize("name", ["se_resnet50", "resnet50"])
def test_training_forward_gives_finite_losses(meta_arch: str, name: str) -> None:
    model = build_model(make_cfg(meta_arch, name))
    model.train()
    with EventStorage(0):
        losses = model(batch())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    res5 = res5_of(model, meta_arch)
    # res5 (per region for C4) is the registry model's own layer4: SE blocks iff the trunk has.
    expected_se = 3 if name.startswith("se_") else 0
    assert count(res5, SEBlock) == expected_se
    assert count(model.backbone, SEBlock) == (13 if name.startswith("se_") else 0) + (
        expected_se if meta_arch == "fpn" else 0
    )
    assert res5[0].conv1.weight.grad is not None, "res5 must train"


def test_c4_shapes_and_res5_head() -> None:
    cfg = make_cfg("c4", "se_resnet50", "MODEL.SEBENCH.KWARGS", '["se_reduction=8"]')
    model = build_model(cfg).eval()
    shape = model.backbone.output_shape()
    assert list(shape) == ["res4"] and (shape["res4"].channels, shape["res4"].stride) == (1024, 16)
    assert model.backbone.size_divisibility == 0
    assert not hasattr(model.backbone, "res5"), "the C4 trunk ends at res4"
    res5 = model.roi_heads.res5
    # The registry keywords reach the head: reduction 8 on 2048 channels.
    assert res5[0].se.fc1.out_features == 2048 // 8
    with torch.no_grad():
        pooled = model.roi_heads.pooler([torch.randn(1, 1024, 8, 8)], [Boxes(torch.tensor(
            [[0.0, 0.0, 64.0, 64.0]]))])
        assert pooled.shape == (1, 1024, 14, 14)
        assert res5(pooled).shape == (1, 2048, 7, 7)
        detections = model([{"image": torch.rand(3, 64, 80) * 255, "height": 64, "width": 80}])
    assert "instances" in detections[0]


def test_fpn_shapes_and_keys() -> None:
    cfg = make_cfg("fpn", "resnext50_32x4d", *TINY_OPTS, "MODEL.FPN.OUT_CHANNELS", "64",
                   "MODEL.RESNETS.STRIDE_IN_1X1", "False")
    backbone = build_model(cfg).backbone
    bottom_up = backbone.bottom_up.output_shape()
    assert {k: (v.channels, v.stride) for k, v in bottom_up.items()} == {
        "res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}
    assert backbone.size_divisibility == 32
    assert backbone.bottom_up.res2[0].conv2.groups == 32, "ResNeXt cardinality kept"
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "p2": (1, 64, 16, 24), "p3": (1, 64, 8, 12), "p4": (1, 64, 4, 6), "p5": (1, 64, 2, 3),
        "p6": (1, 64, 1, 2)}


def _trunk_stages(model: nn.Module, meta_arch: str) -> dict[str, nn.Module]:
    trunk = model.backbone if meta_arch == "c4" else model.backbone.bottom_up
    stages = {name: getattr(trunk, name) for name in ("stem", "res2", "res3", "res4")}
    stages["res5"] = res5_of(model, meta_arch)
    return stages


@pytest.mark.parametrize(("meta_arch", "freeze_at"), [("fpn", 0), ("fpn", 2), ("c4", 5)])
def test_freeze_at(meta_arch: str, freeze_at: int) -> None:
    cfg = make_cfg(meta_arch, "se_resnet50", *TINY_OPTS,
                   "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", str(freeze_at))
    stages = _trunk_stages(build_model(cfg), meta_arch)
    for index, (name, stage) in enumerate(stages.items()):
        # detectron2's C4 head keeps res5 trainable whatever FREEZE_AT says.
        frozen = index < freeze_at and not (meta_arch == "c4" and name == "res5")
        grads = {p.requires_grad for p in stage.parameters()}
        assert grads == {not frozen}, f"{name}: requires_grad {grads}, frozen={frozen}"
        assert count(stage, nn.BatchNorm2d) == (0 if frozen else count(stage, nn.Conv2d))
        assert count(stage, FrozenBatchNorm2d) == (count(stage, nn.Conv2d) if frozen else 0)


@pytest.mark.parametrize("norm", ["FrozenBN", "SyncBN"])
def test_norm_applies_to_trunk_and_c4_head(norm: str) -> None:
    cfg = make_cfg("c4", "se_resnet50", *TINY_OPTS, "MODEL.RESNETS.NORM", norm,
                   "MODEL.BACKBONE.FREEZE_AT", "0")
    model = build_model(cfg)
    kind = FrozenBatchNorm2d if norm == "FrozenBN" else nn.SyncBatchNorm
    for name, stage in _trunk_stages(model, "c4").items():
        convs = count(stage, nn.Conv2d)
        assert count(stage, kind) == convs, f"{name}: every conv's norm is {kind.__name__}"
        if norm == "FrozenBN":
            assert count(stage, nn.BatchNorm2d) == 0


@pytest.mark.parametrize("norm", ["GN", ""])
def test_unsupported_norm_is_an_error(norm: str) -> None:
    cfg = make_cfg("fpn", "resnet50", *TINY_OPTS, "MODEL.RESNETS.NORM", norm)
    with pytest.raises(ValueError, match=r"MODEL.RESNETS.NORM=.*FrozenBN"):
        build_model(cfg)


@pytest.mark.parametrize(
    ("name", "kwargs", "pattern"),
    [
        ("se_resnet5", "[]", r"'se_resnet5' is not a registry model. Did you mean se_resnet50"),
        ("se_preact_resnet110", "[]", r"no detectron2 trunk; supported .*senet154"),
        ("se_resnet50", '["se_reducton=8"]', r"unknown keyword 'se_reducton'.*se_reduction"),
        ("se_resnet50", '["num_classes=10"]', r"must not set 'num_classes'"),
        ("se_resnet50", '["se_reduction"]', r"'se_reduction' is not of the form 'key=value'"),
        ("se_resnet50", '["se_reduction=0"]', r"MODEL.SEBENCH .*se_reduction must be a positive"),
        ("resnet50", '["se_reduction=8"]', r"SE switched off"),
    ],
)
def test_bad_sebench_config_is_an_early_error(name: str, kwargs: str, pattern: str) -> None:
    cfg = make_cfg("c4", name, "MODEL.SEBENCH.KWARGS", kwargs)
    with pytest.raises(ValueError, match=pattern):
        check_sebench_config(cfg)
    with pytest.raises(ValueError, match=pattern):
        build_model(cfg)


def test_kwargs_load_from_yaml_and_command_line(tmp_path: Path) -> None:
    config = tmp_path / "trunk.yaml"
    config.write_text(
        "MODEL:\n  SEBENCH:\n    NAME: se_resnext50_32x4d\n"
        '    KWARGS: ["se_gate=tanh", "stride_in_1x1=True", "layers=[1, 1, 1, 1]"]\n'
    )
    cfg = make_cfg("fpn", "se_resnet50", "MODEL.RESNETS.DEPTH", "14")
    cfg.merge_from_file(str(config))
    command_line = '["se_gate=tanh", "se_reduction=4", "layers=[1, 1, 1, 1]"]'
    cfg.merge_from_list(["MODEL.SEBENCH.KWARGS", command_line])
    # The command line replaced the YAML's list, stride_in_1x1=True included: the ResNeXt's
    # own convention (3x3) against detectron2's default STRIDE_IN_1X1 True is an error ...
    with pytest.raises(ValueError, match=r"set MODEL.RESNETS.STRIDE_IN_1X1 False"):
        build_model(cfg)
    cfg.merge_from_list(["MODEL.RESNETS.STRIDE_IN_1X1", "False"])  # ... which this settles
    block = build_model(cfg).backbone.bottom_up.res3[0]
    assert isinstance(block.se.gate, nn.Tanh) and block.se.fc1.out_features == 512 // 4
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


@pytest.mark.parametrize(
    ("opts", "pattern"),
    [
        (["MODEL.RESNETS.DEPTH", "101"],
         r"DEPTH is 101 but the trunk resnet50 has 50 layers; set MODEL.RESNETS.DEPTH 50"),
        (["MODEL.RESNETS.NUM_GROUPS", "32"], r"NUM_GROUPS is 32 but the trunk resnet50 has 1"),
        (["MODEL.RESNETS.WIDTH_PER_GROUP", "4"], r"WIDTH_PER_GROUP is 4 but .* has 64"),
        (["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"], r"RES2_OUT_CHANNELS is 64 but .* has 256"),
        (["MODEL.RESNETS.STEM_OUT_CHANNELS", "128"], r"STEM_OUT_CHANNELS is 128 but .* has 64"),
        (["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]"], r"no deformable"),
        (["MODEL.RESNETS.DEFORM_MODULATED", "True"], r"DEFORM_MODULATED=True is not supported"),
        (["MODEL.RESNETS.DEFORM_NUM_GROUPS", "2"], r"DEFORM_NUM_GROUPS=2 is not supported"),
        (["MODEL.RESNETS.RES5_DILATION", "4"], r"RES5_DILATION must be 1 or 2, got 4"),
        (["MODEL.RESNETS.RES5_DILATION", "2"], r"FPN needs strides that double"),
        (["MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.SEBENCH.KWARGS", '["stride_in_1x1=True"]'],
         r"STRIDE_IN_1X1 is False but MODEL.SEBENCH.KWARGS sets stride_in_1x1=True"),
    ],
)
def test_resnets_keys_the_trunk_cannot_honour_are_errors(opts: list[str], pattern: str) -> None:
    cfg = make_cfg("fpn", "resnet50", *opts)
    with pytest.raises(ValueError, match=pattern):
        build_model(cfg)


def test_resnets_keys_that_agree_with_the_trunk_are_accepted() -> None:
    cfg = make_cfg("fpn", "se_resnext101_32x4d", "MODEL.RESNETS.DEPTH", "101",
                   "MODEL.RESNETS.NUM_GROUPS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
                   "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.SEBENCH.KWARGS",
                   '["layers=(1, 1, 30, 1)"]')  # 101 layers, quicker to build
    assert build_model(cfg).backbone.bottom_up.res2[0].conv2.groups == 32


def test_c4_head_refuses_res5_dilation() -> None:
    cfg = make_cfg("c4", "resnet50", *TINY_OPTS, "MODEL.RESNETS.RES5_DILATION", "2")
    with pytest.raises(ValueError, match=r"C4 model runs it per region .* set RES5_DILATION 1"):
        build_model(cfg)


def _detectron2_resnet(*opts: str) -> nn.Module:
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    res2_to_res5 = '["res2", "res3", "res4", "res5"]'
    cfg = make_cfg("fpn", "resnet50", "MODEL.RESNETS.OUT_FEATURES", res2_to_res5, *opts)
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval(), cfg


@pytest.mark.parametrize(
    "opts",
    [
        ["MODEL.RESNETS.STRIDE_IN_1X1", "False"],
        ["MODEL.RESNETS.RES5_DILATION", "2"],
    ],
    ids=["stride_in_3x3", "res5_dilation"],
)
def test_honoured_resnets_keys_give_detectron2s_resnet(opts: list[str]) -> None:
    """detectron2's own ResNet-50 from the same MODEL.RESNETS keys, its weights loaded by name
    into our trunk (strictly): the same res2..res5, bit for bit."""
    from tasks.detection.d2.backbone import _trunk_from_cfg

    theirs, cfg = _detectron2_resnet(*opts)
    ours = _trunk_from_cfg(cfg, ["res2", "res3", "res4", "res5"]).eval()
    ours.load_state_dict(theirs.state_dict())
    assert ours.output_shape() == theirs.output_shape()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 96)
        expected, got = theirs(x), ours(x)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_a_bug_in_the_trunk_is_not_relabelled_a_config_error() -> None:
    """A TypeError from inside the constructor keeps its type (and so its traceback)."""
    cfg = make_cfg("fpn", "resnet50", "MODEL.SEBENCH.KWARGS", '["layers=5"]')
    with pytest.raises(TypeError):
        check_sebench_config(cfg)
