"""``OutlierAE``: reconstruction-error outlier detector with feature-level scores."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch
from torch import nn

from .. import accel
from .._validation import check_array, check_percent, check_positive_int
from .base import DEFAULT_SCORE_BATCH, BaseDetector, seeded
from ..training.auto import AUTO_LR, ae_config, check_standardize, resolve_schedule
from ..models.losses import loss_mse
from ..models.nets import AENet, build_ae_nets, default_ae_nets
from ..training.loop import OptimizerArg, resolve_optimizer, train_scheduled

__all__ = ["OutlierAE"]

_OUTLIER_TYPES = ("instance", "feature")
#: Bytes of float64 feature scores handled at once by ``instance_score``.
_SCORE_BLOCK_BYTES = 32 << 20


def _check_outlier_perc(outlier_perc: Any) -> float:
    outlier_perc = check_percent(outlier_perc, "outlier_perc")
    if outlier_perc == 0:
        raise ValueError("outlier_perc must be in (0, 100]: it is the percentage of features averaged per instance, "
                         "so 0 would average none. Use e.g. outlier_perc=10 for the worst 10% of the features.")
    return outlier_perc


def _check_outlier_type(outlier_type: Any) -> str:
    if outlier_type not in _OUTLIER_TYPES:
        raise ValueError(f"outlier_type must be 'instance' or 'feature', got {outlier_type!r}.")
    return outlier_type


def n_top_features(outlier_perc: float, n_features: int) -> int:
    """``ceil(outlier_perc% * n_features)``, at least 1.

    The product is rounded to 9 decimals first so that float noise (``0.01 *
    30 * 10 = 3.0000000000000004``) does not add a feature.
    """
    return max(1, math.ceil(round(outlier_perc * n_features / 100.0, 9)))


class _scaled_staticmethod:
    """A static method that, called on a fitted instance, also gets the instance's scaling.

    ``OutlierAE.feature_score(a, b)`` is the plain squared error;
    ``od.feature_score(a, b)`` divides by ``od.scaler_scale_`` first when the
    detector standardises (and the square by ``od.error_scale_`` when it has
    one), so it agrees with ``od.score``.
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, objtype: Any = None) -> Callable:
        scale = None if obj is None else getattr(obj, "scaler_scale_", None)
        error_scale = None if obj is None else getattr(obj, "error_scale_", None)
        if scale is None and error_scale is None:
            return self.fn
        return lambda X_orig, X_recon: self.fn(X_orig, X_recon, scale, error_scale)


