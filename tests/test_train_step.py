"""The default OutlierAEGMM loss as one node (dagmm.train_step) against the composed modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dagmm import OutlierAEGMM, native, train_step
from dagmm.features import default_recon_features, log_mse_cosine
from dagmm.losses import loss_aegmm, loss_mse
from dagmm.nets import AEGMMNet, paper_kddcup_nets

from conftest import require_native


@pytest.fixture(autouse=True)
def _built(monkeypatch):
    require_native()
    monkeypatch.setattr(native, "enabled", True)


def _model(recon=default_recon_features, n_features=20):
    enc, dec, head = paper_kddcup_nets(n_features)
    return AEGMMNet(enc, dec, head, recon)


def _both(model, xb, scale=1.0, **kw):
    """(loss, grads) from the modules and from the single node, with the same dropout draws."""
    params = list(model.parameters())
    torch.manual_seed(7)
    ref = loss_aegmm(xb, *model(xb), **kw) * scale
    ref_grads = torch.autograd.grad(ref, params)
    torch.manual_seed(7)
    loss, x_recon = train_step.aegmm_loss(model, xb, loss_aegmm, **kw)
    grads = torch.autograd.grad(loss * scale, params)
    torch.testing.assert_close(x_recon, model.decoder(model.encoder(xb)), rtol=1e-5, atol=1e-6)
    return (ref, ref_grads), (loss * scale, grads)


@pytest.mark.parametrize("recon", [default_recon_features, log_mse_cosine])
@pytest.mark.parametrize("training", [True, False])
def test_loss_and_gradients_match_the_modules(recon, training):
    model = _model(recon).train(training)
    xb = torch.randn(300, 20)
    (ref, ref_grads), (loss, grads) = _both(model, xb, w_energy=0.1, w_cov_diag=0.005, cov_eps=1e-6)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


def test_an_incoming_gradient_other_than_one_scales_every_gradient():
    model = _model()
    xb = torch.randn(200, 20)
    (ref, ref_grads), (loss, grads) = _both(model, xb, scale=3.5, w_energy=0.2, w_cov_diag=0.01)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


class _Wrapped(AEGMMNet):
    pass


@pytest.mark.parametrize("case", ["other loss", "subclass", "hooked", "float64", "native off", "user features",
                                  "no grad", "plain estimation net"])
def test_falls_back_where_it_does_not_apply(case, monkeypatch):
    model, xb, loss_fn = _model(), torch.randn(50, 20), loss_aegmm
    if case == "other loss":
        loss_fn = loss_mse
    elif case == "subclass":
        model = _Wrapped(model.encoder, model.decoder, model.gmm_density, default_recon_features)
    elif case == "hooked":
        model.register_forward_hook(lambda m, i, o: o)
    elif case == "float64":
        model, xb = model.double(), xb.double()
    elif case == "native off":
        monkeypatch.setattr(native, "enabled", False)
    elif case == "user features":
        model.recon_features = lambda x, r: default_recon_features(x, r)
    elif case == "plain estimation net":
        model.gmm_density = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1))
    if case == "no grad":
        with torch.no_grad():
            assert train_step.aegmm_loss(model, xb, loss_fn, 0.1, 0.005) is None
    else:
        assert train_step.aegmm_loss(model, xb, loss_fn, 0.1, 0.005) is None


def test_fit_trains_through_the_single_node(monkeypatch, rng):
    calls = []
    real = train_step.aegmm_loss

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr("dagmm.aegmm.aegmm_loss", spy)
    X = rng.normal(size=(600, 12)).astype("float32")
    fast = OutlierAEGMM(architecture="paper").fit(X, epochs=2, batch_size=200, verbose=False, seed=0)
    assert calls and all(calls)
    # the same fit on the composed modules ends close by (float32 rounding differs along the way)
    monkeypatch.setattr("dagmm.aegmm.aegmm_loss", lambda *a, **k: None)
    slow = OutlierAEGMM(architecture="paper").fit(X, epochs=2, batch_size=200, verbose=False, seed=0)
    for a, b in zip(fast.history_, slow.history_):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
