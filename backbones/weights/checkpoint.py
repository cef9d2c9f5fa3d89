"""Reading a registry model's weights from the files the project and its users write.

Three layouts are accepted: a plain ``state_dict`` of a registry model (``torch.save(model.
state_dict())``), a ``{"state_dict" | "model": state_dict}`` wrapper, and a Lightning checkpoint of
``sebench fit`` (its ``ClassificationModule`` keeps the backbone as ``self.model``, so keys carry
a ``model.`` prefix, and ``hyper_parameters`` name the model). Files are read with
``torch.load(weights_only=True)``: tensors and plain containers only, no code runs while loading.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError

__all__ = ["RegistryCheckpoint", "check_state_dict", "read_checkpoint", "state_dict_mismatches"]

_PREFIX = "model."


@dataclasses.dataclass
class RegistryCheckpoint:
    """Weights of a registry model and what the file says about them.

    Attributes:
        path: the file read.
        state_dict: the model's tensors, without a Lightning ``model.`` prefix.
        model_name: registry name (from the checkpoint, else the caller's; None if neither).
        model_kwargs: extra ``create_model`` keywords the weights were built with.
        num_classes: classifier outputs (hyper-parameters, else rows of ``fc.weight``; None).
        datamodule_hparams: the Lightning data module's hyper-parameters ({} for other files).
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    model_name: str | None
    model_kwargs: dict[str, Any]
    num_classes: int | None
    datamodule_hparams: dict[str, Any]


def _load(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InputError(
            f"{path} holds objects other than tensors and plain containers, which are not loaded "
            f"(torch.load weights_only=True): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputError(f"{path} is not a PyTorch checkpoint: {err}") from err


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(torch.is_tensor(v) for v in value.values())
    )


def read_checkpoint(
    path: str | Path,
    *,
    model_name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> RegistryCheckpoint:
    """Read registry weights from any of the accepted layouts (see the module docstring).

    Args:
        path: the file.
        model_name: the registry name, needed by the caller for files that do not name it;
            checked against a Lightning checkpoint's own.
        model_kwargs: registry keywords of such files; checked against a Lightning
            checkpoint's own.

    Raises:
        ValueError: a missing or unreadable file, an unknown layout, or a name or keywords that
            disagree with the checkpoint's.
    """
    path = Path(path)
    content = _load(path)
    given_kwargs = dict(model_kwargs or {})
    if isinstance(content, Mapping) and "state_dict" in content and "hyper_parameters" in content:
        hparams = content["hyper_parameters"]
        saved_name = hparams.get("model_name")
        if saved_name is None:
            raise InputError(
                f"{path}: a Lightning checkpoint without hyper_parameters.model_name; expected "
                "one written by a classification run (sebench fit)"
            )
        saved_kwargs = dict(hparams.get("model_kwargs") or {})
        if model_name is not None and model_name != saved_name:
            raise InputError(
                f"{path} holds a {saved_name}, not a {model_name}; drop the model name"
            )
        if given_kwargs and given_kwargs != saved_kwargs:
            raise InputError(
                f"{path} was built with model_kwargs {saved_kwargs}, not {given_kwargs}; drop "
                "the model keywords"
            )
        state = {
            k[len(_PREFIX) :]: v for k, v in content["state_dict"].items() if k.startswith(_PREFIX)
        }
        num_classes = hparams.get("num_classes")
        return RegistryCheckpoint(
            path,
            state,
            str(saved_name),
            saved_kwargs,
            None if num_classes is None else int(num_classes),
            dict(content.get("datamodule_hyper_parameters") or {}),
        )
    for wrapper in ("state_dict", "model"):
        if isinstance(content, Mapping) and _is_state_dict(content.get(wrapper)):
            content = content[wrapper]
            break
    if not _is_state_dict(content):
        raise InputError(
            f"{path}: neither a Lightning checkpoint of a classification run (state_dict + "
            "hyper_parameters) nor a state dict of tensors (plain, or under 'state_dict' or "
            "'model')"
        )
    state = dict(content)
    if all(k.startswith(_PREFIX) for k in state):
        state = {k[len(_PREFIX) :]: v for k, v in state.items()}
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else None
    return RegistryCheckpoint(path, state, model_name, given_kwargs, num_classes, {})


def state_dict_mismatches(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    source: str = "the checkpoint",
) -> list[str]:
    """Missing, mis-shaped and unexpected keys of ``given`` against ``expected``, one line each.

    Args:
        expected: the model's state dict.
        given: the weights to load.
        source: what ``given`` is, for the messages ("the checkpoint").
    """
    problems = [
        f"missing from {source}: {k} {tuple(v.shape)}"
        for k, v in expected.items()
        if k not in given
    ]
    problems += [
        f"shape mismatch at {k}: model {tuple(v.shape)}, {source} {tuple(given[k].shape)}"
        for k, v in expected.items()
        if k in given and v.shape != given[k].shape
    ]
    problems += [
        f"unexpected in {source}: {k} {tuple(v.shape)}"
        for k, v in given.items()
        if k not in expected
    ]
    return problems


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise unless ``state_dict`` has exactly ``model``'s keys and shapes.

    Args:
        model: the module the weights are for.
        state_dict: the weights.
        what: the start of the error message, e.g. "weights.pth does not fit se_resnet50".

    Raises:
        ValueError: naming the first missing, unexpected and mis-shaped keys.
    """
    problems = state_dict_mismatches(model.state_dict(), state_dict)
    if problems:
        shown = "\n  ".join(problems[:8])
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise InputError(f"{what} ({len(problems)} problems):\n  {shown}{more}")
