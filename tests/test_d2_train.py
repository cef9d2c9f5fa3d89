"""``sebench detect train|eval`` (tasks.detection.d2.train) on tiny COCO sets, on the CPU.

Real detectron2 training, checkpoints, DDP (gloo, 2 processes through detectron2's ``launch``)
and COCO evaluation; only the images (64 px), batches and proposal counts are tiny.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (build it from source, see README)"
)

from _coco import write_tiny_coco
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.modeling import build_model
from test_d2_evaluator import write_mixed_size_coco

from backbones import SEBlock
from tasks.detection.d2.backbone import SEBenchTrunk
from tasks.detection.d2.train import AP_KEYS, main, setup_cfg
from tasks.detection.d2.trainer import CPUAutocastTrainer, amp_dtype, build_step_trainer
from tasks.detection.evaluation import coco_box_ap

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "coco"
FPN = CONFIGS / "faster_rcnn_se_resnet50_fpn_2x.yaml"
C4 = CONFIGS / "faster_rcnn_se_resnet50_c4_2x.yaml"
EXPERIMENTS = sorted(CONFIGS.glob("faster_rcnn_*.yaml"))  # Table 7's (test_d2_heads: the rest)

# On the CPU, from random weights (the trunk then trains unfrozen, with BN).
CPU_FROM_SCRATCH = ["MODEL.DEVICE", "cpu", "MODEL.SEBENCH.ALLOW_RANDOM_INIT", "True"]
# 64 px inputs, 2 images a step, few proposals and regions: a step takes about a second.
TINY = [
    *CPU_FROM_SCRATCH,
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.BASE_LR", "0.001",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    # Every detection is kept, so an undertrained model still has predictions to score.
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "DATALOADER.NUM_WORKERS", "0", "SEED", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DETECTRON2_DATASETS root: coco/{annotations,train2017,val2017}, 2 categories; val has
    small, medium and large boxes so all six APs are defined; train has one zero-width box
    (counted, then dropped by detectron2's loader)."""
    root = tmp_path_factory.mktemp("datasets")
    train_json, _ = write_tiny_coco(root / "coco", num_images=4, split="train")
    document = json.loads(train_json.read_text())
    degenerate = {**document["annotations"][0], "id": 100, "bbox": [10.0, 10.0, 0.0, 5.0]}
    document["annotations"].append(degenerate)
    train_json.write_text(json.dumps(document))
    write_mixed_size_coco(root / "coco", split="val")
    return root


def data_args(root: Path) -> list[str]:
    coco = root / "coco"
    return [
        "--train-json", str(coco / "annotations" / "instances_train2017.json"),
        "--train-images", str(coco / "train2017"),
        "--val-json", str(coco / "annotations" / "instances_val2017.json"),
        "--val-images", str(coco / "val2017"),
    ]  # fmt: skip


