"""The C kernels behind ``dagmm.accel`` against the plain torch code of ``dagmm.models``, on the same inputs.

Skipped where the kernels were not built (or run without their AVX2 + FMA clone, where
``dagmm.accel`` does not use them), failed instead under ``DAGMM_REQUIRE_NATIVE=1`` (``.ci/run``).
The training kernels are compared with the modules in ``test_train_step.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dagmm import accel
from dagmm.accel import _lib, _train
from dagmm.models.gmm import CholeskyError, sample_energy
from dagmm.models.losses import mixture_objective
from dagmm.models.nets import AENet, default_ae_nets, mlp

from conftest import float64_reordered, require_fast


@pytest.fixture(autouse=True)
def _built(monkeypatch):
    require_fast()
    monkeypatch.setattr(accel, "enabled", True)  # restored after the test


def _spy_on_kernels(monkeypatch) -> list:
    """Route the kernels through a recorder; returns the list of kernel names called."""
    calls = []
    real = _lib.lib

    class Spy:
        def __getattr__(self, name):
            value = getattr(real, name)
            if not callable(value):
                return value  # the shared constants

            def call(*args):
                calls.append(name)
                return value(*args)
            return call

    monkeypatch.setattr(_lib, "lib", Spy())
    return calls


@pytest.fixture
def kernel_calls(monkeypatch) -> list:
    return _spy_on_kernels(monkeypatch)


# ------------------------------------------------------------------ objective
def _objective_inputs(n, d, k, dtype):
    z = (torch.randn(n, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64) + 5.0).to(dtype)
    gamma = torch.softmax(2 * torch.randn(n, k, dtype=torch.float64), 1).to(dtype)
    return z, gamma


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,d,k", [(1024, 3, 4), (64, 2, 1), (30, 4, 6)])
def test_objective_kernel_agrees_with_the_torch_code(n, d, k, dtype):
    z, gamma = _objective_inputs(n, d, k, dtype)
    gamma = gamma.T.contiguous().T  # strided, as the head kernel hands it over
    value, gz, gg = _train.objective(z, gamma, 0.1, 0.005, 1e-6)
    zz, ga = z.clone().requires_grad_(True), gamma.clone().requires_grad_(True)
    ref = mixture_objective(zz, ga, 0.1, 0.005, 1e-6)
    rz, rg = torch.autograd.grad(ref, [zz, ga])
    # both sum in float64; the inputs' rounding to float32 is the same, so the value agrees closely
    assert value == pytest.approx(ref.item(), rel=1e-10)
    assert gz.dtype == dtype and gg.dtype == dtype
    # float32 gradients: rounding of the final cast and of float32 inputs in another summation order
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(gz.T, rz, rtol=tol, atol=tol * rz.abs().max().item())
    torch.testing.assert_close(gg.T, rg, rtol=tol, atol=tol * rg.abs().max().item())


def test_objective_kernel_raises_the_torch_code_s_cholesky_error():
    z, gamma = _objective_inputs(40, 3, 3, torch.float64)
    z[:, 2] = float("inf")
    with pytest.raises(CholeskyError) as c_err:
        _train.objective(z, gamma, 0.1, 0.005, 1e-6)
    with pytest.raises(CholeskyError) as t_err:
        mixture_objective(z, gamma, 0.1, 0.005, 1e-6)
    assert str(c_err.value) == str(t_err.value)
    assert "component(s) [0, 1, 2]" in str(c_err.value)


# ---------------------------------------------------------------- stack kernel
def _mlp_reference(x: torch.Tensor, layers: list) -> torch.Tensor:
    h = x.double()
    for w, b, act in layers:
        h = h @ w.double().T + (0.0 if b is None else b.double())
        h = torch.tanh(h) if act == 1 else torch.relu(h) if act == 2 else h
    return h


def _spec(layers):
    return torch.tensor([[w.shape[1], w.shape[0], w.data_ptr(), 0 if b is None else b.data_ptr(), a]
                         for w, b, a in layers], dtype=torch.int64)


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
    spec = _spec(layers)
    for n in (1, 5, 6, 7, 13, 47, 48, 49, 97, 300):
        x = 2 * torch.randn(n, widths[0], generator=gen)
        y = torch.full((n, widths[-1]), float("nan"))
        _lib.lib.mlp_forward(x.data_ptr(), n, y.data_ptr(), spec.data_ptr(), len(layers), tile)
        torch.testing.assert_close(y, _mlp_reference(x, layers).float(), rtol=1e-5, atol=2e-6)


def test_mlp_kernel_rows_are_independent_nan_propagates_and_the_layer_limit_is_the_header_s():
    layers = [(torch.randn(16, 5), torch.randn(16), 2), (torch.randn(3, 16), torch.randn(3), 1)]
    spec = _spec(layers)
    x = torch.randn(20, 5)
    x[11, 2] = float("nan")
    y = torch.empty(20, 3)
    _lib.lib.mlp_forward(x.data_ptr(), 20, y.data_ptr(), spec.data_ptr(), 2, 48)
    assert torch.isnan(y[11]).all() and not torch.isnan(y[torch.arange(20) != 11]).any()
    assert _lib.lib.MAX_LAYERS == 64  # defined once, in _native.h; the kernels enforce the same number
    with pytest.raises(ValueError, match="mlp_forward: 1 to 64 layers and a positive tile"):
        _lib.lib.mlp_forward(x.data_ptr(), 20, y.data_ptr(), spec.data_ptr(), _lib.lib.MAX_LAYERS + 1, 48)


def test_tanh_of_the_kernels_accuracy_and_special_values():
    """tanh_f (_native.h, every tanh layer of the kernels) through a 1 -> 1 identity layer."""
    w, b = torch.ones(1, 1), torch.zeros(1)
    spec = _spec([(w, b, _lib.lib.ACT_TANH)])

    def tanh(x):
        x = x.reshape(-1, 1).contiguous()
        y = torch.empty_like(x)
        _lib.lib.mlp_forward(x.data_ptr(), x.shape[0], y.data_ptr(), spec.data_ptr(), 1, _lib.lib.TILE)
        return y.reshape(-1)

    x = torch.linspace(-12, 12, 2_000_001)
    assert (tanh(x).double() - torch.tanh(x.double())).abs().max().item() < 2e-7
    # expm1 form: small arguments keep their relative precision (1 - 2 / (exp(2x) + 1) would not)
    small = torch.tensor([1e-4, -3e-6, 1e-30, 0.01, -0.17])
    rel = ((tanh(small).double() - torch.tanh(small.double())) / torch.tanh(small.double())).abs()
    assert rel.max().item() < 2e-7
    special = tanh(torch.tensor([float("nan"), float("inf"), -float("inf"), 100.0, -100.0, 9.5, 0.0]))
    assert torch.isnan(special[0]) and special[1:].tolist() == [1.0, -1.0, 1.0, -1.0, 1.0, 0.0]


# --------------------------------------------------------------- reconstructor
def _auto_encoders():
    return {
        "paper stacks": AENet(mlp([12, 60, 30, 10, 1]), mlp([1, 10, 30, 60, 12])),
        "relu, flatten / unflatten": AENet(*default_ae_nets((3, 4))),
        "dropout in eval, identity, no bias": AENet(
            nn.Sequential(nn.Linear(12, 6, bias=False), nn.Dropout(0.5), nn.Identity(), nn.Tanh(), nn.Linear(6, 2)),
            nn.Sequential(nn.Sequential(nn.Linear(2, 7), nn.ReLU()), nn.Linear(7, 12))),
    }


@pytest.mark.parametrize("name", list(_auto_encoders()))
def test_reconstructor_computes_the_module(name, kernel_calls):
    model = _auto_encoders()[name].eval()
    shape = (70, 3, 4) if "flatten" in name else (70, 12)
    x = torch.randn(shape)
    fn = accel.reconstructor(model)
    assert fn is not None
    out = torch.full(shape, float("nan"))
    assert fn(x, out) and kernel_calls == ["mlp_forward"]  # encoder and decoder in one call
    with torch.no_grad():
        # the kernel sums the products in another order than torch.addmm: float32 rounding
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=2e-6)
    if x.dim() == 2:  # a column slice is copied to rows first
        wide = torch.randn(70, 24)
        assert fn(wide[:, ::2], out)
        with torch.no_grad():
            torch.testing.assert_close(out, model(wide[:, ::2]), rtol=1e-5, atol=2e-6)


class _MySeq(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


class _MyAE(AENet):
    pass


@pytest.mark.parametrize("case", ["hook", "subclass", "subclassed model", "sigmoid", "softmax", "dropping dropout",
                                  "global hook", "float64", "strided weight", "65 layers", "off", "widths"])
def test_reconstructor_only_where_it_computes_the_module(case, monkeypatch):
    enc, dec = mlp([6, 4, 3]), mlp([3, 4, 6])
    handle, cls = None, AENet
    if case == "hook":
        enc[1].register_forward_hook(lambda m, i, o: o * 3)
    elif case == "subclass":
        enc = _MySeq(*enc)
    elif case == "subclassed model":
        cls = _MyAE
    elif case == "sigmoid":
        enc = nn.Sequential(nn.Linear(6, 4), nn.Sigmoid(), nn.Linear(4, 3))
    elif case == "softmax":
        dec = nn.Sequential(nn.Linear(3, 6), nn.Softmax(dim=1))
    elif case == "dropping dropout":
        enc = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5), nn.Linear(4, 3))
    elif case == "global hook":
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    elif case == "float64":
        enc, dec = enc.double(), dec.double()
    elif case == "strided weight":
        enc[0].weight = nn.Parameter(torch.randn(6, 4).T)
    elif case == "65 layers":
        enc = mlp([6] + [4] * 64 + [3])
    elif case == "off":
        monkeypatch.setattr(accel, "enabled", False)
    elif case == "widths":
        dec = mlp([3, 4, 5])  # does not map back to the input width
    model = cls(enc, dec)
    if case == "dropping dropout":
        model.train()
    try:
        assert accel.reconstructor(model) is None
    finally:
        if handle is not None:
            handle.remove()


def test_reconstructor_refuses_inputs_it_does_not_take(kernel_calls):
    model = AENet(mlp([6, 4, 3]), mlp([3, 4, 6])).eval()
    fn = accel.reconstructor(model)
    out = torch.empty(5, 6)
    for xb, o in ((torch.randn(5, 6, dtype=torch.float64), out), (torch.randn(5, 7), out),
                  (torch.randn(5, 2, 3), out), (torch.randn(5, 6), torch.empty(5, 6, dtype=torch.float64)),
                  (torch.randn(5, 6), torch.empty(6, 5).T), (torch.randn(0, 6), torch.empty(0, 6))):
        assert fn(xb, o) is False
    assert kernel_calls == []


# -------------------------------------------------------------------- scoring
@pytest.mark.parametrize("architecture", ["paper", "auto", "auto-diagonal"])
def test_aegmm_scoring_kernel_matches_the_module_path(tabular, architecture, monkeypatch):
    """One C call per batch (encoder, decoder, features, energy, residual term) gives the module path's
    energies: no residual term (paper), the default's joint mixture of the code and the residual and then
    the global full-covariance term (auto), the diagonal one (auto-diagonal)."""
    from dagmm import OutlierAEGMM

    X_train, X_test, _ = tabular
    od = OutlierAEGMM(n_gmm=3, architecture=architecture.split("-")[0]).fit(
        X_train[:400], epochs=2, batch_size=100, verbose=False, seed=0)
    calls = _spy_on_kernels(monkeypatch)
    if architecture != "paper":  # the default's joint mixture of the code and the residual, kernel vs torch
        assert od.residual_means_ is not None
        got = od.score(X_test, batch_size=64)
        assert set(calls) == {"aegmm_energy"} and len(calls) == -(-len(X_test) // 64)
        accel.enabled = False
        ref = od.score(X_test, batch_size=64)
        accel.enabled = True
        # float32 network and residual products in another summation order, float64 mixture algebra
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
        calls.clear()
        od.residual_means_ = od.residual_prec_chols_ = None  # the global terms
    if architecture == "auto-diagonal":
        od.residual_mean_ = od.residual_prec_chol_ = None
    got = od.score(X_test, batch_size=64)
    assert set(calls) == {"aegmm_energy"} and len(calls) == -(-len(X_test) // 64)
    accel.enabled = False  # the torch code end to end
    ref = od.score(X_test, batch_size=64)
    # float32 rounding of the network in another summation order, then the energy of the mixture
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
    xs = od._checked(X_test)
    with torch.no_grad():  # the same energy formula of the module path's z (float64 mixture algebra)
        x_recon, z = od.aegmm.eval().encode(torch.from_numpy(xs))
    energy = sample_energy(z, od.phi_, od.mu_, od.prec_chol_).numpy()
    assert (od.error_scale_ is not None) == (architecture != "paper")
    r = xs.astype(np.float64) - x_recon.numpy()
    if architecture == "auto":  # the residual's Gaussian terms, written out in numpy
        energy = energy + 0.5 * (((r - od.residual_mean_) @ od.residual_prec_chol_.astype(np.float64)) ** 2).sum(1)
    elif architecture == "auto-diagonal":
        energy = energy + 0.5 * (r ** 2 / od.error_scale_).sum(1)
    # another float64 order of ~D*D + K + F operations (D = 3, K = 3, F = 10) on terms of size ~|energy| + D
    np.testing.assert_allclose(ref, energy, **float64_reordered(energy, 64, scale=np.abs(energy).max() + 3))


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
        assert accel.energy_scorer(od.aegmm, od.phi_, od.mu_, od.prec_chol_) is None
        with torch.no_grad():
            _, z = od.aegmm.eval().encode(torch.from_numpy(od._checked(X_test)))
        ref = sample_energy(z, od.phi_, od.mu_, od.prec_chol_).numpy()
        # the float64 energy from precomputed terms vs directly: as above, absolute too near 0
        np.testing.assert_allclose(od.score(X_test), ref, **float64_reordered(ref, 64, scale=np.abs(ref).max() + 3))
    assert calls == []


def test_aegmm_energy_kernel_checks_the_shapes():
    w1, w2 = torch.randn(2, 5), torch.randn(4, 2)  # the decoder gives 4 columns back for 5 inputs
    enc, dec = _spec([(w1, None, 0)]), _spec([(w2, None, 0)])
    x, out, p = torch.randn(3, 5), torch.empty(3, dtype=torch.float64), torch.zeros(64, dtype=torch.float64)
    with pytest.raises(ValueError, match="the decoder must map the latent code \\(at most 62 wide\\)"):
        _lib.lib.aegmm_energy(x.data_ptr(), 3, enc.data_ptr(), 1, dec.data_ptr(), 1, 0, 1e-8, 1e-6,
                              p.data_ptr(), p.data_ptr(), p.data_ptr(), 1, 0, 0, 0, out.data_ptr(), 48)
    dec = _spec([(torch.randn(5, 2), None, 0)])
    # whitening 5 -> 4, with a tanh, or 5 -> 5 where the joint mixture (log-determinants, 2 components) needs 10
    for w, act, k, logdet in ((torch.randn(4, 5), 0, 1, 0), (torch.randn(5, 5), 1, 1, 0),
                              (torch.randn(5, 5), 0, 2, p.data_ptr())):
        whiten = _spec([(w, None, act)])
        with pytest.raises(ValueError, match="the whitening layer must map the input width to itself"):
            _lib.lib.aegmm_energy(x.data_ptr(), 3, enc.data_ptr(), 1, dec.data_ptr(), 1, 0, 1e-8, 1e-6,
                                  p.data_ptr(), p.data_ptr(), p.data_ptr(), k, 0, whiten.data_ptr(), logdet,
                                  out.data_ptr(), 48)
    with pytest.raises(ValueError, match="log-determinants need the whitening layer"):
        _lib.lib.aegmm_energy(x.data_ptr(), 3, enc.data_ptr(), 1, dec.data_ptr(), 1, 0, 1e-8, 1e-6,
                              p.data_ptr(), p.data_ptr(), p.data_ptr(), 1, 0, 0, p.data_ptr(), out.data_ptr(), 48)


def test_ae_scoring_takes_the_kernel_and_matches_the_modules(tabular, monkeypatch):
    from dagmm import OutlierAE

    X_train, X_test, _ = tabular
    od = OutlierAE().fit(X_train[:500], epochs=2, verbose=False, seed=0)
    calls = _spy_on_kernels(monkeypatch)
    fs, inst = od.score(X_test, batch_size=100)
    recon = od.reconstruct(X_test)
    assert set(calls) == {"mlp_forward"}
    accel.enabled = False
    fs_ref, inst_ref = od.score(X_test, batch_size=100)
    np.testing.assert_allclose(recon, od.reconstruct(X_test), rtol=1e-5, atol=1e-5)
    # squared errors of reconstructions that agree to float32 rounding
    np.testing.assert_allclose(fs, fs_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(inst, inst_ref, rtol=1e-4)
