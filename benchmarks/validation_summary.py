"""Summarise the per-task logs of ``paper_table.py --validate`` runs as one markdown table.

    python benchmarks/validation_summary.py benchmarks/results/validation/kdd_base_validate.runs.jsonl ...

One row per (log, dataset, method, settings): the validation F1 and AUROC of every seed, their means,
and, for runs made with ``--track``, the mean validation F1 over seeds at each tracked epoch where all
seeds were tracked (first, best, last).  Only protocol-A rows are read (validation is protocol A nested
in the training half).  ``--labels`` adds, for KDDCUP, the traffic flagged per seed by label.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def rows(paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            if r["protocol"] == "A":
                out.append({**r, "log": Path(path).name})
    return out


def _settings(r: dict) -> str:
    s = r.get("settings", {})
    keys = ("scaler", "scale", "constant", "lambda2", "recon", "lr", "lr_schedule", "epochs", "score_eps", "cov_eps")
    return " ".join(f"{k}={s[k]}" for k in keys if k in s)


def summary(results: list[dict], labels: bool = False) -> str:
    groups: dict = {}
    for r in results:
        groups.setdefault((r["log"], r["dataset"], r["method"], _settings(r)), []).append(r)
    lines = ["| log | dataset | method | settings | seeds | val F1 per seed | mean F1 | val AUROC per seed | mean AUROC "
             "| tracked mean F1 (epoch: F1) |", "|---|---|---|---|---:|---|---:|---|---:|---|"]
    for (log, dataset, method, settings), rs in groups.items():
        # a task logged twice (a run resumed after it had finished) counts once: the last record per seed
        rs = sorted({r["seed"]: r for r in rs}.values(), key=lambda r: r["seed"])
        f1 = [r["f1"] for r in rs]
        auroc = [r["auroc"] for r in rs]
        track = ""
        if all("track" in r for r in rs):
            epochs = sorted(set.intersection(*[{t["epoch"] for t in r["track"] if "f1" in t} for r in rs]))
            if epochs:
                curve = {e: float(np.mean([next(t["f1"] for t in r["track"] if t["epoch"] == e) for r in rs]))
                         for e in epochs}
                best = max(curve, key=curve.get)
                track = (f"first {epochs[0]}: {curve[epochs[0]]:.3f}; best {best}: {curve[best]:.3f}; "
                         f"last {epochs[-1]}: {curve[epochs[-1]]:.3f}")
        per_seed = ", ".join(f"{r['seed']}: {v:.3f}" for r, v in zip(rs, f1))
        lines.append(f"| {log} | {dataset} | {method} | {settings} | {len(rs)} | {per_seed} | {np.mean(f1):.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in auroc)} | {np.mean(auroc):.3f} | {track} |")
    if labels:
        lines += ["", "Flagged by label (KDDCUP; flagged / rows of the validation test split), labels with at "
                      "least 100 rows:", ""]
        for r in results:
            if "flagged_by_label" in r:
                fl = {k: v for k, v in r["flagged_by_label"].items() if v[1] >= 100}
                counts = ", ".join(f"{k} {a}/{b}" for k, (a, b) in sorted(fl.items(), key=lambda kv: -kv[1][1]))
                lines.append(f"- {r['log']} {r['method']} seed {r['seed']} (F1 {r['f1']:.3f}): {counts}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+", help="<stem>.runs.jsonl files")
    ap.add_argument("--labels", action="store_true", help="list KDDCUP's flagged traffic by label")
    args = ap.parse_args(argv)
    print(summary(rows(args.logs), args.labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
