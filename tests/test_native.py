"""The C kernels of ``dagmm.accel.native`` against the torch code they replace, on the same inputs.

Skipped where the kernels were not built, failed instead under ``DAGMM_REQUIRE_NATIVE=1``
(``.ci/run``).  The kernels are also run through every test of ``test_objective.py``,
``test_features.py`` and ``test_fused.py`` by the ``kernel_backend`` fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dagmm.accel import fused, native
from dagmm.models.features import default_recon_features, log_mse_cosine
from dagmm.models.gmm import sample_energy
from dagmm.accel.objective import mixture_objective

from conftest import require_native


@pytest.fixture(autouse=True)
def _built(monkeypatch):
    require_native()
    monkeypatch.setattr(native, "enabled", True)  # restored after the test


def _spy_on_kernels(monkeypatch) -> list:
    """Route ``native.kernels`` through a recorder; returns the list of kernel names called."""
    calls = []
    real = native.kernels

    class Spy:
        def __getattr__(self, name):
            def call(*args):
                calls.append(name)
                return getattr(real, name)(*args)
            return call

    monkeypatch.setattr(native, "kernels", Spy())
    return calls


@pytest.fixture
def kernel_calls(monkeypatch) -> list:
    return _spy_on_kernels(monkeypatch)


def test_objective_kernel_agrees_with_the_torch_code():
    z = (torch.randn(1024, 3, dtype=torch.float64) @ torch.randn(3, 3, dtype=torch.float64) + 5.0).float()
    gamma = torch.softmax(2 * torch.randn(1024, 4), 1)
    results = []
    for flag in (True, False):
        native.enabled = flag
        zz, gg = z.clone().requires_grad_(True), gamma.clone().requires_grad_(True)
        value = mixture_objective(zz, gg, 0.1, 0.005)
        value.backward()
        results.append((value, zz.grad, gg.grad))
    (v1, gz1, gg1), (v2, gz2, gg2) = results
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=0)
    torch.testing.assert_close(gz1, gz2, rtol=1e-5, atol=1e-6 * gz2.abs().max().item())
    torch.testing.assert_close(gg1, gg2, rtol=1e-5, atol=1e-6 * gg2.abs().max().item())


@pytest.mark.parametrize("fn", [default_recon_features, log_mse_cosine])
def test_feature_kernel_agrees_with_the_torch_code(fn):
    x = torch.randn(300, 120)
    r = x + 0.05 * torch.randn_like(x)
    grad = torch.randn(2, 300).T  # strided, as the gradient the objective's kernel hands back
    results = []
    for flag in (True, False):
        native.enabled = flag
        rr = r.clone().requires_grad_(True)
        out = fn(x, rr)
        (g,) = torch.autograd.grad(out, [rr], grad)
        with torch.no_grad():
            scored = fn(x, r)  # the scoring path
        results.append((out, g, scored))
    (o1, g1, s1), (o2, g2, s2) = results
    torch.testing.assert_close(o1, o2, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(s1, o1, rtol=0, atol=0)  # scoring and training share the kernel
    torch.testing.assert_close(s2, o2, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6 * g2.abs().max().item())


def test_kernels_used_for_cpu_float_and_skipped_otherwise(kernel_calls):
    calls = kernel_calls
    z, gamma = torch.randn(50, 3, requires_grad=True), torch.softmax(torch.randn(50, 2), 1)
    mixture_objective(z, gamma, 0.1, 0.005).backward()
    x = torch.randn(50, 8)
    r = torch.randn(50, 8, requires_grad=True)
    default_recon_features(x, r).sum().backward()
    assert calls == ["mixture_objective", "recon_forward", "recon_backward"]
    calls.clear()
    # float16 is not a kernel dtype, and the switch turns the kernels off: the torch code runs
    mixture_objective(z.detach().half(), gamma.half(), 0.1, 0.005)
    default_recon_features(x.half(), r.detach().half())
    native.enabled = False
    mixture_objective(z, gamma, 0.1, 0.005).backward()
    default_recon_features(x, r).sum().backward()
    assert calls == []


def test_tanh_kernel_accuracy_and_special_values():
    x = torch.linspace(-12, 12, 2_000_001)
    y = fused.tanh(x)
    ref = torch.tanh(x.double())
    assert (y.double() - ref).abs().max().item() < 2e-7
    # expm1 form: small arguments keep their relative precision (1 - 2 / (exp(2x) + 1) would not)
    small = torch.tensor([1e-4, -3e-6, 1e-30, 0.01, -0.17])
    rel = ((fused.tanh(small).double() - torch.tanh(small.double())) / torch.tanh(small.double())).abs()
    assert rel.max().item() < 2e-7
    special = fused.tanh(torch.tensor([float("nan"), float("inf"), -float("inf"), 100.0, -100.0, 9.5, 0.0]))
    assert torch.isnan(special[0]) and special[1:].tolist() == [1.0, -1.0, 1.0, -1.0, 1.0, 0.0]


def test_bias_tanh_and_tanh_grad_kernels_against_torch():
    y = torch.randn(37, 13) * 3
    b = torch.randn(13)
    got = y.clone()
    native.kernels.bias_tanh(got.data_ptr(), b.data_ptr(), 37, 13)
    torch.testing.assert_close(got, torch.tanh(y + b), rtol=0, atol=2e-7)
    g = torch.randn(37, 13)
    out, gb = torch.empty(37, 13), torch.empty(13)
    native.kernels.tanh_grad(g.data_ptr(), got.data_ptr(), out.data_ptr(), gb.data_ptr(), 37, 13)
    ref = g * (1 - got * got)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gb, ref.double().sum(0).float(), rtol=1e-6, atol=1e-6)


def test_fused_tanh_stack_uses_the_kernels_and_matches_the_module(monkeypatch):
    seq = nn.Sequential(nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 5, bias=False), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(64, 12, requires_grad=True)
    ref = seq(x)
    ref_grads = torch.autograd.grad(ref, [x, *seq.parameters()], torch.ones_like(ref))
    calls = _spy_on_kernels(monkeypatch)
    y = fused.run(seq, x)
    grads = torch.autograd.grad(y, [x, *seq.parameters()], torch.ones_like(y))
    assert calls == ["bias_tanh", "bias_tanh", "tanh_grad", "tanh_grad"]
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    calls.clear()
    fused.run(seq.double(), x.detach().double())  # float64 stacks keep the torch code
    assert calls == []


def _mlp_reference(x: torch.Tensor, layers: list) -> torch.Tensor:
    h = x.double()
    for w, b, act in layers:
        h = h @ w.double().T + (0.0 if b is None else b.double())
        h = torch.tanh(h) if act == 1 else torch.relu(h) if act == 2 else h
    return h


@pytest.mark.parametrize("widths, acts", [
    ([120, 60, 30, 10, 1], [1, 1, 1, 0]),   # the paper's KDDCUP encoder
    ([1, 10, 30, 60, 120], [1, 1, 1, 0]),   # and decoder
    ([9, 17, 8, 16, 7], [2, 1, 0, 2]),      # widths around the 8-float vectors, mixed activations
    ([33, 1, 33], [0, 1]),
])
@pytest.mark.parametrize("tile", [1, 7, 48])
def test_mlp_kernel_against_float64(widths, acts, tile):
    """Every row count around the 6-row register block and the tile, with and without biases."""
    gen = torch.Generator().manual_seed(len(widths) + tile)
    layers = [(torch.randn(o, i, generator=gen) / i ** 0.5, None if j == 1 else torch.randn(o, generator=gen), a)
              for j, (i, o, a) in enumerate(zip(widths[:-1], widths[1:], acts))]
    spec = torch.tensor([[w.shape[1], w.shape[0], w.data_ptr(), 0 if b is None else b.data_ptr(), a]
                         for w, b, a in layers], dtype=torch.int64)
    for n in (1, 5, 6, 7, 13, 47, 48, 49, 97, 300):
        x = 2 * torch.randn(n, widths[0], generator=gen)
        y = torch.full((n, widths[-1]), float("nan"))
        native.kernels.mlp_forward(x.data_ptr(), n, y.data_ptr(), spec.data_ptr(), len(layers), tile)
        torch.testing.assert_close(y, _mlp_reference(x, layers).float(), rtol=1e-5, atol=2e-6)


def test_mlp_kernel_rows_are_independent_and_nan_propagates():
    layers = [(torch.randn(16, 5), torch.randn(16), 2), (torch.randn(3, 16), torch.randn(3), 1)]
    spec = torch.tensor([[w.shape[1], w.shape[0], w.data_ptr(), b.data_ptr(), a] for w, b, a in layers],
                        dtype=torch.int64)
    x = torch.randn(20, 5)
    x[11, 2] = float("nan")
    y = torch.empty(20, 3)
    native.kernels.mlp_forward(x.data_ptr(), 20, y.data_ptr(), spec.data_ptr(), 2, 48)
    assert torch.isnan(y[11]).all() and not torch.isnan(y[torch.arange(20) != 11]).any()
    with pytest.raises(ValueError, match="mlp_forward: 1 to 64 layers and a positive tile"):
        native.kernels.mlp_forward(x.data_ptr(), 20, y.data_ptr(), spec.data_ptr(), 0, 48)


def _require_fast_mlp() -> None:
    from dagmm.accel import fused_mlp

    if not fused_mlp.FAST:
        pytest.skip("the inference kernels run only as their AVX2 + FMA build (dagmm.accel.fused_mlp.FAST is False)")


def test_fused_inference_uses_the_mlp_kernel_only_where_it_applies(monkeypatch):
    from dagmm.accel import fused_mlp
    from dagmm.models.nets import mlp, paper_kddcup_nets

    _require_fast_mlp()

    # dagmm.accel.fused_mlp keeps its own copy of dagmm.accel.fused's layer kinds (a circular import otherwise)
    assert (fused_mlp._LINEAR, fused_mlp._TANH, fused_mlp._RELU, fused_mlp._DROPOUT) == (
        fused._LINEAR, fused._TANH, fused._RELU, fused._DROPOUT)
    enc, dec, _ = paper_kddcup_nets(120)
    enc.eval()
    x = torch.randn(100, 120)
    ref = enc(x)
    calls = _spy_on_kernels(monkeypatch)
    with torch.inference_mode():
        y = fused.run(enc, x)
        assert calls == ["mlp_forward"]
        torch.testing.assert_close(y, ref.detach(), rtol=1e-5, atol=1e-6)
        calls.clear()
        # a column slice is copied to rows first
        wide = torch.randn(100, 240)
        torch.testing.assert_close(fused.run(enc, wide[:, ::2]), enc(wide[:, ::2]), rtol=1e-5, atol=1e-6)
        assert calls == ["mlp_forward"]
        calls.clear()
        fused.run(enc.double(), x.double())  # float64 keeps the torch code
        enc.float()
        sig = nn.Sequential(nn.Linear(120, 8), nn.Sigmoid(), nn.Linear(8, 2))  # no sigmoid in the kernel
        fused.run(sig, x)
        drop = nn.Sequential(nn.Linear(120, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2)).train()
        fused.run(drop, x)  # a dropout that drops
        assert calls == ["bias_tanh"]  # only the tanh of the dropout stack, through dagmm.accel.fused's torch path
        calls.clear()
        drop.eval()
        fused.run(drop, x)
        assert calls == ["mlp_forward"]
        calls.clear()
        strided = nn.Sequential(nn.Linear(120, 8), nn.Tanh())
        strided[0].weight = nn.Parameter(torch.randn(120, 8).T)  # not contiguous
        torch.testing.assert_close(fused.run(strided, x), strided(x), rtol=1e-5, atol=1e-6)
        deep = mlp([120] + [4] * 65, nn.Tanh)  # 65 layers: more than the kernel takes
        torch.testing.assert_close(fused.run(deep, x), deep(x), rtol=1e-5, atol=1e-6)
        assert "mlp_forward" not in calls
    calls.clear()
    y = fused.run(enc, x.requires_grad_(True))  # training keeps the differentiable stack
    assert "mlp_forward" not in calls and y.requires_grad
    calls.clear()
    monkeypatch.setattr(fused_mlp, "FAST", False)  # a build or CPU without the AVX2 + FMA clone
    with torch.inference_mode():
        torch.testing.assert_close(fused.run(enc, x), ref.detach(), rtol=1e-5, atol=1e-6)
    assert calls == ["bias_tanh"] * 3  # the torch path with the tanh kernel, as before


@pytest.mark.parametrize("architecture", ["paper", "auto"])
def test_aegmm_scoring_kernel_matches_the_module_path(tabular, architecture, monkeypatch):
    """One C call per batch (encoder, decoder, features, energy) gives the module path's energies."""
    from dagmm import OutlierAEGMM

    _require_fast_mlp()
    X_train, X_test, _ = tabular
    od = OutlierAEGMM(n_gmm=3, architecture=architecture).fit(X_train[:400], epochs=2, batch_size=100,
                                                              verbose=False, seed=0)
    calls = _spy_on_kernels(monkeypatch)
    got = od.score(X_test, batch_size=64)
    assert set(calls) == {"aegmm_energy"} and len(calls) == -(-len(X_test) // 64)
    with torch.no_grad():  # z as the modules compute it (same C layers and features, torch mixture algebra)
        _, z = od.aegmm.eval().encode(torch.from_numpy(od._checked(X_test)))
    np.testing.assert_allclose(got, sample_energy(z, od.phi_, od.mu_, od.prec_chol_).numpy(), rtol=1e-12, atol=1e-12)
    native.enabled = False  # the torch code end to end: float32 rounding of the network apart
    ref = od.score(X_test, batch_size=64)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_aegmm_scoring_kernel_only_where_it_applies(tabular, monkeypatch):
    from dagmm import OutlierAEGMM
    from dagmm.models.features import relative_euclidean

    X_train, X_test, _ = tabular
    f = X_train.shape[1]
    custom = OutlierAEGMM(n_gmm=2, architecture="paper",
                          recon_features=lambda x, r: torch.stack([relative_euclidean(x, r), r.mean(1)], 1))
    sigmoid = OutlierAEGMM(encoder_net=nn.Sequential(nn.Linear(f, 4), nn.Sigmoid(), nn.Linear(4, 1)),
                           decoder_net=nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, f)),
                           gmm_density_net=nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Softmax(1)))
    for od in (custom, sigmoid):
        od.fit(X_train[:300], epochs=1, batch_size=100, verbose=False, seed=0)
    calls = _spy_on_kernels(monkeypatch)
    for od in (custom, sigmoid):  # features the kernel does not know; a sigmoid layer
        with torch.no_grad():
            _, z = od.aegmm.eval().encode(torch.from_numpy(od._checked(X_test)))
        ref = sample_energy(z, od.phi_, od.mu_, od.prec_chol_).numpy()
        calls.clear()
        np.testing.assert_allclose(od.score(X_test), ref, rtol=1e-12)
        assert calls and "aegmm_energy" not in calls


def test_aegmm_energy_kernel_checks_the_shapes():
    w1, w2 = torch.randn(2, 5), torch.randn(4, 2)  # the decoder gives 4 columns back for 5 inputs
    enc = torch.tensor([[5, 2, w1.data_ptr(), 0, 0]], dtype=torch.int64)
    dec = torch.tensor([[2, 4, w2.data_ptr(), 0, 0]], dtype=torch.int64)
    x, out, p = torch.randn(3, 5), torch.empty(3, dtype=torch.float64), torch.zeros(64, dtype=torch.float64)
    with pytest.raises(ValueError, match="the decoder must map the latent code"):
        native.kernels.aegmm_energy(x.data_ptr(), 3, enc.data_ptr(), 1, dec.data_ptr(), 1, 0, 1e-8, 1e-6,
                                    p.data_ptr(), p.data_ptr(), p.data_ptr(), 1, out.data_ptr(), 48)
