import numpy as np
import pytest
import torch

from dagmm.models.features import cosine_similarity, default_recon_features, relative_euclidean

# the torch code; the C kernel of the same features is compared with it in test_native.py and test_train_step.py


def test_recon_features_against_numpy(rng):
    x = rng.normal(size=(5, 7)).astype(np.float32)
    xr = x + 0.1 * rng.normal(size=(5, 7)).astype(np.float32)
    f = default_recon_features(torch.from_numpy(x), torch.from_numpy(xr)).numpy()
    rel = np.linalg.norm(x - xr, axis=1) / np.linalg.norm(x, axis=1)
    cos = (x * xr).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(xr, axis=1))
    np.testing.assert_allclose(f[:, 0], rel, rtol=1e-5)
    np.testing.assert_allclose(f[:, 1], cos, rtol=1e-5)
    assert np.all(f[:, 1] > 0.9)  # the similarity, not its negative


def test_recon_features_zero_rows_finite_and_images_flattened():
    x = torch.zeros(2, 3, 4, 4)
    assert torch.isfinite(relative_euclidean(x, x + 1)).all()
    assert torch.isfinite(cosine_similarity(x, x)).all()
    assert default_recon_features(x, x).shape == (2, 2)


def _reference_pair(name, x, r):
    from dagmm.models.features import LOG_MSE_EPS

    first = (relative_euclidean(x, r) if name == "relative"
             else torch.log((x - r).flatten(1).pow(2).mean(1) + LOG_MSE_EPS))
    return torch.stack([first, cosine_similarity(x, r)], 1)


@pytest.mark.parametrize("name", ["relative", "log_mse"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recon_feature_gradient_matches_autograd(name, dtype):
    """The closed-form backward against autograd through the plain formulas, edge rows included."""
    from dagmm.models.features import log_mse_cosine

    fn = default_recon_features if name == "relative" else log_mse_cosine
    x = torch.randn(40, 3, 5, dtype=dtype)
    x[3] = 0  # zero input row
    r = x + 0.1 * torch.randn_like(x)
    r[5] = x[5]  # perfect reconstruction: zero error
    r[7] = 0  # zero reconstruction
    r1, r2 = r.clone().requires_grad_(True), r.clone().requires_grad_(True)
    got, ref = fn(x, r1), _reference_pair(name, x, r2)
    torch.testing.assert_close(got, ref, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-6)
    g = torch.randn_like(got)
    (a,), (b,) = torch.autograd.grad(got, [r1], g), torch.autograd.grad(ref, [r2], g)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=1e-7)


def test_recon_features_with_input_gradient_fall_back_to_autograd():
    x = torch.randn(6, 4, requires_grad=True)
    r = torch.randn(6, 4, requires_grad=True)
    gx, gr = torch.autograd.grad(default_recon_features(x, r).sum(), [x, r])
    x2, r2 = x.detach().clone().requires_grad_(True), r.detach().clone().requires_grad_(True)
    hx, hr = torch.autograd.grad(_reference_pair("relative", x2, r2).sum(), [x2, r2])
    torch.testing.assert_close(gx, hx)
    torch.testing.assert_close(gr, hr)
