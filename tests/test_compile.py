"""torch.compile and channels_last on the two models the issue names."""

import shutil

import pytest
import torch

import backbones

CASES = [("se_resnet50", 64), ("se_preact_resnet110", 32)]


@pytest.mark.parametrize("name,size", CASES)
def test_channels_last_matches_contiguous(name, size):
    model = backbones.create_model(name).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name,size", CASES)
def test_torch_compile_forward_backward(name, size):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler (g++)")
    model = backbones.create_model(name, num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, size, size).to(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref, rtol=1e-3, atol=1e-3)
    model.train()
    compiled(x).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
