"""Every SE site of Fig. 5 against a textbook transcription of the block, for every residual family.

Each reference below writes one residual block out with plain tensor functions (``F.conv2d``,
``F.batch_norm``, the SE equations), reading only the block's weights, and puts the SE block at
the named site of the paper's Fig. 5:

- "standard": on the residual branch's output, before the sum;
- "pre": on the block input, before the branch (an identity shortcut keeps the raw input);
- "post": on the block output, after the sum (and its ReLU, where the block has one);
- "identity": on the shortcut, before the sum;
- "3x3": inside the branch, on the 3x3 conv's output (bottlenecks only, Table 15).

Blocks are taken from registry models, so the tests cover what users build. BN layers get random
statistics and affine parameters, so no site can hide behind a zero-initialised BN.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backbones
from backbones.preact_resnet import PreActBasicBlock, PreActBottleneck
from backbones.resnet import Bottleneck
from backbones.shake_shake import ShakeShakeBlock, ShakeShortcut

Reference = Callable[[nn.Module, torch.Tensor, "str | None"], torch.Tensor]


def _conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(
        x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(
        x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps
    )


def _se(x: torch.Tensor, se: nn.Module) -> torch.Tensor:
    """Eqs. 2-4: x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2), per channel."""
    z = x.mean((2, 3))
    s = torch.sigmoid(
        F.linear(F.relu(F.linear(z, se.fc1.weight, se.fc1.bias)), se.fc2.weight, se.fc2.bias)
    )
    return x * s[:, :, None, None]


def _site(block: nn.Module, site: str | None) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """``at(name, t)``: ``t`` rescaled by the block's SE if ``name`` is the site under test."""
    return lambda name, t: _se(t, block.se) if name == site else t


def resnet_bottleneck(block: Bottleneck, x: torch.Tensor, site: str | None) -> torch.Tensor:
    """He et al. 2015 bottleneck (post-activation): relu(branch(x) + shortcut(x))."""
    at = _site(block, site)
    shortcut = (
        x if block.downsample is None else _bn(_conv(x, block.downsample[0]), block.downsample[1])
    )
    out = F.relu(_bn(_conv(at("pre", x), block.conv1), block.bn1))
    out = at("3x3", F.relu(_bn(_conv(out, block.conv2), block.bn2)))
    out = _bn(_conv(out, block.conv3), block.bn3)
    return at("post", F.relu(at("standard", out) + at("identity", shortcut)))


def _preact_input(block: nn.Module, x: torch.Tensor, at) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-activated input and the shortcut: a projection shares the branch's BN-ReLU (He et
    al. 2016), so with SE-PRE it sees the rescaled input; an identity shortcut keeps the raw one."""
    pre = F.relu(_bn(at("pre", x), block.bn1))
    return pre, x if block.downsample is None else _conv(pre, block.downsample)


def preact_basic(block: PreActBasicBlock, x: torch.Tensor, site: str | None) -> torch.Tensor:
    """He et al. 2016 basic block, also WRN's (dropout: identity in eval); no ReLU after the sum."""
    at = _site(block, site)
    pre, shortcut = _preact_input(block, x, at)
    out = _conv(pre, block.conv1)
    out = _conv(F.relu(_bn(out, block.bn2)), block.conv2)
    return at("post", at("standard", out) + at("identity", shortcut))


def preact_bottleneck(block: PreActBottleneck, x: torch.Tensor, site: str | None) -> torch.Tensor:
    """He et al. 2016 bottleneck: BN-ReLU-1x1, BN-ReLU-3x3 [SE_3x3], BN-ReLU-1x1."""
    at = _site(block, site)
    pre, shortcut = _preact_input(block, x, at)
    out = _conv(pre, block.conv1)
    out = at("3x3", _conv(F.relu(_bn(out, block.bn2)), block.conv2))
    out = _conv(F.relu(_bn(out, block.bn3)), block.conv3)
    return at("post", at("standard", out) + at("identity", shortcut))


def _shake_branch(branch: nn.Sequential, x: torch.Tensor, with_se: bool) -> torch.Tensor:
    """(ReLU-conv-BN) x 2 or 3, then SE on the branch output."""
    i = 1
    while hasattr(branch, f"conv{i}"):
        x = _bn(_conv(F.relu(x), getattr(branch, f"conv{i}")), getattr(branch, f"bn{i}"))
        i += 1
    return _se(x, branch.se) if with_se else x


