"""Data-driven defaults: the rules, the schedule, early stopping, standardisation."""

from __future__ import annotations

import json
import math

import numpy as np
from scipy.stats import spearmanr
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from dagmm import OutlierAE, OutlierAEGMM
from dagmm.models.gmm import GMMParams
from dagmm.training.auto import (
    ae_config,
    aegmm_config,
    n_components,
    resolve_schedule,
    schedule,
)
from dagmm.training.scaling import apply_scaling as apply_standardize
from dagmm.training.scaling import fit_scaling as standardize_stats
from dagmm.training.loop import EarlyStopping, split_holdout
from dagmm.synthetic import make_typed_outliers

from conftest import float64_reordered


class CountingAdam(torch.optim.Adam):
    """Adam that counts its steps."""

    def __init__(self, params, lr=1e-3):
        super().__init__(params, lr=lr)
        self.n_steps = 0

    def step(self, closure=None):
        self.n_steps += 1
        return super().step(closure)


def _counting(store, lr=1e-3):
    def make(params):
        store.append(CountingAdam(params, lr=lr))
        return store[-1]
    return make


@pytest.fixture(scope="module")
def raw_task():
    """A table in mixed units (columns scaled by 1e-2 ... 1e3 and shifted), split semi-supervised."""
    X, y = make_typed_outliers("global", n_samples=1200, n_features=8, seed=3)
    rng = np.random.default_rng(0)
    X = X * np.logspace(-2, 3, 8, dtype=np.float32) + rng.normal(scale=50, size=8).astype(np.float32)
    inl = np.flatnonzero(y == 0)
    train = inl[: len(inl) // 2]
    test = np.setdiff1d(np.arange(len(X)), train)
    return X[train], X[test], y[test]


# ------------------------------------------------------------------ rules
@pytest.mark.parametrize("n_rows, shape, enc, k, batch, steps, val", [
    (10000, (50,), [50, 64, 32, 4], 4, 256, 1440, 1000),
    (200, (5,), [5, 32, 16, 2], 1, 32, 1000, 20),
    (50000, (200,), [200, 128, 64, 4], 4, 256, 3000, 2000),
    (2000, (10,), [10, 32, 16, 3], 2, 64, 1160, 200),
    (80, (3,), [3, 32, 16, 2], 1, 32, 1000, 0),
])
def test_aegmm_rules(n_rows, shape, enc, k, batch, steps, val):
    c = aegmm_config(n_rows, shape)
    assert c["encoder"] == enc and c["decoder"] == enc[::-1]
    assert c["n_gmm"] == k and c["batch_size"] == batch and c["max_steps"] == steps and c["val_rows"] == val
    assert c["density"][0] == enc[-1] + 2
    f = math.prod(shape)
    assert c["w_energy"] == pytest.approx(0.001 * f) and c["w_cov_diag"] == pytest.approx(0.00005 * f)
    assert c["lr"] == 1e-3 and c["patience_steps"] == steps // 4
    json.dumps(c)


def test_ae_rules_and_rows():
    assert ae_config(10000, (50,))["encoder"] == [50, 64, 32, 13]
    assert ae_config(500, (5,))["encoder"] == [5, 32, 16, 2]
    assert ae_config(500, (274,))["encoder"] == [274, 128, 64, 16]
    assert [n_components(n) for n in (100, 299, 300, 2999, 3000, 10 ** 6)] == [1, 1, 2, 2, 4, 4]
    s = schedule(1000)
    assert s["val_rows"] == 100 and s["batch_size"] == 32 and s["max_steps"] == 1160  # 40 epochs of 29 steps
    # OutlierAE: twice the budget where a held-out slice stops it early, the plain budget below 100 rows
    ae = ae_config(1000, (10,))
    assert ae["max_steps"] == 2320 and ae["patience_steps"] == 580 and ae["max_epochs"] == 80
    assert ae_config(80, (10,))["max_steps"] == schedule(80)["max_steps"] == 1000
    assert aegmm_config(1000, (10,))["max_steps"] == 1160


def test_resolve_schedule_honours_user_values():
    c = aegmm_config(1000, (10,))
    assert resolve_schedule(c, 1000, 7, None) == {"epochs": 7, "batch_size": c["batch_size"],
                                                  "early_stopping": False, "val_rows": 0}
    p = resolve_schedule(c, 1000, None, 100)
    assert p["batch_size"] == 100 and p["early_stopping"] and p["epochs"] == math.ceil(c["max_steps"] / 9)
    assert resolve_schedule(None, 1000, None, None)["epochs"] == 20
    assert resolve_schedule(None, 1000, None, None)["batch_size"] == 64


# --------------------------------------------------------------- schedule
@pytest.mark.parametrize("cls", [OutlierAEGMM, OutlierAE])
def test_explicit_epochs_and_batch_are_honoured_exactly(cls, raw_task):
    X = raw_task[0][:230]
    opts = []
    od = cls().fit(X, epochs=3, batch_size=50, optimizer=_counting(opts), verbose=False, seed=0)
    assert opts[0].n_steps == 3 * math.ceil(230 / 50) and len(od.history_) == 3
    assert od.auto_config_["early_stopping"] is None
    od = cls().fit(X, epochs=2, optimizer=_counting(opts), verbose=False, seed=0)  # batch from the rules
    assert opts[1].n_steps == 2 * math.ceil(230 / od.auto_config_["batch_size"])


@pytest.mark.parametrize("cls", [OutlierAEGMM, OutlierAE])
def test_automatic_schedule_counts_steps_and_holds_out(cls, raw_task):
    X = raw_task[0][:400]
    opts = []
    od = cls().fit(X, optimizer=_counting(opts), verbose=False, seed=0)
    cfg = od.auto_config_
    es = cfg["early_stopping"]
    per_epoch = math.ceil((400 - cfg["val_rows"]) / cfg["batch_size"])
    assert cfg["val_rows"] == 40 and opts[0].n_steps == len(od.history_) * per_epoch == es["steps"]
    assert es["steps"] <= cfg["max_steps"] + per_epoch
    json.dumps(cfg)


def test_early_stopping_restores_the_best_weights(raw_task):
    X = raw_task[0][:600]
    seen = []
    # a large learning rate makes the held-out loss noisy, so the best step is not the last one
    od = OutlierAE().fit(X, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), verbose=False, seed=1,
                         callbacks=[lambda epoch, logs: seen.append(logs.get("val_loss"))])
    es = od.auto_config_["early_stopping"]
    vals = [v for v in seen if v is not None]
    assert es["best_step"] < es["steps"] and es["best_val_loss"] == pytest.approx(min(vals))
    assert vals[-1] > min(vals)
    _, val_idx = split_holdout(len(X), od.auto_config_["val_rows"], 1)
    Xv = torch.from_numpy(apply_standardize(X[val_idx], od.scaler_mean_, od.scaler_scale_))
    with torch.no_grad():
        restored = float((od.ae(Xv) - Xv).pow(2).mean())
    assert restored == pytest.approx(min(vals), rel=1e-5)


