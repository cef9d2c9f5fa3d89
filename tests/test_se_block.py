"""The SE block and its knobs against a direct transcription of the paper's equations."""

import pytest
import torch
from torch import nn

import backbones
from backbones.layers import SEBlock, SEConfig
from backbones.resnet import Bottleneck


def reference_se(x, block: SEBlock) -> torch.Tensor:
    """Eqs. 2-4 of the paper, written out with the block's weights."""
    w1, b1, w2, b2 = block.fc1.weight, block.fc1.bias, block.fc2.weight, block.fc2.bias
    if block.squeeze == "none":
        z = torch.einsum("nchw,dc->ndhw", x, w1) + b1[:, None, None]
        s = torch.einsum("ndhw,cd->nchw", torch.relu(z), w2) + b2[:, None, None]
        return x * block.gate(s)
    z = x.mean((2, 3)) if block.squeeze == "avg" else x.amax((2, 3))
    s = block.gate(torch.relu(z @ w1.T + b1) @ w2.T + b2)
    return x * s[:, :, None, None]


@pytest.mark.parametrize("squeeze", ["avg", "max", "none"])
@pytest.mark.parametrize("gate", ["sigmoid", "tanh", "relu"])
def test_se_block_matches_equations(squeeze, gate):
    block = SEConfig(reduction=4, squeeze=squeeze, gate=gate).block(32)
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(block(x), reference_se(x, block))
    residual = torch.randn_like(x)
    torch.testing.assert_close(block(x, residual), reference_se(x, block) + residual)


@pytest.mark.parametrize("channels,reduction,hidden", [(256, 16, 16), (16, 16, 1), (10, 16, 1), (64, 3, 21)])
def test_hidden_width_is_c_over_r_at_least_one(channels, reduction, hidden):
    block = SEConfig(reduction=reduction).block(channels)
    assert block.fc1.out_features == hidden, f"C={channels}, r={reduction}: {block.fc1}"


def test_gate_is_a_module_so_hooks_see_the_excitation():
    block = SEConfig().block(8)
    seen = []
    block.gate.register_forward_hook(lambda m, i, o: seen.append(o))
    block(torch.randn(3, 8, 4, 4))
    assert seen and seen[0].shape == (3, 8), f"hook saw {[t.shape for t in seen]}"
    assert ((seen[0] > 0) & (seen[0] < 1)).all()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(reduction=0), "se_reduction"),
        (dict(squeeze="mean"), "se_squeeze"),
        (dict(gate="softmax"), "se_gate"),
        (dict(placement="after"), "se_placement"),
    ],
)
def test_bad_knob_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SEConfig(**kwargs)


@pytest.mark.parametrize(
    "placement,channels", [("standard", 256), ("pre", 64), ("post", 256), ("identity", 256), ("3x3", 64)]
)
def test_placement_sites_in_bottleneck(placement, channels):
    se = SEConfig(placement=placement)
    downsample = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256))
    block = Bottleneck(64, 256, first_chs=64, mid_chs=64, downsample=downsample, se=se).eval()
    plain = Bottleneck(64, 256, first_chs=64, mid_chs=64, downsample=downsample).eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if ".se." not in k and not k.startswith("se.")})
    assert block.se.fc1.in_features == channels, f"{placement}: SE on {block.se.fc1.in_features} channels"
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        out, ref = block(x), plain(x)
    assert out.shape == ref.shape == (2, 256, 8, 8)
    assert not torch.allclose(out, ref), f"{placement}: SE changed nothing"
    if placement == "post":
        # The SE rescales the block's output: the sign pattern of the plain output survives.
        assert torch.equal(out > 0, ref > 0)


def test_se_stages_select_blocks():
    model = backbones.create_model("se_resnet50", se_stages=[3, 5])
    stages_with_se = {
        int(name.split(".")[0][-1]) + 1 for name, m in model.named_modules() if isinstance(m, SEBlock)
    }
    assert stages_with_se == {3, 5}, f"SE found in stages {stages_with_se}"


def test_se_block_is_the_only_difference_to_plain():
    se, plain = backbones.create_model("se_resnet50"), backbones.create_model("resnet50")
    plain_keys = set(plain.state_dict())
    extra = set(se.state_dict()) - plain_keys
    assert plain_keys <= set(se.state_dict())
    assert extra and all(".se." in k for k in extra), sorted(extra)[:5]


def test_se_layers_get_he_init_like_the_convs_not_the_classifiers_small_normal():
    # In the paper's (Caffe) models and timm's, the SE FC layers are 1x1 convs with He init; a
    # small-normal init would leave every gate at sigmoid(~0) = 0.5 and SE nearly inert.
    model = backbones.create_model("se_resnet50")
    se = model.layer3[0].se
    for fc in (se.fc1, se.fc2):
        expected = (2.0 / fc.out_features) ** 0.5  # kaiming_normal_, fan_out, relu
        assert abs(fc.weight.std().item() / expected - 1) < 0.1
    assert model.fc.weight.std().item() < 0.02  # the classifier keeps its small init
    gates = []
    se.gate.register_forward_hook(lambda m, i, out: gates.append(out))
    model.eval()(torch.randn(2, 3, 224, 224))
    assert gates[0].std().item() > 0.05, "gates all near 0.5 at init"
