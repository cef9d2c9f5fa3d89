"""``sebench report`` / ``sebench plot`` on run directories in the real formats.

Each fake run is a results.json in the shared schema and a metrics.csv written by Lightning's own
CSVLogger, laid out as a Trainer leaves them (``<run>/version_N/``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from tasks.classification import report

PAPER = {
    "preact_resnet110": (6.37, "Table 4"),
    "se_preact_resnet110": (5.21, "Table 4"),
    "senet154_plain": (None, ""),
    "senet154": (None, ""),
    "se_wrn16_8": (19.14, "Table 5"),
}


def write_run(
    root: Path,
    model_name: str,
    *,
    dataset: str = "cifar10",
    top1_err: float,
    synthetic: bool = False,
    version: int = 0,
    epochs: int = 3,
    first_epoch: int = 0,
    model_kwargs: dict | None = None,
) -> Path:
    """A run directory as fit leaves it: CSVLogger's metrics.csv and results.json side by side."""
    logger = CSVLogger(root, name="", version=version)
    step = 100 * first_epoch
    for epoch in range(first_epoch, first_epoch + epochs):
        for batch in range(2):  # per-step training values, averaged per epoch by the plot
            err = top1_err + 30 / (epoch + 1) + 2 * batch
            logger.log_metrics(
                {"train/loss": err / 20, "train/top1_err": err, "epoch": epoch}, step
            )
            step += 1
        val = {"val/loss": top1_err / 20, "val/top1_err": top1_err + 10 / (epoch + 1)}
        logger.log_metrics({**val, "val/top5_err": top1_err / 4, "epoch": epoch}, step - 1)
    logger.save()
    paper_err, source = PAPER.get(model_name, (None, ""))
    results = {
        "experiment": f"{dataset}/{model_name}",
        "model_name": model_name,
        "model_kwargs": model_kwargs or {},
        "dataset": dataset,
        "synthetic": synthetic,
        "top1_err": top1_err,
        "top5_err": top1_err / 4,
        "epochs": epochs,
        "wall_time_s": 12.5,
        "images_per_s": 400.0,
        "precision": "32-true",
        "world_size": 1,
        "config": {"model": {"model_name": model_name}},
        "paper": {"top1_err": paper_err, "top5_err": None, "source": source} if source else None,
        "markdown": f"| {model_name} | {top1_err:.2f} |",
    }
    Path(logger.log_dir, "results.json").write_text(json.dumps(results))
    return root


def _command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sebench")
    report.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


@pytest.fixture()
def runs(tmp_path) -> dict[str, Path]:
    return {
        "plain_a": write_run(tmp_path / "r110_s0", "preact_resnet110", top1_err=6.5),
        "plain_b": write_run(tmp_path / "r110_s1", "preact_resnet110", top1_err=6.7),
        "se": write_run(tmp_path / "se_r110", "se_preact_resnet110", top1_err=5.4),
        "senet_plain": write_run(tmp_path / "s154p", "senet154_plain", dataset="x", top1_err=30),
        "senet": write_run(tmp_path / "s154", "senet154", dataset="x", top1_err=29.5),
        "lone": write_run(
            tmp_path / "wrn", "se_wrn16_8", dataset="cifar100", top1_err=90.0, synthetic=True
        ),
    }


def _table_rows(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0][:2] == ["dataset", "model"] and len(cells[0]) == 8, cells[0]
    return {row[1]: row for row in cells[2:]}


