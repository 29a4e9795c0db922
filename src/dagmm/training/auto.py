"""Data-driven defaults: architecture, schedule, loss weights and input scaling.

Every rule here is a pure function of the training-set shape ``(n_rows,
feature_shape)`` so that the choice is documented, testable and reproducible
(the result is stored on the fitted detector as ``auto_config_``, a JSON-able
dict).  They apply when a detector builds its own networks (no user nets);
user-supplied networks keep the fixed behaviour of earlier versions.

Why these rules (measured by ``benchmarks/defaults.py``):

* **Standardise the inputs.**  Tabular columns come in arbitrary units; a
  reconstruction loss summed over columns is then dominated by the column with
  the largest variance, and ``tanh`` units saturate on raw values.  z-scores
  computed on the training data make every column count the same and make the
  detector invariant to the units of each column.
* **Width from the number of features.**  The first hidden layer has the next
  power of two at or above ``F`` units, clipped to [32, 128], the second half
  of that: enough capacity for wide tables, cheap for narrow ones.
* **Latent size.**  DAGMM's mixture lives in ``latent + 2`` dimensions and its
  covariances are estimated on mini-batches, so the code stays small:
  ``clip(round(log2 F), 1, 4)``.  The plain auto-encoder has no mixture on top,
  so it can keep more: ``clip(ceil(F / 4), 2, 16)`` (a quarter of the columns, like
  the earlier default, but capped so the bottleneck still compresses wide rows).
* **Components from the rows.**  Each component needs enough rows per batch
  and in total to estimate a ``D x D`` covariance: 1 component below 300 rows,
  2 below 3,000, then 4 (the paper's KDDCUP value).
* **Training length in optimizer steps, not epochs.**  A fixed epoch count
  gives 20 steps on a 1,000-row table and 8,000 on a 400,000-row one.  The
  budget is ``clip(40 epochs, 1000, 3000)`` steps with a batch of
  ``clip(2**round(log2(n / 32)), 32, 256)`` rows, and early stopping on a
  held-out 10% slice (at most 2,000 rows, none below 100 rows) with a patience
  of a quarter of the budget; the weights with the lowest held-out loss are
  restored at the end.  ``OutlierAE`` gets ``AE_STEP_FACTOR = 2`` times that
  budget where the held-out slice exists: on the 34 tables of
  ``benchmarks/adbench.py`` (3 seeds) this rule raised its mean AUROC from
  0.870 to 0.876 (11 tables up by more than 0.005, Waveform +0.05, thyroid
  +0.03, none down).  Twice the steps everywhere (candidate ``steps-2x``)
  lost 0.02 on the tables below 100 rows, which train the whole budget
  without early stopping (Hepatitis, wine), hence the condition.
  ``OutlierAEGMM`` did not gain from twice the steps (-0.002) and keeps the
  budget.
* **Learning rate 1e-3.**  Adam's step size does not depend on the scale of
  the loss, and 1e-3 converges within the step budget; the paper's 1e-4 does not.
* **Loss weights per feature.**  :func:`dagmm.models.losses.loss_aegmm` sums the
  squared error over the ``F`` features, so with fixed ``w_energy`` the
  relative weight of the energy shrinks as ``1 / F``: a table with 200 columns
  would ignore the mixture, one with 5 columns would be dominated by it.  The
  default uses ``w_energy = 0.001 * F`` and ``w_cov_diag = 0.00005 * F``, i.e.
  the objective is ``F * (mean squared error per feature + 0.001 * energy +
  0.00005 * penalty)``; their ratio (the paper's 1 : 0.05) is kept, which puts
  the balance point of the latent variances at ``2 * 0.00005 / 0.001 = 0.1``.
  A weight of 0.01 per feature let the energy pull the code together at the
  expense of the reconstruction and ranked local outliers worse (AUROC 0.77
  against 0.88 on the ``local-10`` task of ``benchmarks/defaults.py``).
* **OutlierAEGMM scores with a mixture fitted to the training codes.**  After
  training, the codes (latent + reconstruction features) of all training rows
  are fixed; a full-covariance mixture is fitted to them by EM (float64, on
  their z-scores, ``EM_REG = 1e-6`` on the covariance diagonals, k-means
  starts), with the number of components chosen by BIC among
  ``MIXTURE_COMPONENTS = (1, 2, 4, 8, 16, 32, 64)`` (at least 20 rows per component;
  the choice is made on at most 4,096 rows, the chosen mixture refitted on
  all), see :func:`dagmm.models.mixture.select_mixture`.  The estimation
  network's own mixture (the paper's) is fitted jointly on mini-batches with
  ``n_components(n_rows)`` components and models the scored codes less
  closely: on the 34 tables of ``benchmarks/adbench.py`` (one seed, the same
  trained nets) the mean AUROC went from 0.871 to 0.890 on the 27 tables
  screened (landsat 0.43 -> 0.81, InternetAds 0.74 -> 0.82; Cardiotocography
  and mammography lost 0.01-0.08).  The training objective is unchanged.
* **OutlierAEGMM's score counts the reconstruction as a likelihood** (with
  independent columns; since then a full covariance, the next item).  After
  the mixture, each feature's mean squared reconstruction error on the
  training rows is stored (``error_scale_``, floored as OutlierAE's) and the
  score adds ``0.5 * sum_j (x_j - x'_j)^2 / error_scale_j``, the negative
  log-density of the residual under independent Gaussians with those
  variances: the score is ``-log p(z) - log p(x | x')`` up to a constant, in
  nats like the energy, with no weight to tune.  The energy alone sees the
  error only through one log-MSE feature of the code, in which every column
  counts by its raw size.  On the 34 tables of ``benchmarks/adbench.py`` (3
  seeds, the same trained nets, ``benchmarks/aegmm_score_screen.py``) the mean
  AUROC went from 0.868 to 0.876 (Hepatitis +0.04, wine +0.05, campaign +0.05,
  vertebral +0.05; landsat -0.12, digits -0.02).
* **The residual's covariance is full, and the mixture may have up to 64
  components.**  The residuals of columns that move together are missed
  together, so the residual term is ``0.5 * |(r - m) P|^2`` with ``P P^T``
  the inverse of the Ledoit-Wolf shrunk covariance of the training
  residuals (:mod:`dagmm.models.covariance`; variances floored like
  ``error_scale_``), up to ``FULL_RESIDUAL_MAX_FEATURES = 2048
#: ... and one full covariance per mixture component where components x F^2 is at most this (4 MB of float32).
COMPONENT_RESIDUAL_MAX = 1 << 20`` input values
  per row (the product costs ``F^2`` per row; above it the diagonal term).
  BIC chose the largest candidate, 16 components, on 18 of the 34 tables, so
  the candidates go to 64 (the C scoring kernel's limit).  On the same 34
  tables x 3 seeds and trained nets (``benchmarks/aegmm_score_screen.py --screen mixture``):
  0.876 (diagonal, up to 16) -> 0.881 (full) -> 0.882 (full, up to 64);
  InternetAds +0.06, SpamBase +0.02, landsat +0.03, skin +0.02.
* **One mixture of the code and the residual.**  Where the components
  differ in how well they are reconstructed (clusters of landsat, skin,
  digits), one residual Gaussian for all of them blurs them, so by default
  each component ``k`` of the scoring mixture gets its own: the residuals'
  mean and scatter weighted by the training rows' memberships, the covariance
  shrunk towards the global one with the weight of F rows, and the score is
  ``-log sum_k phi_k N(z; mu_k, Sigma_k) N(r; m_k, C_k)``.  It is used where
  ``K * F^2 <= COMPONENT_RESIDUAL_MAX = 2^20`` (the factors stored and the
  products per row), else the global term above.  Same 34 tables x 3 seeds
  and trained nets (``benchmarks/aegmm_score_screen.py --screen component``,
  the screen's prior was the covariance about each row's component mean):
  0.882 -> 0.886; landsat +0.05, skin +0.03, digits +0.03;
  Cardiotocography -0.05, vertebral -0.03.
* **OutlierAE scores in units of the typical error.**  After training, each
  feature's mean squared reconstruction error on the training rows is stored
  (``error_scale_``, floored at ``ERROR_FLOOR = 0.01`` times its mean over the
  features) and every feature score is divided by it.  Without it a column the
  auto-encoder barely models dominates the mean, and a deviation in a column it
  reconstructs almost exactly is lost in it.  On the 34 tables of
  ``benchmarks/adbench.py`` (one seed, the same trained nets) this raised the mean
  AUROC on most tables (Hepatitis +0.06, InternetAds +0.04, campaign +0.01) and
  lowered it by at most 0.01 on the others.
* **Reconstruction features.**  :func:`dagmm.models.features.log_mse_cosine` (log of
  the mean squared error per feature, cosine) instead of the paper's relative
  Euclidean distance, which on standardised data divides the error by the
  row's distance from the mean and so hides the farthest rows.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np


__all__ = [
    "aegmm_config",
    "ae_config",
    "schedule",
    "hidden_widths",
    "aegmm_latent_dim",
    "ae_latent_dim",
    "n_components",
    "check_standardize",
    "resolve_schedule",
]

#: Adam learning rate of the automatic schedule.
AUTO_LR = 1e-3
#: Energy and covariance-penalty weights per feature (see the module docstring).
ENERGY_PER_FEATURE = 0.001
COV_DIAG_PER_FEATURE = 0.00005
#: Candidate components of the scoring mixture of ``OutlierAEGMM`` (chosen by BIC) and EM's regularisation.
MIXTURE_COMPONENTS = (1, 2, 4, 8, 16, 32, 64)
EM_REG = 1e-6
#: ``OutlierAE`` error scales are floored at this fraction of their mean over the features.
ERROR_FLOOR = 0.01
#: ``OutlierAEGMM``'s residual term has a full covariance up to this many input values per row, else a diagonal one.
FULL_RESIDUAL_MAX_FEATURES = 2048
#: ... and one full covariance per mixture component where components x F^2 is at most this (4 MB of float32).
COMPONENT_RESIDUAL_MAX = 1 << 20
#: ``OutlierAE``'s step budget in units of :func:`schedule`'s, where early stopping guards it (>= 100 rows).
AE_STEP_FACTOR = 2.0
#: Schedule used with user-supplied networks (and the paper architecture), as in earlier versions.
FIXED_EPOCHS = 20
FIXED_BATCH = 64


def _n_features(feature_shape: Sequence[int]) -> int:
    return int(math.prod(int(s) for s in feature_shape))


def hidden_widths(n_features: int) -> list[int]:
    """Two hidden widths: ``h1 = clip(next_pow2(F), 32, 128)`` and ``h1 // 2``."""
    h1 = min(128, max(32, 1 << max(0, math.ceil(math.log2(max(1, n_features))))))
    return [h1, h1 // 2]


def aegmm_latent_dim(n_features: int) -> int:
    """``clip(round(log2 F), 1, 4)``: 1 for 2 features, 2 for 3-5, 3 for 6-11, 4 from 12."""
    return int(min(4, max(1, round(math.log2(max(1, n_features))))))


def ae_latent_dim(n_features: int) -> int:
    """``clip(ceil(F / 4), 2, 16)``."""
    return int(min(16, max(2, math.ceil(n_features / 4))))


def n_components(n_rows: int) -> int:
    """Mixture components: 1 below 300 rows, 2 below 3,000, else 4."""
    if n_rows < 300:
        return 1
    if n_rows < 3000:
        return 2
    return 4


def schedule(n_rows: int, step_factor: float = 1.0) -> dict:
    """The automatic training schedule for ``n_rows`` training rows.

    ``step_factor`` scales the step budget (and the patience, a quarter of it).

    Returns
    -------
    dict
        ``val_rows`` (held-out rows for early stopping, 0 when ``n_rows <
        100``), ``batch_size``, ``max_steps``, ``max_epochs`` (the step budget
        in epochs of the remaining rows), ``patience_steps``, ``eval_every``
        (steps between two held-out evaluations) and ``lr``.
    """
    n_rows = int(n_rows)
    val_rows = 0 if n_rows < 100 else min(2000, int(round(0.1 * n_rows)))
    n_fit = n_rows - val_rows
    batch = int(min(256, max(32, 2 ** round(math.log2(max(1.0, n_fit / 32))))))
    batch = min(batch, n_fit)
    steps_per_epoch = math.ceil(n_fit / batch)
    max_steps = int(min(3000, max(1000, 40 * steps_per_epoch)) * step_factor)
    return {
        "val_rows": val_rows,
        "batch_size": batch,
        "max_steps": max_steps,
        "max_epochs": math.ceil(max_steps / steps_per_epoch),
        "patience_steps": max_steps // 4,
        "eval_every": 25,
        "lr": AUTO_LR,
    }


def aegmm_config(n_rows: int, feature_shape: Sequence[int]) -> dict:
    """Architecture, schedule and loss weights of the default ``OutlierAEGMM``.

    Examples
    --------
    >>> c = aegmm_config(10000, (50,))
    >>> c["encoder"], c["n_gmm"], c["batch_size"], c["w_energy"]
    ([50, 64, 32, 4], 4, 256, 0.05)
    """
    f = _n_features(feature_shape)
    h = hidden_widths(f)
    latent = aegmm_latent_dim(f)
    return {
        "architecture": "auto",
        "encoder": [f, *h, latent],
        "decoder": [latent, *h[::-1], f],
        "activation": "tanh",
        "density": [latent + 2, 10, None],  # None: filled with n_gmm
        "dropout": 0.5,
        "n_gmm": n_components(n_rows),
        "w_energy": ENERGY_PER_FEATURE * f,
        "w_cov_diag": COV_DIAG_PER_FEATURE * f,
        # the scoring mixture: EM on the training codes, components chosen by BIC among these
        "mixture": "em",
        "mixture_components": list(MIXTURE_COMPONENTS),
        "em_reg": EM_REG,
        # the score adds the residual's Gaussian term: a shrunk full covariance of the training residuals up to
        # FULL_RESIDUAL_MAX_FEATURES columns (an F x F product per row), else each feature's mean squared error
        "error_scale": "train",
        "residual": "component" if f <= FULL_RESIDUAL_MAX_FEATURES else "diagonal",
        # one residual Gaussian per mixture component where K * F^2 values fit this, else the global one
        "component_residual_max": COMPONENT_RESIDUAL_MAX,
        "error_floor": ERROR_FLOOR,
        **schedule(n_rows),
    }


def ae_config(n_rows: int, feature_shape: Sequence[int]) -> dict:
    """Architecture and schedule of the default tabular ``OutlierAE``.

    Examples
    --------
    >>> c = ae_config(10000, (50,))
    >>> c["encoder"], c["batch_size"], c["max_steps"]
    ([50, 64, 32, 13], 256, 2880)
    """
    f = _n_features(feature_shape)
    held_out = schedule(n_rows)["val_rows"] > 0  # early stopping guards a longer budget
    h = hidden_widths(f)
    latent = ae_latent_dim(f)
    return {
        "architecture": "auto",
        "encoder": [f, *h, latent],
        "decoder": [latent, *h[::-1], f],
        "activation": "relu",
        # score: each feature's squared error over its mean squared error on the training rows
        "error_scale": "train",
        "error_floor": ERROR_FLOOR,
        **schedule(n_rows, AE_STEP_FACTOR if held_out else 1.0),
    }


# ----------------------------------------------------------------- scaling
def check_standardize(value: Any) -> Any:
    """``'auto'``, ``True`` or ``False``."""
    if value == "auto" and isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"standardize must be 'auto', True or False, got {value!r}.")


