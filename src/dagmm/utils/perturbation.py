"""Synthetic image outliers: rectangles of noise (or zeros) pasted into images."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .._layout import channels_last
from .._validation import check_array, check_positive_int

__all__ = ["apply_mask"]

_MASK_TYPES = ("uniform", "normal", "zero")


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of numbers, got {value!r}.") from None
    return a, b


def apply_mask(
    X: Any,
    mask_size: Sequence[int] = (4, 4),
    n_masks: int = 1,
    coord: Optional[Sequence[int]] = None,
    channels: Optional[Sequence[int]] = None,
    mask_type: str = "uniform",
    noise_distr: Sequence[float] = (0, 1),
    noise_rng: Sequence[float] = (0, 1),
    clip_rng: Sequence[float] = (0, 1),
    seed: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a ``mask_size`` rectangle of noise into every image, ``n_masks`` times each.

    Parameters
    ----------
    X : array, shape (N, H, W, C), (N, C, H, W) or (N, H, W)
        Images; the channel axis is the one with 1-4 entries (channels-last
        when both could be).
    mask_size : (int, int), default (4, 4)
        Height and width of the rectangle.
    n_masks : int, default 1
        Masked copies per image.
    coord : (int, int), optional
        Top-left corner (row, column) of every rectangle; random, uniformly
        over the positions where the rectangle fits, when omitted.
    channels : sequence of int, optional
        Channels to perturb; default all (``[0, 1, 2]`` for RGB images).
    mask_type : {'uniform', 'normal', 'zero'}, default 'uniform'
        Noise ``U(noise_rng)`` or ``N(noise_distr[0], noise_distr[1]**2)`` added
        to the pixels, or the pixels set to 0.
    noise_distr : (mean, std), default (0, 1)
    noise_rng : (low, high), default (0, 1)
    clip_rng : (low, high), default (0, 1)
        The masked images are clipped to this range.
    seed : int, optional
        Seed of the corners and the noise.

    Returns
    -------
    X_masked : float32 array, shape (N * n_masks, ...) in the layout of X
        Rows ``i * n_masks`` to ``(i + 1) * n_masks - 1`` are copies of image ``i``.
    mask : float32 array, same shape
        The noise added (zero outside the rectangles); for ``'zero'`` the
        indicator of the zeroed pixels.
    """
    X = check_array(X, "X")
    if X.ndim == 3:
        last, n_ch = True, 1
        X4 = X[..., None]  # (N, H, W, 1)
    elif X.ndim == 4:
        last = channels_last(X.shape)
        X4 = X if last else X.transpose(0, 2, 3, 1)  # (N, H, W, C)
        n_ch = X4.shape[3]
    else:
        raise ValueError(f"X must be a batch of images (N, H, W, C), (N, C, H, W) or (N, H, W); got shape {X.shape}.")
    n, h, w = X4.shape[:3]
    n_masks = check_positive_int(n_masks, "n_masks")
    mh, mw = (check_positive_int(s, "mask_size") for s in mask_size)
    if mh > h or mw > w:
        raise ValueError(f"mask_size {(mh, mw)} does not fit in images of height {h} and width {w}.")
    if mask_type not in _MASK_TYPES:
        raise ValueError(f"mask_type must be one of {_MASK_TYPES}, got {mask_type!r}.")
    chans = list(range(n_ch)) if channels is None else [int(c) for c in channels]
    if not chans or any(not 0 <= c < n_ch for c in chans):
        raise ValueError(f"channels {list(channels)} must be indices in [0, {n_ch}) for images with {n_ch} channel(s).")
    lo, hi = _pair(clip_rng, "clip_rng")
    rng = np.random.default_rng(seed)
    rows = n * n_masks
    if coord is None:
        top = rng.integers(0, h - mh + 1, size=rows)
        left = rng.integers(0, w - mw + 1, size=rows)
    else:
        r0, c0 = (int(c) for c in coord)
        if not (0 <= r0 <= h - mh and 0 <= c0 <= w - mw):
            raise ValueError(f"coord {(r0, c0)} puts a {(mh, mw)} mask outside images of size {(h, w)}.")
        top, left = np.full(rows, r0), np.full(rows, c0)

    inside = np.zeros((rows, h, w, n_ch), dtype=bool)  # (N * n_masks, H, W, C)
    r_idx = top[:, None] + np.arange(mh)  # (rows, mh)
    c_idx = left[:, None] + np.arange(mw)  # (rows, mw)
    for ch in chans:
        inside[np.arange(rows)[:, None, None], r_idx[:, :, None], c_idx[:, None, :], ch] = True

    X_rep = np.repeat(X4, n_masks, axis=0)  # (N * n_masks, H, W, C)
    if mask_type == "zero":
        mask = inside.astype(np.float32)
        X_masked = np.where(inside, np.float32(0), X_rep)
    else:
        if mask_type == "uniform":
            a, b = _pair(noise_rng, "noise_rng")
            noise = rng.uniform(a, b, size=inside.shape)
        else:
            mean, std = _pair(noise_distr, "noise_distr")
            noise = rng.normal(mean, std, size=inside.shape)
        mask = np.where(inside, noise, 0.0).astype(np.float32)
        X_masked = X_rep + mask
    X_masked = np.clip(X_masked, lo, hi).astype(np.float32)

    if X.ndim == 3:
        return X_masked[..., 0], mask[..., 0]
    if not last:
        return X_masked.transpose(0, 3, 1, 2).copy(), mask.transpose(0, 3, 1, 2).copy()  # (N * n_masks, C, H, W)
    return X_masked, mask
