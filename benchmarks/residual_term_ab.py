"""A/B: ``OutlierAEGMM.score`` with and without the residual term (``error_scale_``), in one run.

Fits the default detector for one epoch on 20,000 x 121 Gaussian rows, then scores 200,000 rows five
times each way, interleaved, and prints the median times and their ratio (the term is a few multiply-adds
per column in the C kernel on top of the networks and the mixture).

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/residual_term_ab.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

import dagmm


def main(repeats: int = 5) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 121)).astype(np.float32)
    T = rng.normal(size=(200000, 121)).astype(np.float32)
    od = dagmm.OutlierAEGMM().fit(X, epochs=1, verbose=False, seed=0)
    scale = od.error_scale_
    times: dict[str, list[float]] = {"energy + residual term": [], "energy only": []}
    for _ in range(repeats):
        for name in times:
            od.error_scale_ = scale if name.startswith("energy +") else None
            t0 = time.perf_counter()
            od.score(T)
            times[name].append(time.perf_counter() - t0)
    print("| score of 200,000 x 121 | median (s) | runs (s) |\n|---|---:|---|")
    for name, v in times.items():
        print(f"| {name} | {np.median(v):.3f} | {', '.join(f'{x:.3f}' for x in v)} |")
    a, b = (np.median(v) for v in times.values())
    print(f"\nratio {a / b:.3f}")


if __name__ == "__main__":
    main()