def test_early_stopping_callback_stops_after_patience():
    model = nn.Linear(2, 2)
    losses = iter([5.0, 4.0, 4.5, 4.2, 4.1, 4.3, 3.0])
    es = EarlyStopping(model, lambda: next(losses), steps_per_epoch=10, max_steps=1000, patience_steps=30,
                       eval_every=10)
    stops = [es.on_epoch_end(e, {}) for e in range(5)]
    # best 4.0 at step 20; steps 30, 40 do not improve; at step 50 (30 after the best) it stops
    assert stops == [False, False, False, False, True] and es.best_step == 20 and es.best == 4.0


# ---------------------------------------------------------- standardising
@pytest.mark.parametrize("cls", [OutlierAEGMM, OutlierAE])
def test_standardisation_stats_match_numpy(cls, raw_task):
    X = raw_task[0][:300].copy()
    X[:, 2] = 7.0  # a constant column gets scale 1
    od = cls().fit(X, epochs=1, verbose=False, seed=0)
    # float64 statistics against numpy's: N sums in another order (plus one rescaling per value) on
    # values up to max|X|, so N + 2 roundings of that size each
    tol = float64_reordered(X, len(X) + 2, scale=np.abs(X).max())
    np.testing.assert_allclose(od.scaler_mean_, X.astype(np.float64).mean(0), **tol)
    expected = X.astype(np.float64).std(0)
    expected[2] = 1.0
    np.testing.assert_allclose(od.scaler_scale_, expected, **tol)
    assert od.scaler_mean_.dtype == np.float64 and od.auto_config_["standardize"] is True
    off = cls(standardize=False).fit(X, epochs=1, verbose=False, seed=0)
    assert off.scaler_mean_ is None and off.auto_config_["standardize"] is False
    mean, scale = standardize_stats(X)
    assert np.all(np.isfinite(apply_standardize(X, mean, scale)))


