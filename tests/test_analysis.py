"""SE excitation analysis and SE pruning (the paper's Sec. 7.2): hooks, identities, commands.

CPU only and tiny: a one-block-per-stage SE-ResNet-110 trained for a few Lightning steps on
CIFAR's synthetic stand-in, tiny versions of each SE family, and a two-class image folder.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import backbones
from backbones.errors import InputError
from backbones.layers import SEBlock
from backbones.prune import IdentitySE, prune_se, se_blocks, se_sites, select_se_blocks
from tasks.analysis import add_parsers
from tasks.analysis.excitations import ExcitationRecorder
from tasks.analysis.loading import load_classifier
from tasks.analysis.prune import count_parameters
from tasks.classification import CIFARDataModule, ClassificationModule

TINY_KWARGS = {"layers": [1, 1, 1]}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAME = re.compile(r"SE_\d+_\d+(_b\d+)?")

# One tiny model per SE family: (registry name, create_model kwargs, input side).
TINY_FAMILIES: dict[str, tuple[str, dict[str, Any], int]] = {
    "ResNet": ("se_resnext50_32x4d", {"layers": (1, 1, 2, 1)}, 64),
    "PreActResNet": ("se_preact_resnet164", {"layers": (1, 2, 1)}, 32),
    "WideResNet": ("se_wrn16_8", {"depth": 10, "widen_factor": 1}, 32),
    "ShakeShakeNet": ("se_shake_shake26_2x96d", {"layers": (1, 2, 1), "widths": (8, 16, 32)}, 32),
    "MobileNetV1": ("se_mobilenet_v1", {"width_multiplier": 0.25}, 64),
    "ShuffleNetV1": ("se_shufflenet_v1_g3", {"layers": (1, 2, 1)}, 64),
    "VGG": ("se_vgg16_bn", {"widths": ((8,), (8, 8), (16,), (16,), (16, 16)), "mlp_width": 32}, 32),
    "BNInception": ("se_bn_inception", {}, 64),
    "InceptionResNetV2": ("se_inception_resnet_v2", {"layers": (1, 2, 1), "head_chs": 0}, 96),
}


def _sebench(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sebench")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(args)
    return parsed.run(parsed)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Lightning checkpoint of a few training steps, and the data folder it used."""
    root = tmp_path_factory.mktemp("analysis")
    lightning.seed_everything(0)
    data = CIFARDataModule(
        str(root / "data"), batch_size=16, num_workers=0, synthetic=True, synthetic_size=200,
        pin_memory=False,
    )  # fmt: skip
    module = ClassificationModule(
        "se_preact_resnet110", TINY_KWARGS, num_classes=10, lr=0.05, schedule="constant"
    )
    trainer = lightning.Trainer(
        accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, data)
    ckpt = root / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    # The data: section of a LightningCLI config; 40 evaluation images (a fifth of 200).
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "class_path": "tasks.classification.CIFARDataModule",
        "init_args": {"data_dir": str(root / "data"), "synthetic": True, "synthetic_size": 200,
                      "batch_size": 16, "num_workers": 0},
    }}))  # fmt: skip
    return {"ckpt": ckpt, "config": config, "data_dir": root / "data"}


def _data_args(trained: dict[str, Path]) -> list[str]:
    return ["--data-config", str(trained["config"]), "--device", "cpu"]


def _randomise_se(model: torch.nn.Module) -> None:
    # Trained-looking gates: at init (zero bias, std 0.01) every excitation is about 0.5.
    generator = torch.Generator().manual_seed(1)
    for block in se_blocks(model).values():
        for param in block.parameters():
            param.data = torch.randn(param.shape, generator=generator)


