"""``sebench detect train|eval``: Faster R-CNN (C4, FPN) with registry trunks on COCO, detectron2.

Usage::

    sebench detect train --config-file configs/coco/faster_rcnn_se_resnet50_fpn_2x.yaml \\
        --num-gpus 8 [--resume] [--train-json J --train-images DIR --val-json J --val-images DIR]
        [KEY VALUE ...]
    sebench detect eval --config-file ... MODEL.WEIGHTS output/.../model_final.pth

detectron2's ``default_argument_parser`` (``--num-gpus``, ``--num-machines``, ``--machine-rank``,
``--dist-url``, ``--resume``, trailing ``KEY VALUE`` config overrides) with the subcommand in
front; ``eval`` is detectron2's ``--eval-only``. ``launch`` starts one process per GPU; with
``MODEL.DEVICE cpu``, ``--num-gpus N`` starts N CPU processes (gloo). A CUDA device on a machine
without one is an error naming the key, not a quiet switch to the CPU.

Every run ends (after the final evaluation) with ``OUTPUT_DIR/results.json`` (box AP, AP50,
AP75, APs, APm, APl in percent, trunk, iterations, wall time, images/s, precision, world size,
the full config) and ``OUTPUT_DIR/results.md``: one markdown row beside the paper's Table 7.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from backbones.errors import InputError, run_command

from ..evaluation import AP_KEYS
from ..paper import PAPER_LINE_HEADER, paper_line
from .config import (
    add_sebench_config,
    check_pixel_format,
    check_sebench_config,
    random_init_overrides,
)
from .data import (
    DatasetError,
    check_datasets,
    custom_datasets,
    register_datasets,
)
from .trainer import SEBenchTrainer, amp_dtype, precision_name
from .weights import report_missing_weights

__all__ = ["AP_KEYS", "ConfigError", "build_parser", "main", "setup_cfg"]

COMMANDS = {"train": "train, evaluate at the end", "eval": "evaluate MODEL.WEIGHTS (or --resume)"}
EPILOG = """\
examples:
  sebench detect train --config-file configs/coco/faster_rcnn_se_resnet50_fpn_2x.yaml --num-gpus 8
  sebench detect train --config-file ... --num-gpus 8 --resume   # OUTPUT_DIR's last checkpoint
  sebench detect eval --config-file ... MODEL.WEIGHTS output/coco/.../model_final.pth
  sebench detect train --config-file C --train-json J --train-images D --val-json J --val-images D

Data: DATASETS.TRAIN/TEST name detectron2's builtin COCO splits (coco_2017_train, coco_2017_val),
read from $DETECTRON2_DATASETS/coco/{annotations/instances_{train,val}2017.json,{train,val}2017/};
--train-json/--val-json register any COCO instances file with its image folder instead.
With MODEL.DEVICE cpu (no CUDA), --num-gpus N starts N CPU processes (gloo).
Weights: MODEL.WEIGHTS takes detectron2's own checkpoints as they are (model-zoo detectors;
detectron2://ImageNetPretrained/MSRA/R-50.pkl with INPUT.FORMAT BGR, MODEL.PIXEL_MEAN
[103.53, 116.28, 123.675], MODEL.PIXEL_STD [1.0, 1.0, 1.0]) and `sebench convert-weights` files.
"""


class ConfigError(InputError):
    """The config file or a KEY VALUE override is missing or wrong."""


def build_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus the data-by-path options."""
    parser = default_argument_parser(epilog=EPILOG)
    parser.prog = "sebench detect {train,eval}"
    parser.description = (
        "Faster R-CNN (C4/FPN), RetinaNet and Mask R-CNN with registry trunks on COCO, with "
        "detectron2."
    )
    group = parser.add_argument_group("data given by path (instead of DATASETS.TRAIN/TEST)")
    for split in ("train", "val"):
        group.add_argument(f"--{split}-json", metavar="JSON", help=f"COCO instances file ({split})")
        group.add_argument(
            f"--{split}-images", metavar="DIR", help=f"image folder of --{split}-json"
        )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """``train|eval`` then detectron2's arguments; ``eval`` sets ``eval_only``."""
    parser = build_parser()
    argv = list(argv)
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] in ("-h", "--help"):
            parser.print_help()
            raise SystemExit(0)
        got = repr(argv[0]) if argv else "nothing"
        parser.error(f"expected a command, one of {list(COMMANDS)}, got {got}")
    args = parser.parse_args(argv[1:])
    args.command = argv[0]
    args.eval_only = args.eval_only or args.command == "eval"
    if not args.config_file:
        parser.error("--config-file is required (the experiments are in configs/coco/)")
    if args.num_gpus < 1:
        parser.error(f"--num-gpus must be at least 1, got {args.num_gpus}")
    return args


