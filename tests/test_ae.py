"""OutlierAE: score semantics by hand, outlier types, nets for tabular and image layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from dagmm import OutlierAE
from dagmm.utils.perturbation import apply_mask


class _Fixed(nn.Module):
    """An 'auto-encoder' that returns a fixed reconstruction, so scores are known by hand."""

    def __init__(self, recon: np.ndarray):
        super().__init__()
        self.recon = torch.from_numpy(recon)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.recon[: len(x)] + 0 * self.dummy


def _hand_fitted(X_recon):
    od = OutlierAE(ae=_Fixed(X_recon))
    od.feature_shape_ = X_recon.shape[1:]
    od._fitted = True
    return od


def test_outlier_perc_semantics_by_hand():
    X = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 10.0]], dtype=np.float32)
    fs = OutlierAE.feature_score(X, np.zeros_like(X))
    np.testing.assert_array_equal(fs, X ** 2)
    # F = 5: 100% -> all 5; 40% -> 2; 30% -> ceil(1.5) = 2; 20% -> 1; 1% -> ceil(0.05) = 1
    expected = {100: [55 / 5, 20.0], 40: [(25 + 16) / 2, 50.0], 30: [(25 + 16) / 2, 50.0],
                20: [25.0, 100.0], 1: [25.0, 100.0], 60: [(25 + 16 + 9) / 3, 100 / 3]}
    for perc, want in expected.items():
        np.testing.assert_allclose(OutlierAE.instance_score(fs, perc), want, rtol=1e-12, err_msg=str(perc))
    # float noise: 30% of 10 features is exactly 3, not ceil(3.0000000000000004) = 4
    fs10 = np.arange(10, dtype=np.float32)[None]
    np.testing.assert_allclose(OutlierAE.instance_score(fs10, 30), [(9 + 8 + 7) / 3])
    # images: every non-batch axis is a feature
    img = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    np.testing.assert_allclose(OutlierAE.instance_score(img, 25), [(7 + 6) / 2])


def test_score_predict_and_threshold_by_hand():
    X = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 10.0], [1, 1, 1, 1, 1]], dtype=np.float32)
    od = _hand_fitted(np.zeros_like(X))
    fs, inst = od.score(X, outlier_perc=20)
    np.testing.assert_array_equal(fs, X ** 2)
    np.testing.assert_allclose(inst, [25.0, 100.0, 1.0])
    od.infer_threshold(X, outlier_perc=20, threshold_perc=50)
    assert od.threshold == 25.0
    p = od.predict(X, outlier_perc=20)["data"]
    np.testing.assert_array_equal(p["is_outlier"], [0, 1, 0])  # 25 is not above 25
    od.infer_threshold(X, outlier_type="feature", threshold_perc=80)
    assert od.threshold == pytest.approx(np.percentile(X.ravel() ** 2, 80))
    p = od.predict(X, outlier_type="feature", return_feature_score=False, return_instance_score=False)
    assert p["data"]["is_outlier"].shape == X.shape and p["data"]["is_outlier"].dtype == np.int64
    np.testing.assert_array_equal(p["data"]["is_outlier"], (X ** 2 > od.threshold).astype(int))
    assert p["data"]["feature_score"] is None and p["data"]["instance_score"] is None
    assert p["meta"]["name"] == "OutlierAE"


def test_feature_vs_instance_outliers(tabular):
    X_train, X_test, y_test = tabular
    od = OutlierAE(data_type="tabular").fit(X_train, epochs=15, verbose=False, seed=0)
    X = X_test[y_test == 0][:200].copy()  # inliers only, then corrupt some
    X[:20, 3] += 8.0  # one corrupted feature in 20 rows
    od.infer_threshold(X_train, outlier_type="feature", threshold_perc=99.9)
    feat = od.predict(X, outlier_type="feature")["data"]["is_outlier"]
    assert feat.shape == X.shape
    assert feat[:20, 3].mean() >= 0.9  # the corrupted cells are flagged, clean rows almost never
    assert feat[20:].mean() < 0.01
    # the spike also pulls the code and so the other reconstructions off, but the feature scores
    # still point at the corrupted feature
    fs = od.predict(X, outlier_type="feature")["data"]["feature_score"]
    assert (fs[:20].argmax(1) == 3).mean() >= 0.9
    # at instance level, averaging only the worst 10% of features separates the rows better than all of them
    y = (np.arange(len(X)) < 20).astype(int)
    auc_all = roc_auc_score(y, od.score(X, outlier_perc=100)[1])
    auc_top = roc_auc_score(y, od.score(X, outlier_perc=10)[1])
    assert auc_top >= auc_all and auc_top > 0.95, (auc_all, auc_top)
    od.infer_threshold(X_train, outlier_perc=10, threshold_perc=99)
    inst = od.predict(X, outlier_perc=10)["data"]["is_outlier"]
    assert inst.shape == (len(X),) and inst[:20].mean() >= 0.9


@pytest.fixture(scope="module")
def digits_ae(digits_images):
    X = digits_images
    od = OutlierAE(data_type="image").fit(X[:1200], epochs=8, batch_size=64, verbose=False, seed=0)
    return od, X[1200:1500]


def test_trained_conv_ae_scores_masked_digits_higher(digits_ae):
    od, X = digits_ae
    assert od.meta["data_type"] == "image"
    losses = [h["loss"] for h in od.history_]
    assert losses[-1] < 0.3 * losses[0]
    X_masked, _ = apply_mask(X, mask_size=(6, 6), seed=0)
    y = np.r_[np.zeros(len(X)), np.ones(len(X_masked))]
    auc = roc_auc_score(y, np.r_[od.score(X)[1], od.score(X_masked)[1]])
    assert auc > 0.85, auc
    fs, _ = od.score(X_masked[:5])
    assert fs.shape == (5, 16, 16, 1)


def test_channels_first_images_reach_the_net_as_given(digits_images):
    X = np.repeat(digits_images[:300].transpose(0, 3, 1, 2), 3, axis=1)  # (N, 3, 16, 16)
    seen = []
    od = OutlierAE()
    od.fit(X, epochs=1, verbose=False, seed=0)
    od.ae.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[1:])))
    fs, inst = od.score(X[:4])
    assert fs.shape == (4, 3, 16, 16) and inst.shape == (4,)
    assert seen == [(3, 16, 16)]
    assert od.ae.encoder.channels_last is False


def test_same_seed_same_scores(tabular):
    X = tabular[0][:300]
    a = OutlierAE().fit(X, epochs=2, verbose=False, seed=4)
    b = OutlierAE().fit(X, epochs=2, verbose=False, seed=4)
    np.testing.assert_array_equal(a.score(X)[1], b.score(X)[1])


def test_user_nets_and_optimizer_forms(tabular):
    X = tabular[0][:200]
    enc, dec = nn.Sequential(nn.Linear(10, 3)), nn.Sequential(nn.Linear(3, 10))
    od = OutlierAE(encoder_net=enc, decoder_net=dec).fit(X, epochs=1, verbose=False, optimizer=torch.optim.SGD)
    assert od.ae.encoder is enc
    od2 = OutlierAE(ae=od.ae).fit(X, epochs=1, verbose=False, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    assert od2.score(X)[0].shape == X.shape


def test_bad_arguments(tabular):
    X = tabular[0][:100]
    with pytest.raises(ValueError, match=r"encoder_net and decoder_net must be given together; missing: decoder_net"):
        OutlierAE(encoder_net=nn.Linear(10, 2))
    with pytest.raises(ValueError, match=r"Pass either ae or encoder_net and decoder_net, not both"):
        OutlierAE(ae=nn.Linear(10, 10), encoder_net=nn.Linear(10, 2), decoder_net=nn.Linear(2, 10))
    with pytest.raises(TypeError, match=r"ae must be a torch.nn.Module, got str"):
        OutlierAE(ae="net")
    with pytest.raises(ValueError, match=r"returns \(4,\) per row but the input rows have shape \(10,\)"):
        OutlierAE(ae=nn.Linear(10, 4)).fit(X, epochs=1, verbose=False)
    od = OutlierAE().fit(X, epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"outlier_type must be 'instance' or 'feature', got 'row'"):
        od.infer_threshold(X, outlier_type="row")
    with pytest.raises(ValueError, match=r"outlier_perc must be in \(0, 100\]"):
        od.score(X, outlier_perc=0)
    with pytest.raises(ValueError, match=r"outlier_perc must be in \[0, 100\], got 150.0"):
        od.predict(X, outlier_perc=150)
    with pytest.raises(ValueError, match=r"X_orig has shape \(100, 10\) but X_recon has shape \(100, 9\)"):
        OutlierAE.feature_score(X, X[:, :9])


def test_default_optimizer_is_adam_lr_1e3(tabular, monkeypatch):
    import dagmm.detectors.ae as ae_mod

    built = []
    real = ae_mod.resolve_optimizer
    monkeypatch.setattr(ae_mod, "resolve_optimizer", lambda o, p, lr: built.append(real(o, p, lr)) or built[-1])
    OutlierAE().fit(tabular[0][:100], epochs=1, verbose=False)
    (opt,) = built
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-3


def test_default_scores_are_in_units_of_the_training_error(tabular):
    """The default tabular detector divides each feature's squared error by its training mean (error_scale_)."""
    X = np.asarray(tabular[0], dtype=np.float32)
    X_fit = X[:400]
    od = OutlierAE().fit(X_fit, epochs=3, verbose=False, seed=0)
    assert od.auto_config_["error_scale"] == "train"
    # independent path: the reconstruction in data units, standardised and squared by numpy in float64
    raw = ((X_fit - od.reconstruct(X_fit)) / od.scaler_scale_).astype(np.float64) ** 2  # (N, F)
    mean = raw.mean(0)
    expected = np.maximum(mean, 0.01 * mean.mean())
    # float32 reconstruction in data units, re-standardised: agreement to ~1e-4 relative
    np.testing.assert_allclose(od.error_scale_, expected, rtol=1e-3)
    fs, inst = od.score(X[400:])
    ref = ((X[400:] - od.reconstruct(X[400:])) / od.scaler_scale_).astype(np.float64) ** 2 / od.error_scale_
    np.testing.assert_allclose(fs, ref, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(inst, ref.mean(1), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(od.feature_score(X[400:], od.reconstruct(X[400:])), fs, rtol=1e-3, atol=1e-4)
    # on the training rows every feature (none floored here) then averages to one
    if (mean > 0.01 * mean.mean()).all():
        np.testing.assert_allclose(od.score(X_fit)[0].mean(0), 1.0, rtol=1e-3)


def test_user_nets_keep_the_plain_squared_error(tabular):
    X = np.asarray(tabular[0], dtype=np.float32)[:200]
    enc, dec = nn.Linear(X.shape[1], 2), nn.Linear(2, X.shape[1])
    od = OutlierAE(encoder_net=enc, decoder_net=dec).fit(X, epochs=1, verbose=False, seed=0)
    assert od.error_scale_ is None
    fs, _ = od.score(X)
    np.testing.assert_allclose(fs, (X - od.reconstruct(X)) ** 2, rtol=1e-5, atol=1e-6)
