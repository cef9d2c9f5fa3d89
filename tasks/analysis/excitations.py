"""SE excitations per channel, per class and per block: the paper's Sec. 7.2, Figs. 7 and 8.

Hu et al., "Squeeze-and-Excitation Networks" (arXiv:1709.01507), Sec. 7.2, sample fifty
validation images of a few classes, record the excitation of fifty channels in the last SE
block of each stage, and plot the class means beside the mean over all classes (Fig. 7) and the
mean and spread within a class (Fig. 8). Early blocks look alike for every class, later ones
are class-specific, and SE_5_2 saturates (values near 0 or 1).

The excitation is read by a forward hook on each SE block's ``gate`` module (its output is the
excitation; no model code changes). For ``se_squeeze="none"`` the gate gives a map per channel,
which is averaged spatially. Two numbers per block summarise the figures:

* class specificity: the mean pairwise RMS distance (over channels) between class-mean
  excitations, divided by the mean RMS within-class standard deviation. 0 means every class has
  the same mean; 1 means class means lie one within-class spread apart. With ``n`` samples per
  class, sampling noise alone gives about ``sqrt(2 / n)`` (the "noise floor" reported with it).
* saturation: the share of excitation values (all sampled images, all channels) below ``eps``
  ("near 0": the channel is switched off) and above ``1 - eps`` ("near 1": passed unchanged);
  ``eps`` is 0.05 by default. Values are sigmoid outputs for the default gate.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from backbones.errors import InputError

from .loading import progress

__all__ = [
    "ALL",
    "ExcitationRecorder",
    "ExcitationStats",
    "block_metrics",
    "collect_excitations",
    "plot_class_means",
    "plot_within_class",
    "sampled_channels",
    "write_json",
    "write_npz",
    "write_summary",
]

ALL = "all"  # key of the mean over every class, beside the chosen classes' names


class ExcitationRecorder:
    """Forward hooks on the ``gate`` of each SE block; one ``[N, C]`` tensor per block and batch.

    Use as a context manager (the hooks are removed on exit); :meth:`pop` returns and clears
    what the last forward pass recorded.

    Args:
        blocks (Mapping[str, nn.Module]): name -> SE block (anything with a ``gate`` submodule).
    """

    def __init__(self, blocks: Mapping[str, nn.Module]) -> None:
        missing = [name for name, block in blocks.items() if not hasattr(block, "gate")]
        if missing:
            raise InputError(f"SE blocks {missing} have no 'gate' module to hook")
        self.blocks = dict(blocks)
        self._batch: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> Self:
        for name, block in self.blocks.items():
            self._handles.append(block.gate.register_forward_hook(partial(self._hook, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        value = output.detach()
        if value.ndim == 4:  # NoSqueeze: a map per channel
            value = value.mean((2, 3))
        if value.ndim != 2:
            raise AssertionError(f"{name}: gate output of shape {tuple(output.shape)}")
        self._batch[name] = value.float()

    def pop(self) -> dict[str, torch.Tensor]:
        """Excitations of the last forward pass, ``{name: [N, C]}``, and forget them."""
        batch, self._batch = self._batch, {}
        return batch


class ExcitationStats:
    """Running per-class sums of excitations, saturation counts, and the chosen classes' samples.

    Args:
        channels (Mapping[str, int]): block name -> channels.
        num_classes (int): labels are 0..num_classes-1.
        keep_classes (Sequence[int]): classes whose individual excitation vectors are kept.
        eps (float): saturation threshold (values < eps or > 1 - eps).
    """

    def __init__(
        self,
        channels: Mapping[str, int],
        num_classes: int,
        keep_classes: Sequence[int],
        *,
        eps: float = 0.05,
    ) -> None:
        self.channels = dict(channels)
        self.num_classes = num_classes
        self.keep_classes = list(keep_classes)
        self.eps = eps
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.sums = {n: np.zeros((num_classes, c)) for n, c in self.channels.items()}
        self.squares = {n: np.zeros((num_classes, c)) for n, c in self.channels.items()}
        self.near0 = dict.fromkeys(self.channels, 0)
        self.near1 = dict.fromkeys(self.channels, 0)
        self.minimum = dict.fromkeys(self.channels, math.inf)
        self.maximum = dict.fromkeys(self.channels, -math.inf)
        self._kept: dict[str, list[np.ndarray]] = {n: [] for n in self.channels}
        self._kept_labels: list[np.ndarray] = []

    def update(self, batch: Mapping[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Add one batch: ``{name: [B, C]}`` excitations of images with ``labels`` ``[B]``."""
        missing = sorted(set(self.channels) - set(batch))
        if missing:
            raise AssertionError(f"no excitation recorded for {missing}: was the gate called?")
        labels_np = labels.cpu().numpy().astype(np.int64)
        np.add.at(self.counts, labels_np, 1)
        keep = np.isin(labels_np, self.keep_classes)
        for name, value in batch.items():
            if name not in self.channels:
                continue
            values = value.cpu().double().numpy()
            if values.shape[1] != self.channels[name]:
                raise AssertionError(f"{name}: {values.shape[1]} channels, not {self.channels[name]}")
            np.add.at(self.sums[name], labels_np, values)
            np.add.at(self.squares[name], labels_np, values**2)
            self.near0[name] += int((values < self.eps).sum())
            self.near1[name] += int((values > 1 - self.eps).sum())
            self.minimum[name] = min(self.minimum[name], float(values.min(initial=math.inf)))
            self.maximum[name] = max(self.maximum[name], float(values.max(initial=-math.inf)))
            self._kept[name].append(values[keep].astype(np.float32))
        self._kept_labels.append(labels_np[keep])

    def class_mean(self, name: str) -> np.ndarray:
        """``[K, C]`` mean excitation per class and channel (NaN for classes never seen)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums[name] / self.counts[:, None]

    def class_std(self, name: str) -> np.ndarray:
        """``[K, C]`` standard deviation within each class (population; NaN where unseen)."""
        mean = self.class_mean(name)
        with np.errstate(invalid="ignore", divide="ignore"):
            variance = self.squares[name] / self.counts[:, None] - mean**2
        return np.sqrt(np.clip(variance, 0.0, None))

    def all_mean(self, name: str) -> np.ndarray:
        """``[C]`` mean over every sampled image (the paper's "all classes" reference)."""
        return self.sums[name].sum(0) / max(1, self.counts.sum())

    def all_std(self, name: str) -> np.ndarray:
        """``[C]`` standard deviation over every sampled image."""
        total = max(1, self.counts.sum())
        variance = self.squares[name].sum(0) / total - self.all_mean(name) ** 2
        return np.sqrt(np.clip(variance, 0.0, None))

    def samples(self, name: str) -> np.ndarray:
        """``[n, C]`` excitation vectors of the chosen classes' images (labels: :attr:`sample_labels`)."""
        parts = self._kept[name]
        return np.concatenate(parts) if parts else np.zeros((0, self.channels[name]), np.float32)

    @property
    def sample_labels(self) -> np.ndarray:
        parts = self._kept_labels
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    @property
    def images(self) -> int:
        return int(self.counts.sum())


@torch.inference_mode()
def collect_excitations(
    model: nn.Module,
    loader: DataLoader,
    blocks: Mapping[str, nn.Module],
    *,
    num_classes: int,
    keep_classes: Sequence[int],
    device: torch.device,
    eps: float = 0.05,
) -> ExcitationStats:
    """Run ``model`` (eval mode) over ``loader`` and gather the excitations of ``blocks``.

    Args:
        model: the model; moved to ``device``.
        loader: ``(images, labels)`` batches.
        blocks: name -> SE block of ``model`` (see ``backbones.prune.se_blocks``).
        num_classes: number of labels.
        keep_classes: classes whose per-image vectors are kept (Fig. 8).
        device: where to run.
        eps: saturation threshold.
    """
    model.eval().to(device)
    channels = {name: _block_channels(block) for name, block in blocks.items()}
    stats = ExcitationStats(channels, num_classes, keep_classes, eps=eps)
    with ExcitationRecorder(blocks) as recorder:
        for images, labels in progress(loader, total=len(loader), desc="excitations"):
            model(images.to(device, non_blocking=True))
            stats.update(recorder.pop(), labels)
    return stats


def _block_channels(block: nn.Module) -> int:
    if hasattr(block, "fc2"):
        return int(block.fc2.out_features)
    return int(block.channels)  # IdentitySE


def _rms(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sqrt(np.mean(x**2, axis=axis))


def specificity(means: np.ndarray, stds: np.ndarray) -> float:
    """Mean pairwise RMS distance of class means over the mean RMS within-class std.

    Args:
        means: ``[K, C]`` class means (rows of unseen classes are dropped).
        stds: ``[K, C]`` within-class standard deviations.

    Returns:
        The ratio; NaN with fewer than two classes or constant excitations (a pruned
        block); inf when class means differ but no class varies within itself.
    """
    seen = ~np.isnan(means).any(1)
    means, stds = means[seen], stds[seen]
    if len(means) < 2:
        return math.nan
    distances = torch.cdist(torch.from_numpy(means), torch.from_numpy(means)).numpy()
    pairs = np.triu_indices(len(means), k=1)
    between = float(distances[pairs].mean()) / math.sqrt(means.shape[1])  # RMS over channels
    within = float(_rms(stds).mean())
    if within == 0:  # constant excitations (a pruned block): specific only if the means differ
        return math.inf if between > 0 else math.nan
    return between / within


def _pooled_std(means: np.ndarray, stds: np.ndarray) -> float:
    """Std of all values of all channels, from each channel's mean and std (equal counts)."""
    return float(np.sqrt(np.mean(stds**2 + (means - means.mean()) ** 2)))


def block_metrics(stats: ExcitationStats, name: str, classes: Sequence[int]) -> dict[str, float]:
    """The summary numbers of one block (see the module docstring).

    Returns:
        ``mean``, ``std`` (over all sampled values), ``min``, ``max``, ``specificity`` (chosen
        classes), ``specificity_all`` (every sampled class), ``noise_floor`` (sqrt(2 / n), n the
        mean samples per chosen class), ``near_0`` and ``near_1`` (fractions).
    """
    means, stds = stats.class_mean(name), stats.class_std(name)
    values = stats.images * stats.channels[name]
    per_class = stats.counts[list(classes)]
    n = float(per_class.mean()) if len(per_class) else 0.0
    return {
        "mean": float(stats.all_mean(name).mean()),
        "std": _pooled_std(stats.all_mean(name), stats.all_std(name)),
        "min": stats.minimum[name],
        "max": stats.maximum[name],
        "specificity": specificity(means[list(classes)], stds[list(classes)]),
        "specificity_all": specificity(means, stds),
        "noise_floor": math.sqrt(2.0 / n) if n > 0 else math.nan,
        "near_0": stats.near0[name] / values if values else math.nan,
        "near_1": stats.near1[name] / values if values else math.nan,
    }


def sampled_channels(channels: int, count: int) -> np.ndarray:
    """``count`` evenly spaced channel indices (all of them when ``count`` >= ``channels``)."""
    if count <= 0 or count >= channels:
        return np.arange(channels)
    return np.unique(np.linspace(0, channels - 1, count).round().astype(np.int64))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def write_json(
    path: Path,
    stats: ExcitationStats,
    *,
    classes: Sequence[int],
    names: Sequence[str],
    metrics: Mapping[str, Mapping[str, float]],
    sites: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """Per block: the chosen classes' and all classes' mean and std per channel, plus metrics.

    Layout: ``{**meta, "classes": [{"index", "name", "samples"}], "all_classes": {"classes",
    "images"}, "saturation_eps", "blocks": {SE_s_b: {"path", "stage", "block", "channels",
    "pruned", "metrics": {...}, "mean": {class name | "all": [C floats]}, "std": {...}}}}``.
    """
    blocks: dict[str, Any] = {}
    for name in stats.channels:
        means, stds = stats.class_mean(name), stats.class_std(name)
        per_class = {names[k]: (means[k], stds[k]) for k in classes}
        blocks[name] = {
            **sites[name],
            "channels": stats.channels[name],
            "metrics": {k: _finite(v) for k, v in metrics[name].items()},
            "mean": {**{c: m.tolist() for c, (m, _) in per_class.items()},
                     ALL: stats.all_mean(name).tolist()},
            "std": {**{c: s.tolist() for c, (_, s) in per_class.items()},
                    ALL: stats.all_std(name).tolist()},
        }
    document = {
        **meta,
        "classes": [
            {"index": int(k), "name": names[k], "samples": int(stats.counts[k])} for k in classes
        ],
        "all_classes": {"classes": int((stats.counts > 0).sum()), "images": stats.images},
        "saturation_eps": stats.eps,
        "blocks": blocks,
    }
    # NaN (a class with no samples, a specificity of one class) is not JSON: null instead.
    path.write_text(json.dumps(_nan_to_none(document), indent=1, allow_nan=False))
    return document


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def write_npz(path: Path, stats: ExcitationStats, *, classes: Sequence[int], names: Sequence[str]) -> list[str]:
    """Arrays of every class, not only the chosen ones. Keys:

    ``class_index`` [K], ``class_name`` [K], ``class_count`` [K], ``selected`` (chosen class
    indices), ``sample_label`` [n] (labels of the kept per-image vectors), and per block
    ``<block>/class_mean`` [K, C], ``<block>/class_std`` [K, C], ``<block>/all_mean`` [C],
    ``<block>/all_std`` [C], ``<block>/samples`` [n, C] (the chosen classes' images).

    Returns:
        The keys written.
    """
    arrays: dict[str, np.ndarray] = {
        "class_index": np.arange(stats.num_classes),
        "class_name": np.asarray(list(names)),
        "class_count": stats.counts,
        "selected": np.asarray(list(classes), dtype=np.int64),
        "sample_label": stats.sample_labels,
    }
    for name in stats.channels:
        arrays[f"{name}/class_mean"] = stats.class_mean(name).astype(np.float32)
        arrays[f"{name}/class_std"] = stats.class_std(name).astype(np.float32)
        arrays[f"{name}/all_mean"] = stats.all_mean(name).astype(np.float32)
        arrays[f"{name}/all_std"] = stats.all_std(name).astype(np.float32)
        arrays[f"{name}/samples"] = stats.samples(name)
    np.savez_compressed(path, **arrays)
    return list(arrays)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}" if math.isfinite(value) else "n/a"


def _num(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def write_summary(
    path: Path,
    metrics: Mapping[str, Mapping[str, float]],
    *,
    title: str,
    class_line: str,
    eps: float,
) -> str:
    """A markdown table, one row per block, with how to read it; returns the text."""
    floor = next(iter(metrics.values()))["noise_floor"] if metrics else math.nan
    lines = [
        f"# SE excitations: {title}",
        "",
        class_line,
        "",
        (
            "| block | mean | std | min | max | class specificity (chosen) | (all classes) "
            f"| near 0 (< {eps:g}) % | near 1 (> {1 - eps:g}) % |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics.items():
        lines.append(
            f"| {name} | {_num(m['mean'])} | {_num(m['std'])} | {_num(m['min'])} | "
            f"{_num(m['max'])} | {_num(m['specificity'])} | {_num(m['specificity_all'])} | "
            f"{_pct(m['near_0'])} | {_pct(m['near_1'])} |"
        )
    lines += [
        "",
        (
            "Class specificity: mean pairwise RMS distance between class-mean excitation "
            "vectors, divided by the mean RMS within-class standard deviation. 0: every class "
            "gets the same excitations (class-agnostic); 1: class means are one within-class "
            f"spread apart. Sampling noise alone gives about sqrt(2/n) = {_num(floor)} for the "
            "chosen classes. Paper (Sec. 7.2): low in early blocks, rising with depth."
        ),
        "",
        (
            f"Saturation: share of all excitation values below {eps:g} (channel switched off) "
            f"or above {1 - eps:g} (passed unchanged); a block with most values near 1 is close "
            "to an identity, a candidate for `sebench prune-se` (paper: SE_5_2, SE_5_3)."
        ),
    ]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "class"


def _panels(count: int) -> tuple[Any, np.ndarray]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_class_means(
    path: Path,
    stats: ExcitationStats,
    *,
    classes: Sequence[int],
    names: Sequence[str],
    channels: int,
    title: str,
) -> Path:
    """Fig. 7: mean excitation of sampled channels, one line per class plus "all", per block."""
    import matplotlib.pyplot as plt

    fig, axes = _panels(len(stats.channels))
    for ax, name in zip(axes, stats.channels):
        picked = sampled_channels(stats.channels[name], channels)
        means = stats.class_mean(name)
        x = np.arange(len(picked))
        for k in classes:
            ax.plot(x, means[k, picked], linewidth=1.0, label=names[k])
        ax.plot(x, stats.all_mean(name)[picked], "k--", linewidth=1.2, label=ALL)
        ax.set_title(name)
        ax.set_xlabel(f"channel index ({len(picked)} of {stats.channels[name]})")
        ax.set_ylabel("activation")
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_within_class(
    out_dir: Path,
    stats: ExcitationStats,
    *,
    classes: Sequence[int],
    names: Sequence[str],
    channels: int,
    title: str,
) -> list[Path]:
    """Fig. 8: mean and std of the excitations within one class, one PNG per chosen class."""
    import matplotlib.pyplot as plt

    written = []
    labels = stats.sample_labels
    for k in classes:
        fig, axes = _panels(len(stats.channels))
        for ax, name in zip(axes, stats.channels):
            picked = sampled_channels(stats.channels[name], channels)
            values = stats.samples(name)[labels == k][:, picked]
            x = np.arange(len(picked))
            mean, std = values.mean(0), values.std(0)
            ax.plot(x, mean, linewidth=1.2, label="mean")
            ax.fill_between(x, mean - std, mean + std, alpha=0.3, label="mean ± std")
            ax.set_title(name)
            ax.set_xlabel(f"channel index ({len(picked)} of {stats.channels[name]})")
            ax.set_ylabel("activation")
        axes[0].legend(fontsize="small")
        fig.suptitle(f"{title}: class {names[k]} ({int(stats.counts[k])} images)")
        fig.tight_layout()
        path = out_dir / f"fig8_{_slug(names[k])}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
