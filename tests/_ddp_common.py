"""Data, networks and settings shared by tests/_ddp_worker.py and tests/test_distributed_ddp.py."""

import numpy as np
import torch
from torch import nn

from dagmm.models.features import log_mse_cosine
from dagmm.models.nets import AEGMMNet

EPOCHS, BATCH, LR, SEED, W_E, W_C = 2, 64, 1e-3, 3, 0.1, 0.005


def data() -> np.ndarray:
    """400 rows of 5 correlated features (two rank shards of 200)."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=(400, 2))
    return np.ascontiguousarray(np.c_[base, base @ rng.normal(size=(2, 3)) + 0.1 * rng.normal(size=(400, 3))],
                                dtype=np.float32)


def nets() -> AEGMMNet:
    """A small AEGMMNet without dropout (dropout masks are random per rank), seeded."""
    torch.manual_seed(11)
    enc = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    dec = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 5))
    dens = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2), nn.Softmax(dim=1))
    return AEGMMNet(enc, dec, dens, log_mse_cosine)