def resolve_schedule(config: Optional[dict], n_rows: int, epochs: Optional[int],
                     batch_size: Optional[int]) -> dict:
    """Epochs, batch size and early stopping of one ``fit`` call.

    ``config`` is the automatic configuration (``None`` for user networks).
    A value the user passes is used exactly; ``epochs=None`` with the
    automatic configuration means the step budget with early stopping (when
    the table has at least 100 rows); without a configuration the fixed
    defaults of earlier versions apply (20 epochs of 64 rows).
    """
    if config is None:
        return {"epochs": FIXED_EPOCHS if epochs is None else epochs,
                "batch_size": FIXED_BATCH if batch_size is None else batch_size,
                "early_stopping": False, "val_rows": 0}
    if epochs is not None:
        return {"epochs": epochs, "batch_size": config["batch_size"] if batch_size is None else batch_size,
                "early_stopping": False, "val_rows": 0}
    val_rows = config["val_rows"]
    batch = config["batch_size"] if batch_size is None else batch_size
    steps_per_epoch = math.ceil((n_rows - val_rows) / batch)
    return {"epochs": math.ceil(config["max_steps"] / steps_per_epoch), "batch_size": batch,
            "early_stopping": val_rows > 0, "val_rows": val_rows, "steps_per_epoch": steps_per_epoch,
            "max_steps": config["max_steps"], "patience_steps": config["patience_steps"],
            "eval_every": config["eval_every"]}