def _shake_shortcut(shortcut: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gastaldi's projection: ReLU; half from the strided input, half from it shifted by a pixel."""
    if not isinstance(shortcut, ShakeShortcut):
        return x
    x = F.relu(x)
    stride = shortcut.pool.stride
    shifted = torch.zeros_like(x)
    shifted[:, :, 1:, 1:] = x[:, :, :-1, :-1]
    halves = [
        _conv(t[:, :, ::stride, ::stride], c)
        for t, c in ((x, shortcut.conv1), (shifted, shortcut.conv2))
    ]
    return _bn(torch.cat(halves, 1), shortcut.bn)


def shake_block(block: ShakeShakeBlock, x: torch.Tensor, site: str | None) -> torch.Tensor:
    """Test-time Shake-Shake: the two branches' mean (each with SE at its end) plus the shortcut."""
    with_se = site == "standard"
    branches = [_shake_branch(b, x, with_se) for b in (block.branch1, block.branch2)]
    return 0.5 * (branches[0] + branches[1]) + _shake_shortcut(block.shortcut, x)


# (model, small-model keywords, blocks to test, the block's reference, input channels and size)
FAMILIES = {
    "resnet": (
        "se_resnet50",
        dict(layers=(2, 2, 1, 1)),
        ["layer1.0", "layer1.1", "layer2.0"],
        resnet_bottleneck,
    ),
    "resnext": (
        "se_resnext50_32x4d",
        dict(layers=(2, 2, 1, 1)),
        ["layer1.1", "layer2.0"],
        resnet_bottleneck,
    ),
    "senet154": (
        "senet154",
        dict(layers=(2, 2, 1, 1)),
        ["layer1.1", "layer2.0"],
        resnet_bottleneck,
    ),
    "preact_basic": (
        "se_preact_resnet110",
        dict(layers=(2, 2, 2)),
        ["stage1.1", "stage2.0"],
        preact_basic,
    ),
    "preact_bottleneck": (
        "se_preact_resnet164",
        dict(layers=(2, 2, 2)),
        ["stage1.0", "stage1.1", "stage2.0"],
        preact_bottleneck,
    ),
    "wrn": ("se_wrn16_8", dict(depth=10, widen_factor=2), ["stage1.0", "stage2.0"], preact_basic),
    "shake_shake": (
        "se_shake_shake26_2x96d",
        dict(layers=(2, 2, 2), widths=(16, 32, 64)),
        ["stage1.1", "stage2.0"],
        shake_block,
    ),
    "shake_even": (
        "se_shake_even29_2x4x64d",
        dict(layers=(2, 2, 2), widths=(32, 64, 128), base_width=4, stem_width=16),
        ["stage1.0", "stage1.1", "stage2.0"],
        shake_block,
    ),
}


def _cases() -> list[tuple[str, str]]:
    cases = []
    for family, (name, _, _, _) in FAMILIES.items():
        for placement in backbones.model_class(name).se_placements:
            if family == "preact_basic" and placement == "3x3":
                continue  # rejected by the basic block (tests/test_cifar_models.py)
            cases.append((family, placement))
    return cases


def _randomise_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)


def _build(family: str, placement: str) -> tuple[nn.Module, list[str], Reference]:
    name, kwargs, blocks, reference = FAMILIES[family]
    model = backbones.create_model(name, se_placement=placement, **kwargs).eval()
    _randomise_bn(model)
    return model, blocks, reference


def _block_input(model: nn.Module, path: str) -> torch.Tensor:
    """A random map of the shape the block receives in the model."""
    block = model.get_submodule(path)
    in_chs = next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels
    return torch.randn(2, in_chs, 16, 16)


@pytest.mark.parametrize("family,placement", _cases())
@torch.no_grad()
def test_se_site_matches_textbook_block(family: str, placement: str) -> None:
    model, paths, reference = _build(family, placement)
    for path in paths:
        block = model.get_submodule(path)
        x = _block_input(model, path)
        expected = reference(block, x, placement)
        torch.testing.assert_close(
            block(x.clone()),
            expected,
            rtol=1e-4,
            atol=1e-5,
            msg=lambda m, path=path: f"{family} {path}, {placement!r}: not the textbook block\n{m}",
        )
        # The comparison can tell the sites apart: SE here is not SE nowhere, nor SE at any
        # other site with as many channels.
        for other in (None, "standard", "pre", "post", "identity", "3x3"):
            if other == placement or not _fits(reference, block, x, other):
                continue
            assert not torch.allclose(
                reference(block, x, other), expected, rtol=1e-3, atol=1e-3
            ), f"{family} {path}: sites {placement!r} and {other!r} compute the same"


def _fits(reference: Reference, block: nn.Module, x: torch.Tensor, site: str | None) -> bool:
    try:
        reference(block, x, site)
    except RuntimeError:  # the block's SE has another site's channel count
        return False
    return True