def detect(
    command: str,
    config: Path,
    root: Path,
    output: Path,
    options: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> dict:
    """Run ``sebench detect`` in this process and return its results.json; ``overrides``
    (KEY VALUE pairs) come after TINY's."""
    argv = [command, "--config-file", str(config), *data_args(root), *options, *TINY, *overrides]
    assert main([*argv, "OUTPUT_DIR", str(output)]) == 0
    return json.loads((output / "results.json").read_text())


def assert_box_ap(results: dict, output: Path) -> None:
    """results.json holds the APs of the detections the run saved, as an independent evaluation
    computes them: the project's plain-pycocotools ``coco_box_ap`` (the torchvision path's),
    against detectron2's COCOEvaluator (its own fast COCOeval) in the run."""
    (dataset,) = results["test_dataset"]
    saved = output / "inference" / dataset / "coco_instances_results.json"
    predictions = json.loads(saved.read_text())
    assert predictions, "the model detected nothing: the comparison would be vacuous"
    expected = coco_box_ap(results["datasets"][dataset]["json_file"], predictions)
    for key in AP_KEYS:
        assert math.isfinite(results[key]), (key, results[key])
        assert results[key] == pytest.approx(expected[key], abs=1e-6), (key, results, expected)


@pytest.mark.slow
@pytest.mark.parametrize("config", [FPN, C4], ids=["fpn", "c4"])
def test_train_resume_eval_one_process(config: Path, tiny_coco: Path, tmp_path: Path) -> None:
    trained = detect("train", config, tiny_coco, tmp_path)
    assert_box_ap(trained, tmp_path)
    assert (trained["start_iteration"], trained["iterations"], trained["world_size"]) == (0, 2, 1)
    assert trained["model"] == "se_resnet50" and trained["precision"] == "float32"
    assert trained["config"]["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 2  # from the data
    # ALLOW_RANDOM_INIT unfroze the trunk, and the run's config says so.
    assert trained["config"]["MODEL"]["BACKBONE"]["FREEZE_AT"] == 0
    assert trained["config"]["MODEL"]["RESNETS"]["NORM"] == "BN"
    assert trained["train_images_per_s"] > 0 and trained["eval_images_per_s"] > 0
    assert trained["datasets"]["sebench_coco_val"]["images"] == 6
    assert trained["datasets"]["sebench_coco_train"]["degenerate_boxes"] == 1
    arch = "FPN" if config == FPN else "C4"
    row = f"| se_resnet50 ({arch}) | {trained['AP']:.1f} | {trained['AP50']:.1f} | 40.4 | 61.0 |"
    assert row in (tmp_path / "results.md").read_text()
    assert (tmp_path / "model_0000000.pth").is_file()  # CHECKPOINT_PERIOD 1
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"

    resumed = detect("train", config, tiny_coco, tmp_path, ["--resume"], ["SOLVER.MAX_ITER", "3"])
    assert (resumed["start_iteration"], resumed["iterations"]) == (2, 3)
    assert_box_ap(resumed, tmp_path)

    weights = str(tmp_path / "model_final.pth")
    evaluated = detect(
        "eval", config, tiny_coco, tmp_path / "eval", overrides=["MODEL.WEIGHTS", weights]
    )
    assert evaluated["command"] == "eval" and evaluated["iterations"] == 3
    assert evaluated["train_images_per_s"] is None
    for key in AP_KEYS:  # the same weights on the same images: the same scores
        assert evaluated[key] == pytest.approx(resumed[key], abs=1e-6), key


@pytest.mark.slow
def test_fpn_two_cpu_processes_through_launch(tiny_coco: Path, tmp_path: Path) -> None:
    results = detect("train", FPN, tiny_coco, tmp_path, ["--num-gpus", "2", "--dist-url", "auto"])
    assert results["world_size"] == 2 and results["iterations"] == 2
    assert_box_ap(results, tmp_path)
    # Both ranks logged into the same folder; rank 1 writes its own log file.
    assert (tmp_path / "log.txt.rank1").is_file()


@pytest.mark.slow
def test_c4_two_cpu_processes_builtin_coco_names(tiny_coco: Path, tmp_path: Path) -> None:
    """The command line, as a user runs it: detectron2's builtin coco_2017_train/val read from
    DETECTRON2_DATASETS (so the tiny set lists COCO's 80 categories), 2 CPU processes."""
    root = tmp_path / "datasets"
    write_tiny_coco(root / "coco", num_images=4, split="train")
    write_mixed_size_coco(root / "coco", split="val")
    coco_categories = [
        {"id": c["id"], "name": c["name"], "supercategory": "coco"}
        for c in COCO_CATEGORIES
        if c["isthing"]
    ]
    for split in ("train", "val"):  # the tiny ids 1 and 3 are COCO's person and car
        path = root / "coco" / "annotations" / f"instances_{split}2017.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "categories": coco_categories}))
    output = tmp_path / "output"
    command = [sys.executable, "-m", "tasks.detection.d2.train", "train", "--config-file", str(C4)]
    command += ["--num-gpus", "2", "--dist-url", "auto", *TINY, "OUTPUT_DIR", str(output)]
    env = {**os.environ, "DETECTRON2_DATASETS": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((output / "results.json").read_text())
    assert results["test_dataset"] == ["coco_2017_val"] and results["world_size"] == 2
    assert results["config"]["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 80
    assert_box_ap(results, output)
    assert "| se_resnet50 (C4) |" in done.stdout


@pytest.mark.slow
def test_cpu_bfloat16_autocast(tiny_coco: Path, tmp_path: Path) -> None:
    overrides = ["SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "1"]
    results = detect("train", FPN, tiny_coco, tmp_path, overrides=overrides)
    assert results["precision"] == "bfloat16" and results["iterations"] == 1
    assert_box_ap(results, tmp_path)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses and all(math.isfinite(loss) for loss in losses)


@pytest.mark.parametrize(
    "config",
    [pytest.param(p, marks=pytest.mark.slow) if "101" in p.name else p for p in EXPERIMENTS],
    ids=[p.stem for p in EXPERIMENTS],
)
def test_experiment_configs_build(config: Path) -> None:
    cfg = setup_cfg(str(config), ["MODEL.DEVICE", "cpu"])
    trunk_name = config.stem.removeprefix("faster_rcnn_").rsplit("_", 2)[0]
    assert cfg.MODEL.SEBENCH.NAME == trunk_name
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (180000, (120000, 160000))
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (16, 0.02)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    assert cfg.OUTPUT_DIR == f"output/coco/{config.stem}"
    model = build_model(cfg)
    trunk = model.backbone.bottom_up if "_fpn_" in config.name else model.backbone
    assert isinstance(trunk, SEBenchTrunk)
    has_se = any(isinstance(module, SEBlock) for module in model.modules())
    assert has_se == trunk_name.startswith("se_")


def _bad_annotation_file(tmp_path: Path, root: Path) -> list[str]:
    coco = root / "coco"
    document = json.loads((coco / "annotations" / "instances_train2017.json").read_text())
    document["annotations"][2]["bbox"] = [1, 2, 3]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    return ["--train-json", str(bad), "--train-images", str(coco / "train2017")]


def _bad_key_in_file(tmp_path: Path, root: Path) -> list[str]:
    config = tmp_path / "bad.yaml"
    config.write_text(f'_BASE_: "{CONFIGS / "Base-SEBench-FPN.yaml"}"\nMODEL:\n  NOT_A_KEY: 1\n')
    return ["--config-file", str(config)]


BAD_INPUTS = {
    "missing config": (
        lambda tmp, root: ["--config-file", str(tmp / "nope.yaml")],
        "nope.yaml does not exist",
    ),
    "bad key in file": (_bad_key_in_file, "bad.yaml: Non-existent config key: MODEL.NOT_A_KEY"),
    "bad key override": (
        lambda tmp, root: ["SOLVER.NOT_A_KEY", "1"],
        "Non-existent key: SOLVER.NOT_A_KEY",
    ),
    "odd overrides": (lambda tmp, root: ["SOLVER.MAX_ITER"], "odd length"),
    "unknown trunk": (
        lambda tmp, root: ["MODEL.SEBENCH.NAME", "se_resnet5O"],
        "MODEL.SEBENCH.NAME='se_resnet5O' is not a registry model",
    ),
    "fp16 on cpu": (
        lambda tmp, root: ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "float16"],
        "not supported on the CPU",
    ),
    "missing weights": (
        lambda tmp, root: ["MODEL.WEIGHTS", str(tmp / "trunk.pth")],
        "trunk.pth does not exist",
    ),
    "frozen trunk from random weights": (
        lambda tmp, root: ["MODEL.SEBENCH.ALLOW_RANDOM_INIT", "False"],
        (
            "MODEL.WEIGHTS is empty but the trunk is frozen (MODEL.BACKBONE.FREEZE_AT 2, "
            "MODEL.RESNETS.NORM FrozenBN): its stem and statistics would stay random. Start from "
            "ImageNet weights: `sebench convert-weights --timm legacy_seresnet50 --meta-arch fpn "
            "--out weights/se_resnet50_fpn.pth` and the config lines it prints. To train from "
            "scratch on purpose, set MODEL.SEBENCH.ALLOW_RANDOM_INIT True"
        ),
    ),
    "MSRA weights in RGB": (
        lambda tmp, root: ["MODEL.SEBENCH.NAME", "resnet50", "MODEL.WEIGHTS",
                           "detectron2://ImageNetPretrained/MSRA/R-50.pkl"],
        (
            "trained on BGR images with the mean subtracted and no scaling, but the config gives "
            "INPUT.FORMAT RGB, MODEL.PIXEL_MEAN [123.675, 116.28, 103.53], MODEL.PIXEL_STD "
            "[58.395, 57.12, 57.375]: add INPUT.FORMAT BGR MODEL.PIXEL_MEAN [103.53, 116.28, "
            "123.675] MODEL.PIXEL_STD [1.0, 1.0, 1.0]"
        ),
    ),
    "resnet101 config without its depth": (
        lambda tmp, root: ["MODEL.SEBENCH.NAME", "resnet101"],
        "MODEL.RESNETS.DEPTH is 50 but the trunk resnet101 has 101 layers",
    ),
    "bad trunk keyword value": (
        lambda tmp, root: ["MODEL.SEBENCH.KWARGS", "['se_reduction=0']"],
        "MODEL.SEBENCH (NAME='se_resnet50', KWARGS=['se_reduction=0'])",
    ),
    "missing train json": (
        lambda tmp, root: ["--train-json", str(tmp / "none.json")],
        "none.json does not exist",
    ),
    "malformed annotation": (_bad_annotation_file, "bad.json: annotation id 3: bbox must be"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(
    case: str, tiny_coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_args, expected = BAD_INPUTS[case]
    argv = ["train", "--config-file", str(FPN), *data_args(tiny_coco)]
    extra = make_args(tmp_path, tiny_coco)
    # argparse keeps the last of a repeated option; KEY VALUE pairs come last, the case's last.
    options, overrides = (extra, []) if extra[0].startswith("--") else ([], extra)
    assert main([*argv, *options, *CPU_FROM_SCRATCH, *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sebench detect train: error:"), err
    assert expected in err[0], err[0]


def test_builtin_coco_names_without_data_say_where_they_look(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--config-file", str(FPN), *CPU_FROM_SCRATCH]) == 2
    err = capsys.readouterr().err
    assert "coco_2017_train" in err and "DETECTRON2_DATASETS" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_config_without_cuda_names_the_key(
    tiny_coco: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No quiet switch to the CPU: detectron2's default MODEL.DEVICE is cuda."""
    argv = ["train", "--config-file", str(FPN), *data_args(tiny_coco), "--num-gpus", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "MODEL.DEVICE is 'cuda' (detectron2's default) but this machine has no CUDA" in err
    assert "add MODEL.DEVICE cpu" in err


def test_json_needs_its_image_folder(tiny_coco: Path, capsys: pytest.CaptureFixture[str]) -> None:
    val_json = str(tiny_coco / "coco" / "annotations" / "instances_val2017.json")
    argv = ["train", "--config-file", str(FPN), "--val-json", val_json, *CPU_FROM_SCRATCH]
    assert main(argv) == 2
    assert "--val-json and --val-images go together" in capsys.readouterr().err


def test_eval_needs_weights(
    tiny_coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "--config-file", str(FPN), *data_args(tiny_coco), "OUTPUT_DIR", str(tmp_path)]
    assert main([*argv, "MODEL.DEVICE", "cpu"]) == 2
    assert "eval needs trained weights" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config-file", str(FPN)])
    assert exit_info.value.code == 2
    assert "expected a command, one of ['train', 'eval'], got 'fit'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("device", "amp", "precision", "trainer", "dtype", "scaled"),
    [
        ("cpu", False, "", SimpleTrainer, None, None),
        ("cpu", True, "", CPUAutocastTrainer, torch.bfloat16, None),
        ("cuda", True, "", AMPTrainer, torch.float16, True),
        ("cuda", True, "bfloat16", AMPTrainer, torch.bfloat16, False),
    ],
)
def test_precision_selects_the_step_trainer(
    device: str, amp: bool, precision: str, trainer: type, dtype: torch.dtype | None, scaled: bool
) -> None:
    """Which trainer runs a step; the CUDA ones are only built here (no GPU in the tests)."""
    overrides = ["MODEL.DEVICE", device, "SOLVER.AMP.ENABLED", str(amp)]
    cfg = setup_cfg(str(FPN), [*overrides, "SOLVER.AMP.PRECISION", precision])
    assert amp_dtype(cfg) == dtype
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler warns that CUDA is missing
        step_trainer = build_step_trainer(cfg, model, [], optimizer)
    assert type(step_trainer) is trainer
    if trainer is AMPTrainer:
        assert step_trainer.precision == dtype
        # float16 needs gradient scaling; bfloat16 has float32's range and gets none.
        assert step_trainer.grad_scaler._enabled == (scaled and torch.cuda.is_available())
