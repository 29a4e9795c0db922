"""Old commit against this one, in alternating rounds of subprocesses on the same noisy machine (issue 18).

Each round runs every task once on each tree -- the old one first in even rounds,
this one first in odd rounds -- so both see the same drift of a shared host,
then prints per-round ratios ``new / old`` and their median.  A task is one of
the trees' *own* benchmark scripts (each tree's ``benchmarks/`` with its own
``src`` on ``PYTHONPATH``), so the same measurement runs against each code:

* ``speed``: ``speed.py --synthetic --epochs E --big-rows R`` (training s/epoch
  of the steady epochs and scoring rows/s, every detector of the script);
* ``speed_torch``: the same with ``DAGMM_NATIVE=0`` (the torch code);
* ``native_ab``: ``native_ab.py --rounds 1 --steps S`` (ms per training step,
  ``torch`` and ``one node`` rows);
* ``native_ab_score``: ``native_ab.py --score --rounds 1 --score-rows R``.

For times lower is better, for rates higher; the "faster" column says in how
many rounds the new code was faster.

    python3 benchmarks/ab_commits.py --old /work/wt/old --rounds 4 [--threads 1] [--tasks speed,native_ab]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
TASKS = ("speed", "speed_torch", "native_ab", "native_ab_score")


def run(tree: Path, task: str, args, tmp: Path) -> dict[str, float]:
    """One task on one tree: ``{metric: value}``; times end in ``_s``/``_ms``, rates in ``/s``."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if task.startswith("speed"):
        if task == "speed_torch":
            env["DAGMM_NATIVE"] = "0"
        out = tmp / f"{task}.json"
        cmd = [sys.executable, str(tree / "benchmarks" / "speed.py"), "--synthetic", "--epochs", str(args.epochs),
               "--big-rows", str(args.big_rows), "--device", "cpu", "--out", str(out)]
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        metrics = {}
        for r in json.loads(out.read_text())["results"]:
            metrics[f"{r['name']}: train s/epoch"] = r["train"]["s_per_epoch"]
            for s in r["score"]:
                metrics[f"{r['name']}: score {s['data']} rows/s"] = s["rows_per_s"]
        return metrics
    cmd = [sys.executable, str(tree / "benchmarks" / "native_ab.py"), "--rounds", "1"]
    cmd += ["--score", "--score-rows", str(args.score_rows)] if task == "native_ab_score" else ["--steps", str(args.steps)]
    text = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    metrics = {}
    for row in ("torch", "one node", "native"):
        m = re.search(rf"^\| {row} \| ([0-9.]+) \|", text, re.M)
        if m:
            unit = "M rows/s" if task == "native_ab_score" else "ms/step"
            metrics[f"native_ab{' --score' if task == 'native_ab_score' else ''}: {row} {unit}"] = float(m.group(1))
    return metrics


def lower_is_better(metric: str) -> bool:
    return metric.endswith(("s/epoch", "ms/step"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="checkout of the old commit, its extension built")
    ap.add_argument("--new", type=Path, default=HERE, help="checkout of the new commit (default: this one)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tasks", default="speed,native_ab,native_ab_score", help=f"comma-separated, of {TASKS}")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of every run (default: torch's)")
    ap.add_argument("--epochs", type=int, default=3, help="speed.py training epochs")
    ap.add_argument("--big-rows", type=int, default=1_000_000, help="speed.py synthetic scoring rows")
    ap.add_argument("--steps", type=int, default=40, help="native_ab.py training steps")
    ap.add_argument("--score-rows", type=int, default=1_000_000, help="native_ab.py --score rows")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = ap.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        ap.error(f"unknown task(s) {bad}; choose from {TASKS}")
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    values: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for task in tasks:
                for tag in order:
                    got = run(trees[tag], task, args, Path(tmp))
                    print(json.dumps({"round": r, "tree": tag, "task": task, **got}), flush=True)
                    for metric, v in got.items():
                        values[tag].setdefault(metric, []).append(v)
            line = ", ".join(f"{m}: {values['new'][m][-1] / values['old'][m][-1]:.3f}"
                             for m in values["new"] if m in values["old"] and len(values["old"][m]) == r + 1)
            print(f"round {r} (new/old): {line}", flush=True)
    rows = ["| metric | old (median) | new (median) | new / old, median of per-round ratios | new faster in |",
            "|---|---:|---:|---:|---:|"]
    for metric, new in values["new"].items():
        old = values["old"].get(metric)
        if not old or len(old) != len(new):
            continue
        ratios = [b / a for a, b in zip(old, new)]
        faster = sum((x < 1) if lower_is_better(metric) else (x > 1) for x in ratios)
        rows.append(f"| {metric} | {statistics.median(old):,.3f} | {statistics.median(new):,.3f} | "
                    f"{statistics.median(ratios):.3f} | {faster} of {len(ratios)} |")
    command = "python3 benchmarks/ab_commits.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = "\n".join(rows)
    print(f"\n`{command}`\n\n{table}")
    if args.out:
        args.out.write_text(f"# Old commit against new (`{command}`)\n\nold: {trees['old']}, new: {trees['new']}; "
                            f"{args.rounds} alternating rounds.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