@pytest.mark.parametrize("cls", [OutlierAEGMM, OutlierAE])
def test_scores_invariant_to_affine_rescaling(cls, raw_task):
    X_train, X_test, _ = raw_task
    rng = np.random.default_rng(5)
    a = rng.uniform(0.01, 100, size=X_train.shape[1]).astype(np.float32)
    b = rng.normal(scale=1000, size=X_train.shape[1]).astype(np.float32)

    def scores(od, X):
        s = od.score(X)
        return s[1] if isinstance(s, tuple) else s

    kw = dict(epochs=3, verbose=False, seed=0)
    base = scores(cls().fit(X_train, **kw), X_test)
    moved = scores(cls().fit(X_train * a + b, **kw), X_test * a + b)
    if cls is OutlierAE:
        np.testing.assert_allclose(moved, base, rtol=2e-3, atol=2e-3)
    else:
        # The standardised inputs agree to float32 rounding, and so do the codes; the scoring mixture
        # (k-means starts, then EM stopped at a tolerance) amplifies that into ~1e-3 relative changes
        # of the energies (up to ~0.5 on energies of ~200), while the ranking stays the same.
        np.testing.assert_allclose(moved, base, rtol=1e-2, atol=0.05)
        assert spearmanr(moved, base).statistic > 0.999
    raw = scores(cls(standardize=False).fit(X_train * a + b, **kw), X_test * a + b)
    assert not np.allclose(raw, base, rtol=0.1)


def test_feature_scores_in_standardised_units(raw_task):
    X_train, X_test, _ = raw_task
    od = OutlierAE().fit(X_train, epochs=5, verbose=False, seed=0)
    recon = od.reconstruct(X_test)
    fs, _ = od.score(X_test)
    np.testing.assert_allclose(od.feature_score(X_test, recon), fs, rtol=1e-3, atol=1e-4)
    # standardised units, then in units of each feature's training error (error_scale_)
    np.testing.assert_allclose(fs, np.square((X_test - recon) / od.scaler_scale_) / od.error_scale_,
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(OutlierAE.feature_score(X_test, recon), np.square(X_test - recon), rtol=1e-6)
    # the reconstruction is in the data's units: its column means are near the data's
    assert np.all(np.abs(recon.mean(0) - X_test.mean(0)) < 0.5 * X_test.std(0))


# -------------------------------------------------------------- user nets
def test_user_nets_keep_the_fixed_defaults(raw_task, monkeypatch):
    import dagmm.detectors.aegmm as aegmm_mod

    X = raw_task[0][:200]
    enc = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2))
    dec = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 8))
    dens = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2), nn.Softmax(dim=1))
    built, seen = [], []
    real = aegmm_mod.resolve_optimizer
    monkeypatch.setattr(aegmm_mod, "resolve_optimizer",
                        lambda o, p, lr: built.append(CountingAdam(p, lr=lr)) or built[-1])

    def loss(x, x_recon, z, gamma, w_energy, w_cov_diag):
        seen.append((w_energy, w_cov_diag))
        return aegmm_mod.loss_aegmm(x, x_recon, z, gamma, w_energy, w_cov_diag)

    od = OutlierAEGMM(encoder_net=enc, decoder_net=dec, gmm_density_net=dens).fit(
        X / 1000, loss_fn=loss, verbose=False, seed=0)
    assert built[0].n_steps == 20 * math.ceil(200 / 64) and built[0].param_groups[0]["lr"] == 1e-4
    assert set(seen) == {(0.1, 0.005)} and od.scaler_mean_ is None and od.aegmm.encoder is enc
    paper = OutlierAEGMM(architecture="paper").fit(X / 1000, verbose=False, seed=0)
    assert built[1].n_steps == 20 * 4 and built[1].param_groups[0]["lr"] == 1e-4
    assert paper.n_gmm == 4 and paper.scaler_mean_ is None
    assert [m.out_features for m in paper.aegmm.encoder if isinstance(m, nn.Linear)] == [60, 30, 10, 1]
    monkeypatch.setattr(aegmm_mod, "resolve_optimizer", real)
    ae = OutlierAE(encoder_net=nn.Linear(8, 3), decoder_net=nn.Linear(3, 8)).fit(X, verbose=False, seed=0)
    assert len(ae.history_) == 20 and ae.scaler_mean_ is None and ae.auto_config_["batch_size"] == 64


