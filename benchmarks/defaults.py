"""Out-of-the-box quality: detectors with no arguments on untuned tabular tasks.

Every detector gets the raw table (no scaling, no tuning) as a user typing
``Detector().fit(X)`` would give it.  Columns:

* ``AEGMM auto``   - ``OutlierAEGMM()`` with no arguments (the data-driven defaults of ``dagmm.training.auto``);
* ``AE auto``      - ``OutlierAE()`` with no arguments;
* ``AEGMM paper``  - the paper's KDDCUP configuration used as a default, i.e. the behaviour of
  ``OutlierAEGMM()`` before the automatic defaults: ``OutlierAEGMM(architecture='paper')``
  (nets ``F-60-30-10-1`` tanh, ``n_gmm=4``, 20 epochs, batch 64, Adam 1e-4, ``w_energy=0.1``,
  ``w_cov_diag=0.005``, no standardisation);
* ``IForest``      - ``sklearn.ensemble.IsolationForest(random_state=seed)``;
* ``LOF``          - ``sklearn.neighbors.LocalOutlierFactor(novelty=True)``;
* ``OCSVM``        - ``sklearn.svm.OneClassSVM()``, trained on at most 5,000 random training rows
  (its fit is quadratic in the rows).

Protocol (semi-supervised): for each seed, train on a random half of the inliers; test on the other
half plus all outliers.  AUROC and AUPRC (average precision, outliers positive) per task, averaged over
seeds; a method that fails (diverges, non-finite scores) counts as a random ranking (AUROC 0.5, AUPRC =
outlier share of the test set) and is marked with ``!`` in the table.  Fit time is the mean wall time of
``fit`` (scoring excluded).

Tasks (synthetic generators in ``dagmm.synthetic``; rows before the split):

=================  ======  ====  ==============================================================
name               rows    F     outliers
=================  ======  ====  ==============================================================
global-5           2000    5     ``make_typed_outliers('global')``: uniform in the enlarged bounding box
global-50          10000   50    same, 50 features
local-10           5000    10    ``'local'``: cluster members with 3x latent spread and noise
local-100          3000    100   same, 100 features
clustered-20       3000    20    ``'clustered'``: a small tight cluster off the inlier clusters
clustered-200      2000    200   same, 200 features
dependency-10      5000    10    ``'dependency'``: each feature drawn independently from the inliers'
dependency-30      50000   30    same, 50,000 rows
manifold-20        300     20    ``make_outlier_data``: one non-linear manifold, 10% uniform outliers
breast_cancer      569     30    scikit-learn bundled; malignant (212) are the outliers
wine               178     13    scikit-learn bundled; class 2 (48 rows) are the outliers
digits             1797    64    scikit-learn bundled; digit 0 (178 rows) are the outliers, 1-9 inliers
thyroid            3772    6     ODDS ``thyroid.mat`` (93 outliers), if ``../shared/data/odds`` exists
arrhythmia         452     274   ODDS ``arrhythmia.mat`` (66 outliers), if present
=================  ======  ====  ==============================================================

Synthetic tasks use 5% outliers except ``manifold-20`` (10%); each seed also redraws the synthetic data.

Usage::

    python benchmarks/defaults.py [--seeds 3] [--jobs 2] [--out benchmarks/results] [--quick]

``--fit-time 10000x50`` instead times default fits (``OutlierAEGMM()``, ``OutlierAE()``, and the paper
configuration) of one synthetic table of that shape in this process, and scoring the same rows,
reporting wall time, process CPU time and the load average, to ``defaults_fit_time.{md,json}``.

``--quick`` is a smoke mode (three small tasks, one seed, deep models with ``epochs=2``) that checks
the pipeline and the output structure in seconds; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ODDS = ROOT.parent / "shared" / "data" / "odds"
METHODS = ["AEGMM auto", "AE auto", "AEGMM paper", "IForest", "LOF", "OCSVM"]
OCSVM_MAX_ROWS = 5000


# ------------------------------------------------------------------- tasks
def _typed(kind: str, n: int, f: int) -> Callable[[int], tuple]:
    def load(seed: int):
        from dagmm.synthetic import make_typed_outliers

        return make_typed_outliers(kind, n_samples=n, n_features=f, outlier_frac=0.05, seed=seed)
    return load


def _manifold(seed: int):
    from dagmm.synthetic import make_outlier_data

    return make_outlier_data(n_samples=300, n_features=20, outlier_frac=0.1, n_clusters=1, latent_dim=2, seed=seed)


def _sklearn(name: str, outlier_class: int) -> Callable[[int], tuple]:
    def load(seed: int):
        import sklearn.datasets as ds

        data = getattr(ds, f"load_{name}")()
        return data.data.astype(np.float32), (data.target == outlier_class).astype(np.int64)
    return load


def _odds(name: str) -> Callable[[int], tuple]:
    def load(seed: int):
        from scipy.io import loadmat

        mat = loadmat(str(ODDS / f"{name}.mat"))
        return mat["X"].astype(np.float32), mat["y"].ravel().astype(np.int64)
    return load


TASKS: dict[str, Callable[[int], tuple]] = {
    "global-5": _typed("global", 2000, 5),
    "global-50": _typed("global", 10000, 50),
    "local-10": _typed("local", 5000, 10),
    "local-100": _typed("local", 3000, 100),
    "clustered-20": _typed("clustered", 3000, 20),
    "clustered-200": _typed("clustered", 2000, 200),
    "dependency-10": _typed("dependency", 5000, 10),
    "dependency-30": _typed("dependency", 50000, 30),
    "manifold-20": _manifold,
    "breast_cancer": _sklearn("breast_cancer", 0),
    "wine": _sklearn("wine", 2),
    "digits": _sklearn("digits", 0),
    "thyroid": _odds("thyroid"),
    "arrhythmia": _odds("arrhythmia"),
}
QUICK_TASKS = {
    "global-5": _typed("global", 400, 5),
    "dependency-10": _typed("dependency", 400, 10),
    "wine": _sklearn("wine", 2),
}


def available_tasks(quick: bool) -> dict:
    tasks = QUICK_TASKS if quick else TASKS
    return {k: v for k, v in tasks.items() if k not in ("thyroid", "arrhythmia") or (ODDS / f"{k}.mat").is_file()}


def split(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train on a random half of the inliers; test on the other half plus all outliers."""
    rng = np.random.default_rng(seed)
    inl = np.flatnonzero(y == 0)
    rng.shuffle(inl)
    half = len(inl) // 2
    test = np.concatenate([inl[half:], np.flatnonzero(y == 1)])
    return X[inl[:half]], X[test], y[test]


