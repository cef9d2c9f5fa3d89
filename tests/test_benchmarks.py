"""The benchmark scripts run and report their ratios (smoke tests: no speed is asserted here)."""

import json

from benchmarks import cifar_throughput, cpu_inference


def test_cpu_inference_reports_ratio(tmp_path):
    out = tmp_path / "cpu.json"
    result = cpu_inference.main(["--models", "se_preact_resnet110", "preact_resnet110",
                                 "--warmup", "1", "--repeats", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["ratio_to_baseline"]["preact_resnet110"] == 1.0
    assert result["ratio_to_baseline"]["se_preact_resnet110"] > 0
    assert {"cpu", "torch", "git_commit", "date"} <= result["environment"].keys()


def test_cifar_throughput_reports_both_paths_and_models(tmp_path):
    result = cifar_throughput.main([
        "--device", "cpu", "--precision", "fp32", "--batch-size", "8", "--steps", "2",
        "--warmup", "1", "--num-workers", "0", "--num-images", "64", "--cutout", "8",
        "--models", "se_preact_resnet110", "preact_resnet110", "--out", str(tmp_path / "c.json"),
    ])
    assert set(result["input_images_per_s"]) == {"dataloader", "gpu_resident"}
    assert all(v > 0 for v in result["train_images_per_s"].values())
    assert result["se_over_plain"] > 0 and result["gpu_resident_over_model"] > 0
