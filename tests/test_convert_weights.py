"""``sebench convert-weights``: registry / Lightning / timm weights -> detectron2 checkpoints.

The conversion itself needs no detectron2 and is tested everywhere; loading the result into
detectron2's C4 and FPN models (``d2_*`` tests) runs where detectron2 is installed.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import lightning
import pytest
import timm
import torch
from torch import nn

import backbones
from tasks.classification.data.cifar import MEAN, STD, CIFARDataModule
from tasks.classification.module import ClassificationModule
from tasks.detection.convert_weights import (
    IMAGENET_MEAN,
    add_parsers,
    convert,
    detectron2_state_dict,
)

TINY = {"layers": (1, 1, 1, 1)}  # one block per stage: fast, same structure


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine weights, so a lost BN tensor changes the output."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    return model.eval()


def registry_model(name: str = "se_resnet50", **kwargs) -> nn.Module:
    return randomise_bn(backbones.create_model(name, **kwargs))


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sebench")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


@pytest.mark.parametrize(
    ("meta_arch", "expected"),
    [
        ("fpn", {"stem": "backbone.bottom_up.stem", "layer1": "backbone.bottom_up.res2",
                 "layer4": "backbone.bottom_up.res5"}),
        ("c4", {"stem": "backbone.stem", "layer1": "backbone.res2", "layer3": "backbone.res4",
                "layer4": "roi_heads.res5"}),
    ],
)
def test_layouts_rename_every_trunk_tensor(meta_arch: str, expected: dict[str, str]) -> None:
    model = backbones.create_model("se_resnet50", num_classes=0, **TINY)
    state = model.state_dict()
    converted = detectron2_state_dict(state, meta_arch)
    kept = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(converted) == len(kept)
    for registry_prefix, d2_prefix in expected.items():
        block = "" if registry_prefix == "stem" else ".0"
        key = f"{registry_prefix}{block}.conv1.weight"
        d2_key = key.replace(registry_prefix, d2_prefix, 1)
        assert converted[d2_key] is state[key]
    assert not any(k.endswith("num_batches_tracked") for k in converted)
    # detectron2's own names: the norm inside its conv, the projection as "shortcut".
    stage = expected["layer1"]
    assert converted[f"{stage}.0.conv2.norm.running_var"] is state["layer1.0.bn2.running_var"]
    assert converted[f"{stage}.0.shortcut.weight"] is state["layer1.0.downsample.0.weight"]
    assert converted[f"{stage}.0.shortcut.norm.bias"] is state["layer1.0.downsample.1.bias"]
    with pytest.raises(ValueError, match="'fc.weight' is not a trunk weight"):
        detectron2_state_dict({"fc.weight": torch.zeros(1)}, meta_arch)


def test_plain_state_dict_converts_with_imagenet_defaults(tmp_path: Path, capsys) -> None:
    model = registry_model("se_resnet50", se_reduction=8, **TINY)
    source = save(model.state_dict(), tmp_path / "trunk.pth")  # with its fc: dropped
    out = tmp_path / "d2" / "trunk_fpn.pth"
    code = run_cli(["convert-weights", "--ckpt", str(source), "--model", "se_resnet50",
                    "--model-kwargs", "se_reduction=8", "layers=(1, 1, 1, 1)",
                    "--meta-arch", "fpn", "--out", str(out)])
    assert code == 0
    written = torch.load(out, weights_only=False)
    assert written["__author__"] == "sebench" and written["matching_heuristics"] is False
    weight = written["model"]["backbone.bottom_up.res5.0.se.fc1.weight"]
    assert torch.equal(weight, model.layer4[0].se.fc1.weight)
    assert all(k.startswith("backbone.bottom_up.") for k in written["model"]), "fc dropped"
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert lines["MODEL.WEIGHTS"] == str(out)
    assert lines["MODEL.BACKBONE.NAME"] == "build_sebench_fpn_backbone"
    assert lines["MODEL.SEBENCH.NAME"] == "se_resnet50"
    assert (lines["MODEL.RESNETS.DEPTH"], lines["MODEL.RESNETS.STRIDE_IN_1X1"]) == ("14", "True")
    assert backbones.parse_kwargs(json.loads(shlex.split(lines["MODEL.SEBENCH.KWARGS"])[0])) == {
        "se_reduction": 8, "layers": (1, 1, 1, 1)}
    mean = json.loads(shlex.split(lines["MODEL.PIXEL_MEAN"])[0])
    assert mean == pytest.approx([v * 255 for v in IMAGENET_MEAN])
    assert lines["INPUT.FORMAT"] == "RGB"


def test_mismatched_weights_name_keys_and_shapes(tmp_path: Path) -> None:
    plain = save(backbones.create_model("resnet50", **TINY).state_dict(), tmp_path / "plain.pth")
    with pytest.raises(ValueError) as info:
        convert(tmp_path / "out.pth", meta_arch="c4", checkpoint=plain, model_name="se_resnet50",
                model_kwargs=TINY)
    message = str(info.value)
    assert "does not fit se_resnet50" in message
    assert "missing from the checkpoint: layer1.0.se.fc1.weight (16, 256)" in message
    other = save(registry_model("se_resnet50", se_reduction=8, **TINY).state_dict(),
                 tmp_path / "r8.pth")
    with pytest.raises(ValueError, match=r"shape mismatch at layer1.0.se.fc1.weight: "
                       r"model \(16, 256\), the checkpoint \(32, 256\)"):
        convert(tmp_path / "out.pth", meta_arch="c4", checkpoint=other, model_name="se_resnet50",
                model_kwargs=TINY)
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"model_name": None}, "plain state_dict, which does not name its architecture"),
        ({"model_name": "se_preact_resnet110"}, "no detectron2 trunk; supported"),
        ({"model_name": "resnet50", "model_kwargs": {"num_classes": 3}}, "do not apply"),
        ({"meta_arch": "c5"}, "meta_arch='c5' is not supported"),
        ({"checkpoint": "missing.pth"}, "missing.pth does not exist"),
        ({"timm_name": "legacy_seresnet50"}, "exactly one source"),
        ({"output": "out.pkl"}, "use .pth"),
        ({"pixel_mean": [1.0, 2.0]}, "pixel_mean needs 3 values"),
    ],
)
def test_bad_input_is_a_value_error(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    source = save(backbones.create_model("resnet50", **TINY).state_dict(), tmp_path / "w.pth")
    args = {"output": tmp_path / "out.pth", "meta_arch": "fpn", "checkpoint": source,
            "model_name": "resnet50", "model_kwargs": TINY, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        convert(args.pop("output"), **args)


def test_lightning_checkpoint_names_its_model_and_data(tmp_path: Path) -> None:
    # A real classification run: one SGD step on synthetic CIFAR-10, saved by the Trainer.
    lightning.seed_everything(0)
    module = ClassificationModule("resnet50", {"layers": [1, 1, 1, 1]}, 10)
    data = CIFARDataModule(str(tmp_path), synthetic=True, synthetic_size=8, batch_size=4,
                           num_workers=0, pin_memory=False)
    trainer = lightning.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    result = convert(tmp_path / "run_c4.pth", meta_arch="c4", checkpoint=tmp_path / "run.ckpt")
    assert (result.model_name, result.model_kwargs) == ("resnet50", {"layers": [1, 1, 1, 1]})
    assert result.pixel_mean == pytest.approx([v * 255 for v in MEAN["cifar10"]], abs=1e-3)
    assert result.pixel_std == pytest.approx([v * 255 for v in STD["cifar10"]], abs=1e-3)
    state = torch.load(result.path, weights_only=False)["model"]
    trained = module.model.layer4[0].bn1
    assert torch.equal(state["roi_heads.res5.0.conv1.norm.running_mean"], trained.running_mean)
    assert trained.running_mean.abs().sum() > 0, "one training step moved the BN statistics"
    with pytest.raises(ValueError, match="holds a resnet50, not a se_resnet50"):
        convert(tmp_path / "x.pth", meta_arch="c4", checkpoint=tmp_path / "run.ckpt",
                model_name="se_resnet50")


# --- loading into detectron2 -----------------------------------------------------------------


def _detectron2_model(meta_arch: str, opts: list[str]) -> nn.Module:
    pytest.importorskip("detectron2", reason="detectron2 is not installed (built from source)")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from test_d2_modeling import make_cfg

    cfg = make_cfg(meta_arch, "se_resnet50", *opts)
    model = build_model(cfg).eval()
    # detectron2's own loader: the checkpoint's names must match the model's exactly.
    state = torch.load(cfg.MODEL.WEIGHTS, weights_only=False)["model"]
    prefixes = ("backbone.bottom_up.res", "backbone.bottom_up.stem", "backbone.res",
                "backbone.stem", "roi_heads.res5")
    trunk = {k for k in model.state_dict() if k.startswith(prefixes)}
    assert set(state) == trunk, (set(state) ^ trunk)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def _d2_features(model: nn.Module, meta_arch: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    if meta_arch == "fpn":
        return model.backbone.bottom_up(x)
    res4 = model.backbone(x)["res4"]
    return {"res4": res4, "res5": model.roi_heads.res5(res4)}


def _assert_same(ours: dict, theirs: dict) -> None:
    for name in ("res4", "res5"):
        scale = theirs[name].abs().max()
        torch.testing.assert_close(ours[name] / scale, theirs[name] / scale, atol=1e-5, rtol=0)


@pytest.mark.parametrize("meta_arch", ["fpn", "c4"])
def test_d2_registry_weights_give_registry_features(tmp_path: Path, meta_arch: str) -> None:
    model = registry_model("se_resnet50", se_reduction=8)
    source = save(model.state_dict(), tmp_path / "trunk.pth")
    result = convert(tmp_path / f"{meta_arch}.pth", meta_arch=meta_arch, checkpoint=source,
                     model_name="se_resnet50", model_kwargs={"se_reduction": 8})
    d2_model = _detectron2_model(meta_arch, result.opts())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        res4 = model.layer3(model.layer2(model.layer1(model.pool(model.stem(x)))))
        expected = {"res4": res4, "res5": model.layer4(res4)}
        _assert_same(_d2_features(d2_model, meta_arch, x), expected)


@pytest.mark.parametrize("meta_arch", ["c4", "fpn"])
def test_d2_timm_weights_give_timm_features(tmp_path: Path, meta_arch: str) -> None:
    timm_model = randomise_bn(timm.create_model("legacy_seresnet50", pretrained=False))
    source = save(timm_model.state_dict(), tmp_path / "legacy_seresnet50.pth")
    result = convert(tmp_path / "timm.pth", meta_arch=meta_arch, timm_name="legacy_seresnet50",
                     timm_checkpoint=source)
    # The Caffe max-pool as a keyword; the stride position as detectron2's own key; no dropout
    # (the trunk has no classifier).
    assert result.model_kwargs == {"stem_pool_ceil": True}
    assert (result.depth, result.stride_in_1x1) == (50, True)
    assert result.pixel_mean == pytest.approx([123.675, 116.28, 103.53])
    d2_model = _detectron2_model(meta_arch, result.opts())
    assert d2_model.input_format == "RGB"
    assert d2_model.pixel_std.flatten().tolist() == pytest.approx([58.395, 57.12, 57.375])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        x0 = timm_model.pool0(timm_model.layer0(x))
        res4 = timm_model.layer3(timm_model.layer2(timm_model.layer1(x0)))
        expected = {"res4": res4, "res5": timm_model.layer4(res4)}
        _assert_same(_d2_features(d2_model, meta_arch, x), expected)
