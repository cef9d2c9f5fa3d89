"""Our models compute the same function as timm's once its weights are loaded.

timm builds its models here with random weights (no download); BN statistics are randomised
too, so the test would notice a stats tensor landing in the wrong layer.
"""

import pytest
import torch

import backbones
import backbones.vgg  # the family without a timm weight map, for the error below
from backbones.weights import TIMM_EQUIVALENTS, create_from_timm, load_timm_weights

timm = pytest.importorskip("timm", reason="timm is needed to build the reference models")
LEGACY = sorted(name for name in TIMM_EQUIVALENTS if name.startswith("legacy_"))

# The large models are compared at a smaller input to keep the test quick; the weights and
# the pooling conventions are exercised all the same (160 is odd after the stem's pool).
INPUT = {"legacy_senet154": 160, "legacy_seresnet152": 160, "resnet152": 160,
         "legacy_seresnet101": 192, "legacy_seresnext101_32x4d": 192, "resnet101": 192}


def _randomise_bn(model: torch.nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            # Small last-BN scales keep the residual sums of deep models near unit size, as
            # trained weights do, so 1e-4 is a meaningful absolute bound.
            m.weight.data.uniform_(0.05, 0.2) if name.endswith("bn3") else m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)


@pytest.mark.parametrize("timm_name", sorted(TIMM_EQUIVALENTS))
def test_outputs_equal_timm(timm_name):
    reference = timm.create_model(timm_name, pretrained=False).eval()
    _randomise_bn(reference)
    ours = create_from_timm(timm_name, reference).eval()
    size = INPUT.get(timm_name, 224)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    diff = (expected - got).abs().max().item()
    scale = expected.abs().max().item()
    assert diff <= 1e-4, f"{timm_name}: max abs difference {diff:.2e} (outputs up to {scale:.2e})"
    assert 1e-3 < expected.std().item() < 1e3, f"{timm_name}: degenerate outputs"


@pytest.mark.parametrize("timm_name", LEGACY)
def test_train_mode_equals_timm_dropout_included(timm_name):
    """Training mode: batch statistics, the updated running statistics and timm's classifier
    dropout (0.2 in the legacy SENet models) drawn from the same seed."""
    reference = timm.create_model(timm_name, pretrained=False)
    _randomise_bn(reference)
    ours = create_from_timm(timm_name, reference)
    assert reference.drop_rate == 0.2 and ours.head_drop.p == reference.drop_rate
    reference.train()
    ours.train()
    x = torch.randn(2, 3, 64, 64)  # train-mode BN needs no large input; 64 keeps 2x2 at layer4
    outputs = []
    for model in (reference, ours):
        torch.manual_seed(0)
        outputs.append(model(x))
    expected, got = outputs
    diff, scale = (expected - got).abs().max().item(), expected.abs().max().item()
    assert diff <= 1e-4, f"{timm_name}: max abs difference {diff:.2e} (outputs up to {scale:.2f})"
    torch.testing.assert_close(
        ours.layer4[-1].bn3.running_var, reference.layer4[-1].bn3.running_var, rtol=1e-5, atol=1e-6
    )
    torch.manual_seed(1)
    assert (ours(x) - expected).abs().max() > 1e-3, "another seed drops other features"


def test_state_dict_source_and_features_only():
    reference = timm.create_model("legacy_seresnet50", pretrained=False).eval()
    _randomise_bn(reference)
    name, conventions = TIMM_EQUIVALENTS["legacy_seresnet50"]
    net = backbones.create_model(name, features_only=True, **conventions).eval()
    load_timm_weights(net, reference.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = net(x)[-1]
        theirs = reference.forward_features(x)
    assert (ours - theirs).abs().max() <= 1e-4


def test_mismatched_weights_name_keys_and_shapes():
    reference = timm.create_model("seresnet50", pretrained=False)
    model = backbones.create_model("se_resnet50", stride_in_1x1=False, se_reduction=8)
    with pytest.raises(ValueError, match=r"layer1\.0\.se\.fc1\.weight: model \(32, 256\), timm weights \(16, 256\)"):
        load_timm_weights(model, reference)


def test_wrong_depth_names_missing_keys():
    state = timm.create_model("resnet50", pretrained=False).state_dict()
    model = backbones.create_model("resnet101", stride_in_1x1=False)
    with pytest.raises(ValueError, match=r"missing from timm weights: layer3\.6\."):
        load_timm_weights(model, state)


def test_stride_convention_mismatch_is_caught_from_a_model():
    reference = timm.create_model("seresnet50", pretrained=False)
    with pytest.raises(ValueError, match="stride_in_1x1=False"):
        load_timm_weights(backbones.create_model("se_resnet50"), reference)


def test_other_num_classes_with_exclude_classifier():
    reference = timm.create_model("resnet50", pretrained=False)
    model = create_from_timm("resnet50", reference, num_classes=10)
    assert model.fc.out_features == 10
    torch.testing.assert_close(model.stem.conv1.weight, reference.conv1.weight)


def test_unsupported_family():
    with pytest.raises(ValueError, match="no timm weight map"):
        load_timm_weights(backbones.create_model("vgg16_bn"), {})