@pytest.mark.parametrize(
    ("squeeze", "gate", "low", "high"),
    [("avg", "sigmoid", 0.0, 1.0), ("none", "sigmoid", 0.0, 1.0), ("max", "tanh", -1.0, 1.0)],
)
def test_recorder_captures_one_vector_per_block(squeeze: str, gate: str, low: float, high: float):
    model = backbones.create_model(
        "se_preact_resnet110", layers=(1, 2, 1), se_squeeze=squeeze, se_gate=gate
    ).eval()
    _randomise_se(model)
    blocks = se_blocks(model)
    with ExcitationRecorder(blocks) as recorder, torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
        batch = recorder.pop()
    assert list(batch) == list(blocks), f"recorded {list(batch)}, blocks {list(blocks)}"
    for name, values in batch.items():
        channels = blocks[name].fc2.out_features
        assert values.shape == (3, channels), f"{name}: {tuple(values.shape)} for {channels} chs"
        assert low <= values.min() and values.max() <= high, f"{name}: outside [{low}, {high}]"
        assert values.std() > 0.01, f"{name}: excitations do not vary ({gate}, {squeeze})"
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert recorder.pop() == {}, "hooks still recording after the context closed"


@pytest.mark.parametrize(
    ("name", "kwargs", "prune", "kept_stages", "side"),
    [
        ("se_preact_resnet110", {"layers": (1, 2, 1)}, "SE_2", [1, 3], 32),
        ("se_preact_resnet110", {"layers": (1, 2, 1), "se_placement": "identity"}, "stage2", [1, 3], 32),
        ("se_preact_resnet110", {"layers": (1, 2, 1), "se_placement": "pre"}, "SE_1_1", [2, 3], 32),
        ("se_shufflenet_v1_g3", {"layers": (1, 2, 1)}, "SE_3", [2, 4], 64),
    ],
)  # fmt: skip
def test_pruned_block_is_the_model_without_se_there(name, kwargs, prune, kept_stages, side):
    model = backbones.create_model(name, **kwargs).eval()
    _randomise_se(model)
    pruned = prune_se(model, prune)
    without = backbones.create_model(name, se_stages=kept_stages, **kwargs).eval()
    without.load_state_dict(model.state_dict(), strict=True)  # same weights, SE absent there
    x = torch.randn(2, 3, side, side)
    blocks = se_blocks(model)
    with ExcitationRecorder(blocks) as recorder, torch.no_grad():
        out = model(x)
        excitation = recorder.pop()
        reference = without(x)
    assert torch.equal(out, reference), f"{name}: pruned {pruned} differs from se_stages={kept_stages}"
    for block in pruned:
        assert isinstance(blocks[block], IdentitySE)
        assert torch.equal(excitation[block], torch.ones_like(excitation[block])), block
    kept = [b for b in blocks if b not in pruned]
    assert kept and all(not torch.equal(excitation[b], torch.ones_like(excitation[b])) for b in kept)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_prune_se_every_family(family: str):
    name, kwargs, side = TINY_FAMILIES[family]
    model = backbones.create_model(name, num_classes=7, **kwargs).eval()
    sites = se_sites(model)
    assert sites, f"{name}: no SE blocks found"
    for site in sites:
        assert NAME.fullmatch(site.name), f"{name}: {site.name} ({site.path}) is a fallback name"
        assert site.stage in type(model).se_stage_ids, f"{name}: {site.name} stage {site.stage}"
    chosen = select_se_blocks(model, "last")
    stages = {s.stage for s in sites}
    assert {s.stage for s in sites if s.name in chosen} == stages, f"{name}: 'last' misses a stage"
    expected = sum(p.numel() for b in chosen for p in model.get_submodule(
        next(s.path for s in sites if s.name == b)).parameters())  # fmt: skip
    before = count_parameters(model)
    assert prune_se(model, "last") == chosen
    assert before - count_parameters(model) == expected > 0, f"{name}: wrong parameter saving"
    with torch.no_grad():
        assert model(torch.randn(1, 3, side, side)).shape == (1, 7)


def test_every_se_family_is_covered():
    families = {
        backbones.model_class(n).__name__
        for n in backbones.list_models()
        if n.startswith("se_") or n == "senet154"
    }
    assert families == set(TINY_FAMILIES), f"SE families without a prune test: {families}"