def setup_cfg(config_file: str, opts: Sequence[str]) -> CfgNode:
    """The full config: detectron2's defaults, ours, the YAML file, then ``KEY VALUE`` pairs.

    Raises:
        ConfigError: a missing file, an unknown key, a wrong value type or an odd override list,
            naming the file or key.
    """
    if not Path(config_file).is_file():
        raise ConfigError(
            f"config file {config_file} does not exist (the experiments are configs/coco/*.yaml)"
        )
    cfg = get_cfg()
    add_sebench_config(cfg)
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as err:
        raise ConfigError(f"{config_file}: {_message(err)}") from err
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as err:
        raise ConfigError(f"command-line override: {_message(err)}") from err
    return cfg


def _message(err: BaseException) -> str:
    # KeyError's str() adds quotes; yacs puts the whole message in args[0].
    return str(err.args[0]) if err.args else type(err).__name__


def _check_device(cfg: CfgNode, num_gpus: int) -> None:
    """A ConfigError unless ``MODEL.DEVICE`` and ``--num-gpus`` fit the machine."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} (detectron2's default) but this machine has no "
            "CUDA device: add MODEL.DEVICE cpu to run on the CPU (--num-gpus N then starts N CPU "
            "processes)"
        )
    if cfg.MODEL.DEVICE == "cpu" and num_gpus > 1 and torch.cuda.is_available():
        raise ConfigError(
            "MODEL.DEVICE cpu with --num-gpus > 1 on a machine with CUDA: detectron2's launch "
            "would use NCCL; hide the GPUs (CUDA_VISIBLE_DEVICES=) to run CPU processes"
        )
    if cfg.MODEL.DEVICE.startswith("cuda") and num_gpus > torch.cuda.device_count():
        raise ConfigError(
            f"--num-gpus {num_gpus} but this machine has {torch.cuda.device_count()} CUDA devices"
        )


def _check_weights(cfg: CfgNode, args: argparse.Namespace) -> list[str]:
    """Check ``MODEL.WEIGHTS`` for the command; return the overrides a random start needs.

    Raises:
        ConfigError: a missing file, eval without weights, a frozen trunk without weights
            (unless ``MODEL.SEBENCH.ALLOW_RANDOM_INIT``), MSRA weights with another pixel format.
    """
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not Path(weights).is_file():
        raise ConfigError(
            f"MODEL.WEIGHTS {weights} does not exist (for ImageNet weights, convert them with "
            "`sebench convert-weights`; for a trained model give its model_final.pth)"
        )
    check_pixel_format(cfg)
    resuming = args.resume and (Path(cfg.OUTPUT_DIR) / "last_checkpoint").is_file()
    if args.eval_only and not weights and not resuming:
        raise ConfigError(
            "eval needs trained weights: MODEL.WEIGHTS path/to/model_final.pth, or --resume "
            f"with a last_checkpoint in OUTPUT_DIR ({cfg.OUTPUT_DIR})"
        )
    if weights:
        return []
    if resuming and not cfg.MODEL.SEBENCH.ALLOW_RANDOM_INIT:
        return []  # the run's own checkpoint, with the structure it was trained with
    overrides = random_init_overrides(cfg)
    if not args.eval_only:
        unfrozen = f" (unfrozen: {' '.join(overrides)})" if overrides else ""
        print(f"sebench detect: the trunk starts from random weights{unfrozen}", flush=True)
    return overrides


def _data_overrides(cfg: CfgNode, args: argparse.Namespace) -> list[str]:
    """Register the data sets given by path (DATASETS.TRAIN/TEST overrides), check every data
    set of the run with ``check_coco``, and match ROI_HEADS.NUM_CLASSES to the categories."""
    train, val = custom_datasets(args.train_json, args.train_images, args.val_json, args.val_images)
    register_datasets(train + val)
    overrides: list[str] = []
    if train:
        overrides += ["DATASETS.TRAIN", repr((train[0].name,))]
    if val:
        overrides += ["DATASETS.TEST", repr((val[0].name,))]
    cfg.merge_from_list(overrides)
    names = list(cfg.DATASETS.TEST) if args.eval_only else [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    if not names:
        raise DatasetError(
            "no data set: DATASETS.TRAIN/TEST are empty and no --train-json/--val-json"
        )
    summaries = check_datasets(names)
    for summary in summaries.values():
        print(f"sebench detect: {summary.describe()}", flush=True)
    args.dataset_summaries = {
        name: {
            "json_file": str(summary.json_file),
            "images": summary.num_images,
            "annotations": summary.num_annotations,
            "degenerate_boxes": len(summary.degenerate_annotation_ids),
        }
        for name, summary in summaries.items()
    }
    num_classes = {len(summary.categories) for summary in summaries.values()}
    if len(num_classes) > 1:
        counts = ", ".join(f"{s.json_file}: {len(s.categories)}" for s in summaries.values())
        raise DatasetError(
            f"the data sets of this run have different numbers of categories ({counts})"
        )
    (count,) = num_classes
    heads = "RETINANET" if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else "ROI_HEADS"
    if count != cfg.MODEL[heads].NUM_CLASSES:
        print(f"sebench detect: MODEL.{heads}.NUM_CLASSES set to {count} (the data's categories)")
        overrides += [f"MODEL.{heads}.NUM_CLASSES", str(count)]
    return overrides


def prepare(args: argparse.Namespace) -> None:
    """Check config, device, weights and data before any process starts; the overrides this
    adds (data sets, device, classes) go into ``args.opts`` so every process builds the same
    config."""
    cfg = setup_cfg(args.config_file, args.opts)
    _check_device(cfg, args.num_gpus)
    amp_dtype(cfg)  # a bad SOLVER.AMP.PRECISION fails here, not in every process
    extra = _check_weights(cfg, args)
    cfg.merge_from_list(extra)
    if "build_sebench" in cfg.MODEL.BACKBONE.NAME:
        check_sebench_config(cfg)  # builds the trunk once: bad names, keys and values fail here
    extra += _data_overrides(cfg, args)
    args.opts = [*args.opts, *extra]


def _model_name(cfg: CfgNode) -> str:
    if "build_sebench" in cfg.MODEL.BACKBONE.NAME:
        return cfg.MODEL.SEBENCH.NAME
    return f"detectron2_resnet{cfg.MODEL.RESNETS.DEPTH}"


def _architecture(cfg: CfgNode) -> str:
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return "RetinaNet"
    neck = "FPN" if "fpn" in cfg.MODEL.BACKBONE.NAME.lower() else "C4"
    return f"Mask R-CNN {neck}" if cfg.MODEL.MASK_ON else neck


def _metrics(results: dict[str, Any] | None, task: str = "bbox") -> dict[str, float]:
    """The six COCO APs (percent) of ``task`` ("bbox", "segm") on the first test set; NaN
    where COCO has no value."""
    if results and "bbox" not in results:  # several test sets: {name: {"bbox": ...}}
        results = next(iter(results.values()))
    values = (results or {}).get(task, {})
    return {key: float(values.get(key, math.nan)) for key in AP_KEYS}


def write_results(
    cfg: CfgNode,
    args: argparse.Namespace,
    results: dict[str, Any] | None,
    **extra: Any,
) -> dict[str, Any]:
    """``OUTPUT_DIR/results.json`` and ``results.md`` (the paper comparison row); prints both.

    Returns:
        The JSON's content.
    """
    ap = _metrics(results)
    model = _model_name(cfg)
    # The paper's COCO figures (Table 7) are Faster R-CNN's: other detectors get no comparison.
    faster_rcnn = _architecture(cfg) in ("FPN", "C4")
    line = paper_line(model, ap, label=f" ({_architecture(cfg)})", compare=faster_rcnn)
    record = {
        "command": args.command,
        "model": model,
        "architecture": _architecture(cfg),
        **ap,
        **({"segm": _metrics(results, "segm")} if cfg.MODEL.MASK_ON else {}),
        "test_dataset": list(cfg.DATASETS.TEST),
        "max_iter": cfg.SOLVER.MAX_ITER,
        **extra,
        "precision": precision_name(cfg),
        "world_size": comm.get_world_size(),
        "device": cfg.MODEL.DEVICE,
        "datasets": getattr(args, "dataset_summaries", {}),
        "paper_line": line,
        "config": yaml.safe_load(cfg.dump()),
    }
    output_dir = Path(cfg.OUTPUT_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (output_dir / "results.md").write_text(f"{PAPER_LINE_HEADER}\n{line}\n")
    print(f"{PAPER_LINE_HEADER}\n{line}\nresults: {output_dir / 'results.json'}", flush=True)
    return record


def _rate(num_images: int, seconds: float | None) -> float | None:
    return num_images / seconds if seconds else None


def _num_images(args: argparse.Namespace, names: Sequence[str]) -> int:
    summaries = getattr(args, "dataset_summaries", {})
    return sum(summaries[name]["images"] for name in names if name in summaries)


def train(cfg: CfgNode, args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (resuming if asked), evaluate at the end; the main process writes the results."""
    start = time.perf_counter()
    trainer = SEBenchTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    start_iter = trainer.start_iter
    trainer.train()
    if not comm.is_main_process():
        return None
    return write_results(
        cfg,
        args,
        trainer.last_eval_results,
        start_iteration=start_iter,
        iterations=max(start_iter, trainer.max_iter),
        wall_time_s=time.perf_counter() - start,
        train_images_per_s=trainer.throughput.images_per_second,
        eval_images_per_s=_rate(_num_images(args, cfg.DATASETS.TEST), trainer.eval_seconds),
    )


