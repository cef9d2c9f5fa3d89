"""Name -> entrypoint registry, filled by ``@register_model`` in each family module."""

from __future__ import annotations

import difflib
import fnmatch
import sys
from typing import Callable, TypeVar

from torch import nn

from ._base import Backbone
from .errors import InputError

_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_model_classes: dict[str, type[Backbone]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(model_cls: type[Backbone]) -> Callable[[F], F]:
    """Register an entrypoint under its function name; ``model_cls`` is the class it builds.

    The class is kept so ``create_model`` can check keyword arguments against its signature
    before building anything. A name registered twice is an error.
    """

    def decorator(fn: F) -> F:
        name = fn.__name__
        if name in _entrypoints:
            raise InputError(f"model {name!r} is registered twice ({fn.__module__})")
        _entrypoints[name] = fn
        _model_classes[name] = model_cls
        module = sys.modules[fn.__module__]
        if hasattr(module, "__all__"):
            module.__all__.append(name)
        return fn

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the fnmatch ``pattern``, sorted."""
    return sorted(fnmatch.filter(_entrypoints, pattern))


def model_families() -> list[str]:
    """Class names of the registered model families, sorted."""
    return sorted({cls.__name__ for cls in _model_classes.values()})


def is_model(name: str) -> bool:
    return name in _entrypoints


def _check_name(name: str) -> None:
    if name not in _entrypoints:
        close = difflib.get_close_matches(name, _entrypoints, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InputError(
            f"unknown model {name!r}{hint} (see backbones.list_models() or `sebench models`)"
        )


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    _check_name(name)
    return _entrypoints[name]


def model_class(name: str) -> type[Backbone]:
    _check_name(name)
    return _model_classes[name]
