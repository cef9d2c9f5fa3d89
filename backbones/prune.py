"""The SE blocks of a registry model by the paper's names, and pruning them into identities.

Hu et al., "Squeeze-and-Excitation Networks" (arXiv:1709.01507), Sec. 7.2 names each SE block
``SE_<stage>_<block>``: SE_2_3 is the third block of ResNet's conv2_x. The same section (and
Sec. 4) finds that dropping the last stage's blocks of SE-ResNet-50 cuts SE's parameter overhead
from ~10% to ~4% at < 0.1% more top-5 error. :func:`se_blocks` names the blocks of every family that way
and :func:`prune_se` replaces chosen blocks, in place, by a parameter-free :class:`IdentitySE`.

Naming, by where each family keeps its SE blocks (stages in the family's own ``se_stage_ids``
numbering, the one ``se_stages`` takes; blocks 1-based within the stage):

* ResNet, ResNeXt, SENet-154: ``layer<i>.<j>.se`` -> ``SE_<i+1>_<j+1>`` (stages 2..5).
* Pre-activation ResNet, WRN, MobileNet, ShuffleNet, VGG: ``stage<s>.<j>.se`` ->
  ``SE_<s>_<j+1>`` (VGG: the j-th conv of block s; MobileNet: the j-th unit at that resolution).
* Shake-Shake / Shake-Even: one SE block per branch, ``stage<s>.<j>.branch<k>.se`` ->
  ``SE_<s>_<j+1>_b<k>``; ``SE_<s>_<j+1>`` selects both branches.
* BN-Inception: module ``inception_<g><letter>`` -> ``SE_<g>_<letter index>`` (3a = SE_3_1,
  4e = SE_4_5, 5b = SE_5_2), i.e. the paper's module groups, not the top-level children.
* Inception-ResNet-v2: ``blocks_<a|b|c>.<j>.se`` -> ``SE_<1|2|3>_<j+1>``.
* Fallback: an SE block elsewhere (a model built outside these layouts) is named ``SE_`` plus its
  module path with dots as underscores, e.g. ``SE_head_se``; stage selectors do not match it.

The paths may carry a prefix (``model.`` of a LightningModule), so wrappers work too.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .errors import InputError
from .layers.se import SEBlock

__all__ = ["IdentitySE", "SESite", "prune_se", "se_blocks", "se_sites", "select_se_blocks"]

SELECTOR_HELP = (
    "a block name (SE_3_4), a stage (SE_5 or stage5: all its blocks), a unit (SE_1_3: both "
    "branches of a Shake-Shake block), a glob (SE_4_*), 'last' (the last block of each stage) or "
    "'all'"
)


class _OnesGate(nn.Module):
    """Excitation of ones, ``[N, C]`` like an average-squeeze SEBlock's gate output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_ones(x.shape[:2])


class IdentitySE(nn.Module):
    """A pruned SE block: no parameters, returns ``x`` (plus ``residual`` if given).

    Same call signature as :class:`~backbones.layers.SEBlock`, so every block calls it as it did
    the SE block; the result equals the block without SE (``branch + shortcut``). ``gate`` is
    still called on every forward, so an excitation hook on it records ones.

    Args:
        channels (int): channels the pruned block rescaled (kept for ``repr`` and analysis).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.gate = _OnesGate()

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """Ones, shaped ``[N, C, 1, 1]`` to broadcast against ``x``."""
        return self.gate(x)[:, :, None, None]

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self.gate(x)  # only for hooks: cheap, and the output does not depend on it
        return x if residual is None else x + residual

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


@dataclasses.dataclass(frozen=True)
class SESite:
    """One SE block of a model: paper-style name, module path, stage and block (None: fallback)."""

    name: str
    path: str
    stage: int | None
    block: int | None


_PREFIX = r"(?:.*\.)?"  # a wrapper's prefix, e.g. "model." of a LightningModule


def _letter(value: str) -> int:
    return ord(value.lower()) - ord("a") + 1


# (pattern over the module path, match -> (stage, block, name suffix)); first match wins, so the
# Shake-Shake branch rule must come before the generic stage rule.
_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[int, int, str]]], ...] = (
    (re.compile(_PREFIX + r"layer(\d+)\.(\d+)\.se"), lambda m: (int(m[1]) + 1, int(m[2]) + 1, "")),
    (
        re.compile(_PREFIX + r"stage(\d+)\.(\d+)\.branch(\d+)\.se"),
        lambda m: (int(m[1]), int(m[2]) + 1, f"_b{m[3]}"),
    ),
    (
        re.compile(_PREFIX + r"stage\d+\.inception_(\d)([a-z])\.se"),
        lambda m: (int(m[1]), _letter(m[2]), ""),
    ),
    (re.compile(_PREFIX + r"stage(\d+)\.(\d+)\.se"), lambda m: (int(m[1]), int(m[2]) + 1, "")),
    (re.compile(_PREFIX + r"blocks_([a-z])\.(\d+)\.se"), lambda m: (_letter(m[1]), int(m[2]) + 1, "")),
)


def _stage_ids(model: nn.Module) -> tuple[int, ...] | None:
    """The family's ``se_stage_ids`` (of the model or the first submodule that has them)."""
    for module in model.modules():
        ids = getattr(type(module), "se_stage_ids", None)
        if ids:
            return tuple(ids)
    return None


