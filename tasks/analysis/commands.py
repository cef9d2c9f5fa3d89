"""What ``sebench excitations`` and ``sebench prune-se`` run; their options are in ``cli.py``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning
import torch
from torch.utils.data import Dataset

import backbones
from backbones.errors import InputError
from backbones.prune import se_blocks, se_sites, select_se_blocks
from tasks.classification.module import ClassificationModule

from . import excitations as ex
from .loading import (
    LoadedModel,
    build_data_module,
    class_names,
    dataset_targets,
    eval_dataset,
    load_classifier,
    make_loader,
    resolve_classes,
    resolve_device,
    sample_per_class,
)
from .prune import markdown_table, prune_and_evaluate, write_result

__all__ = ["run_excitations", "run_prune_se"]


def _load(args: argparse.Namespace) -> tuple[LoadedModel, lightning.LightningDataModule, Dataset]:
    data = build_data_module(
        data_config=args.data_config,
        dataset=args.dataset,
        data_dir=args.data_dir,
        synthetic=args.synthetic,
        overrides={"batch_size": args.batch_size, "num_workers": args.num_workers},
    )
    loaded = load_classifier(
        args.ckpt,
        model_name=args.model,
        model_kwargs=backbones.parse_kwargs(args.model_kwargs, "--model-kwargs"),
        num_classes=args.num_classes,
        fallback_num_classes=_data_classes(data),
    )
    data_classes = _data_classes(data)
    if data_classes is not None and data_classes != loaded.num_classes:
        raise InputError(
            f"the model has {loaded.num_classes} classes, the data {data_classes} "
            f"({type(data).__name__}): a checkpoint of another dataset?"
        )
    return loaded, data, eval_dataset(data)


def _data_classes(data: lightning.LightningDataModule) -> int | None:
    value = getattr(data, "num_classes", None)  # ImageFolder's reads the class folders
    return int(value) if value is not None else None


def _evaluation_trainer(args: argparse.Namespace, device: torch.device) -> lightning.Trainer:
    """A Trainer that only evaluates: ``--device``, ``--devices`` processes, ``--precision``."""
    devices: int | list[int] = args.devices
    if device.index is not None:
        if args.devices != 1:
            raise InputError(f"--device {device} names one GPU; use --device cuda --devices N")
        devices = [device.index]
    return lightning.Trainer(
        accelerator=device.type,
        devices=devices,
        # Spawned processes: the command goes on in this one, between its two evaluations.
        strategy="ddp_spawn" if args.devices > 1 else "auto",
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def _loader_options(args: argparse.Namespace, data: lightning.LightningDataModule) -> dict[str, Any]:
    return {
        "batch_size": args.batch_size or getattr(data, "batch_size", 128),
        "num_workers": args.num_workers if args.num_workers is not None
        else getattr(data, "num_workers", 0),
    }


def _meta(loaded: LoadedModel, data: lightning.LightningDataModule) -> dict[str, Any]:
    return {
        "model_name": loaded.model_name,
        "model_kwargs": loaded.model_kwargs,
        "num_classes": loaded.num_classes,
        "checkpoint": loaded.checkpoint,
        "pruned_in_checkpoint": loaded.pruned,
        "dataset": getattr(data, "dataset_name", type(data).__name__),
        "synthetic": bool(getattr(data, "synthetic", False)),
        "split": "validation",
    }


def run_excitations(args: argparse.Namespace) -> int:
    """``sebench excitations``: see the module docstring. Returns 0."""
    if not 0 < args.saturation_eps < 0.5:
        raise InputError(f"--saturation-eps must be in (0, 0.5), got {args.saturation_eps}")
    device = resolve_device(args.device)
    loaded, data, dataset = _load(args)
    model = loaded.model
    chosen_blocks = select_se_blocks(model, args.blocks)
    names = class_names(dataset, data, loaded.num_classes)
    classes = resolve_classes(args.classes, names)
    targets = dataset_targets(dataset)
    indices = sample_per_class(
        targets, range(loaded.num_classes), args.samples_per_class, seed=args.seed
    )
    empty = [names[k] for k in classes if not (targets == k).any()]
    if empty:
        raise InputError(f"no validation images of class(es) {empty}")
    blocks = {name: module for name, module in se_blocks(model).items() if name in chosen_blocks}
    loader = make_loader(dataset, indices, device=device, **_loader_options(args, data))
    stats = ex.collect_excitations(
        model,
        loader,
        blocks,
        num_classes=loaded.num_classes,
        keep_classes=classes,
        device=device,
        eps=args.saturation_eps,
    )
    metrics = {name: ex.block_metrics(stats, name, classes) for name in blocks}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = _meta(loaded, data)
    title = f"{loaded.model_name} on {meta['dataset']}" + (" (synthetic)" if meta["synthetic"] else "")
    sites = {
        s.name: {"path": s.path, "stage": s.stage, "block": s.block,
                 "pruned": not hasattr(blocks[s.name], "fc2")}
        for s in se_sites(model) if s.name in blocks
    }  # fmt: skip
    meta.update(samples_per_class=args.samples_per_class, seed=args.seed)
    ex.write_json(out / "excitations.json", stats, classes=classes, names=names,
                  metrics=metrics, sites=sites, meta=meta)  # fmt: skip
    ex.write_npz(out / "excitations.npz", stats, classes=classes, names=names)
    class_line = (
        f"Classes: {', '.join(f'{names[k]} ({int(stats.counts[k])} images)' for k in classes)}; "
        f"all: {int((stats.counts > 0).sum())} classes, {stats.images} images "
        f"(up to {args.samples_per_class} per class, seed {args.seed}), validation split."
    )
    summary = ex.write_summary(out / "summary.md", metrics, title=title, class_line=class_line,
                               eps=args.saturation_eps)  # fmt: skip
    plot_args = {"classes": classes, "names": names, "channels": args.channels, "title": title}
    ex.plot_class_means(out / "fig7_class_means.png", stats, **plot_args)
    ex.plot_within_class(out, stats, **plot_args)
    print(summary)
    print(f"wrote {out}/: excitations.json, excitations.npz, summary.md, fig7_class_means.png, "
          f"fig8_<class>.png")  # fmt: skip
    return 0


def run_prune_se(args: argparse.Namespace) -> int:
    """``sebench prune-se``: see the module docstring. Returns 0."""
    device = resolve_device(args.device)
    trainer = _evaluation_trainer(args, device)
    loaded, data, dataset = _load(args)
    loader = make_loader(dataset, None, device=device, **_loader_options(args, data))
    # The classification module evaluates (its torchmetrics, DDP, precision); its model is the
    # checkpoint's, already loaded (and pruned where the checkpoint lacks SE blocks).
    module = ClassificationModule(loaded.model_name, loaded.model_kwargs, loaded.num_classes)
    module.model = loaded.model
    result = prune_and_evaluate(trainer, module, args.blocks, loader)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**_meta(loaded, data), "precision": args.precision, "devices": args.devices}
    if args.save:
        save = Path(args.save)
        save.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in loaded.model.state_dict().items()}, save)
        meta["saved"] = str(save)
    write_result(out / "prune_se.json", result, meta)
    table = markdown_table(result, model_name=loaded.model_name)
    (out / "prune_se.md").write_text(table + "\n")
    print(table)
    print(
        f"pruned {len(result['pruned'])} SE blocks: {result['params_saved']:,} parameters saved "
        f"({result['params_saved_pct']:.2f}%); wrote {out}/prune_se.json"
        + (f" and {args.save}" if args.save else "")
    )
    return 0