def test_report_pairs_plain_and_se_with_paper_figures(runs, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert _command(["report", *map(str, runs.values()), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text().strip() == printed.strip(), "--out writes the printed table"
    rows = _table_rows(printed)
    assert set(rows) == {
        "preact_resnet110 / se_preact_resnet110",
        "senet154_plain / senet154",
        "se_wrn16_8",
    }, rows
    r110 = rows["preact_resnet110 / se_preact_resnet110"]
    assert r110 == [
        "cifar10",
        "preact_resnet110 / se_preact_resnet110",
        "6.60 ± 0.14 (n=2)",
        "5.40",
        "6.37",
        "5.21",
        "-1.20",
        "no",
    ], r110
    assert rows["senet154_plain / senet154"][2:7] == ["30.00", "29.50", "–", "–", "-0.50"]
    lone = rows["se_wrn16_8"]
    assert lone[0] == "cifar100" and lone[2] == "–" and lone[3] == "90.00", lone
    assert lone[5] == "19.14" and lone[6] == "–" and "yes" in lone[7], lone


def test_report_json_rows(runs, capsys):
    assert _command(["report", str(runs["plain_a"]), str(runs["se"]), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["plain_top1_err"] == 6.5 and row["se_top1_err"] == 5.4
    assert row["paper_plain_top1_err"] == 6.37 and row["paper_se_top1_err"] == 5.21
    assert row["delta"] == pytest.approx(-1.1) and row["synthetic"] is False
    assert row["se_runs"] == [str(runs["se"] / "version_0")]


def test_synthetic_runs_are_not_paired_with_real_ones(tmp_path):
    real = write_run(tmp_path / "real", "preact_resnet110", top1_err=6.5)
    fake = write_run(tmp_path / "fake", "se_preact_resnet110", top1_err=80, synthetic=True)
    rows = report.report_rows([report.load_results(real), report.load_results(fake)])
    assert [(r["plain_top1_err"], r["se_top1_err"], r["synthetic"]) for r in rows] == [
        (6.5, None, False),
        (None, 80, True),
    ]


def test_se_knobs_get_their_own_row_beside_the_plain_run(tmp_path):
    plain = write_run(tmp_path / "p", "preact_resnet110", top1_err=6.5)
    se8 = write_run(
        tmp_path / "r8", "se_preact_resnet110", top1_err=5.5, model_kwargs={"se_reduction": 8}
    )
    added = write_run(tmp_path / "add", "preact_resnet110", top1_err=5.3, model_kwargs={"se": True})
    rows = report.report_rows([report.load_results(d) for d in (plain, se8, added)])
    assert [(r["model"], r["se_top1_err"]) for r in rows] == [
        ("preact_resnet110 / preact_resnet110 (se=True)", 5.3),
        ("preact_resnet110 / se_preact_resnet110 (se_reduction=8)", 5.5),
    ]


def test_newest_version_is_used(tmp_path):
    run = write_run(tmp_path / "run", "preact_resnet110", top1_err=9.0, version=0)
    write_run(tmp_path / "run", "preact_resnet110", top1_err=7.0, version=1)
    old = run / "version_1" / "results.json"
    os.utime(old, (1, 1))  # version_1 is now the older one: version_0 wins
    assert report.load_results(run)["top1_err"] == 9.0


def test_missing_files_name_the_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty has no results\.json"):
        _command(["report", str(tmp_path / "empty")])
    with pytest.raises(ValueError, match=r"empty has no metrics\.csv"):
        _command(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "c.png")])
    with pytest.raises(ValueError, match="run directory .*nowhere does not exist"):
        _command(["report", str(tmp_path / "nowhere")])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"model_name": "resnet50"}')
    with pytest.raises(
        ValueError, match=r"results\.json lacks the key\(s\) \['dataset', 'top1_err'\]"
    ):
        report.load_results(tmp_path / "bad")


def test_curves_are_per_epoch(runs):
    curves = report.read_curves(runs["se"] / "version_0" / "metrics.csv")
    assert [e for e, _ in curves["train"]] == [1, 2, 3] == [e for e, _ in curves["val"]]
    assert curves["train"][0][1] == pytest.approx(5.4 + 30 + 1), "train steps averaged per epoch"
    assert curves["val"][2][1] == pytest.approx(5.4 + 10 / 3)


@pytest.mark.parametrize("metric", ["top1_err", "loss"])
def test_plot_writes_a_png(runs, tmp_path, metric, capsys):
    out = tmp_path / "figs" / f"{metric}.png"
    # A later `test` run leaves a newer metrics.csv without curves: the fit's one is still found.
    test_logger = CSVLogger(runs["se"], name="", version=1)
    test_logger.log_metrics({"test/top1_err": 5.0}, 0)
    test_logger.save()
    assert (
        _command(
            [
                "plot",
                str(runs["plain_a"]),
                str(runs["se"]),
                str(runs["lone"]),
                "--out",
                str(out),
                "--metric",
                metric,
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    assert out.stat().st_size > 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0


def test_resumed_runs_are_stitched_and_restarts_replace(tmp_path):
    run = write_run(tmp_path / "run", "preact_resnet110", top1_err=6.0, version=0, epochs=3)
    write_run(run, "preact_resnet110", top1_err=5.0, version=1, epochs=3, first_epoch=2)
    for version, mtime in ((0, 1000), (1, 2000)):
        os.utime(run / f"version_{version}" / "metrics.csv", (mtime, mtime))
    val = report.run_curves(run)["val"]
    assert [e for e, _ in val] == [1, 2, 3, 4, 5], "version_1 resumed after epoch 2"
    assert val[2][1] == pytest.approx(5.0 + 10 / 3), "the resumed run's epoch 3 wins"
    write_run(run, "preact_resnet110", top1_err=4.0, version=2, epochs=2)  # from scratch
    os.utime(run / "version_2" / "metrics.csv", (3000, 3000))
    assert [e for e, _ in report.run_curves(run)["val"]] == [1, 2]