def test_paper_names_and_selectors():
    model = backbones.create_model("se_resnet50")
    names = list(se_blocks(model))
    expected = [f"SE_{s}_{b}" for s, n in zip((2, 3, 4, 5), (3, 4, 6, 3)) for b in range(1, n + 1)]
    assert names == expected
    # Fig. 7's "last SE block of each stage".
    assert select_se_blocks(model, "last") == ["SE_2_3", "SE_3_4", "SE_4_6", "SE_5_3"]
    assert select_se_blocks(model, ["SE_5", "stage5", "se_5_1"]) == ["SE_5_1", "SE_5_2", "SE_5_3"]
    assert select_se_blocks(model, "SE_4_*") == [f"SE_4_{b}" for b in range(1, 7)]
    assert model.get_submodule(se_sites(model)[3].path) is se_blocks(model)["SE_3_1"]
    # Sec. 4: without the last stage's SE blocks, SE costs ~4% parameters over ResNet-50.
    plain = count_parameters(backbones.create_model("resnet50"))
    prune_se(model, "SE_5")
    assert 0.03 < count_parameters(model) / plain - 1 < 0.045
    for bad in ("SE_6", "SE_2_9", "conv5"):
        with pytest.raises(ValueError, match="Valid names: SE_2_1, SE_2_2"):
            select_se_blocks(model, bad)
    with pytest.raises(ValueError, match="no SE blocks"):
        prune_se(backbones.create_model("resnet50"), "all")


def test_family_specific_names():
    inception = backbones.create_model("se_bn_inception")
    paths = {s.name: s.path for s in se_sites(inception)}
    assert paths["SE_3_3"] == "stage4.inception_3c.se" and paths["SE_4_5"] == "stage5.inception_4e.se"
    shake = backbones.create_model("se_shake_shake26_2x96d", layers=(2, 1, 1), widths=(8, 16, 32))
    assert select_se_blocks(shake, "SE_1_2") == ["SE_1_2_b1", "SE_1_2_b2"]
    assert se_sites(shake)[1].path == "stage1.0.branch2.se"


def test_excitations_command(trained: dict[str, Path], tmp_path: Path, capsys):
    out = tmp_path / "ex"
    args = ["excitations", "--ckpt", str(trained["ckpt"]), *_data_args(trained),
            "--classes", "cat", "5", "--blocks", "all", "--samples-per-class", "3",
            "--channels", "8", "--out", str(out)]  # fmt: skip
    assert _sebench(args) == 0
    blocks = ["SE_1_1", "SE_2_1", "SE_3_1"]
    for png in ["fig7_class_means.png", "fig8_cat.png", "fig8_dog.png"]:
        data = (out / png).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, f"{png}: not a drawn PNG"
    document = json.loads((out / "excitations.json").read_text())
    assert document["model_name"] == "se_preact_resnet110" and document["synthetic"] is True
    assert [c["name"] for c in document["classes"]] == ["cat", "dog"]
    assert [c["samples"] for c in document["classes"]] == [3, 3]
    assert document["all_classes"] == {"classes": 10, "images": 30}
    assert list(document["blocks"]) == blocks
    arrays = np.load(out / "excitations.npz")
    for name, (stage, width) in zip(blocks, [(1, 16), (2, 32), (3, 64)]):
        block = document["blocks"][name]
        assert block["stage"] == stage and block["channels"] == width and not block["pruned"]
        assert set(block["mean"]) == set(block["std"]) == {"cat", "dog", "all"}
        assert all(len(v) == width for v in block["mean"].values())
        assert set(block["metrics"]) == {
            "mean", "std", "min", "max", "specificity", "specificity_all", "noise_floor",
            "near_0", "near_1",
        }  # fmt: skip
        assert 0 <= block["metrics"]["min"] <= block["metrics"]["max"] <= 1
        assert arrays[f"{name}/class_mean"].shape == (10, width)
        assert arrays[f"{name}/samples"].shape == (6, width)
        np.testing.assert_allclose(arrays[f"{name}/all_mean"], block["mean"]["all"], rtol=1e-6)
        np.testing.assert_allclose(arrays[f"{name}/class_mean"][3], block["mean"]["cat"], rtol=1e-6)
        # The class mean is the mean of the kept per-image vectors of that class.
        cat = arrays[f"{name}/samples"][arrays["sample_label"] == 3]
        np.testing.assert_allclose(cat.mean(0), block["mean"]["cat"], rtol=1e-5)
    assert list(arrays["selected"]) == [3, 5] and list(arrays["class_count"]) == [3] * 10
    summary = (out / "summary.md").read_text()
    assert all(f"| {name} |" in summary for name in blocks)
    assert "| SE_1_1 |" in capsys.readouterr().out


