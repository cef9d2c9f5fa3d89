"""The throughput harness: runs, pairs the right models, reports goals (no speed asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import _goals, throughput

pytest.importorskip("timm", reason="timm is not installed; the harness compares with timm models")

# ResNet-50 bottlenecks with one block per stage: the real code paths at a fraction of the cost.
TINY = "layers=[1,1,1,1],stride_in_1x1=False"
OURS_SE, OURS_PLAIN = f"se_resnet50[{TINY}]", f"resnet50[{TINY}]"
TIMM_SE = "timm:seresnet50[layers=[1,1,1,1]]"
SMALL_RUN = ["--input-size", "32", "--batch-size", "2", "--warmup", "1", "--repeats", "2",
             "--device", "cpu", "--peak-size", "256"]


@pytest.fixture(scope="module", params=["train", "infer"])
def tiny_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    result = throughput.main(["--models", OURS_SE, OURS_PLAIN, TIMM_SE, "--mode", request.param,
                              *SMALL_RUN, "--out", str(out / "r.json"), "--md", str(out / "r.md")])
    return result, out


def test_result_schema_and_files(tiny_run):
    result, out = tiny_run
    assert json.loads((out / "r.json").read_text()) == result
    assert (out / "r.md").read_text() == result["markdown"]
    assert {"benchmark", "settings", "environment", "peak", "groups", "models", "pairs",
            "goals", "markdown"} <= result.keys()
    assert {"cpu", "torch", "git_commit", "date", "threads"} <= result["environment"].keys()
    peak = result["peak"]
    assert peak["dtype"] == "float32" and peak["tflops"] == max(peak["tflops_before_after"]) > 0
    labels = [OURS_SE, OURS_PLAIN, TIMM_SE]
    assert result["groups"] == [labels]
    for label in labels:
        stats = result["models"][label]
        ips = stats["images_per_s"]
        assert len(stats["images_per_s_repeats"]) == 2
        assert 0 < ips["min"] <= ips["median"] <= ips["max"], (label, ips)
        assert 0 < stats["mfu"] < 1, (label, stats["mfu"])
        assert stats["input_size"] == [3, 32, 32]
        assert f"`{label}`" in result["markdown"]


def test_pairs_are_se_over_plain_and_ours_over_timm(tiny_run):
    result, _ = tiny_run
    pairs = result["pairs"]
    assert set(pairs) == {f"{OURS_SE} / {OURS_PLAIN}", f"{OURS_SE} / {TIMM_SE}"}
    assert pairs[f"{OURS_SE} / {OURS_PLAIN}"]["kind"] == "se_over_plain"
    vs_timm = pairs[f"{OURS_SE} / {TIMM_SE}"]
    assert vs_timm["kind"] == "ours_over_timm" and vs_timm["conventions"] == "same"
    for pair in pairs.values():
        ratio, time_ratio = pair["throughput_ratio"], pair["time_ratio"]
        assert ratio["min"] <= ratio["median"] <= ratio["max"]
        # Per-repeat paired ratios: the time ratio's extremes are the throughput ratio's inverted.
        assert time_ratio["min"] == pytest.approx(1 / ratio["max"], rel=1e-3)


def test_timm_macs_counted_like_ours(tiny_run):
    """Same architecture, same counter convention: timm's SE rescale is counted too."""
    result, _ = tiny_run
    ours, theirs = result["models"][OURS_SE], result["models"][TIMM_SE]
    assert ours["gmacs"] == theirs["gmacs"] > result["models"][OURS_PLAIN]["gmacs"]
    assert ours["params"] == theirs["params"]


def test_goals_off_their_settings_are_not_measured(tiny_run):
    result, _ = tiny_run
    goals = result["goals"]
    assert len(goals) == len(_goals.GOALS) == 5
    assert all(g["status"] == "not measured" and g["why"] for g in goals), goals
    assert "device=cpu (goal: cuda)" in goals[0]["why"]


def test_cpu_inference_goal_is_evaluated_at_its_settings():
    result = throughput.main(["--models", "se_resnet50", "resnet50", "--mode", "infer",
                              "--batch-size", "1", "--warmup", "1", "--repeats", "2",
                              "--device", "cpu", "--precision", "fp32", "--peak-size", "256"])
    goal = next(g for g in result["goals"] if g["goal"].startswith("CPU inference"))
    assert goal["status"] in ("met", "not met"), goal
    assert goal["measured"] == "se_resnet50 / resnet50"
    assert goal["value"] == result["pairs"]["se_resnet50 / resnet50"]["time_ratio"]["median"]
    assert (goal["status"] == "met") == (goal["value"] <= 1.03)
    assert result["models"]["se_resnet50"]["input_size"] == [3, 224, 224]


def test_specs_parse_keywords_and_sort_them():
    spec = throughput.parse_spec("se_resnet50[stride_in_1x1=False, se_stages=[3, 5]]")
    assert spec.name == "se_resnet50" and not spec.timm
    assert dict(spec.kwargs) == {"stride_in_1x1": False, "se_stages": [3, 5]}
    assert spec.label == "se_resnet50[se_stages=[3,5],stride_in_1x1=False]"
    assert throughput.parse_spec("timm:legacy_senet154").label == "timm:legacy_senet154"
    baseline = throughput._plain_baseline(spec)
    assert baseline.label == "resnet50[stride_in_1x1=False]"
    assert throughput._plain_baseline(throughput.parse_spec("senet154")).name == "senet154_plain"


@pytest.mark.parametrize("models,message", [
    (["se_resnet5O", "resnet50"], "se_resnet5O"),
    (["timm:seresnet5O"], "seresnet5O"),
    (["se_resnet50[strid_in_1x1=False]"], "strid_in_1x1"),
    (["se_resnet50[stride_in_1x1=Flase]"], "not a Python literal"),
    (["se_resnet50[stride_in_1x1=False"], "bad model spec"),
    (["resnet50", "resnet50"], "given twice"),
])
def test_bad_model_specs_are_named(models, message, capsys):
    with pytest.raises(ValueError, match=message):
        throughput.main(["--models", *models, "--device", "cpu"])
    assert throughput.cli(["--models", *models, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("throughput: error:") and message in err and "\n" not in err


def test_paper_suite_names_exist_and_pair_up():
    """Every suite model exists; each group holds its SE model's plain baseline and timm twins."""
    for subject, texts in throughput.SUITES["paper"].items():
        specs = [throughput.parse_spec(t) for t in texts]
        for spec in specs:
            throughput.check_spec(spec)
        labels = {s.label for s in specs}
        assert throughput._plain_baseline(specs[0]).label in labels, subject
        for spec in (s for s in specs if s.timm):
            assert throughput.TIMM_TWINS[spec.name] in {s.name for s in specs}, spec.label
