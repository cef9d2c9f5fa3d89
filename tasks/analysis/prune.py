"""What SE blocks cost and buy: top-1/top-5 error before and after pruning chosen blocks.

Hu et al., "Squeeze-and-Excitation Networks" (arXiv:1709.01507), Secs. 4 and 7.2: removing the
SE blocks of SE-ResNet-50's last stage cuts the parameter overhead of SE from ~10% to ~4% of
ResNet-50 at < 0.1% top-5 error on ImageNet. ``backbones.prune.prune_se`` turns the chosen
blocks into identities without retraining; this module measures the trade on a validation set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
from torch import nn
from torch.utils.data import DataLoader

from backbones.errors import InputError
from backbones.prune import prune_se, select_se_blocks
from tasks.classification.module import ClassificationModule

__all__ = ["count_parameters", "evaluate", "markdown_table", "prune_and_evaluate", "write_result"]


def count_parameters(model: nn.Module) -> int:
    """Number of parameter values of ``model``."""
    return sum(p.numel() for p in model.parameters())


def evaluate(trainer: lightning.Trainer, module: ClassificationModule, loader: DataLoader) -> dict:
    """Top-1 and top-5 error (%) and loss of ``module`` over ``loader``, with ``trainer.validate``.

    The classification module's own metrics (torchmetrics, summed over the processes under
    DDP), under the trainer's precision.

    Returns:
        ``{"top1_err", "top5_err", "loss", "images"}``; top-5 is top-``min(5, classes)``.
    """
    images = len(loader.dataset)
    if images == 0:
        raise InputError("the validation data is empty: nothing to evaluate")
    (metrics,) = trainer.validate(module, dataloaders=loader, verbose=False)
    return {
        "top1_err": float(metrics["val/top1_err"]),
        "top5_err": float(metrics["val/top5_err"]),
        "loss": float(metrics["val/loss"]),
        "images": images,
    }


def prune_and_evaluate(
    trainer: lightning.Trainer,
    module: ClassificationModule,
    blocks: Sequence[str],
    loader: DataLoader,
) -> dict[str, Any]:
    """Evaluate ``module``, prune ``blocks`` of its model (in place), evaluate again.

    Args:
        trainer: runs the evaluations (devices, precision).
        module: a classification module whose model has SE blocks.
        blocks: selectors of ``backbones.prune.select_se_blocks`` (e.g. ``["SE_5"]``).
        loader: validation batches.

    Returns:
        ``pruned`` (block names), ``params_before`` / ``params_after`` / ``params_saved`` /
        ``params_saved_pct`` (of the model before), ``before`` and ``after`` (:func:`evaluate`),
        and ``delta_top1_err`` / ``delta_top5_err`` (after minus before, percentage points).
    """
    model = module.model
    params_before = count_parameters(model)
    select_se_blocks(model, blocks)  # a bad selector fails before the (long) evaluation
    before = evaluate(trainer, module, loader)
    pruned = prune_se(model, blocks)
    params_after = count_parameters(model)
    after = evaluate(trainer, module, loader)
    saved = params_before - params_after
    return {
        "pruned": pruned,
        "params_before": params_before,
        "params_after": params_after,
        "params_saved": saved,
        "params_saved_pct": 100.0 * saved / params_before,
        "before": before,
        "after": after,
        "delta_top1_err": after["top1_err"] - before["top1_err"],
        "delta_top5_err": after["top5_err"] - before["top5_err"],
    }


def _block_list(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ... {names[-1]}"


def markdown_table(result: dict[str, Any], *, model_name: str) -> str:
    """Two rows, the model as loaded and pruned: parameters and top-1 / top-5 error."""
    before, after = result["before"], result["after"]
    pruned = result["pruned"]
    loaded_row = (
        f"| as loaded | {result['params_before'] / 1e6:.3f} | {before['top1_err']:.2f} | "
        f"{before['top5_err']:.2f} |"
    )
    pruned_row = (
        f"| without {_block_list(pruned)} ({len(pruned)} SE blocks) | "
        f"{result['params_after'] / 1e6:.3f} (-{result['params_saved_pct']:.2f}%) | "
        f"{after['top1_err']:.2f} ({result['delta_top1_err']:+.2f}) | "
        f"{after['top5_err']:.2f} ({result['delta_top5_err']:+.2f}) |"
    )
    header = f"| {model_name} | params (M) | top-1 err (%) | top-5 err (%) |"
    return f"{header}\n|---|---|---|---|\n{loaded_row}\n{pruned_row}"


def write_result(path: Path, result: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """``{**meta, **result}`` as JSON at ``path``; returns the document."""
    document = {**meta, **result}
    path.write_text(json.dumps(document, indent=2))
    return document