def evaluate(cfg: CfgNode, args: argparse.Namespace) -> dict[str, Any] | None:
    """Load MODEL.WEIGHTS (or the last checkpoint with --resume) and evaluate on DATASETS.TEST."""
    start = time.perf_counter()
    model = SEBenchTrainer.build_model(cfg)
    # Every tensor of the detector must come from the checkpoint: random heads score nothing.
    report_missing_weights(
        model, heads_may_be_random=False, allow_partial_load=cfg.MODEL.SEBENCH.ALLOW_PARTIAL_LOAD
    )
    checkpoint = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=args.resume
    )
    eval_start = time.perf_counter()
    results = SEBenchTrainer.test(cfg, model)
    eval_seconds = time.perf_counter() - eval_start
    if not comm.is_main_process():
        return None
    iteration = checkpoint.get("iteration") if isinstance(checkpoint, dict) else None
    return write_results(
        cfg,
        args,
        results,
        iterations=None if iteration is None else iteration + 1,
        wall_time_s=time.perf_counter() - start,
        train_images_per_s=None,
        eval_images_per_s=_rate(_num_images(args, cfg.DATASETS.TEST), eval_seconds),
    )


def worker(args: argparse.Namespace) -> dict[str, Any] | None:
    """One process of the run (``launch``'s main function): the same config in every process."""
    cfg = setup_cfg(args.config_file, args.opts)
    train_files, val_files = custom_datasets(
        args.train_json, args.train_images, args.val_json, args.val_images
    )
    register_datasets(train_files + val_files)  # spawned processes start with empty catalogs
    cfg.freeze()
    default_setup(cfg, args)
    # Our modules' messages (e.g. which tensors a load leaves random) as detectron2's: on the
    # console from the main process, in OUTPUT_DIR/log.txt* from every process.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="tasks")
    return evaluate(cfg, args) if args.eval_only else train(cfg, args)


def main(argv: Sequence[str]) -> int:
    """``sebench detect train|eval ...``: argv is everything after ``detect``.

    Returns:
        0, or 2 after one line on stderr for bad input (config, data, device, weights: an
        ``InputError``; ``SEBENCH_DEBUG=1`` adds its traceback). Any other error propagates
        with its traceback.
    """
    args = parse_args(argv)

    def run() -> None:
        prepare(args)
        launch(
            worker,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )

    return run_command(f"sebench detect {args.command}", run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
