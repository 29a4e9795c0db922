"""Fit and score through the public API, old commit against new, alternating processes (issue 18).

``ab_commits.py`` runs each tree's own benchmark scripts, which on a shared host
take tens of minutes a round; this is the short form for the must-not-regress
check: one process per tree and round, one torch thread, timing

* ``OutlierAEGMM(n_gmm=4)`` and ``OutlierAE()`` fits of 40,000 x 120 rows, 3 epochs;
* ``score`` of 300,000 x 120 rows (rows/s).

The old tree goes first in even rounds, the new one in odd rounds, so both see
the same drift of the host; the table gives the median of the per-round ratios
new / old and in how many rounds the new code was faster.  Only the public API
is used, so the same measurement runs against either tree's ``src``::

    nice -n -10 python3 benchmarks/ab_fit_score.py --old /work/wt/old --new /work/wt/new --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure() -> dict[str, float]:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import dagmm

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40_000, 120)).astype(np.float32)
    Xs = rng.normal(size=(300_000, 120)).astype(np.float32)
    makers = {"OutlierAEGMM": lambda: dagmm.OutlierAEGMM(n_gmm=4, data_type="tabular"),
              "OutlierAE": lambda: dagmm.OutlierAE(data_type="tabular")}
    out = {}
    for name, make in makers.items():
        make().fit(X[:2048], epochs=1, verbose=False, seed=0)  # warm-up: imports, kernels, allocator
        od = make()
        t0 = time.perf_counter()
        od.fit(X, epochs=3, verbose=False, seed=0)
        out[f"{name} fit 40,000 rows x 3 epochs, s"] = time.perf_counter() - t0
        od.score(Xs[:10_000])
        t0 = time.perf_counter()
        od.score(Xs)
        out[f"{name} score rows/s"] = len(Xs) / (time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, help="checkout of the old commit, its extension built")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one child process
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure()))
        return 0
    if args.old is None:
        ap.error("--old is required")
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    got: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for tag in (("old", "new") if r % 2 == 0 else ("new", "old")):
            env = dict(os.environ, PYTHONPATH=str(trees[tag] / "src"), OMP_NUM_THREADS="1")
            text = subprocess.run([sys.executable, __file__, "--measure"], env=env, check=True,
                                  capture_output=True, text=True).stdout
            got[tag].append(json.loads(text.strip().splitlines()[-1]))
            print(json.dumps({"round": r, "tree": tag, **got[tag][-1]}), flush=True)
    rows = ["| metric | old (median) | new (median) | new / old, median of per-round ratios | new faster in |",
            "|---|---:|---:|---:|---:|"]
    for metric in got["new"][0]:
        old = [m[metric] for m in got["old"]]
        new = [m[metric] for m in got["new"]]
        ratios = [b / a for a, b in zip(old, new)]
        faster = sum((x < 1) if metric.endswith(" s") else (x > 1) for x in ratios)
        rows.append(f"| {metric} | {statistics.median(old):,.2f} | {statistics.median(new):,.2f} | "
                    f"{statistics.median(ratios):.3f} | {faster} of {len(ratios)} |")
    table = "\n".join(rows)
    command = "python3 benchmarks/ab_fit_score.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n`{command}`\n\n{table}")
    if args.out:
        args.out.write_text(f"# Old commit against new (`{command}`)\n\nold: {trees['old']}, new: {trees['new']}; "
                            f"{args.rounds} alternating rounds, one torch thread, load average "
                            f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
