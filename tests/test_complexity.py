"""Parameters and MACs against the paper's tables (shared REFERENCE.md).

The paper's "GFLOPs" are multiply-accumulates; backbones.complexity documents the convention.
Tolerances: parameters 1%, MACs 1.5% (the issue's bar). Paper figures are rounded (e.g. 25.6M),
so the measured value is compared with the rounded figure.
"""

import pytest

import backbones

# (model, kwargs, params in M or None, GMACs or None, source)
PAPER = [
    ("resnet50", {}, 25.6, 3.86, "Tables 2, 10"),
    ("se_resnet50", {}, 28.1, 3.87, "Tables 2, 10"),
    ("resnet101", {}, None, 7.58, "Table 2"),
    ("se_resnet101", {}, None, 7.60, "Table 2"),
    ("resnet152", {}, None, 11.30, "Table 2"),
    ("se_resnet152", {}, None, 11.32, "Table 2"),
    # ResNeXt's paper figures are for the stride on the 3x3 conv (the ResNeXt default here).
    ("resnext50_32x4d", {}, None, 4.24, "Table 2"),
    ("se_resnext50_32x4d", {}, None, 4.25, "Table 2"),
    ("resnext101_32x4d", {}, None, 7.99, "Table 2"),
    ("se_resnext101_32x4d", {}, None, 8.00, "Table 2"),
    ("vgg16_bn", {}, None, 15.47, "Table 2"),
    ("se_vgg16_bn", {}, None, 15.48, "Table 2"),
    ("bn_inception", {}, None, 2.03, "Table 2"),
    ("se_bn_inception", {}, None, 2.04, "Table 2"),
    ("mobilenet_v1", {}, 4.2, 0.569, "Table 3"),
    ("se_mobilenet_v1", {}, 4.7, 0.572, "Table 3"),
    ("se_resnet50", {"se_reduction": 4}, 35.7, None, "Table 10"),
    ("se_resnet50", {"se_reduction": 8}, 30.7, None, "Table 10"),
    ("se_resnet50", {"se_reduction": 32}, 26.9, None, "Table 10"),
    ("se_resnet50", {"se_stages": [2]}, 25.6, 3.86, "Table 13"),
    ("se_resnet50", {"se_stages": [3]}, 25.7, 3.86, "Table 13"),
    ("se_resnet50", {"se_stages": [4]}, 26.4, 3.86, "Table 13"),
    ("se_resnet50", {"se_placement": "3x3"}, 25.8, 3.86, "Table 15"),
    ("se_resnet50", {"se_squeeze": "none"}, 28.1, 4.27, "Table 16"),
]


# Paper figures that the faithful architecture cannot meet; README.md ("Where the counts differ
# from the paper") says why. (model, quantity, paper figure, our count), params in M, MACs in G.
KNOWN_GAPS = [
    # ShuffleNet 1x (g=3) is 137 MFLOPs in ShuffleNet's own Table 1; "140" is its budget label.
    # Its parameter figures fit truncation to 0.1M (1.866 -> 1.8), not rounding.
    ("shufflenet_v1_g3", "params", 1.8, 1.8657),
    ("se_shufflenet_v1_g3", "params", 2.4, 2.4845),
    ("shufflenet_v1_g3", "macs", 0.140, 0.13746),
    ("se_shufflenet_v1_g3", "macs", 0.142, 0.13968),
    # The TF-slim Inception-ResNet-v2 (timm's, with public weights) is 13.16 GMACs at 299; the
    # paper's 11.75 matches neither it nor the Inception-v4 paper's Fig. 15 layout (9.26).
    ("inception_resnet_v2", "macs", 11.75, 13.1558),
    ("se_inception_resnet_v2", "macs", 11.76, 13.1758),
]


# The CIFAR models of Tables 4 and 5 against the parameter counts of their original papers (the
# SENet paper gives none). Those figures are rounded to 0.1M, hence a 3% tolerance.
# (model, params in M, source)
CIFAR_ORIGINAL_PAPERS = [
    ("preact_resnet110", 1.7, "He et al., arXiv:1603.05027"),
    ("preact_resnet164", 1.7, "He et al., arXiv:1603.05027"),
    ("wrn16_8", 11.0, "Zagoruyko & Komodakis, arXiv:1605.07146"),
    ("shake_shake26_2x96d", 26.2, "Gastaldi, arXiv:1705.07485"),
    ("shake_even29_2x4x64d", 34.4, "Gastaldi, arXiv:1705.07485"),
]


@pytest.mark.parametrize("name,quantity,paper,ours", KNOWN_GAPS)
def test_known_gaps_stay_as_documented(name, quantity, paper, ours):
    model = backbones.create_model(name)
    measured = backbones.model_complexity(model, model.default_input_size)[quantity]
    measured /= 1e6 if quantity == "params" else 1e9
    assert abs(measured / ours - 1) < 0.001, f"{name}: {quantity} {measured:.4f}, documented {ours}"


@pytest.mark.parametrize("name,kwargs,params,gmacs,source", PAPER,
                         ids=[f"{p[0]}-{p[4]}-{'-'.join(map(str, p[1].values()))}" for p in PAPER])
def test_complexity_matches_paper(name, kwargs, params, gmacs, source):
    model = backbones.create_model(name, **kwargs)
    counts = backbones.model_complexity(model, model.default_input_size)
    if params is not None:
        measured = counts["params"] / 1e6
        assert abs(measured / params - 1) <= 0.01, f"{name} {kwargs}: {measured:.3f}M params, paper {params}M ({source})"
    if gmacs is not None:
        measured = counts["macs"] / 1e9
        assert abs(measured / gmacs - 1) <= 0.015, f"{name} {kwargs}: {measured:.4f} GMACs, paper {gmacs} ({source})"


@pytest.mark.parametrize("name,params,source", CIFAR_ORIGINAL_PAPERS)
def test_cifar_params_match_original_papers(name, params, source):
    measured = sum(p.numel() for p in backbones.create_model(name).parameters()) / 1e6
    assert abs(measured / params - 1) < 0.03, (
        f"{name}: {measured:.3f}M params, {params}M in {source}"
    )


def test_se_overhead_is_the_papers_quarter_percent():
    se = backbones.model_complexity(backbones.create_model("se_resnet50"))["macs"]
    plain = backbones.model_complexity(backbones.create_model("resnet50"))["macs"]
    assert 0.0015 < se / plain - 1 < 0.0035, f"SE adds {100 * (se / plain - 1):.2f}% MACs, paper 0.26%"


def test_eq5_extra_parameters():
    """Eq. 5: 2/r * sum_s N_s C_s^2 weights, plus sum_s N_s (C_s/r + C_s) biases."""
    se = sum(p.numel() for p in backbones.create_model("se_resnet50").parameters())
    plain = sum(p.numel() for p in backbones.create_model("resnet50").parameters())
    stages = [(3, 256), (4, 512), (6, 1024), (3, 2048)]
    eq5 = sum(2 * n * c * c // 16 + n * (c // 16 + c) for n, c in stages)
    assert se - plain == eq5


def test_input_size_scales_macs():
    model = backbones.create_model("resnet50")
    small = backbones.model_complexity(model, (3, 112, 112))["macs"]
    big = backbones.model_complexity(model, (3, 224, 224))["macs"]
    assert 3.5 < big / small < 4.1


def test_bad_input_size():
    with pytest.raises(ValueError, match="C, H, W"):
        backbones.model_complexity(backbones.create_model("resnet50"), (224, 224))
