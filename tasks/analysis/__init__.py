"""Analyses of trained SE models: excitations per class (the paper's Sec. 7.2) and SE pruning.

Modules: ``excitations`` (hooks, statistics, plots), ``prune`` (evaluation before and after
``backbones.prune_se``), ``loading`` (checkpoints, data modules, sampling), ``commands`` (what the
two commands run) and ``cli`` (their options). Only ``cli`` is imported here: ``sebench`` imports
this package to build its parser, and the rest pulls in Lightning.
"""

from .cli import add_parsers

__all__ = ["add_parsers"]
