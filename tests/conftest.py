from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture(params=["torch", "native"])
def kernel_backend(request, monkeypatch):
    """Runs a test on the torch code and on the optional C kernels (``dagmm.accel.enabled`` off / on).

    Where the kernels were not built the "native" run skips, unless
    ``DAGMM_REQUIRE_NATIVE=1`` (set by ``.ci/run``) makes it fail.
    """
    from dagmm import accel

    if request.param == "native":
        require_fast()
    monkeypatch.setattr(accel, "enabled", request.param == "native")
    return request.param


def require_native() -> None:
    """Skip where the C kernels were not built; fail instead under ``DAGMM_REQUIRE_NATIVE=1``."""
    from dagmm import accel

    if not accel.available():
        if os.environ.get("DAGMM_REQUIRE_NATIVE") == "1":
            pytest.fail("DAGMM_REQUIRE_NATIVE=1 but dagmm.accel._native was not built (is a C compiler installed?)")
        pytest.skip("dagmm.accel._native was not built (no C compiler at install); the torch code is tested")


def require_fast() -> None:
    """:func:`require_native`, and skip where the kernels' AVX2 + FMA clone is not in use (they are not used there)."""
    from dagmm import accel

    require_native()
    if not accel.fast():
        pytest.skip("the C kernels run only as their AVX2 + FMA build (dagmm.accel.fast() is False here); "
                    "the torch code is tested")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (it lives in ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tabular():
    """Small standardised tabular task: (X_train inliers, X_test, y_test)."""
    from dagmm.synthetic import make_outlier_data

    X, y = make_outlier_data(n_samples=3000, n_features=10, n_clusters=1, latent_dim=2, seed=7)
    train = np.arange(len(X)) < 1500
    X_train = X[train & (y == 0)]
    mean, std = X_train.mean(0), X_train.std(0) + 1e-8
    return (X_train - mean) / std, (X[~train] - mean) / std, y[~train]


@pytest.fixture(scope="session")
def digits_images():
    """scikit-learn's bundled 8x8 digits in [0, 1], upscaled to (N, 16, 16, 1); no download."""
    from sklearn.datasets import load_digits

    X = (load_digits().images / 16.0).astype(np.float32)
    return np.kron(X, np.ones((2, 2), dtype=np.float32))[..., None]  # (1797, 16, 16, 1)


# ------------------------------------------------------------------ tolerances between code paths
#: Unit roundoff of the two float types the library computes in.
EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7
EPS64 = float(np.finfo(np.float64).eps)  # 2.22e-16


def float64_reordered(ref, n_ops: int, scale=None) -> dict:
    """``rtol``/``atol`` for two float64 evaluations of one formula that add in another order.

    Each of the ``n_ops`` operations a result depends on can round by ``EPS64`` times the size
    of the terms it combines (``scale``, default the largest ``|ref|`` and at least 1).  The bound
    has to be absolute as well: a result that cancels (an energy near 0 made of O(1) terms, a
    cosine near 0) keeps the absolute error of its terms, so a relative bound alone fails on a
    CPU whose BLAS or vector width orders the sums differently (AVX-512 vs AVX2).
    """
    ref = np.asarray(ref.detach().cpu().numpy() if hasattr(ref, "detach") else ref, dtype=np.float64)
    size = float(np.abs(ref).max()) if ref.size else 1.0
    scale = max(1.0, size) if scale is None else float(scale)
    return {"rtol": n_ops * EPS64, "atol": n_ops * EPS64 * scale}

