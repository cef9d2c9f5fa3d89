"""Every registry model: forward, backward, output shape, head API and features, at native size;
forward_features against the top-level children, at a small size."""

import pytest
import torch

import backbones
from backbones.inception_resnet_v2 import InceptionResNetV2

MODELS = backbones.list_models()


def _native_input(model, batch=2):
    return torch.randn(batch, *model.default_input_size)


def _small_input(model, batch=1):
    """64 px, or the native size where smaller (CIFAR). Every head pools adaptively; only
    Inception-ResNet-v2's valid-padded stem needs more (75 px at least)."""
    side = 75 if isinstance(model, InceptionResNetV2) else 64
    chans, height, width = model.default_input_size
    return torch.randn(batch, chans, min(height, side), min(width, side))


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_native_size(name):
    model = backbones.create_model(name, num_classes=11)
    x = _native_input(model)
    out = model(x)
    assert out.shape == (2, 11), f"{name}: output {tuple(out.shape)}"
    out.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_head_api(name):
    model = backbones.create_model(name).eval()
    x = _native_input(model, batch=1)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.num_features), f"{name}: pre_logits {tuple(pre.shape)}"
        torch.testing.assert_close(model.forward_head(feats), model(x))
        model.reset_classifier(5)
        assert model(x).shape == (1, 5) and model.get_classifier().out_features == 5
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_features_only_shapes_and_strides(name):
    model = backbones.create_model(name, features_only=True).eval()
    size = model.default_input_size
    with torch.no_grad():
        feats = model(torch.randn(1, *size))
    info = model.feature_info
    assert len(feats) == len(info) > 0
    for f, chs, red in zip(feats, info.channels(), info.reduction()):
        assert f.shape[1] == chs, f"{name}: {f.shape[1]} channels, feature_info says {chs}"
        # Valid-padded stems (Inception) lose a few pixels: the reduction is the nearest stride.
        expected = size[1] / red
        assert abs(f.shape[2] - expected) <= max(2, expected * 0.1), (
            f"{name}: map of {f.shape[2]} px at reduction {red} of a {size[1]} px input"
        )


@pytest.mark.parametrize("name", MODELS)
def test_forward_features_is_the_children_in_order(name):
    """features_only runs the top-level children in order up to the last feature module, so that
    chain must be forward_features (children after it, e.g. VGG's pre_logits, are the head)."""
    model = backbones.create_model(name).eval()
    last = model.feature_info[-1]["module"]
    x = _small_input(model)
    with torch.no_grad():
        y = x
        for child_name, child in model.named_children():
            y = child(y)
            if child_name == last:
                break
        expected = model.forward_features(x)
    assert y.shape == expected.shape, (
        f"{name}: children up to {last} give {tuple(y.shape)}, forward_features "
        f"{tuple(expected.shape)}"
    )
    assert torch.equal(y, expected), (
        f"{name}: children up to {last} differ from forward_features by "
        f"{(y - expected).abs().max().item():.3g}"
    )


@pytest.mark.parametrize("name", [n for n in MODELS if backbones.is_model(n.removeprefix("se_"))
                                  and n.startswith("se_")])
def test_se_twin_differs_by_the_se_blocks_only(name):
    se, plain = backbones.create_model(name), backbones.create_model(name.removeprefix("se_"))
    blocks = [m for m in se.modules() if isinstance(m, backbones.SEBlock)]
    assert blocks, f"{name} has no SE block"
    formula = sum(2 * b.fc1.in_features * b.fc1.out_features + b.fc1.out_features + b.fc1.in_features
                  for b in blocks)
    n_se = sum(p.numel() for p in se.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_se - n_plain == formula, f"{name}: {n_se - n_plain} extra params, Eq. 5 gives {formula}"
    assert not any(isinstance(m, backbones.SEBlock) for m in plain.modules())