def test_bad_classes_and_blocks_name_the_valid_ones(trained: dict[str, Path], tmp_path: Path):
    base = ["excitations", "--ckpt", str(trained["ckpt"]), *_data_args(trained),
            "--out", str(tmp_path)]  # fmt: skip
    shortcut = ["--dataset", "cifar10", "--synthetic", "--data-dir", str(trained["data_dir"]),
                "--num-workers", "0", "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown class 'kat'\. Did you mean cat\?.*airplane"):
        _sebench([*base[:3], *shortcut, "--classes", "kat"])
    with pytest.raises(ValueError, match="Valid names: SE_1_1, SE_2_1, SE_3_1"):
        _sebench([*base, "--classes", "cat", "--blocks", "SE_4"])
    with pytest.raises(ValueError, match="holds a se_preact_resnet110, not a "):
        _sebench([*base, "--classes", "cat", "--model", "se_wrn16_8"])
    with pytest.raises(ValueError, match="does not exist"):
        _sebench(["prune-se", "--ckpt", str(tmp_path / "none.ckpt"), *_data_args(trained),
                  "--blocks", "all"])  # fmt: skip


def test_prune_se_command_and_reload(trained: dict[str, Path], tmp_path: Path, capsys):
    config = str(trained["config"])
    saved = tmp_path / "pruned.pth"
    args = ["prune-se", "--ckpt", str(trained["ckpt"]), "--data-config", config,
            "--device", "cpu", "--blocks", "SE_3", "--out", str(tmp_path / "out"),
            "--save", str(saved)]  # fmt: skip
    assert _sebench(args) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "prune_se.json").read_text())
    loaded = load_classifier(trained["ckpt"])
    se3 = sum(p.numel() for p in se_blocks(loaded.model)["SE_3_1"].parameters())
    assert result["pruned"] == ["SE_3_1"]
    assert result["params_saved"] == se3 == result["params_before"] - result["params_after"]
    assert result["params_saved_pct"] == pytest.approx(100 * se3 / result["params_before"])
    for key in ("before", "after"):
        assert result[key]["images"] == 40
        assert 0 <= result[key]["top5_err"] <= result[key]["top1_err"] <= 100
    assert f"-{result['params_saved_pct']:.2f}%" in printed and "without SE_3_1" in printed
    # The saved state dict lacks SE_3_1: it loads back pruned, with the pruned model's error.
    reloaded = load_classifier(saved, model_name="se_preact_resnet110", model_kwargs=TINY_KWARGS)
    assert reloaded.pruned == ["SE_3_1"]
    out2 = tmp_path / "again"
    assert _sebench(["prune-se", "--ckpt", str(saved), "--model", "se_preact_resnet110",
                     "--model-kwargs", *backbones.format_kwargs(TINY_KWARGS), "--data-config", config,
                     "--device", "cpu", "--blocks", "SE_3_1", "--out", str(out2)]) == 0  # fmt: skip
    again = json.loads((out2 / "prune_se.json").read_text())
    assert again["pruned_in_checkpoint"] == ["SE_3_1"] and again["params_saved"] == 0
    assert again["before"]["top1_err"] == pytest.approx(result["after"]["top1_err"])


