"""Milliseconds per training step of ``dagmm.distributed.ddp.train_ddp``, under ``torchrun`` with 1 or more processes.

Times only the training loop (not the interpreters' start or the rendezvous):
``--epochs`` epochs of ``--rows`` synthetic rows with 120 features (the
paper's KDDCUP width) and the automatic architecture, global batch
``--batch-size``, global mixture on, one torch thread per process.  Rank 0
appends one JSON line to ``--out`` and prints it.

    for n in 1 2; do nice -n 10 env PYTHONPATH=src OMP_NUM_THREADS=1 python3 -m torch.distributed.run \\
        --nproc-per-node $n --master-addr 127.0.0.1 --master-port 29600 benchmarks/ddp.py; done
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--out", default="benchmarks/results/ddp.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from dagmm.distributed.ddp import init_process_group, shard_rows, train_ddp
    from dagmm.models.features import log_mse_cosine
    from dagmm.models.nets import AEGMMNet, build_aegmm_nets
    from dagmm.training.auto import aegmm_config

    rank, world = init_process_group()
    X = np.random.default_rng(0).standard_normal((args.rows, 120), dtype=np.float32)
    config = aegmm_config(args.rows, (120,))
    torch.manual_seed(0)
    model = AEGMMNet(*build_aegmm_nets(config, config["n_gmm"], 2), log_mse_cosine)
    shard = X[shard_rows(len(X), rank, world)]
    torch.distributed.barrier()
    t = time.perf_counter()
    train_ddp(model, shard, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, seed=0,
              w_energy=config["w_energy"], w_cov_diag=config["w_cov_diag"], global_mixture=True)
    seconds = time.perf_counter() - t
    steps = args.epochs * (min(len(s) for s in np.array_split(np.arange(args.rows), world)) // (args.batch_size // world))
    if rank == 0:
        row = {"processes": world, "rows": args.rows, "batch_size": args.batch_size, "steps": steps,
               "seconds": round(seconds, 2), "ms_per_step": round(1000 * seconds / steps, 1),
               "load_average": round(os.getloadavg()[0], 1)}
        print(json.dumps(row))
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