# ----------------------------------------------------------------- methods
def _fit_score(method: str, X_train: np.ndarray, X_test: np.ndarray, seed: int, quick: bool) -> tuple:
    """(fit seconds, test scores with higher = more anomalous)."""
    import dagmm

    deep = {"epochs": 2} if quick else {}
    start = time.perf_counter()
    if method == "AEGMM auto":
        od = dagmm.OutlierAEGMM().fit(X_train, verbose=False, seed=seed, **deep)
        fit_s = time.perf_counter() - start
        return fit_s, od.score(X_test)
    if method == "AE auto":
        od = dagmm.OutlierAE().fit(X_train, verbose=False, seed=seed, **deep)
        fit_s = time.perf_counter() - start
        return fit_s, od.score(X_test)[1]
    if method == "AEGMM paper":
        od = dagmm.OutlierAEGMM(architecture="paper").fit(X_train, verbose=False, seed=seed, **deep)
        fit_s = time.perf_counter() - start
        return fit_s, od.score(X_test)
    if method == "IForest":
        from sklearn.ensemble import IsolationForest

        m = IsolationForest(random_state=seed).fit(X_train)
        fit_s = time.perf_counter() - start
        return fit_s, -m.score_samples(X_test)
    if method == "LOF":
        from sklearn.neighbors import LocalOutlierFactor

        m = LocalOutlierFactor(novelty=True).fit(X_train)
        fit_s = time.perf_counter() - start
        return fit_s, -m.score_samples(X_test)
    if method == "OCSVM":
        from sklearn.svm import OneClassSVM

        if len(X_train) > OCSVM_MAX_ROWS:
            X_train = X_train[np.random.default_rng(seed).choice(len(X_train), OCSVM_MAX_ROWS, replace=False)]
        start = time.perf_counter()
        m = OneClassSVM().fit(X_train)
        fit_s = time.perf_counter() - start
        return fit_s, -m.score_samples(X_test)
    raise ValueError(f"unknown method {method!r}")


