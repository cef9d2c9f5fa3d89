"""CIFAR backbones of Tables 4 and 5: pre-activation ResNets, WRN-16-8, Shake-Shake."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
import backbones.preact_resnet  # noqa: F401
import backbones.shake_shake  # noqa: F401
import backbones.wide_resnet  # noqa: F401
from backbones.layers.se import SEBlock
from backbones.shake_shake import ShakeShortcut, shake_shake

PLAIN = [
    "preact_resnet110",
    "preact_resnet164",
    "wrn16_8",
    "shake_shake26_2x96d",
    "shake_even29_2x4x64d",
]
ALL = PLAIN + [f"se_{name}" for name in PLAIN]

# SE sites of each model with standard placement: (number of SE blocks, channels, map size).
SE_SITES = {
    "preact_resnet110": [(18, 16, 32), (18, 32, 16), (18, 64, 8)],
    "preact_resnet164": [(18, 64, 32), (18, 128, 16), (18, 256, 8)],
    "wrn16_8": [(2, 128, 32), (2, 256, 16), (2, 512, 8)],
    # Two branches per block, one SE block on each.
    "shake_shake26_2x96d": [(8, 96, 32), (8, 192, 16), (8, 384, 8)],
    "shake_even29_2x4x64d": [(6, 256, 32), (6, 512, 16), (6, 1024, 8)],
}


def test_native_input_size() -> None:
    sizes = {name: backbones.model_class(name).default_input_size for name in ALL}
    wrong = {name: size for name, size in sizes.items() if size != (3, 32, 32)}
    assert not wrong, f"native input sizes other than (3, 32, 32): {wrong}"


@pytest.mark.parametrize("name", PLAIN)
def test_se_sites_and_mac_delta(name: str) -> None:
    # The parameter delta (Eq. 5) is test_models.py's; this checks where the SE blocks sit.
    plain = backbones.model_complexity(backbones.create_model(name), (3, 32, 32))
    se_model = backbones.create_model(f"se_{name}")
    se = backbones.model_complexity(se_model, (3, 32, 32))
    sites = SE_SITES[name]
    n_blocks = sum(1 for m in se_model.modules() if isinstance(m, SEBlock))
    assert n_blocks == sum(n for n, _, _ in sites), f"{name}: {n_blocks} SE blocks"
    # SE MACs: the two FC layers plus one multiply per rescaled element.
    expected_macs = sum(n * (2 * c * max(1, c // 16) + c * s * s) for n, c, s in sites)
    delta_macs = se["macs"] - plain["macs"]
    assert delta_macs == expected_macs, f"{name}: SE adds {delta_macs} MACs, not {expected_macs}"


@pytest.mark.parametrize("name", ["preact_resnet110", "preact_resnet164"])
@pytest.mark.parametrize("placement", ["standard", "pre", "post", "identity", "3x3"])
def test_preact_placements(name: str, placement: str) -> None:
    if placement == "3x3" and name == "preact_resnet110":
        with pytest.raises(ValueError, match="3x3"):
            backbones.create_model(f"se_{name}", se_placement=placement)
        return
    model = backbones.create_model(f"se_{name}", se_placement=placement).eval()
    blocks = [m for m in model.modules() if isinstance(m, SEBlock)]
    assert len(blocks) == 54, f"{name} {placement}: {len(blocks)} SE blocks, expected 54"
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10), f"{name} {placement}: output {tuple(out.shape)}"


def test_se_stages_and_bad_options() -> None:
    model = backbones.create_model("se_wrn16_8", se_stages=[3])
    widths = [m.fc1.in_features for m in model.modules() if isinstance(m, SEBlock)]
    assert widths == [512, 512], f"se_stages=[3]: SE widths {widths}"
    with pytest.raises(ValueError, match="se_placement"):
        backbones.create_model("se_wrn16_8", se_placement="3x3")
    with pytest.raises(ValueError, match="se_placement"):
        backbones.create_model("se_shake_shake26_2x96d", se_placement="pre")
    with pytest.raises(ValueError, match="se_stages"):
        backbones.create_model("se_preact_resnet110", se_stages=[4])
    with pytest.raises(ValueError, match="depth"):
        backbones.create_model("wrn16_8", depth=15)
    with pytest.raises(ValueError, match="forward_mode"):
        backbones.create_model("shake_shake26_2x96d", forward_mode="bogus")
    with pytest.raises(ValueError, match="block"):
        backbones.create_model("preact_resnet110", block="bogus")


def test_wrn_dropout_and_num_classes() -> None:
    model = backbones.create_model("wrn16_8", dropout=0.3, num_classes=100)
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout) and m is not model.head_drop]
    assert drops == [0.3] * 6, f"dropout=0.3: block dropouts {drops}"
    out = model.eval()(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 100), f"num_classes=100: output {tuple(out.shape)}"


# Shake-Shake specifics.


def _block(name: str, stage: str, index: int) -> nn.Module:
    torch.manual_seed(0)
    return getattr(backbones.create_model(name), stage)[index]


@pytest.mark.parametrize("index", [0, 1], ids=["projection", "identity"])
def test_shake_eval_is_expected_value(index: int) -> None:
    block = _block("shake_shake26_2x96d", "stage2", index).eval()
    assert isinstance(block.shortcut, nn.Identity) == (index == 1), "unexpected shortcut type"
    x = torch.randn(2, 96 if index == 0 else 192, 16, 16)
    with torch.no_grad():
        y1, y2 = block(x), block(x)
        expected = 0.5 * (block.branch1(x) + block.branch2(x)) + block.shortcut(x)
    assert torch.equal(y1, y2), "eval output is not deterministic"
    assert torch.allclose(y1, expected, atol=1e-6), "eval output != 0.5*(b1+b2)+shortcut"


def test_shake_train_is_random() -> None:
    block = _block("shake_shake26_2x96d", "stage1", 1).train()
    x = torch.randn(2, 96, 32, 32)
    outs = []
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(block(x))
    assert not torch.allclose(outs[0], outs[1]), "train outputs with different seeds are equal"
    assert torch.equal(outs[0], outs[2]), "train outputs with the same seed differ"


def _branch_grads(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients reaching each branch's output for a random upstream gradient."""
    outs = {}

    def keep(key: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            out.retain_grad()
            outs[key] = out

        return hook

    handles = [
        block.branch1.register_forward_hook(keep("b1")),
        block.branch2.register_forward_hook(keep("b2")),
    ]
    try:
        y = block(x)
    finally:
        for h in handles:
            h.remove()
    upstream = torch.randn_like(y)
    y.backward(upstream)
    return outs["b1"].grad, outs["b2"].grad, upstream


def test_shake_even_backward_is_half() -> None:
    # Shake-Even 29: random forward, backward coefficients exactly 0.5 (batch 2 at 32x32).
    block = _block("shake_even29_2x4x64d", "stage1", 0).train()
    assert (block.forward_mode, block.backward_mode) == ("shake", "even"), "wrong shake modes"
    g1, g2, upstream = _branch_grads(block, torch.randn(2, 64, 32, 32))
    assert torch.equal(g1, 0.5 * upstream), "even backward: branch 1 gradient != 0.5 * upstream"
    assert torch.equal(g2, 0.5 * upstream), "even backward: branch 2 gradient != 0.5 * upstream"


def test_shake_backward_splits_gradient_per_image() -> None:
    block = _block("shake_shake26_2x96d", "stage1", 1).train()
    torch.manual_seed(3)
    g1, g2, upstream = _branch_grads(block, torch.randn(2, 96, 32, 32))
    assert torch.allclose(g1 + g2, upstream, atol=1e-6), "branch gradients do not sum to upstream"
    betas = g1 / upstream
    for n in range(2):
        beta = betas[n].flatten()
        assert torch.allclose(beta, beta[0].expand_as(beta), atol=1e-4), f"image {n}: beta varies"
        assert 0.0 <= beta[0].item() <= 1.0, f"image {n}: beta {beta[0].item()} outside [0, 1]"
    assert not torch.allclose(betas[0, 0, 0, 0], betas[1, 0, 0, 0]), "beta is not per image"


@pytest.mark.parametrize("backward_mode", ["shake", "keep"])
def test_shake_backward_coefficient_vs_forward(backward_mode: str) -> None:
    """With x1 = 1, x2 = 0 the output is alpha and x1's gradient is beta."""
    torch.manual_seed(0)
    x1 = torch.ones(4, 1, 2, 2, requires_grad=True)
    x2 = torch.zeros(4, 1, 2, 2, requires_grad=True)
    alpha = shake_shake(x1, x2, training=True, backward_mode=backward_mode)
    alpha.sum().backward()
    beta = x1.grad
    assert torch.equal(x2.grad, 1 - beta), "x2's gradient is not 1 - beta"
    if backward_mode == "keep":
        assert torch.equal(alpha.detach(), beta), "keep: beta != alpha"
    else:
        assert not torch.allclose(alpha.detach(), beta), "shake: beta equals alpha"


def test_preact_projection_uses_pre_activation() -> None:
    """He et al.: where the shape changes, the 1x1 projection reads the shared BN-ReLU output."""
    block = _block("preact_resnet110", "stage2", 0).eval()
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        pre = torch.relu(block.bn1(x))
        branch = block.conv2(torch.relu(block.bn2(block.conv1(pre))))
        expected = branch + block.downsample(pre)
        y = block(x)
    assert torch.allclose(y, expected, atol=1e-5), "projection shortcut is not on BN-ReLU(x)"


def test_shake_shortcut_paths_see_complementary_pixels() -> None:
    """Gastaldi's shortcut: path 1 takes even pixels, path 2 the input shifted right and down."""
    sc = ShakeShortcut(1, 2, stride=2).eval()
    with torch.no_grad():
        sc.conv1.weight.fill_(1.0)
        sc.conv2.weight.fill_(1.0)
        sc.bn.running_var.fill_(1.0 - sc.bn.eps)  # make the eval BN an identity
    x = torch.arange(1.0, 37.0).reshape(1, 1, 6, 6)
    with torch.no_grad():
        y = sc(x)
    shifted = torch.zeros(3, 3)
    shifted[1:, 1:] = x[0, 0, 1:-1:2, 1:-1:2]
    assert torch.allclose(y[0, 0], x[0, 0, ::2, ::2]), f"path 1: {y[0, 0]}"
    assert torch.allclose(y[0, 1], shifted), f"path 2: {y[0, 1]} != {shifted}"
