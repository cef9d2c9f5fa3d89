"""VGG-16 (BN), MobileNet v1 and ShuffleNet v1 (g=3), plain and SE: family specifics.

test_models.py runs the generic checks (forward/backward, features, SE parameter difference);
test_complexity.py checks the paper's Tables 2 and 3 (PAPER) and ShuffleNet's gaps (KNOWN_GAPS).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import backbones
import backbones.mobilenet  # noqa: F401
import backbones.shufflenet  # noqa: F401
import backbones.vgg  # noqa: F401
from backbones import SEBlock

# VGG-16's parameter count (Simonyan and Zisserman's Table 2: 138M; torchvision's vgg16_bn:
# 138.37M). The SENet paper gives VGG's MACs only, so test_complexity.py has no params for it.
VGG16_BN_PARAMS = 138.4e6
# GMACs of the paper, Table 2 (VGG) and Table 3 (MobileNet), for the SE overhead. ShuffleNet's
# plain and SE MACs are both pinned in test_complexity.KNOWN_GAPS, which bounds its overhead.
PAPER_GMACS = {
    "vgg16_bn": 15.47,
    "se_vgg16_bn": 15.48,
    "mobilenet_v1": 0.569,
    "se_mobilenet_v1": 0.572,
}

# Channels of every SE block, in module order, from the architectures' definitions.
_VGG_SE = [64, 64, 128, 128, 256, 256, 256] + [512] * 6
_MOBILENET_SE = [64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
# ShuffleNet's stride-2 units put SE on the branch only: out - in channels.
_SHUFFLENET_SE = [240 - 24] + [240] * 3 + [480 - 240] + [480] * 7 + [960 - 480] + [960] * 3
SE_CHANNELS = {
    "se_vgg16_bn": _VGG_SE,
    "se_mobilenet_v1": _MOBILENET_SE,
    "se_shufflenet_v1_g3": _SHUFFLENET_SE,
}


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return backbones.create_model(name)


@functools.lru_cache(maxsize=None)
def _complexity(name: str) -> tuple[int, int]:
    c = backbones.model_complexity(_model(name), (3, 224, 224))
    return c["params"], c["macs"]


@pytest.mark.parametrize("name", SE_CHANNELS)
def test_se_channels(name: str) -> None:
    # The parameter difference these blocks make (Eq. 5) is checked in test_models.py.
    got = [m.fc1.in_features for m in _model(name).modules() if isinstance(m, SEBlock)]
    assert got == SE_CHANNELS[name], f"{name}: SE channels {got}, expected {SE_CHANNELS[name]}"


def test_vgg16_bn_params() -> None:
    params, _ = _complexity("vgg16_bn")
    assert abs(params / VGG16_BN_PARAMS - 1) <= 0.01, (
        f"vgg16_bn: {params / 1e6:.4f}M parameters, expected {VGG16_BN_PARAMS / 1e6}M (1%)"
    )


@pytest.mark.parametrize(
    "plain,se", [("vgg16_bn", "se_vgg16_bn"), ("mobilenet_v1", "se_mobilenet_v1")]
)
def test_se_overhead_is_small(plain: str, se: str) -> None:
    (_, plain_macs), (_, se_macs) = _complexity(plain), _complexity(se)
    paper_extra = (PAPER_GMACS[se] - PAPER_GMACS[plain]) / PAPER_GMACS[plain]
    extra = se_macs / plain_macs - 1
    assert 0 < extra < 2 * paper_extra, (
        f"{se}: SE adds {100 * extra:.3f}% MACs, paper {100 * paper_extra:.3f}%"
    )


# --- family specifics ---------------------------------------------------------------------------


def test_vgg_head_pre_logits_and_reset_classifier() -> None:
    model = _model("vgg16_bn").eval()
    assert model.num_features == 4096, f"vgg16_bn num_features {model.num_features}"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        ref = model.pre_logits[4](model.pre_logits.fc7(model.pre_logits[:3](
            nn.functional.adaptive_avg_pool2d(feats, 7).flatten(1))))
    assert pre.shape == (1, 4096), f"pre_logits shape {tuple(pre.shape)}"
    assert torch.allclose(pre, ref), "forward_head(pre_logits=True) is not fc7's output"
    fc6 = model.pre_logits.fc6
    assert fc6.in_features == 512 * 7 * 7, f"fc6 in_features {fc6.in_features}"

    model = backbones.create_model("vgg16_bn", num_classes=10)
    fc6_weight = model.pre_logits.fc6.weight
    model.reset_classifier(5)
    assert model.fc.out_features == 5 and model.fc.in_features == 4096, f"fc {model.fc}"
    assert model.pre_logits.fc6.weight is fc6_weight, "reset_classifier replaced fc6"
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 5), f"after reset_classifier(5): {tuple(out.shape)}"
    model.reset_classifier(0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 4096), f"after reset_classifier(0): {tuple(out.shape)}"


def test_vgg_se_after_every_relu() -> None:
    model = _model("se_vgg16_bn")
    units = [m for m in model.modules() if isinstance(m, nn.Sequential) and hasattr(m, "conv")]
    assert len(units) == 13, f"se_vgg16_bn has {len(units)} conv units, expected 13"
    for unit in units:
        kinds = [type(m).__name__ for m in unit]
        assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "SEBlock"], f"unit order {kinds}"


def test_se_stages_selects_blocks() -> None:
    model = backbones.create_model("se_mobilenet_v1", se_stages=[4])
    channels = [m.fc1.in_features for m in model.modules() if isinstance(m, SEBlock)]
    assert channels == [512] * 6, f"se_stages=[4] gave SE channels {channels}"
    model = backbones.create_model("se_shufflenet_v1_g3", se_stages=[2])
    channels = [m.fc1.in_features for m in model.modules() if isinstance(m, SEBlock)]
    assert channels == [216, 240, 240, 240], f"se_stages=[2] gave SE channels {channels}"
    with pytest.raises(ValueError, match="se_stages"):
        backbones.create_model("se_shufflenet_v1_g3", se_stages=[1])


def test_mobilenet_width_multiplier() -> None:
    # MobileNet's Table 6: 0.50 MobileNet-224 has 149M mult-adds and 1.3M parameters.
    c = backbones.model_complexity(backbones.create_model("mobilenet_v1", width_multiplier=0.5))
    assert abs(c["macs"] / 149e6 - 1) <= 0.015, f"0.5 MobileNet: {c['macs'] / 1e6:.1f} MMACs"
    assert 1.25e6 <= c["params"] < 1.35e6, f"0.5 MobileNet: {c['params'] / 1e6:.3f}M params"
    with pytest.raises(ValueError, match="width_multiplier"):
        backbones.create_model("mobilenet_v1", width_multiplier=0)


def test_channel_shuffle() -> None:
    from backbones.shufflenet import ChannelShuffle

    x = torch.arange(6.0).view(1, 6, 1, 1)
    got = ChannelShuffle(3)(x).flatten().tolist()
    assert got == [0, 2, 4, 1, 3, 5], f"shuffle of 3 groups of 2 gave {got}"


def test_shufflenet_unit_structure() -> None:
    model = _model("shufflenet_v1_g3")
    first = model.stage2[0]
    assert first.conv1.groups == 1 and first.conv1.in_channels == 24, f"{first.conv1}"
    assert model.stage2[1].conv1.groups == 3, f"{model.stage2[1].conv1}"
    assert first.conv3.out_channels == 216 and first.conv3.groups == 3, f"{first.conv3}"
    for stage, mid in (("stage2", 60), ("stage3", 120), ("stage4", 240)):
        unit = getattr(model, stage)[0]
        assert unit.conv2.stride == (2, 2) and unit.conv2.groups == mid, f"{stage}: {unit.conv2}"
    names = [n for n, _ in model.named_children()]
    assert names[:5] == ["stem", "pool", "stage2", "stage3", "stage4"], f"children {names}"
    with pytest.raises(ValueError, match="groups"):
        backbones.create_model("shufflenet_v1_g3", groups=5)