def run_job(job: tuple) -> dict:
    """One (task, seed, method): metrics, fit time, or the error."""
    task, seed, method, quick, threads = job
    import torch
    from sklearn.metrics import average_precision_score, roc_auc_score

    torch.set_num_threads(threads)
    X, y = available_tasks(quick)[task](seed)
    X_train, X_test, y_test = split(X, y, seed)
    out = {"task": task, "seed": seed, "method": method, "n_train": len(X_train), "n_test": len(X_test),
           "n_features": int(X.shape[1]), "outlier_share": float(y_test.mean())}
    try:
        fit_s, scores = _fit_score(method, X_train, X_test, seed, quick)
        if not np.all(np.isfinite(scores)):
            raise ValueError("non-finite scores")
        out.update(auroc=float(roc_auc_score(y_test, scores)), auprc=float(average_precision_score(y_test, scores)),
                   fit_s=fit_s, error=None)
    except Exception as err:  # a failing default is a result, not a crash of the benchmark
        out.update(auroc=0.5, auprc=float(y_test.mean()), fit_s=None, error=f"{type(err).__name__}: {err}"[:300])
    return out


# ----------------------------------------------------------------- reports
def summarise(rows: list[dict], tasks: list[str]) -> dict:
    table: dict = {}
    for task in tasks:
        table[task] = {}
        for m in METHODS:
            rs = [r for r in rows if r["task"] == task and r["method"] == m]
            times = [r["fit_s"] for r in rs if r["fit_s"] is not None]
            table[task][m] = {
                "auroc": float(np.mean([r["auroc"] for r in rs])), "auroc_std": float(np.std([r["auroc"] for r in rs])),
                "auprc": float(np.mean([r["auprc"] for r in rs])),
                "fit_s": float(np.mean(times)) if times else None,
                "failures": sum(r["error"] is not None for r in rs),
            }
    mean = {m: {k: float(np.mean([table[t][m][k] for t in tasks])) for k in ("auroc", "auprc")} for m in METHODS}
    for m in METHODS:
        mean[m]["wins_vs_iforest"] = int(sum(table[t][m]["auroc"] > table[t]["IForest"]["auroc"] for t in tasks))
        ranks = []
        for t in tasks:
            order = sorted(METHODS, key=lambda k: -table[t][k]["auroc"])
            ranks.append(order.index(m) + 1)
        mean[m]["mean_rank"] = float(np.mean(ranks))
    return {"tasks": table, "mean": mean}


