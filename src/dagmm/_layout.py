"""Where the channel axis of an image batch is, decided once for nets and perturbations."""

from __future__ import annotations

from typing import Sequence

__all__ = ["channels_last"]

#: Channel counts a real image batch has (grey, grey + alpha, RGB, RGBA).
_CHANNEL_COUNTS = (1, 2, 3, 4)


def channels_last(shape: Sequence[int]) -> bool:
    """Whether a 4-D batch shape ``(N, A, B, C)`` is ``(N, H, W, C)`` rather than ``(N, C, H, W)``.

    The axis holding 1-4 entries is the channel axis.  When both ``A`` and
    ``C`` could be channels (e.g. a 3x3 RGB image) the channels-last layout
    of the seed example wins.

    Raises
    ------
    ValueError
        If ``shape`` is not 4-D or neither ``A`` nor ``C`` is a plausible channel count.
    """
    if len(shape) != 4:
        raise ValueError(f"An image batch must be 4-D, (N, H, W, C) or (N, C, H, W); got shape {tuple(shape)}.")
    if shape[3] in _CHANNEL_COUNTS:
        return True
    if shape[1] in _CHANNEL_COUNTS:
        return False
    raise ValueError(
        f"Cannot tell the channel axis of images with shape {tuple(shape)}: neither axis 1 nor axis 3 has "
        "1-4 entries. Pass images as (N, H, W, C) or (N, C, H, W)."
    )
