"""Every registry model in timm's registry, as ``sebench_<name>``.

After ``import backbones``, ``timm.create_model("sebench_se_resnet50", features_only=True,
out_indices=(1, 2, 3, 4))`` builds our model and ``timm.list_models("sebench_*")`` lists them,
so code that finds its trunk through timm (transformers' ``TimmBackbone`` and DETR's
``use_timm_backbone``, mmdet's ``TIMMBackbone``, effdet, research scripts) takes ours unchanged.

timm is optional, and importing it costs 2-4 s against 0.01 s for ``import backbones``, so
importing ``backbones`` never imports timm: where timm is already imported the models register at
once, otherwise an import hook registers them right after timm's own import and removes itself
(timm has no plug-in entry points for models). Registration builds nothing; it takes a few ms.

The entrypoints honour what timm's callers pass: ``pretrained`` (False only; the registry has no
weights of its own to download), ``pretrained_cfg`` (a tag, "cifar10" or "cifar100" for the CIFAR
models, a dict or a ``PretrainedCfg``) and ``pretrained_cfg_overlay``, ``features_only``,
``out_indices``, ``in_chans`` (the stem is built for it), ``num_classes``, ``global_pool``
("avg", "max"), ``drop_rate``, ``drop_path_rate`` and ``drop_block_rate`` (0 only),
``output_stride`` (families that implement it; 32, no dilation, everywhere), ``device``,
``dtype`` and every registry keyword (the SE knobs, ``stride_in_1x1``, ...). timm itself loads
``checkpoint_path`` into the built model: a registry state dict, which a ``features_only``
extractor also takes (the head's keys are ignored).

An unknown ``sebench_*`` name raises an error listing close matches: timm checks names itself,
before any entrypoint runs, with a bare "Unknown model" message, and offers no hook for it; the
only change this module makes to timm is to wrap that check (``_resolve_model_source``), for
``sebench_*`` names only.
"""

from __future__ import annotations

import difflib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

from torch import nn

from ._builder import accepted_kwargs, create_model
from ._pretrained_cfg import datasets_of, features_cfg, pretrained_cfg
from ._registry import list_models, model_class
from .errors import InputError

__all__ = ["PREFIX", "UnknownTimmModelError", "register_with_timm", "timm_name"]

PREFIX = "sebench_"
# Filled when the models register: timm's register_model reads the cfgs of an entrypoint's
# module from its `default_cfgs`.
default_cfgs: dict[str, Any] = {}
NO_DILATION = 32
_registered = False


class UnknownTimmModelError(InputError, RuntimeError):
    """An unknown ``sebench_*`` name; a RuntimeError too, which timm raises for unknown names."""


def timm_name(name: str) -> str:
    """The timm name of registry model ``name``: ``"se_resnet50"`` -> ``"sebench_se_resnet50"``."""
    return PREFIX + name


def _load_hint(name: str) -> str:
    from .weights.resnet import TIMM_EQUIVALENTS  # only for this message: keeps imports light

    own = sorted(t for t, (ours, _) in TIMM_EQUIVALENTS.items() if ours == name)
    sources = f"here: {', '.join(own)}" if own else f"of {', '.join(sorted(TIMM_EQUIVALENTS))}"
    return (
        f"{timm_name(name)} has no weights to download (pretrained=True): build it with "
        "pretrained=False and load weights with checkpoint_path=PATH (a state dict of "
        f"backbones.create_model({name!r}): torch.save(model.state_dict(), PATH)) or with "
        "backbones.weights.load_timm_weights(model, timm_model), which maps timm's weights "
        f"({sources})"
    )


def _check_tag(name: str, cfg: Any) -> None:
    choices = datasets_of(model_class(name))
    if isinstance(cfg, str) and cfg not in choices:
        raise InputError(
            f"{timm_name(name)} has no pretrained tag {cfg!r}; its tags are "
            f"{[timm_name(name) + '.' + c for c in choices]}"
        )


def _check_output_stride(name: str, kwargs: dict[str, Any]) -> None:
    output_stride = kwargs.get("output_stride")
    if "output_stride" in accepted_kwargs(model_class(name)):
        return
    kwargs.pop("output_stride", None)
    if output_stride not in (None, NO_DILATION):
        able = sorted(
            {model_class(n).__name__ for n in list_models()
             if "output_stride" in accepted_kwargs(model_class(n))}
        )
        raise InputError(
            f"{timm_name(name)} ({model_class(name).__name__}) has no dilated stages, so "
            f"output_stride={output_stride} cannot be built (only {NO_DILATION}); families with "
            f"output_stride: {', '.join(able) or 'none in this version'}"
        )