def to_markdown(summary: dict, meta: dict) -> str:
    lines = [
        "# Default detectors on untuned tabular data",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['seeds']} seed(s); {meta['n_jobs']} process(es) x {meta['threads']} torch thread(s); "
        f"{meta['cpus']} CPU core(s) shared with other work; total {meta['total_s']:.0f} s; "
        f"torch {meta['torch']}, scikit-learn {meta['sklearn']}.",
        "Protocol: train on a random half of the inliers, test on the other half plus all outliers; raw "
        "features, no tuning. `!` marks a method that failed on some seed (counted as a random ranking). "
        "Task descriptions: docstring of `benchmarks/defaults.py`.",
        "",
    ]
    for metric, title in (("auroc", "AUROC"), ("auprc", "AUPRC"), ("fit_s", "Fit time (s)")):
        lines += [f"## {title}", "", "| task | rows (train/test) | F | " + " | ".join(METHODS) + " |",
                  "|---|---|---:|" + "---:|" * len(METHODS)]
        for task, cells in summary["tasks"].items():
            shape = meta["shapes"][task]
            vals = []
            for m in METHODS:
                v = cells[m][metric]
                txt = "-" if v is None else (f"{v:.1f}" if metric == "fit_s" else f"{v:.3f}")
                if metric == "auroc" and len(meta["seed_list"]) > 1:
                    txt += f" ± {cells[m]['auroc_std']:.3f}"
                vals.append(txt + ("!" if cells[m]["failures"] else ""))
            lines.append(f"| {task} | {shape[0]}/{shape[1]} | {shape[2]} | " + " | ".join(vals) + " |")
        if metric != "fit_s":
            lines.append("| **mean** | | | " + " | ".join(f"**{summary['mean'][m][metric]:.3f}**" for m in METHODS)
                         + " |")
        lines.append("")
    lines += ["## Summary", "", "| method | mean AUROC | mean AUPRC | mean rank (AUROC) | tasks above IForest |",
              "|---|---:|---:|---:|---:|"]
    for m in METHODS:
        s = summary["mean"][m]
        lines.append(f"| {m} | {s['auroc']:.3f} | {s['auprc']:.3f} | {s['mean_rank']:.2f} | "
                     f"{s['wins_vs_iforest']}/{len(summary['tasks'])} |")
    return "\n".join(lines) + "\n"