def _site(path: str, stage_ids: tuple[int, ...] | None) -> SESite:
    for pattern, parse in _RULES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        stage, block, suffix = parse(match)
        # A path that looks like a family's layout but names a stage the family does not have
        # belongs to some other layout: fall back rather than give a wrong paper name.
        if stage_ids is None or stage in stage_ids:
            return SESite(f"SE_{stage}_{block}{suffix}", path, stage, block)
        break
    return SESite("SE_" + path.replace(".", "_"), path, None, None)


def se_sites(model: nn.Module) -> list[SESite]:
    """Every SE block of ``model`` (pruned ones included), in forward order of the trunk.

    Args:
        model (nn.Module): a registry model, its ``features_only`` version, or a module holding
            one (e.g. a ``ClassificationModule``).

    Returns:
        One :class:`SESite` per SEBlock or IdentitySE, in module registration order.
    """
    stage_ids = _stage_ids(model)
    sites = [
        _site(path, stage_ids)
        for path, module in model.named_modules()
        if isinstance(module, (SEBlock, IdentitySE))
    ]
    names = [site.name for site in sites]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:  # internal invariant: the rules must give every block its own name
        raise AssertionError(f"SE block names are not unique: {duplicates}")
    return sites


def se_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The SE blocks of ``model`` by paper-style name, e.g. ``{"SE_2_1": SEBlock, ...}``.

    Args:
        model (nn.Module): see :func:`se_sites`.

    Returns:
        Name -> module (an SEBlock, or an IdentitySE where pruned), in forward order.
    """
    return {site.name: model.get_submodule(site.path) for site in se_sites(model)}


def _match_selector(selector: str, sites: list[SESite]) -> list[str]:
    key = selector.strip()
    lowered = key.lower()
    if lowered == "all":
        return [s.name for s in sites]
    if lowered == "last":
        last: dict[int, int] = {}
        for s in sites:
            if s.stage is not None and s.block is not None:
                last[s.stage] = max(last.get(s.stage, 0), s.block)
        return [s.name for s in sites if s.stage is not None and s.block == last[s.stage]]
    if stage := re.fullmatch(r"(?:se_|stage)(\d+)", lowered):
        return [s.name for s in sites if s.stage == int(stage[1])]
    if unit := re.fullmatch(r"se_(\d+)_(\d+)", lowered):
        return [s.name for s in sites if (s.stage, s.block) == (int(unit[1]), int(unit[2]))]
    if any(char in key for char in "*?["):
        return [s.name for s in sites if fnmatch.fnmatchcase(s.name.lower(), lowered)]
    return [s.name for s in sites if s.name.lower() == lowered]


def select_se_blocks(model: nn.Module, selectors: str | Iterable[str]) -> list[str]:
    """Names of the SE blocks that ``selectors`` choose, in forward order, without repeats.

    Args:
        model (nn.Module): see :func:`se_sites`.
        selectors (str | Iterable[str]): each one of: a name (``SE_3_4``); a stage (``SE_5`` or
            ``stage5``: every block of it); a unit (``SE_1_3``: both branches of a Shake-Shake
            block); a glob (``SE_4_*``); ``last`` (the last block of each stage, the paper's
            Fig. 7 choice); ``all``. Case-insensitive.

    Raises:
        ValueError: a selector matching no SE block (the message lists the valid names), or a
            model with no SE block at all.
    """
    sites = se_sites(model)
    if not sites:
        raise InputError(f"{type(model).__name__} has no SE blocks (a plain model?)")
    if isinstance(selectors, str):
        selectors = [selectors]
    chosen: set[str] = set()
    for selector in selectors:
        names = _match_selector(str(selector), sites)
        if not names:
            raise InputError(_unknown_selector_message(str(selector), sites))
        chosen.update(names)
    return [s.name for s in sites if s.name in chosen]


def _unknown_selector_message(selector: str, sites: list[SESite]) -> str:
    names = [s.name for s in sites]
    stages = sorted({s.stage for s in sites if s.stage is not None})
    close = difflib.get_close_matches(selector, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"SE block {selector!r} matches no SE block of this model.{hint} Valid names: "
        f"{', '.join(names)}; stages with SE: {stages}. A selector is {SELECTOR_HELP}."
    )


def _channels(module: nn.Module) -> int:
    if isinstance(module, IdentitySE):
        return module.channels
    return module.fc2.out_features


def prune_se(model: nn.Module, blocks: str | Iterable[str]) -> list[str]:
    """Turn the chosen SE blocks into parameter-free identities, in place.

    The model's family code is untouched: each chosen module is swapped for an
    :class:`IdentitySE` under the same attribute, so the block computes exactly what it would
    without SE there (``se_stages`` leaving that stage out) and its parameters leave the model
    (and its ``state_dict``). Blocks pruned before count as chosen and stay pruned.

    Args:
        model (nn.Module): see :func:`se_sites`.
        blocks (str | Iterable[str]): selectors, see :func:`select_se_blocks`.

    Returns:
        The names of the chosen blocks, in forward order.

    Raises:
        ValueError: a selector matching no SE block (the message lists the valid names).
    """
    names = select_se_blocks(model, blocks)
    paths = {site.name: site.path for site in se_sites(model)}
    for name in names:
        parent_path, _, attr = paths[name].rpartition(".")
        parent = model.get_submodule(parent_path)
        old = getattr(parent, attr)
        if not isinstance(old, IdentitySE):
            identity = IdentitySE(_channels(old))
            setattr(parent, attr, identity)
    return names
