"""Parameter and multiply-accumulate counts, in the paper's convention.

The paper's "GFLOPs" are multiply-accumulates of one image. Counted here: every Conv2d and Linear
MAC, plus one multiply per element for the SE rescale (and, for NoSqueeze, its 1x1 convs on the
full map). Not counted, as in the paper's tables: BN, activations, pooling (the squeeze too),
additions of the residual sum. With this convention SE-ResNet-50 costs 0.26% more than ResNet-50,
the paper's figure (Sec. 3.3).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import InputError
from .layers.se import SEBlock


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    kh, kw = m.kernel_size
    return out.numel() * (m.in_channels // m.groups) * kh * kw


def _linear_macs(m: nn.Linear, out: torch.Tensor) -> int:
    return out.numel() * m.in_features


def _se_macs(m: SEBlock, x: torch.Tensor) -> int:
    # The SE block calls its FC weights functionally, so the Linear hooks do not see them.
    fc_macs = 2 * m.fc1.in_features * m.fc1.out_features
    positions = x.shape[0] * (x.shape[2] * x.shape[3] if m.squeeze == "none" else 1)
    return x.numel() + fc_macs * positions  # the rescale, then the two FC layers


def model_complexity(
    model: nn.Module, input_size: Sequence[int] = (3, 224, 224)
) -> dict[str, int]:
    """Count parameters and MACs of one forward pass of a single image.

    Args:
        model (nn.Module): any model; counted in eval mode on the CPU, then restored.
        input_size (tuple): (C, H, W) of the image.

    Returns:
        ``{"params": int, "macs": int}``.
    """
    if len(input_size) != 3:
        raise InputError(f"input_size must be (C, H, W), got {tuple(input_size)}")
    total = 0

    def add(count: int) -> None:
        nonlocal total
        total += count

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda m, i, o: add(_conv_macs(m, o))))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lambda m, i, o: add(_linear_macs(m, o))))
        elif isinstance(m, SEBlock):
            hooks.append(m.register_forward_hook(lambda m, i, o: add(_se_macs(m, i[0]))))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_size, dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "macs": total}
