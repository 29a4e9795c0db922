"""Fused execution of plain MLP stacks (dagmm.accel.fused) against the same modules run by torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dagmm.accel import fused
from dagmm.models.nets import mlp, paper_kddcup_nets

# every test on the torch code and on the C tanh kernels (dagmm/accel/_native_act.c)
pytestmark = pytest.mark.usefixtures("kernel_backend")


def _stacks():
    enc, dec, est = paper_kddcup_nets(12)
    return {
        "paper encoder": (enc, (40, 12)),
        "paper decoder": (dec, (40, 1)),
        "paper estimation net": (est, (40, 3)),
        # ReLU/Sigmoid stacks train as plain modules; with a Tanh they take the fused node
        "relu + tanh": (nn.Sequential(mlp([12, 16, 8], nn.ReLU, True), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)),
                        (40, 12)),
        "sigmoid + tanh, last activation": (nn.Sequential(nn.Linear(12, 7), nn.Sigmoid(), nn.Linear(7, 5),
                                                          nn.Tanh()), (40, 12)),
        "flatten / unflatten": (nn.Sequential(nn.Flatten(), mlp([12, 6, 4], nn.Tanh)), (40, 3, 4)),
        "unflatten last": (nn.Sequential(mlp([4, 6, 12], nn.Tanh), nn.Unflatten(1, (3, 4))), (40, 4)),
        "softmax tail without bias": (nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 4, bias=False),
                                                    nn.Softmax(dim=1)), (40, 12)),
        "activation first, no bias, identity": (
            nn.Sequential(nn.Tanh(), nn.Linear(12, 6, bias=False), nn.Identity(), nn.Tanh(), nn.Linear(6, 2)), (40, 12)),
    }


@pytest.mark.parametrize("name", list(_stacks()))
def test_fused_matches_module_float64(name):
    """Without dropout the fused stack is the same function: float64 agrees to rounding."""
    seq, shape = _stacks()[name]
    seq = seq.double().eval()
    assert fused.plan(seq) is not None
    x1 = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y_ref, y = seq(x1), fused.run(seq, x2)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-13)
    params = list(seq.parameters())
    g = torch.randn(y.shape, dtype=torch.float64)
    # the incoming gradient row-major and transposed (a softmax tail returns a transposed view)
    for g in (g, g.mT.contiguous().mT):
        ref = torch.autograd.grad(y_ref, [x1, *params], g, retain_graph=True)
        got = torch.autograd.grad(y, [x2, *params], g, retain_graph=True)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(_stacks()))
def test_fused_float32_close_and_inference_path_consistent(name, kernel_backend):
    seq, shape = _stacks()[name]
    seq.eval()
    x = torch.randn(shape)
    with torch.inference_mode():
        y_inf = fused.run(seq, x)
    y = fused.run(seq, x.clone().requires_grad_(True))
    # Scoring sees what training saw: bit for bit on the torch code; the C inference kernel
    # (dagmm/accel/_native_mlp.c) sums the products in another order, so to float32 rounding there.
    tol = 0 if kernel_backend == "torch" else 2e-6
    torch.testing.assert_close(y.detach(), y_inf, rtol=tol, atol=tol)
    torch.testing.assert_close(y_inf, seq(x), rtol=1e-5, atol=1e-6)


def test_gradient_path_fused_only_with_tanh():
    x = torch.randn(8, 12, requires_grad=True)
    with_tanh, relu_only = mlp([12, 6, 3], nn.Tanh), mlp([12, 6, 3], nn.ReLU)
    assert type(fused.run(with_tanh, x).grad_fn).__name__ == "_FusedStackBackward"
    assert type(fused.run(relu_only, x).grad_fn).__name__ == "AddmmBackward0"  # the module itself
    with torch.no_grad():  # scoring is fused either way
        torch.testing.assert_close(fused.run(relu_only, x), relu_only(x), rtol=1e-5, atol=1e-6)


def test_fast_tanh_accuracy():
    x = torch.linspace(-20, 20, 400_001)
    err = (fused.tanh(x).double() - torch.tanh(x.double())).abs().max().item()
    assert err < 3e-7
    assert fused.tanh(torch.tensor([-100.0, 0.0, 100.0])).tolist() == [-1.0, 0.0, 1.0]


def test_dropout_mask_probability_scale_and_gradient():
    lin = nn.Linear(8, 50)
    seq = nn.Sequential(lin, nn.Dropout(0.3)).train()
    x = torch.randn(400, 8, requires_grad=True)
    y = fused.run(seq, x)
    pre = (x @ lin.weight.T + lin.bias).detach()
    mask = y.detach() / pre
    kept = mask > 0.5
    torch.testing.assert_close(mask[kept], torch.full_like(mask[kept], 1 / 0.7))
    assert abs(kept.float().mean().item() - 0.7) < 0.02
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, [x, lin.weight], g)
    torch.testing.assert_close(gw, (g * mask).T @ x.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, (g * mask) @ lin.weight.detach(), rtol=1e-5, atol=1e-5)
    # eval mode: no dropout at all
    torch.testing.assert_close(fused.run(seq.eval(), x), pre, rtol=1e-6, atol=1e-6)


def test_dropout_seeded_reproducible_and_extreme_rates():
    seq = nn.Sequential(nn.Linear(4, 30), nn.Tanh(), nn.Dropout(0.5)).train()
    x = torch.randn(64, 4)
    torch.manual_seed(3)
    a = fused.run(seq, x)
    torch.manual_seed(3)
    b = fused.run(seq, x)
    assert torch.equal(a, b)
    assert torch.count_nonzero(fused.run(nn.Sequential(nn.Linear(4, 5), nn.Dropout(1.0)).train(), x)) == 0
    lin = nn.Linear(4, 5)
    torch.testing.assert_close(fused.run(nn.Sequential(lin, nn.Dropout(0.0)).train(), x), lin(x))


def test_input_never_modified_in_place():
    seq = nn.Sequential(nn.ReLU(), nn.Linear(6, 3), nn.Sigmoid())
    x = torch.randn(10, 6)
    before = x.clone()
    fused.run(seq, x)
    with torch.no_grad():
        fused.run(seq, x)
    assert torch.equal(x, before)


def test_frozen_layers_and_input_gradient():
    seq = mlp([6, 5, 4, 2])
    for p in seq[0].parameters():
        p.requires_grad_(False)
    x = torch.randn(9, 6, requires_grad=True)
    fused.run(seq, x).sum().backward()
    assert seq[0].weight.grad is None and seq[2].weight.grad is not None and x.grad is not None


class _MySeq(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize("case", ["hook", "subclass", "unsupported layer", "softmax not last", "no linear",
                                  "wrong rank", "global hook"])
def test_falls_back_to_the_module(case):
    seq = mlp([6, 4, 3])
    x = torch.randn(5, 6)
    handle = None
    if case == "hook":
        seq[1].register_forward_hook(lambda m, i, o: o * 3)
    elif case == "subclass":
        seq = _MySeq(*seq)
    elif case == "unsupported layer":
        seq = nn.Sequential(nn.Linear(6, 4), nn.ELU(), nn.Linear(4, 3))
    elif case == "softmax not last":
        seq = nn.Sequential(nn.Linear(6, 4), nn.Softmax(dim=1), nn.Linear(4, 3))
    elif case == "no linear":
        seq = nn.Sequential(nn.Tanh())
    elif case == "wrong rank":
        x = torch.randn(2, 5, 6)
    elif case == "global hook":
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    try:
        if case not in ("wrong rank",):
            assert fused.plan(seq) is None
        assert torch.equal(fused.run(seq, x), seq(x))
    finally:
        if handle is not None:
            handle.remove()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_cuda_matches_cpu():
    seq, shape = _stacks()["paper encoder"]
    x = torch.randn(shape)
    y_cpu = fused.run(seq, x)
    y_gpu = fused.run(seq.cuda(), x.cuda().requires_grad_(True))
    y_gpu.sum().backward()
    torch.testing.assert_close(y_gpu.detach().cpu(), y_cpu.detach(), rtol=1e-4, atol=1e-5)
