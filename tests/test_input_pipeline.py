"""The input-pipeline benchmark runs and reports its paths and goals (no speed is asserted)."""

import json

import torch

from benchmarks import input_pipeline


def test_input_pipeline_reports_every_path_and_goal(tmp_path):
    out = tmp_path / "ip.json"
    result = input_pipeline.main(["--images", "2", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "input_pipeline"
    paths = {"torchvision", "ours_folder", "ours_shards", "ours_folder_as_shards", "bare_decode"}
    for size in ("small", "large"):
        report = result["sizes"][size]
        assert set(report["images_per_s"]) == paths
        assert report["fastest_decoder"] in input_pipeline.FULL_DECODERS
        decoders = {
            **input_pipeline.FULL_DECODERS,
            **input_pipeline.HALF_DECODERS,
            **input_pipeline.OTHER_DECODERS,
        }
        assert set(report["decoders_images_per_s"]) == set(decoders)
        assert all(r["median"] > 0 for r in report["images_per_s"].values())
        assert report["ours_against_torchvision"]["mean_abs_diff"] < 4
    assert result["sizes"]["large"]["short_side_range"][0] >= 512
    assert result["sizes"]["small"]["short_side_range"] == [256, 256]
    statuses = {g["goal"]: g["status"] for g in result["goals"]}
    assert len(statuses) == 7 and set(statuses.values()) <= {"met", "not met", "not measured"}
    assert statuses["GPU decode path images/s, small images, one GPU"] == "not measured"


def test_gpu_path_timing_runs_on_the_cpu_device(tmp_path):
    input_pipeline.write_images(tmp_path, 2, "small")
    rate = input_pipeline.measure_gpu(
        tmp_path, torch.device("cpu"), train_crop="random_resized", batch_size=4, repeats=1
    )
    assert rate["median"] > 0