def test_bad_options():
    with pytest.raises(ValueError, match=r"standardize must be 'auto', True or False, got 'yes'\."):
        OutlierAEGMM(standardize="yes")
    with pytest.raises(ValueError, match=r"standardize must be 'auto', True or False, got 1\."):
        OutlierAE(standardize=1)
    with pytest.raises(ValueError, match=r"architecture must be 'auto' or 'paper', got 'big'\."):
        OutlierAEGMM(architecture="big")


# ---------------------------------------------------------------- quality
def test_aegmm_score_adds_the_residual_likelihood(raw_task):
    """Default OutlierAEGMM: energy of the code + the residual's Gaussian NLL, in the standardised units:
    full covariance (Ledoit-Wolf, against scikit-learn) by default, diagonal with error_scale_ alone."""
    from sklearn.covariance import LedoitWolf

    X_train, X_test, _ = raw_task
    od = OutlierAEGMM().fit(X_train, epochs=3, verbose=False, seed=0)
    assert od.auto_config_["error_scale"] == "train" and od.auto_config_["residual_fit"] == "component"
    od.residual_means_ = od.residual_prec_chols_ = None  # the global full term (test below for the joint one)
    with torch.no_grad():
        recon = [od.aegmm.eval().encode(torch.from_numpy(od._checked(X)))[0].numpy() for X in (X_train, X_test)]
    # independent path: numpy float64 of the standardised rows (float32 rounding of the standardisation)
    res = [(X.astype(np.float64) - od.scaler_mean_) / od.scaler_scale_ - r
           for X, r in zip((X_train, X_test), recon)]  # (N, F) each
    sq = [r ** 2 for r in res]
    mean = sq[0].mean(0)  # (F,)
    scale = np.maximum(mean, 0.01 * mean.mean())
    np.testing.assert_allclose(od.error_scale_, scale, rtol=1e-3)
    lw = LedoitWolf().fit(res[0])
    cov = lw.covariance_.copy()
    np.fill_diagonal(cov, np.maximum(np.diag(cov), 0.01 * np.diag(cov).mean()))  # the floor, as error_scale_'s
    d = res[1] - lw.location_
    maha = np.einsum("ij,ij->i", d, np.linalg.solve(cov, d.T).T)
    assert od.auto_config_["residual_shrinkage"] == pytest.approx(lw.shrinkage_, rel=1e-3, abs=1e-6)
    full = od.score(X_test)
    prec_chol, res_mean = od.residual_prec_chol_, od.residual_mean_
    od.residual_prec_chol_ = od.residual_mean_ = None  # what wide tables (and files saved before it) score
    diag = od.score(X_test)
    od.error_scale_ = None  # what a detector saved before either term existed scores: the energy alone
    energy = od.score(X_test)
    # the differences are the residual terms; float32-rounded residuals, standardisation and P: 1e-3 relative
    np.testing.assert_allclose(full - energy, 0.5 * maha, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(diag - energy, 0.5 * (sq[1] / scale).sum(1), rtol=1e-3, atol=1e-3)
    assert prec_chol.shape == (X_train.shape[1],) * 2 and np.allclose(prec_chol, np.triu(prec_chol))
    assert res_mean.dtype == np.float64 and prec_chol.dtype == np.float32
    paper = OutlierAEGMM(architecture="paper").fit(X_train, epochs=1, verbose=False, seed=0)
    assert paper.error_scale_ is None and paper.residual_prec_chol_ is None


def test_aegmm_scores_one_mixture_of_the_code_and_the_residual(raw_task):
    """Default OutlierAEGMM: -log sum_k phi_k N(z; mu_k, Sigma_k) N(r; m_k, C_k), against scipy's densities,
    with C_k each component's weighted residual scatter shrunk towards the global covariance (F rows)."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    X_train, X_test, _ = raw_task
    od = OutlierAEGMM().fit(X_train, epochs=3, verbose=False, seed=0)
    k, f = od.mu_.shape[0], X_train.shape[1]
    assert od.residual_means_.shape == (k, f) and od.residual_prec_chols_.shape == (k, f, f)
    with torch.no_grad():
        out = [od.aegmm.eval().encode(torch.from_numpy(od._checked(X))) for X in (X_train, X_test)]
    # independent path: numpy float64 from the network's float32 outputs
    z = [c.double().numpy() for _, c in out]
    r = [od._checked(X).astype(np.float64) - xr.numpy() for X, (xr, _) in zip((X_train, X_test), out)]
    phi, mu = od.phi_.numpy(), od.mu_.numpy()
    cov_z = od.cov_.numpy() + od.cov_eps_ * np.eye(mu.shape[1])
    lz = [np.stack([np.log(phi[j]) + multivariate_normal(mu[j], cov_z[j]).logpdf(c) for j in range(k)], 1) for c in z]
    gamma = np.exp(lz[0] - logsumexp(lz[0], axis=1, keepdims=True))  # (N, K) training memberships
    p = od.residual_prec_chol_.astype(np.float64)
    prior = np.linalg.solve(p @ p.T, np.eye(f))  # the global covariance (float32 factor: 1e-6 relative)
    logp = []
    for j in range(k):
        w = gamma[:, j].sum()
        m = gamma[:, j] @ r[0] / w
        np.testing.assert_allclose(od.residual_means_[j], m, rtol=1e-6, atol=1e-9)
        c = r[0] - m
        cov = ((gamma[:, j, None] * c).T @ c + f * prior) / (w + f)
        logp.append(lz[1][:, j] + multivariate_normal(m, cov).logpdf(r[1]))
    want = -logsumexp(np.stack(logp, 1), axis=1) - 0.5 * f * np.log(2 * np.pi)  # the score drops this constant
    # float32 factors and reconstructions, float64 algebra in other orders: 1e-4 relative
    np.testing.assert_allclose(od.score(X_test), want, rtol=1e-4, atol=1e-4)
    od.set_mixture(GMMParams(od.phi_, od.mu_, od.cov_))  # another mixture: the joint term goes, the global stays
    assert od.residual_means_ is None and od.residual_prec_chol_ is not None


def test_aegmm_residual_covariance_is_diagonal_above_the_limit():
    from dagmm.training.auto import FULL_RESIDUAL_MAX_FEATURES

    assert aegmm_config(1000, (FULL_RESIDUAL_MAX_FEATURES,))["residual"] == "component"
    assert aegmm_config(1000, (FULL_RESIDUAL_MAX_FEATURES + 1,))["residual"] == "diagonal"
    assert aegmm_config(1000, (3, 32, 32))["residual"] == "diagonal"  # 3,072 values per row


def test_defaults_beat_the_paper_configuration(raw_task):
    X_train, X_test, y_test = raw_task
    auto = OutlierAEGMM().fit(X_train, verbose=False, seed=0)
    paper = OutlierAEGMM(architecture="paper").fit(X_train, verbose=False, seed=0)
    ae = OutlierAE().fit(X_train, verbose=False, seed=0)
    auc_auto = roc_auc_score(y_test, auto.score(X_test))
    auc_paper = roc_auc_score(y_test, paper.score(X_test))
    auc_ae = roc_auc_score(y_test, ae.score(X_test)[1])
    assert auc_auto > auc_paper + 0.1 and auc_ae > auc_paper + 0.1, (auc_auto, auc_ae, auc_paper)
    assert auc_auto > 0.9 and auc_ae > 0.9


def test_reconstruction_features_by_architecture(rng):
    from dagmm.models.features import default_recon_features, log_mse_cosine

    x, xr = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = log_mse_cosine(torch.from_numpy(x), torch.from_numpy(xr)).numpy()
    cos = (x * xr).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(xr, axis=1))
    want = np.c_[np.log(((x - xr) ** 2).mean(1) + 1e-6), cos]
    # torch vs numpy float64 over 5 features: a few dozen roundings; absolute too, a cosine can be ~0
    np.testing.assert_allclose(got, want, **float64_reordered(want, 64))
    assert OutlierAEGMM()._recon_fn() is log_mse_cosine
    assert OutlierAEGMM(architecture="paper")._recon_fn() is default_recon_features
    enc, dec = nn.Linear(5, 1), nn.Linear(1, 5)
    dens = nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1))
    assert OutlierAEGMM(encoder_net=enc, decoder_net=dec, gmm_density_net=dens).aegmm.recon_features \
        is default_recon_features
