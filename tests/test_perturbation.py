"""apply_mask: shapes, placement, clipping, determinism and layouts."""

from __future__ import annotations

import numpy as np
import pytest

from dagmm.utils.perturbation import apply_mask


@pytest.fixture
def images(rng):
    return rng.uniform(0.2, 0.8, size=(4, 10, 12, 3)).astype(np.float32)  # (N, H, W, C)


def test_shapes_rows_and_rectangle(images):
    Xm, mask = apply_mask(images, mask_size=(3, 5), n_masks=3, seed=0)
    assert Xm.shape == mask.shape == (12, 10, 12, 3) and Xm.dtype == np.float32
    changed = mask != 0
    for r in range(12):
        rows, cols = np.nonzero(changed[r].any(-1))
        assert rows.max() - rows.min() + 1 == 3 and cols.max() - cols.min() + 1 == 5
        assert changed[r].sum() == 3 * 5 * 3  # every default channel
        # outside the rectangle the row is a copy of image r // n_masks
        np.testing.assert_array_equal(Xm[r][~changed[r]], images[r // 3][~changed[r]])
    # random corners differ between copies
    corners = {tuple(np.argwhere(changed[r].any(-1)).min(0)) for r in range(12)}
    assert len(corners) > 1


def test_coord_channels_and_clipping(images):
    Xm, mask = apply_mask(images, mask_size=(2, 2), coord=(1, 4), channels=[1], mask_type="normal",
                          noise_distr=(0, 5), clip_rng=(0, 1), seed=1)
    inside = np.zeros(images.shape, bool)
    inside[:, 1:3, 4:6, 1] = True
    np.testing.assert_array_equal(mask != 0, inside)
    np.testing.assert_allclose(Xm[inside], np.clip(images[inside] + mask[inside], 0, 1), rtol=1e-6)
    assert Xm.min() >= 0 and Xm.max() <= 1 and ((Xm == 0) | (Xm == 1))[inside].mean() > 0.5  # std 5 clips
    np.testing.assert_array_equal(Xm[~inside], images[~inside])


def test_uniform_noise_range_and_zero_masks(images):
    _, mask = apply_mask(images, mask_size=(4, 4), noise_rng=(0.5, 0.6), clip_rng=(-10, 10), seed=2)
    vals = mask[mask != 0]
    assert vals.size == 4 * 4 * 4 * 3 and vals.min() >= 0.5 and vals.max() <= 0.6
    Xz, mz = apply_mask(images, mask_size=(4, 4), mask_type="zero", coord=(0, 0), seed=2)
    assert set(np.unique(mz)) == {0.0, 1.0}
    assert (Xz[:, :4, :4] == 0).all() and np.array_equal(Xz[:, 4:], images[:, 4:])


def test_seed_determinism(images):
    a = apply_mask(images, n_masks=2, seed=7)
    b = apply_mask(images, n_masks=2, seed=7)
    c = apply_mask(images, n_masks=2, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_channels_first_and_greyscale_match_channels_last(images):
    last = apply_mask(images, mask_size=(3, 3), n_masks=2, seed=3)
    first = apply_mask(images.transpose(0, 3, 1, 2), mask_size=(3, 3), n_masks=2, seed=3)
    assert first[0].shape == (8, 3, 10, 12)
    np.testing.assert_array_equal(first[0].transpose(0, 2, 3, 1), last[0])
    grey = images[..., 0]  # (N, H, W)
    g = apply_mask(grey, mask_size=(3, 3), seed=3)
    assert g[0].shape == grey.shape and (g[1] != 0).sum() == 4 * 9


@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        (dict(mask_size=(11, 2)), ValueError, "mask_size (11, 2) does not fit in images of height 10 and width 12."),
        (dict(mask_size=(0, 2)), ValueError, "mask_size must be a positive integer, got 0."),
        (dict(n_masks=0), ValueError, "n_masks must be a positive integer, got 0."),
        (dict(coord=(9, 0)), ValueError, "coord (9, 0) puts a (4, 4) mask outside images of size (10, 12)."),
        (dict(channels=[3]), ValueError, "channels [3] must be indices in [0, 3) for images with 3 channel(s)."),
        (dict(mask_type="salt"), ValueError, "mask_type must be one of ('uniform', 'normal', 'zero'), got 'salt'."),
        (dict(clip_rng=0), TypeError, "clip_rng must be a pair of numbers, got 0."),
    ],
)
def test_bad_arguments(images, kwargs, exc, msg):
    with pytest.raises(exc) as info:
        apply_mask(images, **kwargs)
    assert msg in str(info.value)


def test_bad_images():
    with pytest.raises(ValueError, match=r"X must be a batch of images .* got shape \(3, 4\)"):
        apply_mask(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"neither axis 1 nor axis 3 has 1-4 entries"):
        apply_mask(np.zeros((2, 8, 8, 8)))
