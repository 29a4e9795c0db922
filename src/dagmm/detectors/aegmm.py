"""``OutlierAEGMM``: the Deep Autoencoding Gaussian Mixture Model detector."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch
from torch import nn

from .. import accel
from .._validation import check_percent, check_positive_int
from ._density import ScoringDensity
from .base import DEFAULT_SCORE_BATCH, BaseDetector, seeded
from ..models.features import default_recon_features, log_mse_cosine
from ..models.gmm import gmm_log_prob, sample_energy
from ..models.covariance import residual_nll, stacked_log_prob, stacked_whitening
from ..training.auto import AUTO_LR, aegmm_config, check_standardize, resolve_schedule
from ..models.losses import loss_aegmm
from ..models.nets import AEGMMNet, build_aegmm_nets, paper_kddcup_nets
from ..training.loop import OptimizerArg, resolve_optimizer, train_scheduled

#: Learning rate and loss weights of user networks and the paper architecture (the paper's values).
PAPER_LR, PAPER_W_ENERGY, PAPER_W_COV_DIAG = 1e-4, 0.1, 0.005
_ARCHITECTURES = ("auto", "paper")

__all__ = ["OutlierAEGMM"]

ReconFeatures = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _first_linear_in(module: nn.Module) -> Optional[int]:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
    return None


class OutlierAEGMM(ScoringDensity, BaseDetector):
    """Deep Autoencoding Gaussian Mixture Model outlier detector (Zong et al., 2018).

    An auto-encoder compresses each row to a latent code; the code plus
    reconstruction features (relative Euclidean distance and cosine similarity
    by default) feed an estimation network whose softmax output gives soft
    memberships in ``n_gmm`` Gaussian components.  The outlier score is the
    sample energy ``-log sum_k phi_k N(z; mu_k, Sigma_k)`` under a mixture
    estimated on the whole training set: for ``architecture='auto'`` a
    maximum-likelihood mixture of the training codes fitted by EM after
    training, with 1 to 64 components chosen by BIC
    (:func:`dagmm.models.mixture.select_mixture`; ``auto_config_['mixture_fit']``
    records the choice); with user nets and ``architecture='paper'`` the
    estimation network's memberships, as in the paper.  For
    ``architecture='auto'`` the score also counts the reconstruction as a
    likelihood, the residual ``r = x - x'`` under Gaussians fitted to the
    training residuals.  By default it is one mixture of the code and the
    residual, ``-log sum_k phi_k N(z; mu_k, Sigma_k) N(r; m_k, C_k)``, each
    component with its own residual mean and full covariance
    (``residual_means_``, ``residual_prec_chols_``) where K x F^2 is at most
    2^20; otherwise the energy plus the residual's NLL under one Ledoit-Wolf
    shrunk full covariance (``residual_mean_``, ``residual_prec_chol_``, up
    to 2,048 columns) or, above that, independent columns with variances
    ``error_scale_``.  The score is ``-log p(z, x | x')`` up to a constant.

    Parameters
    ----------
    threshold : float, optional
        Energies strictly above it are outliers; set by :meth:`infer_threshold`.
    aegmm : nn.Module, optional
        A whole model whose ``forward(x)`` returns ``(x_recon, z, gamma)``.
    encoder_net, decoder_net, gmm_density_net : nn.Module, optional
        The three parts, given together.  ``gmm_density_net`` takes
        ``latent_dim + n_recon_features`` inputs and ends in a softmax over
        ``n_gmm`` components.  When neither ``aegmm`` nor the three nets are
        given, ``fit`` builds the architecture named by ``architecture``.
    n_gmm : int, optional
        Number of components.  By default chosen from the number of rows
        (:func:`dagmm.training.auto.n_components`) for ``architecture='auto'`` and 4 for
        ``'paper'``; with user nets it is read from ``gmm_density_net`` and,
        if given, checked.
    recon_features : callable, optional
        ``f(x, x_recon) -> (N, R)`` tensor of reconstruction features.
        Default: the paper's relative Euclidean distance and cosine
        (:func:`dagmm.models.features.default_recon_features`) with user nets and
        ``architecture='paper'``; :func:`dagmm.models.features.log_mse_cosine` (log
        of the mean squared error per feature, cosine) for ``architecture='auto'``.
    data_type : str, optional
        Recorded in ``meta`` only ('tabular', 'image', 'time-series', ...).
    device : str or torch.device, optional
        ``'cpu'`` (default) or ``'cuda'``.
    cov_eps : float, default 1e-6
        Initial diagonal jitter added to covariances before the Cholesky
        factorisation; raised tenfold (up to six times) if a factorisation fails.
    standardize : 'auto', True or False, default 'auto'
        z-score every feature with the mean and standard deviation of the
        training data (stored as ``scaler_mean_`` and ``scaler_scale_``; a
        constant feature gets scale 1).  The scaling is applied inside
        ``score``/``predict``/``infer_threshold``, so pass raw data everywhere.
        ``'auto'`` standardises for ``architecture='auto'`` without user nets
        and not otherwise; ``False`` leaves the data as given (scale it yourself).
    architecture : 'auto' or 'paper', default 'auto'
        The networks built when none are given.  ``'auto'``: sizes, number of
        components, schedule and loss weights chosen from the data shape by
        :func:`dagmm.training.auto.aegmm_config` (see the "Defaults" section of the user
        guide).  ``'paper'``: the paper's KDDCUP architecture, encoder
        ``F-60-30-10-1`` with tanh, the mirror decoder and the estimation net
        ``3-10-Dropout(0.5)-n_gmm`` with softmax, trained like user nets (20
        epochs of 64 rows, Adam 1e-4, ``w_energy=0.1``, ``w_cov_diag=0.005``,
        no standardisation unless ``standardize=True``), as in earlier versions.

    Attributes
    ----------
    auto_config_ : dict
        After ``fit``: the rules' results and the schedule actually used
        (JSON-able), including early stopping's ``best_step``.
    scaler_mean_, scaler_scale_ : float64 ndarray of shape ``X.shape[1:]`` or None
        The standardisation, or None when it is off.
    error_scale_ : float32 ndarray of shape ``X.shape[1:]`` or None
        ``architecture='auto'``: each feature's mean squared reconstruction
        error on the training rows (standardised units, floored at 0.01 of
        their mean), the variances of the diagonal residual term, which the
        score uses where ``residual_prec_chol_`` is None; None otherwise (and
        for detectors saved before it existed): energy only.
    residual_mean_ : float64 ndarray (F,) or None; residual_prec_chol_ : float32 ndarray (F, F) or None
        ``architecture='auto'`` with at most ``FULL_RESIDUAL_MAX_FEATURES``
        (2,048) input values per row: the mean of the training residuals
        ``x - x'`` and the upper factor ``P`` of the inverse of their
        Ledoit-Wolf covariance (variances floored as ``error_scale_``); the
        score's residual term is then ``0.5 * |(r - mean) P|^2`` instead of
        the diagonal one.  None otherwise.
    residual_means_ : float64 ndarray (K, F) or None; residual_prec_chols_ : float32 ndarray (K, F, F) or None
        ``architecture='auto'`` where K x F^2 <= ``COMPONENT_RESIDUAL_MAX``
        (2^20): per mixture component, the mean of the training residuals
        weighted by the rows' memberships and the upper factor of the inverse
        of their weighted scatter shrunk towards the global covariance with the
        weight of F rows.  The score is then the joint mixture above.
        :meth:`set_mixture` drops them
        (another mixture's components are not theirs): the global term remains.
    """

    def __init__(
        self,
        threshold: Optional[float] = None,
        aegmm: Optional[nn.Module] = None,
        encoder_net: Optional[nn.Module] = None,
        decoder_net: Optional[nn.Module] = None,
        gmm_density_net: Optional[nn.Module] = None,
        n_gmm: Optional[int] = None,
        recon_features: Optional[ReconFeatures] = None,
        data_type: Optional[str] = None,
        device: Union[None, str, torch.device] = None,
        cov_eps: float = 1e-6,
        standardize: Union[str, bool] = "auto",
        architecture: str = "auto",
    ) -> None:
        super().__init__(threshold, data_type, device)
        self.standardize = check_standardize(standardize)
        if architecture not in _ARCHITECTURES:
            raise ValueError(f"architecture must be 'auto' or 'paper', got {architecture!r}.")
        self.architecture = architecture
        parts = {"encoder_net": encoder_net, "decoder_net": decoder_net, "gmm_density_net": gmm_density_net}
        given = [k for k, v in parts.items() if v is not None]
        if aegmm is not None and given:
            raise ValueError(f"Pass either aegmm or the three nets, not both (got aegmm and {', '.join(given)}).")
        if given and len(given) < 3:
            missing = [k for k in parts if k not in given]
            raise ValueError(
                f"encoder_net, decoder_net and gmm_density_net must be given together; missing: {', '.join(missing)}."
            )
        for k, v in list(parts.items()) + [("aegmm", aegmm)]:
            if v is not None and not isinstance(v, nn.Module):
                raise TypeError(f"{k} must be a torch.nn.Module, got {type(v).__name__}.")
        if n_gmm is not None:
            n_gmm = check_positive_int(n_gmm, "n_gmm")
        if recon_features is not None and not callable(recon_features):
            raise TypeError(f"recon_features must be callable, got {type(recon_features).__name__}.")
        if not (isinstance(cov_eps, (int, float)) and cov_eps > 0):
            raise ValueError(f"cov_eps must be a positive float, got {cov_eps!r}.")
        self.n_gmm = n_gmm
        self.recon_features = recon_features
        self.cov_eps = float(cov_eps)
        self.default_architecture = aegmm is None and not given
        if aegmm is not None:
            self.aegmm: Optional[nn.Module] = aegmm
        elif given:
            self.aegmm = AEGMMNet(encoder_net, decoder_net, gmm_density_net, self._recon_fn())
        else:
            self.aegmm = None
        if self.aegmm is not None:
            self.aegmm.to(self.device)

    # ------------------------------------------------------------------ fit
    def _build_default(self, X: np.ndarray, config: Optional[dict]) -> None:
        if X.ndim != 2:
            raise ValueError(
                f"The default architecture needs 2-D tabular X, got shape {X.shape}. "
                "Pass encoder_net, decoder_net and gmm_density_net for other data."
            )
        n_recon = self._n_recon_features(X)
        if config is None:  # the paper's architecture
            self.n_gmm = self.n_gmm or 4
            enc, dec, dens = paper_kddcup_nets(X.shape[1], self.n_gmm, n_recon)
        else:
            enc, dec, dens = build_aegmm_nets(config, config["n_gmm"], n_recon)
            self.n_gmm = config["n_gmm"]
        self.aegmm = AEGMMNet(enc, dec, dens, self._recon_fn()).to(self.device)

    def _recon_fn(self) -> ReconFeatures:
        """The reconstruction features in use: the user's, else the architecture's default."""
        if self.recon_features is not None:
            return self.recon_features
        return log_mse_cosine if self._auto() else default_recon_features

    def _auto(self) -> bool:
        """Whether the automatic configuration applies (own networks, ``architecture='auto'``)."""
        return self.default_architecture and self.architecture == "auto"

    def _n_recon_features(self, X: np.ndarray) -> int:
        x = torch.from_numpy(X[:2])
        return int(self._recon_fn()(x, x).reshape(x.shape[0], -1).shape[1])

    def _check_nets(self, X: np.ndarray) -> None:
        """Run two rows through the model and explain any shape contract it breaks."""
        model = self.aegmm
        xb = torch.from_numpy(X[:2]).to(self.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if isinstance(model, AEGMMNet):
                    latent = model.encoder(xb).flatten(1)
                    x_recon = model.decoder(model.encoder(xb))
                    if tuple(x_recon.shape) != tuple(xb.shape):
                        raise ValueError(
                            f"decoder_net returns shape {tuple(x_recon.shape[1:])} per row but the input has "
                            f"shape {tuple(xb.shape[1:])}; the decoder must reconstruct the input shape."
                        )
                    n_in = latent.shape[1] + self._n_recon_features(X)
                    expected = _first_linear_in(model.gmm_density)
                    if expected is not None and expected != n_in:
                        raise ValueError(
                            f"gmm_density_net takes {expected} input features, but the latent size "
                            f"({latent.shape[1]}) plus the number of reconstruction features "
                            f"({n_in - latent.shape[1]}) is {n_in}. Make its first layer take {n_in} inputs."
                        )
                out = model(xb)
        except ValueError:
            raise
        except RuntimeError as err:
            raise ValueError(f"The networks failed on input of shape {tuple(xb.shape)}: {err}") from err
        finally:
            model.train(was_training)
        if not (isinstance(out, (tuple, list)) and len(out) == 3):
            raise ValueError("aegmm must return a tuple (x_recon, z, gamma) from forward(x).")
        _, z, gamma = out
        if gamma.ndim != 2 or z.ndim != 2:
            raise ValueError(f"z and gamma must be 2-D, got shapes {tuple(z.shape)} and {tuple(gamma.shape)}.")
        k = gamma.shape[1]
        if self.n_gmm is not None and k != self.n_gmm:
            raise ValueError(
                f"n_gmm={self.n_gmm} but gmm_density_net outputs {k} components. "
                f"Pass n_gmm={k} or change the last layer of gmm_density_net."
            )
        sums = gamma.sum(1)
        if bool((gamma < 0).any()) or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            raise ValueError(
                "gmm_density_net must end in a softmax over the components (each output row must "
                "sum to 1); add torch.nn.Softmax(dim=1) as its last layer."
            )
        self.n_gmm = k

    def fit(
        self,
        X: Any,
        loss_fn: Callable[..., torch.Tensor] = loss_aegmm,
        w_energy: Optional[float] = None,
        w_cov_diag: Optional[float] = None,
        optimizer: OptimizerArg = None,
        epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        verbose: bool = True,
        log_metric: Optional[tuple[str, Callable]] = None,
        callbacks: Optional[Iterable[Any]] = None,
        seed: Optional[int] = None,
    ) -> "OutlierAEGMM":
        """Train end to end, then estimate the mixture on the whole training set.

        Parameters
        ----------
        X : array-like, shape (N, F) or (N, ...)
            Training data (mostly normal rows), in its own units when
            standardisation is on.  Converted to float32.
        loss_fn : callable, default :func:`dagmm.models.losses.loss_aegmm`
            ``loss_fn(x, x_recon, z, gamma, w_energy=..., w_cov_diag=...)``;
            ``cov_eps`` is passed too when the function accepts it.
        w_energy, w_cov_diag : float, optional
            The paper's ``lambda_1`` and ``lambda_2``.  Default: ``0.001 * F``
            and ``0.00005 * F`` for the automatic architecture (the loss sums
            the squared error over the F features, so this keeps the balance
            independent of F), the paper's 0.1 and 0.005 otherwise.
        optimizer : Optimizer class or callable, optional
            Default Adam with lr 1e-3 for the automatic architecture, 1e-4
            (the paper's) otherwise; a class is built with that lr; a callable
            ``params -> Optimizer`` is used as is.
        epochs : int, optional
            Used exactly when given (no early stopping).  Default: the
            automatic step budget with early stopping on a held-out slice
            (:func:`dagmm.training.auto.schedule`) for the automatic architecture, 20
            otherwise.
        batch_size : int, optional
            Training batch size, used exactly when given.  Default: chosen
            from the rows for the automatic architecture, 64 otherwise.  The
            final mixture pass uses larger batches.
        verbose : bool, default True
            Progress bar with the running loss.
        log_metric : (name, fn), optional
            ``fn(x, x_recon)`` shown and logged per epoch.
        callbacks : iterable, optional
            ``on_epoch_end(epoch, logs)`` objects or ``(epoch, logs)`` callables;
            returning True stops training.
        seed : int, optional
            Makes initialisation, shuffling, the held-out split and dropout
            reproducible.

        Returns
        -------
        self
        """
        X = self._fit_input(X)
        if epochs is not None:
            epochs = check_positive_int(epochs, "epochs")
        if batch_size is not None:
            batch_size = check_positive_int(batch_size, "batch_size")
            if batch_size < 2:
                raise ValueError("batch_size must be at least 2 to estimate covariances.")
        auto = self._auto()
        config = aegmm_config(len(X), X.shape[1:]) if auto else None
        if config is not None and self.n_gmm is not None:
            # components given: the estimation network and the scoring mixture both have exactly that many
            config["n_gmm"] = self.n_gmm
            config["mixture_components"] = [self.n_gmm]
        plan = resolve_schedule(config, len(X), epochs, batch_size)
        w_energy = (config["w_energy"] if auto else PAPER_W_ENERGY) if w_energy is None else float(w_energy)
        w_cov_diag = (config["w_cov_diag"] if auto else PAPER_W_COV_DIAG) if w_cov_diag is None else float(w_cov_diag)
        kwargs = {"w_energy": w_energy, "w_cov_diag": w_cov_diag}
        if "cov_eps" in inspect.signature(loss_fn).parameters:
            kwargs["cov_eps"] = self.cov_eps
        X, standardize = self._fit_standardization(X, auto)
        lr = AUTO_LR if auto else PAPER_LR
        with seeded(seed, self.device) as gen:
            if self.aegmm is None:
                self._build_default(X, config)
            self._check_nets(X)
            opt = resolve_optimizer(optimizer, self.aegmm.parameters(), lr)
            model = self.aegmm

            def batch_loss(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                fast = accel.aegmm_loss(model, xb, loss_fn, **kwargs)  # one node on the C kernels, where it applies
                if fast is not None:
                    return fast
                x_recon, z, gamma = model(xb)
                return loss_fn(xb, x_recon, z, gamma, **kwargs), x_recon

            with accel.kernel_threads():
                self.history_, stopped = train_scheduled(
                    model, X, batch_loss, opt, plan, seed=seed, generator=gen, device=self.device,
                    callbacks=callbacks, verbose=verbose, log_metric=log_metric, desc="OutlierAEGMM")
        self.auto_config_ = {
            **(config or {"architecture": "paper" if self.default_architecture else "user"}),
            "n_rows": int(len(X)), "standardize": bool(standardize), "n_gmm": int(self.n_gmm),
            "epochs": plan["epochs"], "epochs_run": len(self.history_), "batch_size": plan["batch_size"],
            "early_stopping": stopped, "w_energy": w_energy, "w_cov_diag": w_cov_diag,
            "lr": lr if optimizer is None else None, "recon_features": getattr(self._recon_fn(), "__name__", None),
        }
        self.feature_shape_ = tuple(X.shape[1:])
        self.error_scale_ = self.residual_mean_ = self.residual_prec_chol_ = None
        self.residual_means_ = self.residual_prec_chols_ = None
        if (config or {}).get("residual") in ("full", "component"):
            fitted = self._training_residual_gaussian(X, config["error_floor"], self._reconstruct_into())
            self.residual_mean_, self.residual_prec_chol_ = fitted["mean"], fitted["prec_chol"]
            self.auto_config_["residual_shrinkage"] = round(fitted["shrinkage"], 6)
            if config.get("error_scale") == "train":  # the diagonal fallback, from the same sums
                self.error_scale_ = fitted["error_scale"]
        elif (config or {}).get("error_scale") == "train":
            self.error_scale_ = self._training_error_scale(X, config["error_floor"], self._reconstruct_into())
        if (config or {}).get("mixture") == "em":
            self.auto_config_["mixture_fit"] = self._fit_mixture_em(X, config["mixture_components"],
                                                                    config["em_reg"], seed)
        else:
            self._fit_mixture(X)
        if (config or {}).get("residual") == "component":
            k, f = self.mu_.shape[0], int(np.prod(X.shape[1:]))
            if k * f * f <= config["component_residual_max"]:
                self._fit_component_residuals(X, fitted["cov"])
            self.auto_config_["residual_fit"] = "component" if self.residual_means_ is not None else "full"
        self._fitted = True
        return self

    # --------------------------------------------------------------- scoring
    def _encode_fn(self) -> tuple[bool, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        """``(plain, fn)``: ``fn(xb) -> (x_recon, z)`` in eval mode, skipping the estimation network (which
        neither the energy nor the reconstruction needs) when the model is a plain ``AEGMMNet``."""
        self.aegmm.eval()
        model = self.aegmm
        plain = isinstance(model, AEGMMNet) and type(model).forward is AEGMMNet.forward
        return plain, (model.encode if plain else (lambda xb: model(xb)[:2]))

    def _reconstruct_into(self) -> Callable[[torch.Tensor, torch.Tensor], None]:
        """``fn(xb, out)`` writing the auto-encoder's reconstruction of ``xb`` into ``out``; eval mode."""
        encode = self._encode_fn()[1]

        def recon_into(xb: torch.Tensor, out: torch.Tensor) -> None:
            out.copy_(encode(xb)[0])

        return recon_into

    def score(self, X: Any, batch_size: int = DEFAULT_SCORE_BATCH) -> np.ndarray:
        """Sample energies, shape (N,), float64; higher is more anomalous.

        The default architecture counts the residual ``r = x - x'``
        (standardised units) too: with ``residual_means_`` the energy is ``-log
        sum_k phi_k N(z; mu_k, Sigma_k) N(r; m_k, C_k)`` (up to the constant
        ``F log(2 pi) / 2``); otherwise the code's energy plus ``0.5 * |(r -
        residual_mean_) residual_prec_chol_|^2``, or with ``error_scale_``
        alone (tables above ``FULL_RESIDUAL_MAX_FEATURES`` columns) ``0.5 *
        sum_j r_j^2 / error_scale_j``.

        X is in the units of the training data; the detector's standardisation
        (if any) is applied here.  Memory is bounded by ``batch_size`` rows at a time.
        """
        self._check_fitted("score")
        X = self._checked(X)
        phi, mu, prec = self.phi_, self.mu_, self.prec_chol_
        model = self.aegmm
        plain, latent = self._encode_fn()

        residual = self._residual_model()
        joint = "means" in residual  # one mixture of the code and the residual
        # the whole energy in one C call per batch where the model and data allow
        kernel = accel.energy_scorer(model, phi, mu, prec, residual.get("error_scale"), residual.get("mean"),
                                     residual.get("prec_chol"), residual if joint else None) if plain else None

        stacked = stacked_whitening(**residual) if joint else None  # once, not per batch

        def energy(xb: torch.Tensor, out: torch.Tensor) -> None:
            if kernel is None or not kernel(xb, out):
                x_recon, z = latent(xb)
                if joint:  # -log sum_k phi_k N(z; mu_k, Sigma_k) N(r; m_k, C_k); r in float32 as the product
                    lp = gmm_log_prob(z.double(), phi, mu, prec) + stacked_log_prob(xb - x_recon, *stacked)
                    out.copy_(-torch.logsumexp(lp, 1))
                    return
                e = sample_energy(z, phi, mu, prec)  # (N,) float64
                if residual:  # the residual's Gaussian term, in float64 like the mixture's
                    e = e + residual_nll(xb.double() - x_recon.double(), **residual)
                out.copy_(e)

        out = self._batched_into(energy, X, batch_size, (), torch.float64)
        bad = ~np.isfinite(out)
        if bad.any():
            rows = np.flatnonzero(bad)[:10].tolist()
            raise ValueError(
                f"Non-finite energies for {int(bad.sum())} row(s) (first: {rows}); the network "
                "output overflowed. Check that X is scaled like the training data."
            )
        return out

    def infer_threshold(self, X: Any, threshold_perc: float = 95.0,
                        batch_size: int = DEFAULT_SCORE_BATCH) -> None:
        """Set ``threshold`` to the ``threshold_perc`` percentile of the energies of X."""
        threshold_perc = check_percent(threshold_perc, "threshold_perc")
        self.threshold = self._percentile(self.score(X, batch_size), threshold_perc)

    def predict(self, X: Any, batch_size: int = DEFAULT_SCORE_BATCH,
                return_instance_score: bool = True) -> dict:
        """Flag rows whose energy is strictly above ``threshold``.

        Returns
        -------
        dict
            ``{'meta': meta, 'data': {'is_outlier': int (N,), 'instance_score':
            float (N,) or None, 'feature_score': None}}``.
        """
        self._check_fitted("predict")
        threshold = self._check_threshold()
        scores = self.score(X, batch_size)
        return {
            "meta": self.meta,
            "data": {
                "is_outlier": (scores > threshold).astype(np.int64),
                "instance_score": scores if return_instance_score else None,
                "feature_score": None,
            },
        }
