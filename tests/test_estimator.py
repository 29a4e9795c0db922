"""dagmm.DAGMM: the original implementation's API as a second face over OutlierAEGMM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from dagmm import DAGMM, NotFittedError, OutlierAEGMM
from dagmm.detectors.estimator import activation_name

SMALL = dict(comp_hiddens=(8, 4, 1), est_hiddens=(6, 3), minibatch_size=128, epoch_size=3, random_seed=7)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)) * [1.0, 10.0, 0.1, 3.0, 1.0] + [0, 50, -2, 0, 7]
    x[:, 4] = 7.0  # a constant column
    return x.astype(np.float32)


def test_fit_predict_shapes_and_fitted_state(data):
    est = DAGMM(**SMALL).fit(data)
    energy = est.predict(data[:17])
    assert energy.shape == (17,) and energy.dtype == np.float64 and np.isfinite(energy).all()
    assert est.n_features_in_ == 5 and isinstance(est.detector_, OutlierAEGMM)
    np.testing.assert_allclose(est.x_mean_, data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(est.x_std_, np.where(data.std(0) == 0, 1, data.std(0)), rtol=1e-5)
    assert est.x_std_[4] == 1.0
    assert est.detector_.n_gmm == 3
    est2 = DAGMM(normalize=False, **SMALL).fit(data[:, :4] / 10)
    assert est2.x_mean_ is None and est2.x_std_ is None


def test_same_result_as_outlier_aegmm_built_the_same_way(data):
    """One implementation underneath: DAGMM == OutlierAEGMM with the same nets, seed and fit arguments."""
    est = DAGMM(lambda1=0.2, lambda2=0.01, learning_rate=1e-3, **SMALL).fit(data)
    mean, std = data.mean(0, dtype=np.float64), data.std(0, dtype=np.float64)
    std[std == 0] = 1
    xn = ((data.astype(np.float64) - mean) / std).astype(np.float32)  # the z-score in float64, then cast
    torch.manual_seed(7)
    enc = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))
    dec = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5))
    dens = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3), nn.Softmax(dim=1))
    od = OutlierAEGMM(encoder_net=enc, decoder_net=dec, gmm_density_net=dens)
    from dagmm.training.loop import default_adam

    od.fit(xn, w_energy=0.2, w_cov_diag=0.01, optimizer=lambda p: default_adam(p, 1e-3),
           epochs=3, batch_size=128, verbose=False, seed=7)
    np.testing.assert_allclose(est.predict(data), od.score(xn), rtol=1e-6)
    # and training moved the weights: a different learning rate gives other energies
    other = DAGMM(lambda1=0.2, lambda2=0.01, learning_rate=1e-2, **SMALL).fit(data)
    assert not np.allclose(other.predict(data), od.score(xn))


def test_nets_are_standard_sequential_stacks(data):
    est = DAGMM(comp_hiddens=(6, 2), comp_activation="relu", est_hiddens=(5, 4, 2), est_activation=torch.sigmoid,
                est_dropout_ratio=0.25, epoch_size=1, minibatch_size=64).fit(data)
    net = est.detector_.aegmm
    assert [type(m) for m in net.encoder] == [nn.Linear, nn.ReLU, nn.Linear]
    assert [type(m) for m in net.decoder] == [nn.Linear, nn.ReLU, nn.Linear]
    assert [type(m) for m in net.gmm_density] == [nn.Linear, nn.Sigmoid, nn.Dropout, nn.Linear, nn.Sigmoid,
                                                   nn.Dropout, nn.Linear, nn.Softmax]
    assert net.gmm_density[0].in_features == 4 and net.gmm_density[2].p == 0.25
    linear = DAGMM(comp_hiddens=(3,), comp_activation=None, est_hiddens=(2,), est_dropout_ratio=0.0,
                   epoch_size=1).fit(data)
    assert [type(m) for m in linear.detector_.aegmm.gmm_density] == [nn.Linear, nn.Softmax]


@pytest.mark.parametrize("given, name", [
    ("tanh", "tanh"), ("ReLU", "relu"), (None, "linear"), (torch.tanh, "tanh"), (torch.relu, "relu"),
    (torch.nn.functional.elu, "elu"), (torch.nn.functional.leaky_relu, "leaky_relu"), (nn.Softplus, "softplus"),
    (nn.GELU, "gelu"), (torch.sigmoid, "sigmoid"),
])
def test_activation_names(given, name):
    assert activation_name(given) == name
    assert DAGMM(comp_activation=given).get_params()["comp_activation"] == name


def test_get_params_set_params_clone(data):
    est = DAGMM(comp_activation=torch.tanh, est_hiddens=[10, 2], lambda2=0.005)
    params = est.get_params()
    assert params["comp_activation"] == "tanh" and params["est_hiddens"] == [10, 2] and params["lambda2"] == 0.005
    twin = clone(est)
    assert twin.get_params() == params and not hasattr(twin, "detector_")
    est.set_params(epoch_size=2, minibatch_size=100)
    assert est.epoch_size == 2
    fitted = clone(DAGMM(**SMALL)).fit(data)
    np.testing.assert_array_equal(fitted.predict(data), DAGMM(**SMALL).fit(data).predict(data))
    assert not hasattr(clone(fitted), "detector_")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(comp_activation="swish"), ValueError, r"comp_activation: unknown activation 'swish'; use one of 'tanh'"),
    (dict(est_activation=nn.Tanh()), TypeError, r"est_activation: expected an activation name"),
    (dict(comp_hiddens=5), TypeError, r"comp_hiddens must be a non-empty sequence of positive ints"),
    (dict(est_hiddens=(10, 0)), ValueError, r"est_hiddens entries must be a positive integer, got 0"),
    (dict(est_dropout_ratio=1.0), ValueError, r"est_dropout_ratio must be a number in \[0, 1\), got 1.0"),
    (dict(minibatch_size=0), ValueError, r"minibatch_size must be a positive integer, got 0"),
    (dict(epoch_size=2.5), TypeError, r"epoch_size must be a positive integer, got float"),
    (dict(learning_rate=0), ValueError, r"learning_rate must be a finite number > 0"),
    (dict(lambda2=-1.0), ValueError, r"lambda2 must be a finite number > 0 \(>= 0 for lambda1/lambda2\), got -1.0"),
    (dict(random_seed="1"), TypeError, r"random_seed must be an int or None, got str"),
])
def test_bad_arguments(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        DAGMM(**{**SMALL, **kwargs}).fit(data)


def test_bad_data_and_unfitted(data):
    with pytest.raises(NotFittedError, match=r"This DAGMM is not fitted yet: call fit\(x\) before predict"):
        DAGMM().predict(data)
    with pytest.raises(ValueError, match=r"x must have at least 2 dimensions"):
        DAGMM(**SMALL).fit(data[:, 0])
    est = DAGMM(**SMALL).fit(data)
    with pytest.raises(ValueError, match=r"x has shape \(3, 4\), but this DAGMM was fitted on 5 features"):
        est.predict(data[:3, :4])


def test_docstring_explains_predict_convention():
    doc = DAGMM.__doc__
    assert "higher means more anomalous" in doc and "decision_function" in doc and "+1" in doc


def test_save_restore_round_trip_is_exact(data, tmp_path):
    import dagmm

    est = DAGMM(comp_activation=torch.tanh, est_activation="relu", **SMALL).fit(data)
    est.save(tmp_path / "model")
    restored = DAGMM().restore(tmp_path / "model")  # restore overwrites the defaults with the saved params
    assert restored.get_params() == est.get_params() | {"comp_activation": "tanh"}
    assert np.array_equal(restored.predict(data), est.predict(data))  # bit for bit
    np.testing.assert_array_equal(restored.x_mean_, est.x_mean_)
    assert isinstance(dagmm.load_detector(tmp_path / "model"), DAGMM)
    DAGMM(**SMALL).save(tmp_path / "unfitted")  # an unfitted estimator saves and restores too
    with pytest.raises(NotFittedError):
        DAGMM().restore(tmp_path / "unfitted").predict(data)
    dagmm.save_detector(OutlierAEGMM(n_gmm=2), tmp_path / "other")
    with pytest.raises(TypeError, match="holds a OutlierAEGMM, not a DAGMM"):
        DAGMM().restore(tmp_path / "other")
