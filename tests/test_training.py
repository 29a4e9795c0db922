"""Evidence that OutlierAEGMM really trains (field notes, section 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dagmm import OutlierAEGMM, TrainingDivergedError
from dagmm.models.losses import loss_aegmm
from dagmm.training.loop import resolve_optimizer


def test_every_parameter_gets_a_finite_nonzero_gradient(tabular):
    X_train, _, _ = tabular
    od = OutlierAEGMM(n_gmm=2)
    od.fit(X_train[:200], epochs=1, batch_size=200, verbose=False, seed=0)  # builds the nets
    model = od.aegmm.train()
    xb = torch.from_numpy(X_train[:256])
    x_recon, z, gamma = model(xb)
    loss = loss_aegmm(xb, x_recon, z, gamma)
    model.zero_grad()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_loss_falls_and_training_beats_untrained_network(tabular):
    X_train, X_test, y_test = tabular
    # the paper's architecture: the one whose untrained nets already score well (field notes, section 3)
    untrained = OutlierAEGMM(n_gmm=2, architecture="paper")
    untrained.fit(X_train, epochs=1, batch_size=len(X_train), verbose=False, seed=3,
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    trained = OutlierAEGMM(n_gmm=2, architecture="paper")
    trained.fit(X_train, epochs=60, batch_size=64, verbose=False, seed=3,
                optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    losses = [h["loss"] for h in trained.history_]
    assert losses[-1] < 0.7 * losses[0]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # same seed, same architecture: the two start from identical weights
    auc_untrained = roc_auc_score(y_test, untrained.score(X_test))
    auc_trained = roc_auc_score(y_test, trained.score(X_test))
    assert auc_trained > auc_untrained + 0.1, (auc_untrained, auc_trained)
    assert auc_trained > 0.85


def test_same_seed_same_scores_and_eval_is_deterministic(tabular):
    X_train, X_test, _ = tabular
    kw = dict(epochs=2, batch_size=64, verbose=False, seed=11)
    a = OutlierAEGMM(n_gmm=2).fit(X_train[:500], **kw)
    b = OutlierAEGMM(n_gmm=2).fit(X_train[:500], **kw)
    np.testing.assert_array_equal(a.score(X_test), b.score(X_test))
    np.testing.assert_array_equal(a.score(X_test), a.score(X_test))  # dropout off at scoring
    a.aegmm.eval()
    xb = torch.from_numpy(X_test[:50])
    with torch.no_grad():
        assert torch.equal(a.aegmm(xb)[2], a.aegmm(xb)[2])
    c = OutlierAEGMM(n_gmm=2).fit(X_train[:500], **{**kw, "seed": 12})
    assert not np.array_equal(a.score(X_test), c.score(X_test))


def test_seed_leaves_global_rng_alone(tabular):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    OutlierAEGMM(n_gmm=2).fit(tabular[0][:100], epochs=1, verbose=False, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_mixture_comes_from_whole_training_set(tabular):
    X_train, _, _ = tabular
    od = OutlierAEGMM(n_gmm=2).fit(X_train, epochs=1, batch_size=100, verbose=False, seed=0)
    model = od.aegmm.eval()
    from dagmm.training.scaling import apply_scaling as apply_standardize
    from dagmm.models.gmm import batch_gmm_params

    X_std = apply_standardize(X_train, od.scaler_mean_, od.scaler_scale_)  # what the network sees
    with torch.no_grad():
        _, z, gamma = model(torch.from_numpy(X_std))
    ref = batch_gmm_params(z, gamma)
    np.testing.assert_allclose(od.phi_.numpy(), ref.phi.numpy(), rtol=1e-6)
    np.testing.assert_allclose(od.mu_.numpy(), ref.mu.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(od.cov_.numpy(), ref.cov.numpy(), rtol=1e-5, atol=1e-9)
    # and independent of the batch size of the mixture pass
    phi, mu, cov = od.phi_, od.mu_, od.cov_
    od._fit_mixture(X_std, batch_size=7)
    # float32 net outputs: BLAS may round a 7-row product differently from a large one
    np.testing.assert_allclose(od.cov_.numpy(), cov.numpy(), rtol=5e-6, atol=1e-10)
    np.testing.assert_allclose(od.phi_.numpy(), phi.numpy(), rtol=1e-6)
    np.testing.assert_allclose(od.mu_.numpy(), mu.numpy(), rtol=1e-6, atol=1e-10)


def test_divergence_is_reported_and_weights_restored(tabular):
    X_train = tabular[0][:256]
    od = OutlierAEGMM(n_gmm=2)
    od.fit(X_train, epochs=1, verbose=False, seed=0)
    before = {k: v.clone() for k, v in od.aegmm.state_dict().items()}

    def exploding(x, x_recon, z, gamma, w_energy, w_cov_diag):
        return (x - x_recon).pow(2).mean() * float("nan")

    with pytest.raises(TrainingDivergedError, match="loss became nan in epoch 1"):
        od.fit(X_train, loss_fn=exploding, epochs=3, verbose=False)
    for k, v in od.aegmm.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_callbacks_and_log_metric(tabular):
    seen = []

    class Stopper:
        def on_epoch_end(self, epoch, logs):
            seen.append(logs)
            return epoch == 1

    od = OutlierAEGMM(n_gmm=2)
    od.fit(tabular[0][:300], epochs=10, verbose=False, seed=0, callbacks=[Stopper()],
           log_metric=("mae", lambda x, xr: (x - xr).abs().mean()))
    assert [s["epoch"] for s in seen] == [1, 2]
    assert len(od.history_) == 2 and "mae" in od.history_[0] and od.history_[0]["mae"] > 0


def test_optimizer_forms():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(resolve_optimizer(None, params, 1e-4), torch.optim.Adam)
    sgd = resolve_optimizer(torch.optim.SGD, params, 1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 1e-4
    adam = resolve_optimizer(lambda p: torch.optim.Adam(p, lr=1e-3), params, 1e-4)
    assert adam.param_groups[0]["lr"] == 1e-3
    with pytest.raises(TypeError, match="not an optimizer instance"):
        resolve_optimizer(torch.optim.Adam(params), params, 1e-4)
    with pytest.raises(TypeError, match="must return a torch.optim.Optimizer, got int"):
        resolve_optimizer(lambda p: 3, params, 1e-4)


def _adam_twins(ref_cls, steps, on_step=None, **kwargs):
    """Train a small net with ``ref_cls`` and its copy with LeanAdam on the same batches, through the
    events that send LeanAdam's steps back to torch or change what the cache holds: an lr change (step
    8), a layer without a gradient (12-14), a state reload and a step hook (20-24).  ``on_step(i, net,
    twin, lean)`` runs after each step.  Returns ``(net, twin, ref, lean)``."""
    import copy

    from torch import nn

    from dagmm.training.loop import LeanAdam

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2), nn.Linear(2, 2))
    twin = copy.deepcopy(net)
    ref = ref_cls(net.parameters(), lr=1e-2, **kwargs)
    lean = LeanAdam(twin.parameters(), lr=1e-2, fused=True, **kwargs)
    handle = None
    for i in range(steps):
        x = torch.randn(16, 5)
        for model, opt in ((net, ref), (twin, lean)):
            opt.zero_grad(set_to_none=True)
            out = model[:3](x) if 12 <= i < 15 else model(x)  # the last layer gets no gradient
            out.pow(2).sum().backward()
            opt.step()
        if i == 8:
            for opt in (ref, lean):
                opt.param_groups[0]["lr"] = 3e-3
        if i == 20:
            for opt in (ref, lean):
                opt.load_state_dict(copy.deepcopy(opt.state_dict()))
            handle = lean.register_step_post_hook(lambda *a: None)
        if i == 24:
            handle.remove()
        if on_step is not None:
            on_step(i, net, twin, lean)
    return net, twin, ref, lean


def test_lean_adam_matches_torch_fused_adam_bit_for_bit(monkeypatch):
    """The cached fast path runs the same kernel: identical weights through lr changes, a state
    reload, a parameter without a gradient and a step hook (which send steps back to torch)."""
    from dagmm import accel

    monkeypatch.setattr(accel, "enabled", False)  # the C step agrees to rounding only: the next test

    def check(i, net, twin, lean):
        if i == 5:
            assert lean._lean is not None  # the fast path is in use

    net, twin, _, lean = _adam_twins(lambda params, **kw: torch.optim.Adam(params, fused=True, **kw), 30, check)
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert lean._lean is not None


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_lean_adam_c_step_matches_torch_adam(weight_decay, monkeypatch):
    """The one-call C step: the same weights, moments and step counters as torch's Adam to float32
    rounding, through lr changes, a state reload, a parameter without a gradient, a step hook and a
    parameter whose storage was replaced; and it is the step in use."""
    from conftest import require_native

    from dagmm import accel
    from dagmm.accel import _lib

    require_native()
    monkeypatch.setattr(accel, "enabled", True)
    calls: list = []
    real = _lib.lib

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name) if name != "adam_step" else (lambda *a: calls.append(1) or real.adam_step(*a))

    monkeypatch.setattr(_lib, "lib", Spy())
    counted: dict = {}

    def check(i, net, twin, lean):
        if i == 5:
            assert lean._lean is not None and lean._lean[4] is not None and len(calls) == 5  # steps 2 to 6
        if 20 <= i < 25:
            counted.setdefault("hooked", len(calls))
            assert len(calls) == counted["hooked"]  # a step hook sends every step to the parent
        if i == 25:  # a weight given new storage: the cached addresses are stale, torch's kernel takes over
            counted["before"] = len(calls)
            for model in (net, twin):
                model[0].weight.data = model[0].weight.data.clone()
        if i == 26:
            assert len(calls) == counted["before"]
        if i == 27:
            assert len(calls) == counted["before"] + 1  # and the next step has a new cache
        torch.testing.assert_close(list(twin.parameters()), list(net.parameters()), rtol=2e-5, atol=1e-6)

    net, twin, ref, lean = _adam_twins(torch.optim.Adam, 40, check, weight_decay=weight_decay, foreach=False)
    for p, q in zip(net.parameters(), twin.parameters()):
        sa, sb = ref.state[p], lean.state[q]
        assert float(sa["step"]) == float(sb["step"])
        torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], rtol=2e-5, atol=1e-7)
        torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], rtol=2e-5, atol=1e-9)
