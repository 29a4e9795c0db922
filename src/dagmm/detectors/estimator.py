"""``DAGMM``: the original TensorFlow implementation's estimator API, on torch.

A second face over :class:`dagmm.OutlierAEGMM`: the constructor arguments of
the original ``DAGMM`` class (``comp_hiddens``, ``est_hiddens``, ``lambda1``,
...) are turned into the three ``nn.Sequential`` nets and the ``fit``
arguments of an ``OutlierAEGMM``, which does the training (same loss,
numerics and trainer) and the scoring.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from .._validation import align_columns, check_array, check_positive_int, column_names
from .aegmm import OutlierAEGMM
from .base import NotFittedError, seeded
from ..models.nets import mlp
from ..training.loop import default_adam
from ..training.scaling import apply_scaling, fit_scaling

__all__ = ["ACTIVATIONS", "DAGMM", "activation_name", "build_dagmm_nets"]

#: Canonical activation names and the ``nn.Module`` class each one builds (``None``: no activation).
ACTIVATIONS: dict[str, Optional[type[nn.Module]]] = {
    "tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus, "gelu": nn.GELU, "linear": None,
}
_F = torch.nn.functional
_CALLABLES: dict[Any, str] = {
    torch.tanh: "tanh", _F.tanh: "tanh", torch.relu: "relu", _F.relu: "relu", torch.sigmoid: "sigmoid",
    _F.sigmoid: "sigmoid", _F.elu: "elu", _F.leaky_relu: "leaky_relu", _F.softplus: "softplus", _F.gelu: "gelu",
}
_CALLABLES.update({cls: name for name, cls in ACTIVATIONS.items() if cls is not None})

Activation = Union[None, str, Callable[..., Any], type]


def activation_name(value: Activation, name: str = "activation") -> str:
    """Canonical name of an activation given as a name, a torch function or an ``nn.Module`` class.

    ``None`` and ``'linear'`` mean no activation.  A canonical name is returned
    as the very object passed, so ``sklearn.base.clone`` sees it unchanged.

    Raises
    ------
    ValueError
        An unknown name.
    TypeError
        Anything else (including ``nn.Module`` instances: pass the class).
    """
    if value is None:
        return "linear"
    if isinstance(value, str):
        if value in ACTIVATIONS:
            return value
        key = value.lower().replace("-", "_")
        if key in ACTIVATIONS:
            return key
        raise ValueError(f"{name}: unknown activation {value!r}; use one of {', '.join(map(repr, ACTIVATIONS))}.")
    try:
        return _CALLABLES[value]
    except (KeyError, TypeError):
        pass
    raise TypeError(
        f"{name}: expected an activation name ({', '.join(map(repr, ACTIVATIONS))}), None, a torch function "
        f"such as torch.tanh or torch.nn.functional.relu, or an nn.Module class such as nn.Tanh; got {value!r}."
    )


def _check_widths(widths: Any, name: str) -> tuple[int, ...]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) == 0:
        raise TypeError(f"{name} must be a non-empty sequence of positive ints, e.g. (60, 30, 10, 1); got {widths!r}.")
    return tuple(check_positive_int(w, f"{name} entries") for w in widths)


def build_dagmm_nets(
    n_features: int,
    comp_hiddens: Sequence[int],
    comp_activation: Activation,
    est_hiddens: Sequence[int],
    est_activation: Activation,
    est_dropout_ratio: float,
    n_recon_features: int = 2,
) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """The three nets of the original implementation, from standard layers only.

    Encoder ``F-h1-...-hL`` (activation after every layer but the last),
    the mirror decoder ``hL-...-h1-F`` (last layer linear), and the estimation
    net ``(hL + R)-e1-...-K``: each hidden layer followed by its activation and
    ``nn.Dropout(est_dropout_ratio)`` (left out when the ratio is 0), the last
    by ``nn.Softmax(dim=1)``.  Parameters are initialised in that order from
    torch's global generator.
    """
    comp_act = ACTIVATIONS[activation_name(comp_activation, "comp_activation")] or nn.Identity
    est_act = ACTIVATIONS[activation_name(est_activation, "est_activation")]
    comp = [int(w) for w in comp_hiddens]
    encoder = mlp([n_features, *comp], comp_act)
    decoder = mlp([*comp[::-1], n_features], comp_act)
    layers: list[nn.Module] = []
    widths = [comp[-1] + n_recon_features, *[int(w) for w in est_hiddens]]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            if est_act is not None:
                layers.append(est_act())
            if est_dropout_ratio > 0:
                layers.append(nn.Dropout(est_dropout_ratio))
    layers.append(nn.Softmax(dim=1))
    return encoder, decoder, nn.Sequential(*layers)


class DAGMM(BaseEstimator):
    """DAGMM with the constructor and methods of the original TensorFlow implementation.

    Parameters
    ----------
    comp_hiddens : sequence of int, default (60, 30, 10, 1)
        Widths of the compression (encoder) layers; the last is the latent
        size.  The decoder mirrors them.
    comp_activation : str, torch function or nn.Module class, default 'tanh'
        Activation of every compression layer but the last of the encoder and
        of the decoder.  Names: 'tanh', 'relu', 'sigmoid', 'elu',
        'leaky_relu', 'softplus', 'gelu', 'linear' (or None).
    est_hiddens : sequence of int, default (10, 4)
        Widths of the estimation layers; the last is the number of mixture
        components.  Its input is the latent code plus 2 reconstruction
        features (relative Euclidean distance, cosine similarity).
    est_activation : str, torch function or nn.Module class, default 'tanh'
    est_dropout_ratio : float in [0, 1), default 0.5
        Dropout after each hidden estimation layer (training only).
    minibatch_size : int, default 1024
    epoch_size : int, default 100
        Number of epochs.
    learning_rate : float, default 1e-4
        Adam learning rate.
    lambda1 : float, default 0.1
        Weight of the sample energy in the loss (``OutlierAEGMM.fit``'s ``w_energy``).
    lambda2 : float, default 1e-4
        Weight of the covariance-diagonal penalty (``w_cov_diag``).  The
        paper uses 0.005; the original implementation defaults to 1e-4,
        noting that 0.005 made the covariances too large on normalised data.
    normalize : bool, default True
        Standardise the columns with the training mean and standard deviation
        (stored as ``x_mean_`` and ``x_std_``, float64; a constant column gets std 1), computed
        and applied in float64 by :mod:`dagmm.training.scaling`.
    random_seed : int or None, default 123
        Seeds the initialisation (``torch.manual_seed(random_seed)`` right
        before the nets are built), shuffling and dropout.

    Attributes
    ----------
    detector_ : dagmm.OutlierAEGMM
        The fitted detector doing the work.
    x_mean_, x_std_ : float64 ndarray of shape (F,), or None when ``normalize=False``
        (float32 in files saved by dagmm 0.1; they load and apply the same way).
    n_features_in_ : int
    feature_names_in_ : list of str or None
        The DataFrame column names seen in ``fit``; ``predict`` looks a
        DataFrame's columns up by these names.

    Notes
    -----
    ``predict`` follows the original implementation, not scikit-learn's
    outlier-detector convention: it returns the sample **energies** (float,
    shape (N,)), where *higher means more anomalous*.  scikit-learn's
    ``OneClassSVM`` or ``IsolationForest`` return labels +1 (inlier) / -1
    (outlier) from ``predict`` and put *lower = more anomalous* in
    ``decision_function`` / ``score_samples``.  To get labels, threshold the
    energies yourself, e.g. ``energy > np.percentile(energy_train, 95)``, or
    use ``detector_.infer_threshold`` and ``detector_.predict`` (which expect
    normalised input when ``normalize=True``).
    """

    def __init__(
        self,
        comp_hiddens: Sequence[int] = (60, 30, 10, 1),
        comp_activation: Activation = "tanh",
        est_hiddens: Sequence[int] = (10, 4),
        est_activation: Activation = "tanh",
        est_dropout_ratio: float = 0.5,
        minibatch_size: int = 1024,
        epoch_size: int = 100,
        learning_rate: float = 1e-4,
        lambda1: float = 0.1,
        lambda2: float = 1e-4,
        normalize: bool = True,
        random_seed: Optional[int] = 123,
    ) -> None:
        self.comp_hiddens = comp_hiddens
        self.comp_activation = comp_activation
        self.est_hiddens = est_hiddens
        self.est_activation = est_activation
        self.est_dropout_ratio = est_dropout_ratio
        self.minibatch_size = minibatch_size
        self.epoch_size = epoch_size
        self.learning_rate = learning_rate
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.normalize = normalize
        self.random_seed = random_seed

    def get_params(self, deep: bool = True) -> dict:
        """Constructor arguments, activations as canonical names (JSON-friendly)."""
        params = super().get_params(deep)
        for key in ("comp_activation", "est_activation"):
            try:
                params[key] = activation_name(params[key], key)
            except (TypeError, ValueError):
                pass  # reported by fit
        return params

    # ------------------------------------------------------------ checks
    def _check_params(self) -> dict:
        comp = _check_widths(self.comp_hiddens, "comp_hiddens")
        est = _check_widths(self.est_hiddens, "est_hiddens")
        activation_name(self.comp_activation, "comp_activation")
        activation_name(self.est_activation, "est_activation")
        r = self.est_dropout_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float, np.floating)) or not 0 <= r < 1:
            raise ValueError(f"est_dropout_ratio must be a number in [0, 1), got {r!r}.")
        batch = check_positive_int(self.minibatch_size, "minibatch_size")
        epochs = check_positive_int(self.epoch_size, "epoch_size")
        floats = {}
        for key in ("learning_rate", "lambda1", "lambda2"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or v < 0 \
                    or (key == "learning_rate" and v == 0) or not np.isfinite(v):
                raise ValueError(f"{key} must be a finite number > 0 (>= 0 for lambda1/lambda2), got {v!r}.")
            floats[key] = float(v)
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise TypeError(f"normalize must be True or False, got {self.normalize!r}.")
        seed = self.random_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"random_seed must be an int or None, got {type(seed).__name__}.")
        return {"comp": comp, "est": est, "batch": batch, "epochs": epochs, **floats}

    def _check_is_fitted(self, action: str) -> None:
        if not hasattr(self, "detector_"):
            raise NotFittedError(f"This DAGMM is not fitted yet: call fit(x) before {action}.")

    def _normalized(self, x: np.ndarray) -> np.ndarray:
        return apply_scaling(x, self.x_mean_, self.x_std_, "x")

    # --------------------------------------------------------------- api
    def fit(self, x: Any) -> "DAGMM":
        """Train on ``x`` (N, F), mostly normal rows; returns self."""
        p = self._check_params()
        names = column_names(x)
        x = check_array(x, "x", min_rows=2, precise=bool(self.normalize))
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D (n_samples, n_features), got shape {x.shape}.")
        if self.normalize:
            self.x_mean_, self.x_std_ = fit_scaling(x)
        else:
            self.x_mean_ = self.x_std_ = None
        xn = self._normalized(x)
        seed = None if self.random_seed is None else int(self.random_seed)
        cpu = torch.device("cpu")
        with seeded(seed, cpu):
            nets = build_dagmm_nets(x.shape[1], p["comp"], self.comp_activation, p["est"], self.est_activation,
                                    float(self.est_dropout_ratio))
        detector = OutlierAEGMM(encoder_net=nets[0], decoder_net=nets[1], gmm_density_net=nets[2],
                                n_gmm=p["est"][-1], data_type="tabular")
        lr = p["learning_rate"]
        detector.fit(xn, w_energy=p["lambda1"], w_cov_diag=p["lambda2"],
                     optimizer=lambda params: default_adam(params, lr),
                     epochs=p["epochs"], batch_size=min(p["batch"], len(xn)), verbose=False, seed=seed)
        self.detector_ = detector
        self.n_features_in_ = int(x.shape[1])
        self.feature_names_in_ = names
        return self

    def predict(self, x: Any) -> np.ndarray:
        """Sample energies of ``x`` (N, F), float64 shape (N,); higher = more anomalous.

        Not scikit-learn's +1/-1 labels: see the class notes.
        """
        self._check_is_fitted("predict")
        x = align_columns(x, getattr(self, "feature_names_in_", None), "x")
        x = check_array(x, "x", precise=self.x_mean_ is not None)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise ValueError(f"x has shape {x.shape}, but this DAGMM was fitted on {self.n_features_in_} features.")
        return self.detector_.score(self._normalized(x))

    def save(self, fdir: Union[str, os.PathLike]) -> None:
        """Save to the folder ``fdir`` with :func:`dagmm.save_detector` (safetensors + JSON)."""
        from .. import save_detector

        save_detector(self, fdir)

    def restore(self, fdir: Union[str, os.PathLike]) -> "DAGMM":
        """Load a DAGMM saved by :meth:`save` into this object; returns self."""
        from .. import load_detector

        loaded = load_detector(fdir)
        if not isinstance(loaded, DAGMM):
            raise TypeError(f"{fdir} holds a {type(loaded).__name__}, not a DAGMM.")
        self.set_params(**loaded.get_params())
        for key in ("detector_", "x_mean_", "x_std_", "n_features_in_", "feature_names_in_"):
            if hasattr(loaded, key):
                setattr(self, key, getattr(loaded, key))
            elif hasattr(self, key):  # restoring an unfitted estimator unfits this one
                delattr(self, key)
        return self
