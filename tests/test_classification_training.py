"""Classification training on the CPU: ClassificationModule, ResultsCallback and the sebench CLI.

Tiny runs only: an SE-ResNet with one block per stage on CIFAR-shaped synthetic data (a
learnable, generated dataset of ``CIFARDataModule``), 8-16 images per batch, 1-3 epochs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from tasks._nonfinite import NonFiniteGuard
from tasks.classification.cli import SEBenchCLI, main
from tasks.classification.data.cifar import CIFARDataModule
from tasks.classification.module import ClassificationModule, NonFiniteLossError
from tasks.classification.results import ResultsCallback, markdown_line, paper_result
from tasks.schedules import lr_factor

REPO = Path(__file__).resolve().parents[1]
# Classification configs; configs/coco/ has tests of its own (detectron2 and torchvision).
CONFIGS = sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.parent.name != "coco")
README_CONFIG = REPO / "configs" / "cifar10" / "se_preact_resnet110_he2016.yaml"
TINY_MODEL = {"layers": [1, 1, 1]}  # SE-ResNet-110's layout with one block per stage
RESULT_KEYS = {
    "experiment", "stage", "model_name", "model_kwargs", "dataset", "synthetic", "top1_err",
    "top5_err", "epochs", "wall_time_s", "images_per_s", "precision", "world_size", "config",
    "paper", "markdown",
}  # fmt: skip
TINY_TRAINER = {
    "accelerator": "cpu",
    "log_every_n_steps": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def _tiny_data(tmp_path: Path, **kwargs: Any) -> CIFARDataModule:
    options = dict(batch_size=16, num_workers=0, synthetic=True, synthetic_size=64)
    options.update(kwargs)
    return CIFARDataModule(str(tmp_path / "data"), pin_memory=False, **options)


def _tiny_config(tmp_path: Path, name: str = "tiny", **trainer: Any) -> Path:
    """A CLI config of the README's experiment shrunk to a few seconds."""
    config = {
        "seed_everything": 0,
        "trainer": {
            **TINY_TRAINER,
            "max_epochs": 1,
            "default_root_dir": str(tmp_path / "runs"),
            **trainer,
        },
        "model": {"model_name": "se_preact_resnet110", "model_kwargs": TINY_MODEL, "lr": 0.05},
        "data": {
            "class_path": "tasks.classification.CIFARDataModule",
            "init_args": {
                "data_dir": str(tmp_path / "data"),
                "batch_size": 16,
                "num_workers": 0,
                "synthetic": True,
                "synthetic_size": 64,
                "pin_memory": False,
            },
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


def _factor(step: int, **kwargs: Any) -> float:
    args = dict(
        total_steps=100,
        schedule="multistep",
        milestones=(0.5, 0.75),
        gamma=0.1,
        step_every=None,
        warmup_steps=0,
        warmup_factor=0.1,
        warmup="constant",
    )
    return lr_factor(step, **{**args, **kwargs})


def test_lr_schedules_and_warmup():
    steps = (0, 49, 50, 74, 75, 99)
    assert [_factor(s) for s in steps] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    step = [_factor(s, schedule="step", step_every=0.3) for s in (29, 30, 59, 60, 90)]
    assert step == pytest.approx([1, 0.1, 0.1, 0.01, 0.001])
    cosine = [_factor(s, schedule="cosine") for s in (0, 50, 100)]
    assert cosine == pytest.approx([1, 0.5, 0], abs=1e-12)
    # He et al.'s constant warm-up: lr / 10 for warmup_steps, then the schedule's full rate.
    constant = [_factor(s, warmup_steps=4) for s in range(6)]
    assert constant == pytest.approx([0.1, 0.1, 0.1, 0.1, 1, 1])
    linear = [_factor(s, warmup_steps=4, warmup="linear") for s in (0, 2, 4)]
    assert linear == pytest.approx([0.1, 0.55, 1])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(model_name="se_preact_resnet11"), "did you mean se_preact_resnet110"),
        (dict(model_kwargs={"se_reductio": 8}), "se_reduction"),
        (dict(model_kwargs={"num_classes": 3}), "must not contain 'num_classes'"),
        (dict(schedule="poly"), "schedule='poly' is not supported"),
        (dict(milestones=[0.75, 0.5]), "milestones=[0.75, 0.5] must be increasing"),
        (dict(schedule="step"), "schedule='step' needs step_every"),
        (dict(warmup="exp"), "warmup='exp' is not supported"),
    ],
)
def test_module_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        ClassificationModule(**kwargs)
    assert message in str(info.value), str(info.value)


