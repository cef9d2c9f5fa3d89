"""The benchmark scripts run and report their ratios (smoke tests: no speed is asserted here)."""

import copy
import json
import subprocess

import pytest
import torch

import backbones
from benchmarks import _env, cifar_throughput, detection_speed, nonfinite_check, se_breakdown


def test_cifar_throughput_reports_both_paths_and_models(tmp_path):
    result = cifar_throughput.main([
        "--device", "cpu", "--precision", "fp32", "--batch-size", "8", "--steps", "2",
        "--warmup", "1", "--num-workers", "0", "--num-images", "64", "--cutout", "8",
        "--models", "se_preact_resnet110", "preact_resnet110", "--out", str(tmp_path / "c.json"),
    ])
    assert set(result["input_images_per_s"]) == {"dataloader", "gpu_resident"}
    assert all(v > 0 for v in result["train_images_per_s"].values())
    assert result["se_over_plain"] > 0 and result["gpu_resident_over_model"] > 0


@pytest.mark.parametrize("engine", ["torchvision", "detectron2"])
def test_detection_speed_reports_the_se_over_plain_ratio(tmp_path, engine):
    if engine == "detectron2":
        pytest.importorskip("detectron2", reason="detectron2 is not installed (built from source)")
    out = tmp_path / "det.json"
    result = detection_speed.main([
        "--engine", engine, "--device", "cpu", "--image-size", "96", "--batch-size", "1",
        "--boxes", "2", "--warmup", "1", "--iters", "1", "--repeats", "2", "--out", str(out),
    ])
    assert json.loads(out.read_text()) == result
    assert set(result["seconds_per_iter"]) == {"se_resnet50", "resnet50"}
    assert all(s > 0 for s in result["seconds_per_iter"].values()) and result["ratio"] > 0
    assert result["goal_status"] == "not measured (not a GPU run)"


def test_se_breakdown_variants_and_their_restoration(tmp_path):
    tiny = {"layers": [1, 1, 1, 1], "base_width": 16}
    model = backbones.create_model("se_resnet50", **tiny).eval()
    plain = backbones.create_model("resnet50", **tiny).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(".se." in key for key in unexpected)
    x = torch.randn(2, 3, 64, 64)
    blocks = se_breakdown.standard_se_blocks(model)
    assert len(blocks) == 4
    with torch.no_grad():
        full = model(x)
        with se_breakdown.variant(blocks, "plain"):
            assert torch.equal(model(x), plain(x))
        with se_breakdown.variant(blocks, "squeeze"):
            halved = model(x)
        assert torch.equal(model(x), full), "the SE blocks are restored after a variant"
    assert not torch.allclose(halved, full)

    result = se_breakdown.main([
        "--model", "se_preact_resnet110", "--mode", "train", "--batch-size", "2",
        "--repeats", "2", "--calls", "1", "--warmup", "1", "--out", str(tmp_path / "b.json"),
    ])
    assert result["se_blocks"] == 54
    assert set(result["time_over_plain"]) == set(se_breakdown.VARIANTS)
    assert result["time_over_plain"]["plain"] == 1.0
    assert all(ms > 0 for ms in result["ms_per_call"].values())
    assert se_breakdown.cli(["--model", "resnet50"]) == 2


def test_nonfinite_check_variants_train_alike_and_report(tmp_path):
    # The guard changes no step: on finite data all four variants train to the same weights.
    model = backbones.create_model("se_preact_resnet110", layers=[1, 1, 1])
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    copies = {}
    for name in nonfinite_check.VARIANTS:
        copies[name] = copy.deepcopy(model)
        step = nonfinite_check.make_variant(name, copies[name], x, y, dtype=None, check_every=2)
        for _ in range(3):
            step()
    reference = copies["none"].state_dict()
    for name, trained in copies.items():
        for key, value in trained.state_dict().items():
            message = f"{name} {key}"
            torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-6, msg=message)

    result = nonfinite_check.main([
        "--model", "se_preact_resnet110[layers=(1,1,1)]", "--batch-size", "2", "--repeats", "2",
        "--steps", "1", "--warmup", "1", "--check-every", "1", "--out", str(tmp_path / "n.json"),
    ])
    assert json.loads((tmp_path / "n.json").read_text()) == result
    assert set(result["time_over_none"]) == set(nonfinite_check.VARIANTS)
    assert result["time_over_none"]["none"] == 1.0 and result["guard_over_fused"] > 0
    assert nonfinite_check.cli(["--check-every", "0"]) == 2


def test_environment_records_the_exact_code_measured():
    env = _env.environment()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=_env.REPO).stdout.strip()  # fmt: skip
    assert env["git_commit"] == commit and len(commit) == 40
    status = subprocess.run(["git", "status", "--porcelain", "--", "*.py", "pyproject.toml"],
                            capture_output=True, text=True, cwd=_env.REPO).stdout  # fmt: skip
    assert env["git_dirty"] is bool(status.strip()), (env["git_changes"], status)
    line = _env.describe(env)
    assert commit[:12] in line and env["torch"] in line
    if torch.cuda.is_available():
        assert {"gpu", "driver", "cuda", "cudnn"} <= set(env) and "cuDNN" in line