def test_excitations_on_an_image_folder(tmp_path: Path):
    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for label in ("lynx", "puma"):
            folder = tmp_path / "images" / part / label
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    # An ImageNet-family model on an ImageNet-style folder (the CIFAR family is tested above).
    resnet_kwargs = {"layers": [1, 1, 1, 1]}
    model = backbones.create_model("se_resnet50", num_classes=2, **resnet_kwargs)
    ckpt = tmp_path / "weights.pth"
    torch.save(model.state_dict(), ckpt)
    config = tmp_path / "folder.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "class_path": "ImageFolderDataModule",
        "init_args": {"data_dir": str(tmp_path / "images"), "crop_size": 32, "resize_size": 36,
                      "batch_size": 4, "num_workers": 0},
    }}))  # fmt: skip
    out = tmp_path / "ex"
    args = ["excitations", "--ckpt", str(ckpt), "--model", "se_resnet50",
            "--model-kwargs", *backbones.format_kwargs(resnet_kwargs), "--data-config", str(config),
            "--device", "cpu", "--classes", "puma", "--out", str(out)]  # fmt: skip
    assert _sebench(args) == 0
    document = json.loads((out / "excitations.json").read_text())
    assert document["dataset"] == "imagefolder"
    assert document["classes"] == [{"index": 1, "name": "puma", "samples": 3}]
    assert list(document["blocks"]) == ["SE_2_1", "SE_3_1", "SE_4_1", "SE_5_1"]
    assert (out / "fig8_puma.png").read_bytes().startswith(PNG_SIGNATURE)
    assert isinstance(se_blocks(model)["SE_5_1"], SEBlock)


def test_names_through_a_wrapper():
    module = ClassificationModule("se_preact_resnet110", TINY_KWARGS, num_classes=10)
    assert {s.name: s.path for s in se_sites(module)} == {
        "SE_1_1": "model.stage1.0.se", "SE_2_1": "model.stage2.0.se", "SE_3_1": "model.stage3.0.se",
    }  # fmt: skip
    trunk = backbones.create_model("se_resnet50", layers=(1, 1, 1, 1), features_only=True)
    assert list(se_blocks(trunk)) == ["SE_2_1", "SE_3_1", "SE_4_1", "SE_5_1"]


@pytest.mark.slow
def test_prune_se_evaluates_through_the_trainer_on_two_processes(
    trained: dict[str, Path], tmp_path: Path
):
    base = ["prune-se", "--ckpt", str(trained["ckpt"]), *_data_args(trained), "--blocks", "SE_3"]
    results = {}
    runs = {"one": [], "two": ["--devices", "2"], "bf16": ["--precision", "bf16-mixed"]}
    for name, extra in runs.items():
        assert _sebench([*base, *extra, "--out", str(tmp_path / name)]) == 0
        results[name] = json.loads((tmp_path / name / "prune_se.json").read_text())
    one, two, bf16 = results["one"], results["two"], results["bf16"]
    assert two["devices"] == 2 and bf16["precision"] == "bf16-mixed"
    # 40 images split evenly over 2 processes: the gathered metrics are the single process's.
    for key in ("before", "after"):
        assert two[key]["top1_err"] == pytest.approx(one[key]["top1_err"])
        assert two[key]["top5_err"] == pytest.approx(one[key]["top5_err"])
        assert two[key]["loss"] == pytest.approx(one[key]["loss"], rel=1e-4)
        assert bf16[key]["loss"] == pytest.approx(one[key]["loss"], rel=0.05)


def test_data_config_is_checked_by_the_cli_parser(trained: dict[str, Path], tmp_path: Path):
    config = yaml.safe_load(trained["config"].read_text())
    config["data"]["init_args"]["batchsize"] = 8
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    base = ["prune-se", "--ckpt", str(trained["ckpt"]), "--device", "cpu", "--blocks", "all"]
    with pytest.raises(InputError, match="Option 'batchsize' is not accepted"):
        _sebench([*base, "--data-config", str(bad)])
    folder = {"data": {"class_path": "ImageFolderDataModule", "init_args": {"data_dir": "x"}}}
    bad.write_text(yaml.safe_dump(folder))
    message = r"ImageFolderDataModule has no argument\(s\) \['synthetic'\]"
    with pytest.raises(InputError, match=message):
        _sebench([*base, "--data-config", str(bad), "--synthetic"])
