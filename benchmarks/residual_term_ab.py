"""A/B: ``OutlierAEGMM.score`` with the joint mixture, the full-covariance, the diagonal and no residual term.

Fits the default detector for one epoch on 20,000 x F Gaussian rows (F = 121 and 1,000 by default), then
scores 200,000 / 20,000 rows five times each way, interleaved, and prints the median times and their
ratios to the energy alone.  The diagonal term is a few multiply-adds per column in the C kernel; the
full one an F x F product per row (a layer of F outputs on top of the networks and the mixture); the
joint mixture of the code and the residual (the default where K x F^2 <= 2^20) K such products (a layer of
K F outputs).

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/residual_term_ab.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import dagmm


def run(f: int, rows: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, f)).astype(np.float32)
    T = rng.normal(size=(rows, f)).astype(np.float32)
    od = dagmm.OutlierAEGMM().fit(X, epochs=1, verbose=False, seed=0)
    fitted = {k: getattr(od, k) for k in ("error_scale_", "residual_mean_", "residual_prec_chol_",
                                          "residual_means_", "residual_prec_chols_")}
    variants = {"full covariance": {**fitted, "residual_means_": None, "residual_prec_chols_": None},
                "diagonal": {**dict.fromkeys(fitted), "error_scale_": fitted["error_scale_"]},
                "energy only": dict.fromkeys(fitted)}
    if fitted["residual_means_"] is not None:  # the default where K * F^2 is small enough
        variants = {f"joint mixture (default, K = {len(od.phi_)})": fitted, **variants}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, attrs in variants.items():
            for k, v in attrs.items():
                setattr(od, k, v)
            t0 = time.perf_counter()
            od.score(T)
            times[name].append(time.perf_counter() - t0)
    base = np.median(times["energy only"])
    print(f"\n| score of {rows:,} x {f} | median (s) | to energy only | runs (s) |\n|---|---:|---:|---|")
    for name, v in times.items():
        print(f"| {name} | {np.median(v):.3f} | {np.median(v) / base:.3f} | {', '.join(f'{x:.3f}' for x in v)} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--features", default="121,1000")
    p.add_argument("--rows", default="200000,20000")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(1)
    for f, rows in zip(map(int, a.features.split(",")), map(int, a.rows.split(","))):
        run(f, rows, a.repeats)


if __name__ == "__main__":
    main()