def fit_time(shape: str, out: Path, argv: list[str], repeats: int = 3, methods: Optional[list[str]] = None) -> dict:
    """Wall and CPU time of default fits on one ``ROWSxCOLS`` synthetic table (this process alone)."""
    import torch

    import dagmm
    from dagmm.synthetic import make_typed_outliers

    n, f = (int(v) for v in shape.lower().split("x"))
    X, y = make_typed_outliers("global", n_samples=n, n_features=f, outlier_frac=0.0, seed=0)
    dagmm.OutlierAE().fit(X[:200], epochs=1, verbose=False)  # warm-up: imports, first-call allocations
    makers = {"OutlierAEGMM()": dagmm.OutlierAEGMM, "OutlierAE()": dagmm.OutlierAE,
              "OutlierAEGMM(architecture='paper')": lambda: dagmm.OutlierAEGMM(architecture="paper")}
    names = dict(zip(["AEGMM auto", "AE auto", "AEGMM paper"], makers))
    if methods:
        makers = {names[m]: makers[names[m]] for m in methods if m in names}
    rows = []
    for name, make in makers.items():
        for r in range(repeats):
            load0 = os.getloadavg()[0]
            w0, c0 = time.perf_counter(), time.process_time()
            od = make().fit(X, verbose=False, seed=r)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            w1, c1 = time.perf_counter(), time.process_time()
            od.score(X)
            score_wall, score_cpu = time.perf_counter() - w1, time.process_time() - c1
            cfg = od.auto_config_
            steps = (cfg["early_stopping"] or {}).get("steps") or cfg["epochs_run"] * -(-n // cfg["batch_size"])
            rows.append({"detector": name, "repeat": r, "wall_s": wall, "cpu_s": cpu, "steps": steps,
                         "score_wall_s": score_wall, "score_cpu_s": score_cpu,
                         "load_before": load0, "load_after": os.getloadavg()[0]})
            print(rows[-1], flush=True)
    env = "".join(f"{k}={os.environ[k]} " for k in ("OMP_NUM_THREADS",) if k in os.environ)
    meta = {"command": env + "python benchmarks/defaults.py " + " ".join(argv), "shape": [n, f],
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__}
    lines = [f"# Default fit time on a {n:,} x {f} table", "", f"Command: `{meta['command']}`", "",
             f"torch {meta['torch']}, {meta['torch_threads']} torch thread(s), {meta['cpus']} CPU cores shared "
             "with other jobs (1-minute load average shown). CPU time is the process's user+system time: "
             "with one thread and a loaded machine it is closer to the time the fit takes on idle cores.", "",
             "| detector | repeat | optimizer steps | fit wall (s) | fit CPU (s) | score wall (s) | score CPU (s) | "
             "fit+score wall (s) | load before/after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['repeat']} | {r['steps']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{r['score_wall_s']:.1f} | {r['score_cpu_s']:.1f} | {r['wall_s'] + r['score_wall_s']:.1f} | "
                     f"{r['load_before']:.1f}/{r['load_after']:.1f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "defaults_fit_time.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    (out / "defaults_fit_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"meta": meta, "runs": rows}


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output directory")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 3 small tasks, 1 seed, 2 epochs")
    parser.add_argument("--tasks", help="comma-separated subset of tasks (default all)")
    parser.add_argument("--methods", help="comma-separated subset of methods (default all)")
    parser.add_argument("--fit-time", metavar="ROWSxCOLS", help="time default fits of one table instead")
    parser.add_argument("--repeats", type=int, default=3, help="fits per detector with --fit-time (default 3)")
    args = parser.parse_args(argv)
    if args.fit_time:
        return fit_time(args.fit_time, Path(args.out), argv if argv is not None else sys.argv[1:], args.repeats,
                        args.methods.split(",") if args.methods else None)
    import sklearn
    import torch

    seeds = list(range(1 if args.quick else args.seeds))
    tasks = available_tasks(args.quick)
    if args.tasks:
        tasks = {k: v for k, v in tasks.items() if k in args.tasks.split(",")}
    global METHODS
    if args.methods:
        METHODS = [m for m in METHODS if m in args.methods.split(",")]
    threads = 1 if args.jobs > 1 else max(1, torch.get_num_threads())
    # slowest jobs first (the paper configuration on the 50,000-row task), so parallel workers finish together
    order = {m: i for i, m in enumerate(["AEGMM paper", "AEGMM auto", "AE auto", "OCSVM", "LOF", "IForest"])}
    jobs = [(t, s, m, args.quick, threads) for t in tasks for s in seeds for m in METHODS]
    jobs.sort(key=lambda j: (j[0] != "dependency-30", order[j[2]]))
    start = time.perf_counter()
    rows: list[dict] = []
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for r in pool.map(run_job, jobs):
                rows.append(r)
                print(f"{r['task']:>14} seed {r['seed']} {r['method']:<12} AUROC {r['auroc']:.3f}"
                      + (f" fit {r['fit_s']:.1f}s" if r["fit_s"] is not None else f" FAILED {r['error']}"),
                      flush=True)
    else:
        for job in jobs:
            r = run_job(job)
            rows.append(r)
            print(f"{r['task']:>14} seed {r['seed']} {r['method']:<12} AUROC {r['auroc']:.3f}"
                  + (f" fit {r['fit_s']:.1f}s" if r["fit_s"] is not None else f" FAILED {r['error']}"), flush=True)
    total = time.perf_counter() - start
    summary = summarise(rows, list(tasks))
    first = {t: next(r for r in rows if r["task"] == t) for t in tasks}
    meta = {
        "command": "python benchmarks/defaults.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seeds": len(seeds), "seed_list": seeds, "n_jobs": args.jobs, "threads": threads, "cpus": os.cpu_count(),
        "total_s": total, "torch": torch.__version__, "sklearn": sklearn.__version__, "quick": args.quick,
        "shapes": {t: (first[t]["n_train"], first[t]["n_test"], first[t]["n_features"]) for t in tasks},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "defaults.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1))
    md = to_markdown(summary, meta)
    (out / "defaults.md").write_text(md)
    print(md)
    return {"meta": meta, "summary": summary, "runs": rows}


if __name__ == "__main__":
    main()
