"""The alibi-detect style contract, for every detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import dagmm
from dagmm import NotFittedError, OutlierAE, OutlierAEGMM


def _fit_aegmm(X):
    return OutlierAEGMM(n_gmm=2, data_type="tabular").fit(X, epochs=2, batch_size=64, verbose=False, seed=0)


def _fit_ae(X):
    return OutlierAE(data_type="tabular").fit(X, epochs=2, batch_size=64, verbose=False, seed=0)


# name -> (class, fit function); other detectors register here
DETECTORS = {"OutlierAEGMM": (OutlierAEGMM, _fit_aegmm), "OutlierAE": (OutlierAE, _fit_ae)}


@pytest.fixture(params=sorted(DETECTORS))
def fitted(request, tabular):
    cls, fit = DETECTORS[request.param]
    return fit(tabular[0][:600]), tabular


def _instance_scores(od, X):
    s = od.score(X)
    return s[1] if isinstance(s, tuple) else s


def test_predict_contract(fitted):
    od, (X_train, X_test, _) = fitted
    od.infer_threshold(X_train, threshold_perc=90)
    preds = od.predict(X_test)
    assert set(preds) == {"meta", "data"}
    assert preds["meta"] == {"name": type(od).__name__, "detector_type": "outlier", "data_type": "tabular",
                             "online": False, "version": dagmm.__version__}
    data = preds["data"]
    assert {"is_outlier", "instance_score", "feature_score"} <= set(data)
    assert data["is_outlier"].shape == (len(X_test),) and data["is_outlier"].dtype.kind == "i"
    assert set(np.unique(data["is_outlier"])) <= {0, 1}
    assert data["instance_score"].shape == (len(X_test),) and data["instance_score"].dtype.kind == "f"
    np.testing.assert_array_equal(data["is_outlier"], (data["instance_score"] > od.threshold).astype(int))
    no_score = od.predict(X_test, return_instance_score=False)["data"]
    assert no_score["instance_score"] is None and "feature_score" in no_score


def test_threshold_percentile_and_strictness(fitted):
    od, (X_train, _, _) = fitted
    for perc in (50, 90, 99):
        od.infer_threshold(X_train, threshold_perc=perc)
        frac = od.predict(X_train)["data"]["is_outlier"].mean() * 100
        assert abs((100 - frac) - perc) <= 5
    scores = _instance_scores(od, X_train[:1])
    od.threshold = float(scores[0])
    assert od.predict(X_train[:1])["data"]["is_outlier"][0] == 0  # equal is not above


def test_scoring_in_batches_is_identical(fitted):
    od, (_, X_test, _) = fitted
    a = od.score(X_test, batch_size=7)
    b = od.score(X_test, batch_size=100000)
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)  # float32 kernels differ by batch shape


def test_errors_before_fit_and_without_threshold(tabular, request):
    for name, (cls, fit) in DETECTORS.items():
        with pytest.raises(NotFittedError, match=rf"This {name} is not fitted yet: call fit\(X\) before score"):
            cls().score(tabular[1])
        od = fit(tabular[0][:300])
        with pytest.raises(ValueError, match=r"has no threshold: call infer_threshold\(X, threshold_perc\)"):
            od.predict(tabular[1])


@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        (np.array([[1.0, np.nan]] * 3), ValueError, "X contains NaN or infinite values (or values too large for "
                                                    "float32) in 3 row(s): 0, 1, 2. Impute or drop them first."),
        (np.array([[1.0, np.inf], [1.0, 2.0]]), ValueError, "in 1 row(s): 0."),
        (np.ones(5), ValueError, "X must have at least 2 dimensions (n_samples, n_features), got shape (5,)."),
        (np.ones((0, 4)), ValueError, "X has 0 rows; at least 2 required."),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "X must hold real numbers (float or int), got dtype <U1."),
    ],
)
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_bad_input_to_fit(name, bad, exc, msg):
    with pytest.raises(exc) as info:
        DETECTORS[name][0]().fit(bad, epochs=1, verbose=False)
    assert msg in str(info.value)


def test_bad_input_to_scoring(fitted):
    od, (X_train, X_test, _) = fitted
    with pytest.raises(ValueError, match=r"X has feature shape \(3,\), but the detector was fitted on feature "
                                         r"shape \(10,\)\. Pass data with the same columns as in fit\."):
        od.score(X_test[:, :3])
    with pytest.raises(ValueError, match=r"threshold_perc must be in \[0, 100\], got -5.0\."):
        od.infer_threshold(X_train, threshold_perc=-5)
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0\."):
        od.score(X_test, batch_size=0)


def test_net_contract_errors(tabular):
    X = tabular[0][:100]
    enc, dec = nn.Sequential(nn.Linear(10, 2)), nn.Sequential(nn.Linear(2, 10))
    wrong_in = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match=r"gmm_density_net takes 3 input features, but the latent size \(2\) plus "
                                         r"the number of reconstruction features \(2\) is 4\. Make its first layer "
                                         r"take 4 inputs\."):
        OutlierAEGMM(encoder_net=enc, decoder_net=dec, gmm_density_net=wrong_in).fit(X, epochs=1, verbose=False)
    dens = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match=r"n_gmm=2 but gmm_density_net outputs 3 components\. Pass n_gmm=3"):
        OutlierAEGMM(encoder_net=enc, decoder_net=dec, gmm_density_net=dens, n_gmm=2).fit(X, epochs=1, verbose=False)
    no_softmax = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"must end in a softmax over the components"):
        OutlierAEGMM(encoder_net=enc, decoder_net=dec, gmm_density_net=no_softmax).fit(X, epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"missing: decoder_net, gmm_density_net"):
        OutlierAEGMM(encoder_net=enc)
    with pytest.raises(ValueError, match=r"n_gmm must be a positive integer, got 0"):
        OutlierAEGMM(n_gmm=0)
    with pytest.raises(ValueError, match=r"device='cuda' was requested but CUDA is not available") if not \
            torch.cuda.is_available() else _null():
        OutlierAEGMM(device="cuda")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_user_nets_and_whole_module(tabular):
    X_train, X_test, _ = tabular
    enc = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 2))
    dec = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 10))
    dens = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3), nn.Softmax(dim=1))
    od = OutlierAEGMM(encoder_net=enc, decoder_net=dec, gmm_density_net=dens)
    od.fit(X_train[:300], epochs=2, verbose=False, seed=0)
    assert od.n_gmm == 3 and od.mu_.shape == (3, 4)
    od2 = OutlierAEGMM(aegmm=od.aegmm)
    od2.fit(X_train[:300], epochs=1, verbose=False, seed=0)
    assert od2.score(X_test).shape == (len(X_test),)
    assert math.isfinite(float(od2.score(X_test).max()))