def test_fit_and_test_learn_and_write_results(tmp_path):
    lightning.seed_everything(0)
    data = _tiny_data(tmp_path, synthetic_size=320)  # 20 batches an epoch; 64 test images
    model = ClassificationModule("se_preact_resnet110", TINY_MODEL, 10, lr=0.05, schedule="cosine")
    trainer = lightning.Trainer(
        **TINY_TRAINER,
        max_epochs=3,
        logger=CSVLogger(tmp_path / "logs"),
        callbacks=[ResultsCallback()],
        enable_checkpointing=False,
    )
    trainer.fit(model, data)
    results_file = Path(trainer.log_dir) / "results.json"
    fit = json.loads(results_file.read_text())

    rows = _csv_rows(Path(trainer.log_dir) / "metrics.csv")
    for key in ("epoch", "step", "train/loss", "train/top1_err", "val/loss", "val/top1_err"):
        assert key in rows[0], f"metrics.csv lacks {key}: {sorted(rows[0])}"
    losses, train_err = _column(rows, "train/loss"), _column(rows, "train/top1_err")
    assert len(losses) == 60 and len(train_err) == 3, (len(losses), train_err)
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.5 * first, f"training loss did not fall: {first:.3f} -> {last:.3f}"
    assert train_err[-1] < train_err[0] - 20, f"training error did not fall: {train_err}"

    assert set(fit) == RESULT_KEYS, set(fit) ^ RESULT_KEYS
    assert fit["stage"] == "fit" and fit["epochs"] == 3 and fit["synthetic"] is True
    assert fit["experiment"] == fit["model_name"] == "se_preact_resnet110"
    assert fit["dataset"] == "cifar10" and fit["model_kwargs"] == TINY_MODEL
    assert fit["precision"] == "32-true" and fit["world_size"] == 1
    assert fit["images_per_s"] > 0 and fit["wall_time_s"] > 0
    assert fit["top1_err"] == pytest.approx(float(trainer.callback_metrics["val/top1_err"]), 1e-3)
    assert fit["paper"] == paper_result("cifar10", "se_preact_resnet110")
    assert fit["paper"]["top1_err"] == 5.21 and fit["paper"]["top5_err"] is None
    assert fit["config"]["model"]["lr"] == 0.05 and fit["config"]["data"]["synthetic"] is True
    markdown = fit["markdown"]
    assert markdown.startswith("| se_preact_resnet110 | cifar10 | ") and "5.21 (paper)" in markdown
    assert "synthetic data" in markdown, markdown

    trainer.test(model, data)
    test = json.loads(results_file.read_text())
    assert test["stage"] == "test" and test["epochs"] == 3 and test["synthetic"] is True
    assert test["images_per_s"] == fit["images_per_s"]
    # 10 classes: chance is 90% error.
    assert test["top1_err"] < 40, f"test error {test['top1_err']}% is not clearly above chance"
    assert 0 <= test["top5_err"] <= test["top1_err"]


def test_markdown_line_shows_top5_where_the_paper_has_it():
    places = dict(model_name="se_resnet152", dataset="places365", top1_err=41.0, top5_err=11.5)
    places.update(synthetic=False, model_kwargs={}, paper=paper_result("places365", "se_resnet152"))
    expected = "| se_resnet152 | places365 | 41.00 / 11.50 | 40.37 / 11.01 (paper) | real data |"
    assert markdown_line(places) == expected
    custom = dict(places, dataset="imagefolder", paper=None, model_kwargs={"se_reduction": 8})
    expected = (
        '| se_resnet152 | imagefolder | 41.00 | n/a | real data, model_kwargs {"se_reduction": 8} |'
    )
    assert markdown_line(custom) == expected


