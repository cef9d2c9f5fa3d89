"""Analyses of trained SE models: excitations per class (the paper's Sec. 7.2) and SE pruning."""

from .cli import add_parsers
from .excitations import ExcitationRecorder, ExcitationStats, block_metrics, collect_excitations
from .loading import LoadedModel, build_data_module, load_classifier
from .prune import count_parameters, evaluate, prune_and_evaluate

__all__ = [
    "ExcitationRecorder",
    "ExcitationStats",
    "LoadedModel",
    "add_parsers",
    "block_metrics",
    "build_data_module",
    "collect_excitations",
    "count_parameters",
    "evaluate",
    "load_classifier",
    "prune_and_evaluate",
]
