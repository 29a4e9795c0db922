"""Run by tests/test_distributed_ddp.py under ``torchrun --nproc-per-node 2`` (not a test module itself).

``python -m torch.distributed.run ... tests/_ddp_worker.py OUT_DIR``: trains a dropout-free AEGMMNet with
``dagmm.distributed.ddp.train_ddp`` (global mixture on and off), then runs ``dagmm fit --distributed
--global-mixture`` on OUT_DIR/train.parquet in the same process group; rank 0 writes the weights.
"""

import sys

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _ddp_common import EPOCHS, BATCH, LR, SEED, W_E, W_C, data, nets  # noqa: E402

from dagmm.cli import main  # noqa: E402
from dagmm.distributed.ddp import init_process_group, shard_rows, train_ddp  # noqa: E402


def run(out: str) -> None:
    rank, world = init_process_group()
    X = data()
    shard = X[shard_rows(len(X), rank, world)]
    weights = {}
    for mode in (True, False):
        model = nets()
        hist = train_ddp(model, shard, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=SEED, w_energy=W_E,
                         w_cov_diag=W_C, global_mixture=mode)
        for k, v in model.state_dict().items():
            weights[f"{mode}/{k}"] = v.numpy()
        weights[f"{mode}/loss"] = np.array([h["loss"] for h in hist])
    if rank == 0:
        np.savez(f"{out}/ddp.npz", **weights)
    code = main(["fit", f"{out}/train.parquet", "--distributed", "--global-mixture", "--epochs", "2",
                 "--batch-size", "128", "--exclude", "id", "--quiet", "--out", f"{out}/model"])
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1])