def test_cli_fit_runs_the_readme_experiment(tmp_path):
    root = tmp_path / "runs"
    shared = ["--config", str(README_CONFIG), "--trainer.default_root_dir", str(root)]
    shared += ["--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
    shared += ["--model.model_kwargs", json.dumps(TINY_MODEL)]
    shared += ["--data.data_dir", str(tmp_path / "data"), "--data.synthetic", "true"]
    shared += ["--data.synthetic_size", "64", "--data.batch_size", "16"]
    shared += ["--data.num_workers", "0", "--data.pin_memory", "false"]
    fit = ["--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1"]
    assert main(["fit", *shared, *fit, "--model.warmup_steps", "2"]) == 0

    experiment = root / "cifar10" / "se_preact_resnet110_he2016"
    run = experiment / "version_0"
    for name in ("config.yaml", "metrics.csv", "results.json", "hparams.yaml"):
        assert (run / name).is_file(), f"{run / name} missing: {sorted(os.listdir(run))}"
    assert list((run / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard events"
    checkpoints = sorted(p.name for p in (experiment / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(c.startswith("best-epoch") for c in checkpoints)

    results = json.loads((run / "results.json").read_text())
    assert results["experiment"] == "se_preact_resnet110_he2016" and results["epochs"] == 2
    assert results["synthetic"] is True and "synthetic data" in results["markdown"]
    assert results["config"]["data"]["init_args"]["synthetic"] is True
    assert results["config"]["model"]["warmup_lr"] == 0.01
    # 4 steps an epoch: He et al.'s constant warm-up (0.01, 2 steps), then 0.1, divided by 10
    # at 50% and 75% of the 8 steps that estimated_stepping_batches counts.
    lrs = _column(_csv_rows(run / "metrics.csv"), "lr-SGD")
    assert lrs == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]), lrs

    # `sebench test --ckpt_path last` evaluates the final weights in a run folder of its own.
    assert main(["test", *shared, "--ckpt_path", "last"]) == 0
    tested = json.loads((experiment / "version_1" / "results.json").read_text())
    assert tested["stage"] == "test" and tested["epochs"] == 2 and tested["synthetic"] is True
    assert tested["top1_err"] is not None and tested["top5_err"] is not None


class StopAfterFirstEpoch(lightning.Callback):
    """Interrupts a run after its first epoch, as a crash or a time limit would."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_resume_from_last_matches_an_uninterrupted_run(tmp_path):
    # The DataLoader path with random crops and flips, and a multi-step schedule over 8 steps.
    config = _tiny_config(tmp_path, max_epochs=2, limit_val_batches=2)
    content = yaml.safe_load(config.read_text())
    content["trainer"]["callbacks"] = [{"class_path": f"{__name__}.StopAfterFirstEpoch"}]
    # The same file name: the experiment (and so the checkpoint folder) is the config's stem.
    interrupted = tmp_path / "interrupted" / config.name
    interrupted.parent.mkdir()
    interrupted.write_text(yaml.safe_dump(content))

    def fit(config: Path, root: Path, *extra: str) -> Path:
        argv = ["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *extra]
        assert main(argv) == 0
        return root / "cifar10" / config.stem

    straight = fit(config, tmp_path / "straight")
    resumed = fit(interrupted, tmp_path / "resumed")
    shutil.copy(resumed / "checkpoints" / "last.ckpt", tmp_path / "after_one.ckpt")
    fit(config, tmp_path / "resumed", "--ckpt_path", "last")

    def load(path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=False)

    expected = load(straight / "checkpoints" / "last.ckpt")
    got = load(resumed / "checkpoints" / "last.ckpt")
    assert got["epoch"] == expected["epoch"] and got["global_step"] == expected["global_step"] == 8
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    momentum = [s["momentum_buffer"] for s in expected["optimizer_states"][0]["state"].values()]
    got_momentum = [s["momentum_buffer"] for s in got["optimizer_states"][0]["state"].values()]
    torch.testing.assert_close(got_momentum, momentum, rtol=1e-5, atol=1e-6)
    # The resume did train: the weights moved on from the first epoch's.
    first = load(tmp_path / "after_one.ckpt")
    assert first["global_step"] == 4
    assert any(not torch.equal(first["state_dict"][k], v) for k, v in got["state_dict"].items())
    # The resumed run logs to its own folder, and its results count both epochs.
    run = resumed / "version_1"
    assert json.loads((run / "results.json").read_text())["epochs"] == 2
    assert set(_column(_csv_rows(run / "metrics.csv"), "epoch")) == {1.0}


RANK_METRICS = '''
import json
import os

import lightning


class RankMetrics(lightning.Callback):
    """Each rank writes the epoch metrics it sees and a checksum of its weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k != "train/loss"}
        weights = sum(float(p.double().sum()) for p in pl_module.parameters())
        path = os.path.join(self.out_dir, f"rank{trainer.global_rank}.json")
        with open(path, "w") as f:
            json.dump({"metrics": metrics, "weights": weights, "world_size": trainer.world_size}, f)
'''


def test_cli_ddp_two_processes_bf16_agree(tmp_path):
    (tmp_path / "rank_metrics.py").write_text(textwrap.dedent(RANK_METRICS))
    config = _tiny_config(tmp_path, name="ddp")
    content = yaml.safe_load(config.read_text())
    content["trainer"]["callbacks"] = [
        {"class_path": "rank_metrics.RankMetrics", "init_args": {"out_dir": str(tmp_path)}}
    ]
    config.write_text(yaml.safe_dump(content))
    command = [sys.executable, "-m", "tasks.classification.cli", "fit", "--config", str(config)]
    # The flags, nothing else changed (SyncBatchNorm is GPU-only in torch).
    command += ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    command += ["--trainer.precision", "bf16-mixed"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path), env.get("PYTHONPATH", "")])
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    epoch_metrics = {"val/loss", "val/top1_err", "val/top5_err", "train/top1_err"}
    assert set(ranks[0]["metrics"]) >= epoch_metrics, ranks[0]
    assert ranks[0]["metrics"] == ranks[1]["metrics"], ranks
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-6)
    results = json.loads((tmp_path / "runs/cifar10/ddp/version_0/results.json").read_text())
    assert results["world_size"] == 2 and results["precision"] == "bf16-mixed"
    assert results["top1_err"] == pytest.approx(ranks[0]["metrics"]["val/top1_err"], abs=1e-3)


def test_channels_last_compile_and_optimizer_options(tmp_path):
    model = ClassificationModule(
        "se_preact_resnet110",
        TINY_MODEL,
        10,
        channels_last=True,
        label_smoothing=0.1,
        no_decay_bn_bias=True,
        schedule="step",
        step_every=0.5,
        nesterov=True,
    )
    trainer = lightning.Trainer(**TINY_TRAINER, fast_dev_run=True, logger=False)
    trainer.fit(model, _tiny_data(tmp_path))
    decay, no_decay = trainer.optimizers[0].param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert decay["nesterov"] is True
    # compile=True compiles in place: checkpoints keep the plain parameter names.
    compiled = ClassificationModule("se_preact_resnet110", TINY_MODEL, 10, compile=True)
    assert compiled.state_dict().keys() == model.state_dict().keys()


class _PoisonWeights(lightning.Callback):
    """Turns the classifier's weights to NaN at the start of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.model.get_classifier().weight.fill_(float("nan"))


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    model = ClassificationModule("se_preact_resnet110", TINY_MODEL, 10, lr=0.05)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = lightning.Trainer(
        **TINY_TRAINER,
        max_epochs=3,
        logger=False,
        callbacks=[checkpoints, _PoisonWeights(epoch=1)],
    )
    with pytest.raises(NonFiniteLossError, match=r"not finite\) at epoch 1, global step 4"):
        trainer.fit(model, _tiny_data(tmp_path))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu")
    assert last["epoch"] == 0 and last["epochs_trained"] == 1
    weights = [v for v in last["state_dict"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights), "last.ckpt holds non-finite weights"


class _RecordingGuard(NonFiniteGuard):
    """The module's guard, also writing what its rank saw when it stopped training."""

    def __init__(self, out_dir: str, check_every: int) -> None:
        super().__init__("(advice)", check_every=check_every)
        self.out_dir, self.checks = out_dir, 0

    def check(self, trainer):
        self.checks += 1
        try:
            super().check(trainer)
        except NonFiniteLossError as err:
            module = trainer.lightning_module
            params = [p.detach() for p in module.parameters()]
            unchanged = all(map(torch.equal, params, module.before_bad_step))
            record = {"message": str(err), "unchanged": unchanged, "checks": self.checks}
            record["optimizer_steps"] = trainer.global_step
            Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
            raise


class _PoisonedModule(ClassificationModule):
    """One rank's batch of global step 1 turns to NaN; every rank keeps its weights from before."""

    def __init__(self, out_dir: str, poisoned_rank: int, check_every: int = 1000) -> None:
        super().__init__("se_preact_resnet110", TINY_MODEL, 10, lr=0.05)
        self.out_dir, self.poisoned_rank, self.check_every = out_dir, poisoned_rank, check_every
        self.before_bad_step: list[torch.Tensor] = []

    def configure_callbacks(self):
        return [_RecordingGuard(self.out_dir, self.check_every)]

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == 1:
            self.before_bad_step = [p.detach().clone() for p in self.parameters()]
            if self.global_rank == self.poisoned_rank:
                batch[0].fill_(float("nan"))


def test_no_update_after_a_nan_step_until_the_check_and_no_checkpoint(tmp_path):
    # The flag is read every 1000 steps: the run of 4 steps stops at the end of its epoch, its
    # first check; the updates of steps 1-3 were skipped on the device (fused SGD's found_inf).
    module = _PoisonedModule(str(tmp_path), poisoned_rank=0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = lightning.Trainer(**TINY_TRAINER, max_epochs=2, logger=False, callbacks=[checkpoints])
    expected = r"loss is nan \(not finite\) at epoch 0, global step 1;"
    with pytest.raises(NonFiniteLossError, match=expected):
        trainer.fit(module, _tiny_data(tmp_path))
    record = json.loads((tmp_path / "rank0.json").read_text())
    assert record["optimizer_steps"] == 4 and record["checks"] == 1, record
    assert record["unchanged"], "an update was applied after the non-finite step"
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    assert trainer.optimizers[0].defaults["fused"] is True


@pytest.mark.slow
def test_nan_on_one_ddp_rank_stops_every_rank_before_any_update(tmp_path):
    module = _PoisonedModule(str(tmp_path), poisoned_rank=1)
    trainer = lightning.Trainer(
        **TINY_TRAINER, devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
        enable_checkpointing=False,
    )  # fmt: skip
    with pytest.raises(Exception, match="NonFiniteLossError"):
        trainer.fit(module, _tiny_data(tmp_path))
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # Rank 0's loss was finite, but the all-reduced gradients were not: it skipped too.
        assert record["unchanged"], f"rank {rank} applied an update after the NaN step"
        expected = "loss is nan (not finite) at epoch 0, global step 1 on rank 1 of 2"
        assert expected in record["message"], record


def test_guard_skips_a_step_whose_loss_alone_is_not_finite():
    # An infinite loss with finite gradients (one rank's, say): a fused optimizer skips it, and
    # every later step, on the device; a plain optimizer cannot, so it is checked every step.
    guard = NonFiniteGuard("(advice)")
    weight = nn.Parameter(torch.ones(3))
    fused = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
    for loss in (float("inf"), 1.0):
        weight.grad = torch.ones(3)
        guard.record_loss(torch.tensor(loss), epoch=0, step=7)
        guard.flag_step(fused)
        assert guard.skips_on_device(fused)
        fused.step()
        assert torch.equal(weight.detach(), torch.ones(3))
    plain = torch.optim.SGD([weight], lr=0.1)
    assert not guard.skips_on_device(plain)
    with pytest.raises(ValueError, match="check_every must be at least 1"):
        NonFiniteGuard("", check_every=0)


@pytest.mark.parametrize(
    "section,key,message",
    [
        ("model", "lrr", "does not accept option 'model.lrr'"),
        ("trainer", "max_epoch", "does not accept option 'trainer.max_epoch'"),
        ("data", "batchsize", "Option 'batchsize' is not accepted"),
    ],
)
def test_unknown_config_key_is_a_clear_error(tmp_path, capsys, section, key, message):
    config = yaml.safe_load(README_CONFIG.read_text())
    target = config["data"]["init_args"] if section == "data" else config[section]
    target[key] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err[-2000:]


def test_unknown_model_name_is_one_clear_line(tmp_path, capsys):
    argv = ["fit", "--config", str(README_CONFIG), "--model.model_name", "se_preact_resnet11"]
    argv += ["--trainer.accelerator", "cpu"]
    assert main([*argv, "--trainer.default_root_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean se_preact_resnet110" in err and "Traceback" not in err, err


def test_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    argv = ["test", "--config", str(_tiny_config(tmp_path)), "--ckpt_path", "nothing/last.ckpt"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sebench test: error: --ckpt_path nothing/last.ckpt does not exist")
    assert "Traceback" not in err and not (tmp_path / "runs").exists(), err


def test_gpu_config_without_cuda_is_an_error_naming_the_key(tmp_path):
    # The configs ask for a GPU (trainer.accelerator: gpu). A machine without CUDA, for real: a
    # process that sees no device (CUDA_VISIBLE_DEVICES empty), here and on a GPU machine alike.
    command = [sys.executable, "-m", "sebench.cli", "fit", "--config", str(README_CONFIG)]
    command += ["--trainer.default_root_dir", str(tmp_path / "runs")]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    env.pop("SEBENCH_DEBUG", None)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sebench fit: error: trainer.accelerator is 'gpu', but torch finds no")
    assert "--trainer.accelerator cpu" in last and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists(), "nothing may be written before the error"


def test_there_are_16_cifar_configs():
    names = {f"{p.parent.name}/{p.stem}" for p in CONFIGS if p.parent.name.startswith("cifar")}
    assert len(names) == 16, sorted(names)
    for name in names:  # each model plain and SE
        dataset, stem = name.split("/")
        twin = stem[3:] if stem.startswith("se_") else f"se_{stem}"
        assert f"{dataset}/{twin}" in names, f"{name} has no plain/SE twin"


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_config_parses_and_builds_model_and_data(tmp_path, path):
    content = yaml.safe_load(path.read_text())
    assert set(content) <= {"seed_everything", "trainer", "model", "data"}, sorted(content)
    assert content["trainer"]["accelerator"] == "gpu", "a paper recipe asks for a GPU"
    args = ["--config", str(path), "--trainer.default_root_dir", str(tmp_path)]
    cli = SEBenchCLI([*args, "--trainer.accelerator", "cpu"], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, ClassificationModule)
    assert model.hparams.model_name == content["model"]["model_name"]
    assert path.stem.startswith(model.hparams.model_name), "file name must say the model"
    assert data.dataset_name == path.parent.name, "folder must say the dataset"
    assert model.hparams.num_classes == data.num_classes == model.model.num_classes
    assert data.synthetic is False
    if path.parent.name.startswith("cifar"):
        assert paper_result(data.dataset_name, model.hparams.model_name) is not None


def test_gpu_flags_parse_and_change_nothing_else(capsys):
    flags = ["--trainer.devices", "8", "--trainer.strategy", "ddp", "--trainer.precision"]
    flags += ["16-mixed", "--trainer.sync_batchnorm", "true", "--data.gpu_resident", "true"]
    printed = {}
    for extra in ([], flags):
        with pytest.raises(SystemExit) as info:
            main(["fit", "--config", str(README_CONFIG), *extra, "--print_config"])
        assert info.value.code == 0
        printed[bool(extra)] = yaml.safe_load(capsys.readouterr().out)
    plain, gpu = printed[False], printed[True]
    assert gpu["trainer"]["sync_batchnorm"] is True and gpu["trainer"]["precision"] == "16-mixed"
    assert gpu["model"] == plain["model"] and gpu["seed_everything"] == plain["seed_everything"]
    changed = {k for k in plain["trainer"] if plain["trainer"][k] != gpu["trainer"][k]}
    assert changed == {"devices", "strategy", "precision", "sync_batchnorm"}, changed


def test_images_per_s_clock_runs_again_after_mid_epoch_validation(tmp_path):
    class ClockProbe(lightning.Callback):
        """Whether the results clock runs at each training batch."""

        def __init__(self, results: ResultsCallback) -> None:
            self.results, self.running = results, []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.running.append(self.results._clock is not None)

    results = ResultsCallback()
    probe = ClockProbe(results)
    trainer = lightning.Trainer(
        **TINY_TRAINER, max_epochs=1, val_check_interval=0.5, logger=CSVLogger(tmp_path),
        callbacks=[results, probe], enable_checkpointing=False, num_sanity_val_steps=0,
    )
    model = ClassificationModule("se_preact_resnet110", TINY_MODEL, 10, lr=0.05)
    trainer.fit(model, _tiny_data(tmp_path, synthetic_size=64))
    # 4 batches, validation after the second: the last two are timed as well.
    assert probe.running == [True] * 4
    fit = json.loads((Path(trainer.log_dir) / "results.json").read_text())
    assert fit["images_per_s"] > 0