def _translate_kwargs(name: str, kwargs: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """timm's keywords -> ``create_model``'s; those without an equivalent are checked here."""
    kwargs = dict(kwargs)
    for key in ("drop_path_rate", "drop_block_rate"):
        if kwargs.pop(key, 0.0):
            raise InputError(
                f"{timm_name(name)}: {key} must be 0; the registry models have no stochastic "
                "depth or DropBlock (drop_rate, the dropout before the classifier, is supported)"
            )
    _check_output_stride(name, kwargs)
    # timm builds the model for the cfg's classes and channels unless told otherwise.
    kwargs.setdefault("num_classes", cfg["num_classes"])
    kwargs.setdefault("in_chans", cfg["input_size"][0])
    if kwargs.get("features_only"):
        # An extractor has no classifier and no pooling (timm ignores both too).
        kwargs.pop("num_classes")
        kwargs.pop("global_pool", None)
    return kwargs


def _create(
    name: str,
    *,
    pretrained: bool,
    pretrained_cfg_arg: Any,
    pretrained_cfg_overlay: dict[str, Any] | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    from timm.models import resolve_pretrained_cfg

    if pretrained:
        raise InputError(_load_hint(name))
    _check_tag(name, pretrained_cfg_arg)
    cfg = resolve_pretrained_cfg(
        timm_name(name), pretrained_cfg_arg, pretrained_cfg_overlay
    ).to_dict()
    kwargs = _translate_kwargs(name, kwargs, cfg)
    global_pool = kwargs.pop("global_pool", None)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    model = create_model(name, **kwargs)
    if global_pool is not None:
        model.set_global_pool(global_pool)
    if kwargs["in_chans"] != cfg["input_size"][0]:
        # The model's own cfg already describes its channels.
        cfg.update(input_size=model.pretrained_cfg["input_size"],
                   mean=model.pretrained_cfg["mean"], std=model.pretrained_cfg["std"])
    model.pretrained_cfg = model.default_cfg = (
        features_cfg(cfg) if kwargs.get("features_only") else cfg
    )
    return model.to(device=device, dtype=dtype) if device or dtype else model


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        cache_dir: Any = None,  # timm passes it for downloads; there are none
        **kwargs: Any,
    ) -> nn.Module:
        return _create(
            name,
            pretrained=pretrained,
            pretrained_cfg_arg=pretrained_cfg,
            pretrained_cfg_overlay=pretrained_cfg_overlay,
            kwargs=kwargs,
        )

    entrypoint.__name__ = entrypoint.__qualname__ = timm_name(name)
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"The sebench registry's {name} (backbones.create_model({name!r}))."
    return entrypoint


def _cfgs(name: str) -> dict[str, dict[str, Any]]:
    """timm's cfgs of one model, keyed ``arch`` or ``arch.tag`` (the first tag is the default)."""
    model_cls = model_class(name)
    datasets = datasets_of(model_cls)
    if len(datasets) == 1:
        return {timm_name(name): pretrained_cfg(model_cls, timm_name(name))}
    return {
        f"{timm_name(name)}.{dataset}{'*' if i == 0 else ''}": pretrained_cfg(
            model_cls, timm_name(name), dataset=dataset
        )
        for i, dataset in enumerate(datasets)
    }


def register_with_timm() -> None:
    """Register every registry model with timm as ``sebench_<name>`` (once; imports timm)."""
    global _registered
    if _registered:
        return
    from timm.models import generate_default_cfgs, register_model

    default_cfgs.update(
        generate_default_cfgs({k: v for name in list_models() for k, v in _cfgs(name).items()})
    )
    module = sys.modules[__name__]
    for name in list_models():
        entrypoint = _entrypoint(name)
        # timm lists each name in the module's __all__: make it a module attribute too.
        setattr(module, entrypoint.__name__, entrypoint)
        register_model(entrypoint)
    _suggest_close_matches()
    _registered = True


def _suggest_close_matches() -> None:
    """Make timm's "Unknown model" error list close ``sebench_*`` names."""
    import timm.models._factory as factory

    resolve = getattr(factory, "_resolve_model_source", None)
    if resolve is None or getattr(resolve, "_sebench", False):
        return  # another timm version: its own message stays

    def resolve_model_source(model_name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return resolve(model_name, *args, **kwargs)
        except RuntimeError as err:
            arch = str(model_name).split(".")[0]
            if not arch.startswith(PREFIX):
                raise
            names = [timm_name(n) for n in list_models()]
            close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownTimmModelError(
                f"unknown model {arch!r}{hint} (timm.list_models('{PREFIX}*') lists the "
                f"{len(names)} sebench models)"
            ) from err

    resolve_model_source._sebench = True  # type: ignore[attr-defined]
    factory._resolve_model_source = resolve_model_source


class _RegisterAfterTimmImport(importlib.abc.MetaPathFinder):
    """An import hook that registers the models as soon as ``import timm`` has run.

    It stays in ``sys.meta_path`` until then: ``importlib.util.find_spec("timm")``, which
    transformers calls to see whether timm is installed, finds the spec without importing it.
    """

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != "timm":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find and finder is not self else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader, self)
                return spec
        return None


class _RegisteringLoader(importlib.abc.Loader):
    """Runs timm's own loader, puts it back in place, then registers the models."""

    def __init__(self, loader: importlib.abc.Loader, hook: _RegisterAfterTimmImport) -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        if self.hook in sys.meta_path:
            sys.meta_path.remove(self.hook)
        try:
            register_with_timm()
        except Exception as err:  # noqa: BLE001  (a failure here must not break `import timm`)
            warnings.warn(f"the sebench models could not be registered with timm: {err!r}",
                          stacklevel=2)


def _install() -> None:
    if "timm" in sys.modules:
        register_with_timm()
    else:
        sys.meta_path.insert(0, _RegisterAfterTimmImport())


_install()
