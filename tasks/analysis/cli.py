"""``sebench excitations`` and ``sebench prune-se``: the paper's Sec. 7.2 on a trained model.

``excitations`` records every chosen SE block's excitation over sampled validation images of a
few classes and of all classes, and writes per-class means (JSON, NPZ), Fig. 7 / Fig. 8 style
plots and a markdown summary (class specificity, saturation). ``prune-se`` turns chosen SE
blocks into identities and reports parameters saved and the validation error before and after.
Both read a checkpoint of a classification run (or a plain state dict) and any classification
data module (``--data-config``) or CIFAR (``--dataset``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning
import torch
from torch.utils.data import Dataset

import backbones
from backbones.prune import SELECTOR_HELP, se_blocks, se_sites, select_se_blocks

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

__all__ = ["add_parsers", "run_excitations", "run_prune_se"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_model_and_data(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument(
        "--ckpt",
        required=True,
        metavar="PATH",
        help="a Lightning .ckpt of a classification run (model name, kwargs and classes come "
        "from it), or a plain state_dict .pth of a registry model (needs --model)",
    )
    model.add_argument("--model", metavar="NAME", help="registry name (checked against a .ckpt)")
    model.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="create_model keywords of a plain state_dict, e.g. se_reduction=8 'layers=(1, 1, 1)'",
    )
    model.add_argument("--num-classes", type=_positive_int, help="classes of a plain state_dict")
    data = parser.add_argument_group("data (the validation split, evaluation transform)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-config",
        metavar="FILE.yaml",
        help="a LightningCLI config (configs/*/*.yaml, a run's config.yaml) whose data: section "
        "(class_path + init_args) builds the data module; or that section alone",
    )
    source.add_argument("--dataset", choices=("cifar10", "cifar100"), help="CIFAR shortcut")
    data.add_argument("--data-dir", metavar="DIR", help="data folder (overrides the config's)")
    data.add_argument(
        "--synthetic", action="store_true", help="CIFAR's generated stand-in (no files needed)"
    )
    data.add_argument("--batch-size", type=_positive_int, help="images per batch (module's)")
    data.add_argument("--num-workers", type=int, help="DataLoader workers (module's)")
    parser.add_argument(
        "--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)"
    )


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``excitations`` and ``prune-se`` to ``sebench``'s subcommands."""
    excite = subparsers.add_parser(
        "excitations",
        help="SE excitations per class and block (the paper's Sec. 7.2, Figs. 7 and 8)",
        description="Record the excitation of SE blocks over validation images of chosen "
        "classes and of all classes; write per-class means per channel (JSON, NPZ), Fig. 7 "
        "(class means + all) and Fig. 8 (mean +- std within a class) plots, and a markdown "
        "summary with class specificity and saturation per block.",
    )
    _add_model_and_data(excite)
    excite.add_argument(
        "--classes",
        nargs="+",
        required=True,
        metavar="CLASS",
        help="classes by name (cat dog; Places365: airfield) or label index",
    )
    excite.add_argument(
        "--blocks",
        nargs="+",
        default=["last"],
        metavar="SEL",
        help=f"SE blocks, each {SELECTOR_HELP} (default: last)",
    )
    excite.add_argument(
        "--samples-per-class",
        type=_positive_int,
        default=50,
        help="images sampled per class, for the chosen classes and for 'all' (default: 50)",
    )
    excite.add_argument(
        "--channels",
        type=int,
        default=50,
        help="evenly spaced channels drawn per panel; 0: all (default: 50, as the paper)",
    )
    excite.add_argument(
        "--saturation-eps",
        type=float,
        default=0.05,
        help="values below eps or above 1 - eps count as saturated (default: 0.05)",
    )
    excite.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    excite.add_argument("--out", default="excitations", metavar="DIR", help="output folder")
    excite.set_defaults(run=run_excitations)

    prune = subparsers.add_parser(
        "prune-se",
        help="turn SE blocks into identities; parameters saved, error before and after",
        description="Evaluate top-1/top-5 error on the validation data, prune the chosen SE "
        "blocks (parameter-free identities, no retraining), evaluate again; print a markdown "
        "table and write JSON (the paper drops SE_5_* of SE-ResNet-50: -4%% parameters).",
    )
    _add_model_and_data(prune)
    prune.add_argument(
        "--blocks", nargs="+", required=True, metavar="SEL", help=f"SE blocks, each {SELECTOR_HELP}"
    )
    prune.add_argument("--out", default="prune_se", metavar="DIR", help="output folder")
    prune.add_argument(
        "--save", metavar="PATH", help="save the pruned state_dict here (loads back with --ckpt)"
    )
    prune.set_defaults(run=run_prune_se)


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
        raise ValueError(
            f"the model has {loaded.num_classes} classes, the data {data_classes} "
            f"({type(data).__name__}): a checkpoint of another dataset?"
        )
    return loaded, data, eval_dataset(data)


def _data_classes(data: lightning.LightningDataModule) -> int | None:
    try:
        value = getattr(data, "num_classes", None)  # ImageFolder's reads the class folders
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
    return int(value) if value is not None else None


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
        raise ValueError(f"--saturation-eps must be in (0, 0.5), got {args.saturation_eps}")
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
        raise ValueError(f"no validation images of class(es) {empty}")
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
    loaded, data, dataset = _load(args)
    loader = make_loader(dataset, None, device=device, **_loader_options(args, data))
    result = prune_and_evaluate(loaded.model, args.blocks, loader, device=device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = _meta(loaded, data)
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