class OutlierAE(BaseDetector):
    """Auto-encoder outlier detector scoring each feature by its squared reconstruction error.

    Parameters
    ----------
    threshold : float, optional
        Scores strictly above it are outliers; set by :meth:`infer_threshold`.
    ae : nn.Module, optional
        A whole auto-encoder, ``forward(x) -> x_recon`` with the shape of ``x``.
    encoder_net, decoder_net : nn.Module, optional
        Given together instead of ``ae``; ``decoder_net(encoder_net(x))`` must
        have the shape of ``x``.  When no net is given, ``fit`` builds
        :func:`dagmm.models.nets.default_ae_nets` for the data shape: an MLP for
        tabular rows, a small convolutional auto-encoder for (N, H, W, C) or
        (N, C, H, W) images.  Arrays reach the net in the layout given.
        For tabular rows the MLP's sizes and the training schedule are chosen
        from the data shape by :func:`dagmm.training.auto.ae_config` (see the
        "Defaults" section of the user guide).
    data_type : str, optional
        Recorded in ``meta`` only ('tabular', 'image', 'time-series', ...).
    device : str or torch.device, optional
        ``'cpu'`` (default) or ``'cuda'``.
    standardize : 'auto', True or False, default 'auto'
        z-score every feature with the mean and standard deviation of the
        training data (``scaler_mean_``, ``scaler_scale_``); applied inside
        ``score``/``predict``/``reconstruct``, so pass raw data everywhere.
        ``'auto'`` standardises 2-D tabular data with the default networks and
        nothing else (images and user nets are left as given).
        With standardisation on, **feature scores are in standardised units**:
        the squared error divided by the squared training standard deviation
        of the feature, so features measured in different units are
        comparable and ``outlier_type='feature'`` thresholds mean the same for
        every column.  The default tabular detector then divides each
        feature's squared error by its mean on the training rows
        (``error_scale_``), so a feature score of 1 is a typical error for
        that column.  :meth:`reconstruct` returns the reconstruction in the
        original units, and ``od.feature_score(X, od.reconstruct(X))`` (on the
        fitted instance) applies the same scaling, so it equals ``od.score(X)[0]``.

    Attributes
    ----------
    auto_config_ : dict
        After ``fit``: the rules' results and the schedule actually used (JSON-able).
    scaler_mean_, scaler_scale_ : float64 ndarray of shape ``X.shape[1:]`` or None
        The standardisation, or None when it is off.
    error_scale_ : float32 ndarray of shape ``X.shape[1:]`` or None
        Mean squared error of each feature on the training rows (in the
        network's units, floored at 0.01 times its mean over the features);
        feature scores are divided by it.  None with user nets and images
        (and for detectors saved before it existed, which score as before).
    """

    def __init__(
        self,
        threshold: Optional[float] = None,
        ae: Optional[nn.Module] = None,
        encoder_net: Optional[nn.Module] = None,
        decoder_net: Optional[nn.Module] = None,
        data_type: Optional[str] = None,
        device: Union[None, str, torch.device] = None,
        standardize: Union[str, bool] = "auto",
    ) -> None:
        super().__init__(threshold, data_type, device)
        self.standardize = check_standardize(standardize)
        for k, v in (("ae", ae), ("encoder_net", encoder_net), ("decoder_net", decoder_net)):
            if v is not None and not isinstance(v, nn.Module):
                raise TypeError(f"{k} must be a torch.nn.Module, got {type(v).__name__}.")
        if ae is not None and (encoder_net is not None or decoder_net is not None):
            raise ValueError("Pass either ae or encoder_net and decoder_net, not both.")
        if (encoder_net is None) != (decoder_net is None):
            missing = "decoder_net" if decoder_net is None else "encoder_net"
            raise ValueError(f"encoder_net and decoder_net must be given together; missing: {missing}.")
        self.default_architecture = ae is None and encoder_net is None
        self.ae: Optional[nn.Module] = ae if ae is not None else (
            AENet(encoder_net, decoder_net) if encoder_net is not None else None)
        if self.ae is not None:
            self.ae.to(self.device)

    # ------------------------------------------------------------------ fit
    def _check_net(self, X: np.ndarray) -> None:
        """Run two rows through the net and explain a broken shape contract."""
        xb = torch.from_numpy(X[:2]).to(self.device)
        was_training = self.ae.training
        self.ae.eval()
        try:
            with torch.no_grad():
                out = self.ae(xb)
        except RuntimeError as err:
            raise ValueError(f"The auto-encoder failed on input of shape {tuple(xb.shape)}: {err}") from err
        finally:
            self.ae.train(was_training)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(xb.shape):
            got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"The auto-encoder returns {got} per row but the input rows have shape {tuple(xb.shape[1:])}; "
                "forward(x) must return a reconstruction with the shape of x."
            )

    def _auto(self, X: np.ndarray) -> bool:
        """Whether the automatic configuration applies: own networks and 2-D tabular X."""
        return self.default_architecture and X.ndim == 2

    def fit(
        self,
        X: Any,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = loss_mse,
        optimizer: OptimizerArg = None,
        epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        verbose: bool = True,
        log_metric: Optional[tuple[str, Callable]] = None,
        callbacks: Optional[Iterable[Any]] = None,
        seed: Optional[int] = None,
    ) -> "OutlierAE":
        """Train the auto-encoder to reconstruct X.

        Parameters
        ----------
        X : array-like, shape (N, F) or (N, ...)
            Training data (mostly normal rows), e.g. (N, H, W, C) images.
        loss_fn : callable, default :func:`dagmm.models.losses.loss_mse`
            ``loss_fn(x, x_recon) -> 0-d tensor``.
        optimizer : Optimizer class or callable, optional
            Default Adam with lr 1e-3; a class is built with lr 1e-3; a callable
            ``params -> Optimizer`` is used as is.
        epochs : int, optional
            Used exactly when given (no early stopping).  Default: for tabular
            X with the default networks, the automatic step budget with early
            stopping on a held-out slice (:func:`dagmm.training.auto.schedule`); 20 otherwise.
        batch_size : int, optional
            Used exactly when given.  Default: chosen from the rows for
            tabular X with the default networks, 64 otherwise.
        verbose : bool, default True
            Progress bar with the running loss.
        log_metric : (name, fn), optional
            ``fn(x, x_recon)`` shown and logged per epoch.
        callbacks : iterable, optional
            ``on_epoch_end(epoch, logs)`` objects or ``(epoch, logs)`` callables;
            returning True stops training.
        seed : int, optional
            Makes initialisation, shuffling and the held-out split reproducible.

        Returns
        -------
        self
        """
        X = self._fit_input(X)
        if epochs is not None:
            epochs = check_positive_int(epochs, "epochs")
        if batch_size is not None:
            batch_size = check_positive_int(batch_size, "batch_size")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
        auto = self._auto(X)
        config = ae_config(len(X), X.shape[1:]) if auto else None
        plan = resolve_schedule(config, len(X), epochs, batch_size)
        X, standardize = self._fit_standardization(X, auto)
        with seeded(seed, self.device) as gen:
            if self.ae is None:
                nets = build_ae_nets(config, X.shape[1:]) if auto else default_ae_nets(X.shape[1:])
                self.ae = AENet(*nets).to(self.device)
            self._check_net(X)
            opt = resolve_optimizer(optimizer, self.ae.parameters(), AUTO_LR)
            model = self.ae

            def batch_loss(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                x_recon = model(xb)
                return loss_fn(xb, x_recon), x_recon

            self.history_, stopped = train_scheduled(
                model, X, batch_loss, opt, plan, seed=seed, generator=gen, device=self.device,
                callbacks=callbacks, verbose=verbose, log_metric=log_metric, desc="OutlierAE")
        self.auto_config_ = {
            **(config or {"architecture": "default" if self.default_architecture else "user"}),
            "n_rows": int(len(X)), "standardize": bool(standardize), "epochs": plan["epochs"],
            "epochs_run": len(self.history_), "batch_size": plan["batch_size"], "early_stopping": stopped,
            "lr": AUTO_LR if optimizer is None else None,
        }
        self.feature_shape_ = tuple(X.shape[1:])
        self.error_scale_ = None
        if (config or {}).get("error_scale") == "train":
            self.error_scale_ = self._training_error_scale(X, config["error_floor"], self._reconstruct_into())
        self._fitted = True
        return self

    # --------------------------------------------------------------- scoring
    def reconstruct(self, X: Any, batch_size: int = DEFAULT_SCORE_BATCH) -> np.ndarray:
        """The auto-encoder's reconstruction of X, float32, shape of X, in the units of X."""
        self._check_fitted("reconstruct")
        X = self._checked(X)
        recon = self._batched_into(self._reconstruct_into(), X, batch_size, X.shape[1:], torch.float32,
                                   on_device=False)
        if getattr(self, "scaler_mean_", None) is None:
            return recon
        return (recon * self.scaler_scale_ + self.scaler_mean_).astype(np.float32)

    def _reconstruct_into(self) -> Callable[[torch.Tensor, torch.Tensor], None]:
        """``fn(xb, out)`` writing the net's reconstruction of ``xb`` into ``out`` (float32, the shape of ``xb``).

        One C call per batch where :func:`dagmm.accel.reconstructor` takes the
        net, else the module itself.  Puts the net in eval mode.
        """
        self.ae.eval()
        model, kernel = self.ae, accel.reconstructor(self.ae)

        def recon_into(xb: torch.Tensor, out: torch.Tensor) -> None:
            if kernel is None or not kernel(xb, out):
                out.copy_(model(xb))

        return recon_into

    @_scaled_staticmethod
    def feature_score(X_orig: Any, X_recon: Any, scale: Optional[np.ndarray] = None,
                      error_scale: Optional[np.ndarray] = None) -> np.ndarray:
        """Squared reconstruction error per feature, float32, shape of ``X_orig``.

        Called on the class, ``(X_orig - X_recon) ** 2``.  Called on a fitted
        detector that standardises, ``((X_orig - X_recon) / scaler_scale_) ** 2``
        (standardised units, as in :meth:`score`), divided by ``error_scale_``
        (each feature's mean squared error on the training rows) when the
        detector has one.
        """
        X_orig = check_array(X_orig, "X_orig")
        X_recon = check_array(X_recon, "X_recon")
        if X_orig.shape != X_recon.shape:
            raise ValueError(f"X_orig has shape {X_orig.shape} but X_recon has shape {X_recon.shape}; "
                             "they must match.")
        diff = X_orig - X_recon
        if scale is not None:
            diff = (diff / scale).astype(np.float32)  # float64 statistics; the result stays float32
        sq = np.square(diff)
        return sq if error_scale is None else (sq / error_scale).astype(np.float32)

    @staticmethod
    def instance_score(fscore: Any, outlier_perc: float = 100.0) -> np.ndarray:
        """Mean of the ``ceil(outlier_perc% * F)`` largest feature scores of each instance.

        Parameters
        ----------
        fscore : array, shape (N, ...)
            Feature scores; all non-batch axes count as features (F = their product).
        outlier_perc : float in (0, 100], default 100
            100 averages every feature; 10 only the worst 10%.

        Returns
        -------
        (N,) float64
        """
        outlier_perc = _check_outlier_perc(outlier_perc)
        fscore = check_array(fscore, "fscore")
        flat = fscore.reshape(fscore.shape[0], -1)  # (N, F), float32
        n_rows, n_feat = flat.shape
        k = n_top_features(outlier_perc, n_feat)
        out = np.empty(n_rows, dtype=np.float64)
        # Row blocks of about 32 MB in float64: the same per-row arithmetic as
        # on the whole array, with memory bounded by the block, not by N.
        block = max(1, _SCORE_BLOCK_BYTES // (8 * n_feat))
        for start in range(0, n_rows, block):
            rows = flat[start:start + block].astype(np.float64)  # (B, F)
            if k < n_feat:
                rows = np.partition(rows, n_feat - k, axis=1)[:, n_feat - k:]  # (B, k)
            out[start:start + block] = rows.mean(1)
        return out

    def score(self, X: Any, outlier_perc: float = 100.0,
              batch_size: int = DEFAULT_SCORE_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """Feature scores (shape of X, float32) and instance scores ((N,), float64).

        Memory for the network is bounded by ``batch_size`` rows at a time.
        """
        self._check_fitted("score")
        outlier_perc = _check_outlier_perc(outlier_perc)
        X = self._checked(X)
        recon_into = self._reconstruct_into()
        error_scale = getattr(self, "error_scale_", None)  # None for detectors saved before it existed
        err_t = None if error_scale is None else torch.from_numpy(error_scale).to(self.device)

        def sq_err(xb: torch.Tensor, out: torch.Tensor) -> None:
            recon_into(xb, out)
            torch.sub(xb, out, out=out).square_()  # no temporaries
            if err_t is not None:
                out.div_(err_t)

        # as large as X, so it is gathered on the host batch by batch
        fscore = self._batched_into(sq_err, X, batch_size, X.shape[1:], torch.float32, on_device=False)
        bad = ~np.isfinite(fscore.reshape(len(fscore), -1)).all(1)
        if bad.any():
            rows = np.flatnonzero(bad)[:10].tolist()
            raise ValueError(
                f"Non-finite reconstruction errors for {int(bad.sum())} row(s) (first: {rows}); the network "
                "output overflowed. Check that X is scaled like the training data."
            )
        return fscore, self.instance_score(fscore, outlier_perc)

    def infer_threshold(self, X: Any, outlier_type: str = "instance", outlier_perc: float = 100.0,
                        threshold_perc: float = 95.0, batch_size: int = DEFAULT_SCORE_BATCH) -> None:
        """Set ``threshold`` to the ``threshold_perc`` percentile of the instance scores of X,
        or of all its feature scores when ``outlier_type='feature'``."""
        outlier_type = _check_outlier_type(outlier_type)
        threshold_perc = check_percent(threshold_perc, "threshold_perc")
        fscore, iscore = self.score(X, outlier_perc, batch_size)
        self.threshold = self._percentile(iscore if outlier_type == "instance" else fscore.ravel(), threshold_perc)

    def predict(self, X: Any, outlier_type: str = "instance", outlier_perc: float = 100.0,
                batch_size: int = DEFAULT_SCORE_BATCH, return_feature_score: bool = True,
                return_instance_score: bool = True) -> dict:
        """Flag instances (or single features) whose score is strictly above ``threshold``.

        Returns
        -------
        dict
            ``{'meta': meta, 'data': {'is_outlier': int, shape (N,) for
            'instance' or X.shape for 'feature'; 'feature_score': float32,
            shape of X, or None; 'instance_score': float64 (N,) or None}}``.
        """
        self._check_fitted("predict")
        outlier_type = _check_outlier_type(outlier_type)
        outlier_perc = _check_outlier_perc(outlier_perc)
        threshold = self._check_threshold()
        fscore, iscore = self.score(X, outlier_perc, batch_size)
        flagged = iscore if outlier_type == "instance" else fscore
        return {
            "meta": self.meta,
            "data": {
                "is_outlier": (flagged > threshold).astype(np.int64),
                "feature_score": fscore if return_feature_score else None,
                "instance_score": iscore if return_instance_score else None,
            },
        }
