"""Screen how ``OutlierAE()`` turns per-feature errors into one score, on one trained net per table (development aid).

Trains the default ``OutlierAE()`` once per (table, seed) under the protocol of ``benchmarks/adbench.py``
and scores the test rows with: the mean squared error in z-score units (``mse``, the score of earlier
versions), and the mean of squared errors divided by each feature's mean squared error on the training
rows (``msn``), floored at ``floor`` times the mean over features.  Paired: only the score differs.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/error_screen.py --suite both --seeds 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("_adbench", ROOT / "benchmarks" / "adbench.py")
ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab)


def main() -> None:
    import dagmm

    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="both")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--jsonl", default="/tmp/h19_error_screen.jsonl")
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    path = Path(a.jsonl)
    tables = ab.suite_tables(a.suite)
    if not a.report:
        done = {(r["table"], r["seed"]) for r in ab.read_rows(path)} if path.exists() else set()
        for s in range(a.seeds):
            for t, (suite, load) in tables.items():
                if (t, s) in done:
                    continue
                X, y = ab.subsample(*load(s), s)
                X_tr, X_te, y_te = ab.split(X, y, s)
                t0 = time.perf_counter()
                od = dagmm.OutlierAE().fit(X_tr, verbose=False, seed=s)
                fit_s = time.perf_counter() - t0
                f_tr, _ = od.score(X_tr)
                f_te, i_te = od.score(X_te)
                row = {"table": t, "seed": s, "suite": suite, "method": "screen", "candidate": "-", "fit_s": fit_s,
                       "auroc": {"mse": ab.metrics(y_te, i_te)[0]}}
                m = f_tr.astype(np.float64).mean(0)  # (F,)
                for floor in (0.0, 0.01, 0.1):
                    scale = np.maximum(m, max(floor * m.mean(), 1e-12))
                    row["auroc"][f"msn{floor}"] = ab.metrics(y_te, (f_te / scale).mean(1))[0]
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(t, s, f"fit {fit_s:.1f}s", {k: round(v, 3) for k, v in row["auroc"].items()}, flush=True)
    rows = ab.read_rows(path)
    names = sorted({k for r in rows for k in r["auroc"]})
    print(f"{len(rows)} rows")
    for k in names:
        print(f"{k:>8}: mean AUROC {np.mean([r['auroc'][k] for r in rows]):.4f}")


if __name__ == "__main__":
    main()
