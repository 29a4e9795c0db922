import numpy as np
import torch

from dagmm.features import cosine_similarity, default_recon_features, relative_euclidean


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
