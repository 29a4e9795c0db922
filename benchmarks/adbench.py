"""Default detectors against the usual baselines on ADBench tables and the 14 tasks of ``defaults.py``.

Protocol (ADBench's semi-supervised setting, Han et al. 2022): for each table and seed, a table with
more than 20,000 rows is first subsampled to 20,000 random rows (same seed); the detector is fitted on
a random half of the inliers and tested on the other half plus all outliers.  AUROC and AUPRC (average
precision, outliers positive).  Our detectors get the **raw** features (they scale their inputs
themselves); the baselines get features z-scored with the training half's mean and standard deviation
(a constant column maps to 0).  A method that fails (an exception, non-finite scores) counts as a
random ranking (AUROC 0.5, AUPRC = outlier share) and is marked ``!``.

Suites:

* ``adbench``  - the 20 classical ADBench tables in ``../shared/data/adbench/*.npz`` (``X``, ``y``);
* ``defaults`` - the 14 tasks of ``benchmarks/defaults.py`` (synthetic, scikit-learn bundled, ODDS);
* ``both``     - all 34.

Methods: ``AEGMM`` (``OutlierAEGMM()``) and ``AE`` (``OutlierAE()``) under a *candidate* setting
(``--candidate NAME``: ``default`` is the library's defaults as they are; other names in
:data:`CANDIDATES` override entries of the automatic configuration of
``dagmm.training.auto.aegmm_config`` / ``ae_config``, so a setting can be compared before it becomes the
default), and the baselines ``IForest`` (scikit-learn ``IsolationForest(random_state=seed)``), ``LOF``
(``LocalOutlierFactor(novelty=True)``), ``OCSVM`` (``OneClassSVM()`` on at most 5,000 training rows),
and, when PyOD is installed (``pip install 'dagmm[bench]'``), ``KNN``, ``ECOD`` and ``PyOD-AE``
(``AutoEncoder(random_state=seed)``), all with their library defaults.

Every (suite, table, seed, method, candidate) result is appended to a JSONL file as soon as it exists;
a rerun skips what is already there, so a killed run resumes.  ``--report`` only reads that file and
writes ``adbench[-CANDIDATE].json`` and ``.md`` under ``--out``: AUROC, AUPRC and fit time per table,
means, mean rank (AUROC, among the methods shown) and the tables where our detectors are more than
0.10 AUROC below IsolationForest.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/adbench.py --suite both --seeds 3 --baselines
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/adbench.py --suite both --seeds 3 --candidate default
    python benchmarks/adbench.py --report --suite both --seeds 3 --candidate default
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ADBENCH = ROOT.parent / "shared" / "data" / "adbench"
RESULTS = ROOT / "benchmarks" / "results"
MAX_ROWS = 20000
OCSVM_MAX_ROWS = 5000
OURS = ["AEGMM", "AE"]
BASELINES = ["IForest", "LOF", "OCSVM", "KNN", "ECOD", "PyOD-AE"]
PYOD = ("KNN", "ECOD", "PyOD-AE")
LOSS_MARGIN = 0.10

def _latent(size: Callable[[int], int]) -> dict:
    """Overrides giving the default networks a latent code of ``size(F)`` units (widths unchanged)."""
    from dagmm.training.auto import hidden_widths

    def enc(n_rows, shape):
        f = int(np.prod(shape))
        return [f, *hidden_widths(f), size(f)]

    def dec(n_rows, shape):
        f = int(np.prod(shape))
        return [size(f), *hidden_widths(f)[::-1], f]

    def dens(n_rows, shape):
        return [size(int(np.prod(shape))) + 2, 10, None]

    return {"encoder": enc, "decoder": dec, "density": dens}


def _aegmm_latent(shape) -> int:
    from dagmm.training.auto import aegmm_latent_dim

    return aegmm_latent_dim(int(np.prod(shape)))


def _steps(factor: float) -> dict:
    """Overrides scaling the automatic step budget by ``factor`` (patience stays a quarter of it)."""
    from dagmm.training.auto import schedule

    def steps(n_rows, shape):
        return max(1, int(schedule(n_rows)["max_steps"] * factor))

    return {"max_steps": steps, "patience_steps": lambda n_rows, shape: steps(n_rows, shape) // 4}


#: Candidate settings: overrides of the automatic configuration, per detector.  ``default`` is empty.
CANDIDATES: dict[str, dict[str, dict]] = {
    "default": {"AEGMM": {}, "AE": {}},
    # the defaults before issue 19 (rows of earlier runs; the library no longer has them as defaults)
    "before": {"AEGMM": {"mixture": "net"}, "AE": {"error_scale": None}},
    # the scoring mixture by EM on the training codes (z-scored, reg 1e-6), started from the net's memberships
    # the scoring mixture by k-means-started EM on the training codes, K in 1..16 by BIC
    "embic": {"AEGMM": {"mixture": "em", "em_reg": 1e-6, "mixture_components": [1, 2, 4, 8, 16]}, "AE": {}},
    # OutlierAE: each feature's squared error divided by its mean squared error on the training rows
    "msn": {"AEGMM": {}, "AE": {"error_scale": "train", "error_floor": 0.0}},
    # latent sizes: OutlierAEGMM's code twice the default (2..8), OutlierAE's half of it (F / 8, 2..8)
    "latent": {"AEGMM": _latent(lambda f: min(8, max(2, 2 * round(math.log2(max(1, f)))))),
               "AE": _latent(lambda f: min(8, max(2, math.ceil(f / 8))))},
    # the step budget (and early stopping's patience, a quarter of it) halved or doubled
    "steps-half": {"AEGMM": _steps(0.5), "AE": _steps(0.5)},
    "steps-2x": {"AEGMM": _steps(2.0), "AE": _steps(2.0)},
    # EM's diagonal regularisation (z-score units) of D / N: strong on tables with few rows per code dimension
    "reg-n": {"AEGMM": {"em_reg": lambda n_rows, shape: max(1e-6, (_aegmm_latent(shape) + 2) / n_rows)}, "AE": {}},
    # OutlierAEGMM's score before the residual term (energy of the code only): the default until 2026-12-04
    "energy-only": {"AEGMM": {"error_scale": None, "residual": "diagonal", "mixture_components": [1, 2, 4, 8, 16]},
                    "AE": {}},
    # OutlierAEGMM's score before the full-covariance residual and the mixtures up to 64 components: the diagonal
    # residual term, 1-16 components (the default of the morning of 2026-12-04)
    "diag-k16": {"AEGMM": {"residual": "diagonal", "mixture_components": [1, 2, 4, 8, 16]}, "AE": {}},
    # OutlierAEGMM's score with one global full-covariance residual term (the default of the afternoon of
    # 2026-12-04, before the joint mixture of the code and the residual)
    "global-residual": {"AEGMM": {"residual": "full"}, "AE": {}},
}


# ------------------------------------------------------------------- tables
@functools.lru_cache(maxsize=None)
def _defaults_module():
    spec = importlib.util.spec_from_file_location("_bench_defaults", ROOT / "benchmarks" / "defaults.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def adbench_tables(directory: Path = ADBENCH) -> dict[str, Callable[[int], tuple]]:
    """``name -> load(seed)`` for every ``*.npz`` in ``directory`` (empty when it is missing)."""
    def loader(path: Path) -> Callable[[int], tuple]:
        def load(seed: int) -> tuple:
            with np.load(path, allow_pickle=False) as data:
                return data["X"].astype(np.float32), data["y"].astype(np.int64).ravel()
        return load

    files = sorted(directory.glob("*.npz"), key=lambda p: (int(p.stem.split("_")[0]) if p.stem.split("_")[0].isdigit()
                                                          else 10**9, p.stem))
    return {p.stem.split("_", 1)[-1]: loader(p) for p in files}


def suite_tables(suite: str) -> dict[str, tuple[str, Callable[[int], tuple]]]:
    """``table -> (suite, load)`` for ``'adbench'``, ``'defaults'`` or ``'both'``."""
    if suite not in ("adbench", "defaults", "both"):
        raise ValueError(f"suite must be 'adbench', 'defaults' or 'both', got {suite!r}.")
    out: dict = {}
    if suite in ("adbench", "both"):
        out.update({k: ("adbench", v) for k, v in adbench_tables().items()})
    if suite in ("defaults", "both"):
        out.update({k: ("defaults", v) for k, v in _defaults_module().available_tasks(False).items()})
    return out


def subsample(X: np.ndarray, y: np.ndarray, seed: int, max_rows: int = MAX_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_rows`` random rows (uniform, without replacement, sorted), as ADBench does."""
    if len(X) <= max_rows:
        return X, y
    idx = np.sort(np.random.default_rng(seed).choice(len(X), max_rows, replace=False))
    return X[idx], y[idx]


def split(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train on a random half of the inliers; test on the other half plus all outliers (``defaults.py``'s split)."""
    return _defaults_module().split(X, y, seed)


def zscore(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets in the z-scores of the training set (float64 statistics; a constant column maps to 0)."""
    mean = X_train.astype(np.float64).mean(0)
    std = X_train.astype(np.float64).std(0)
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return ((X_train - mean) / std).astype(np.float32), ((X_test - mean) / std).astype(np.float32)


# ----------------------------------------------------------------- methods
@contextlib.contextmanager
def candidate_config(name: str) -> Iterator[None]:
    """Make the detectors' automatic configuration include the overrides of candidate ``name``."""
    from dagmm.detectors import ae as ae_mod, aegmm as aegmm_mod

    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; known: {', '.join(CANDIDATES)}.")
    over = CANDIDATES[name]
    saved = aegmm_mod.aegmm_config, ae_mod.ae_config

    def wrap(fn: Callable, extra: dict) -> Callable:
        def config(n_rows, feature_shape):
            c = fn(n_rows, feature_shape)
            c.update({k: (v(n_rows, feature_shape) if callable(v) else v) for k, v in extra.items()})
            return c
        return config

    aegmm_mod.aegmm_config = wrap(saved[0], over.get("AEGMM", {}))
    ae_mod.ae_config = wrap(saved[1], over.get("AE", {}))
    try:
        yield
    finally:
        aegmm_mod.aegmm_config, ae_mod.ae_config = saved


def fit_score(method: str, X_train: np.ndarray, X_test: np.ndarray, seed: int,
              candidate: str = "default", epochs: Optional[int] = None) -> tuple[float, float, np.ndarray]:
    """(fit seconds, score seconds, test scores with higher = more anomalous)."""
    deep = {} if epochs is None else {"epochs": epochs}
    if method in OURS:
        import dagmm

        with candidate_config(candidate):
            t0 = time.perf_counter()
            od = (dagmm.OutlierAEGMM() if method == "AEGMM" else dagmm.OutlierAE()).fit(
                X_train, verbose=False, seed=seed, **deep)
            t1 = time.perf_counter()
            s = od.score(X_test)
            s = s[1] if isinstance(s, tuple) else s
        return t1 - t0, time.perf_counter() - t1, np.asarray(s, dtype=np.float64)
    X_train, X_test = zscore(X_train, X_test)
    if method == "OCSVM" and len(X_train) > OCSVM_MAX_ROWS:
        X_train = X_train[np.random.default_rng(seed).choice(len(X_train), OCSVM_MAX_ROWS, replace=False)]
    if method == "IForest":
        from sklearn.ensemble import IsolationForest
        model, neg = IsolationForest(random_state=seed), True
    elif method == "LOF":
        from sklearn.neighbors import LocalOutlierFactor
        model, neg = LocalOutlierFactor(novelty=True), True
    elif method == "OCSVM":
        from sklearn.svm import OneClassSVM
        model, neg = OneClassSVM(), True
    elif method in PYOD:
        try:
            if method == "KNN":
                from pyod.models.knn import KNN
                model = KNN()
            elif method == "ECOD":
                from pyod.models.ecod import ECOD
                model = ECOD()
            else:
                from pyod.models.auto_encoder import AutoEncoder
                model = AutoEncoder(random_state=seed, verbose=0)
        except ImportError as err:
            raise ImportError(f"{method} needs PyOD: pip install 'dagmm[bench]' ({err})") from None
        neg = False
    else:
        raise ValueError(f"unknown method {method!r}")
    t0 = time.perf_counter()
    model.fit(X_train)
    t1 = time.perf_counter()
    s = -model.score_samples(X_test) if neg else model.decision_function(X_test)
    return t1 - t0, time.perf_counter() - t1, np.asarray(s, dtype=np.float64)


def metrics(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(AUROC, AUPRC) with outliers (``y == 1``) positive and higher scores more anomalous."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return float(roc_auc_score(y, scores)), float(average_precision_score(y, scores))


def run_one(table: str, suite: str, load: Callable, seed: int, method: str, candidate: str,
            epochs: Optional[int] = None) -> dict:
    """One result row; a failing method is a result (random ranking), not a crash."""
    X, y = subsample(*load(seed), seed)
    X_train, X_test, y_test = split(X, y, seed)
    row = {"suite": suite, "table": table, "seed": seed, "method": method,
           "candidate": candidate if method in OURS else "-", "n_train": len(X_train), "n_test": len(X_test),
           "n_features": int(X.shape[1]), "outlier_share": float(y_test.mean())}
    try:
        fit_s, score_s, scores = fit_score(method, X_train, X_test, seed, candidate, epochs)
        if not np.all(np.isfinite(scores)):
            raise ValueError("non-finite scores")
        auroc, auprc = metrics(y_test, scores)
        row.update(auroc=auroc, auprc=auprc, fit_s=fit_s, score_s=score_s, error=None)
    except Exception as err:  # noqa: BLE001 - recorded and counted as a random ranking
        row.update(auroc=0.5, auprc=float(y_test.mean()), fit_s=None, score_s=None,
                   error=f"{type(err).__name__}: {err}"[:300])
    return row


def key(row: dict) -> tuple:
    return row["suite"], row["table"], int(row["seed"]), row["method"], row["candidate"]


def read_rows(path: Path) -> list[dict]:
    """Rows of a results JSONL (a torn last line from a killed run is skipped)."""
    if not path.is_file():
        return []
    rows: dict = {}
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            rows[key(row)] = row  # a repeated key (two runs at once): the later row counts
    return list(rows.values())


# ----------------------------------------------------------------- reports
def summarise(rows: list[dict], tables: list[str], methods: list[str], seeds: list[int]) -> dict:
    """Per-table means over seeds, the means over tables, mean ranks and the losses against IForest.

    Only (table, method) cells with every seed present are used; the report names the missing ones.
    """
    cells: dict = {}
    missing = []
    for t in tables:
        cells[t] = {}
        for m in methods:
            rs = [r for r in rows if r["table"] == t and r["_label"] == m and int(r["seed"]) in seeds]
            if len({int(r["seed"]) for r in rs}) < len(seeds):
                missing.append((t, m))
                continue
            times = [r["fit_s"] for r in rs if r["fit_s"] is not None]
            cells[t][m] = {"auroc": float(np.mean([r["auroc"] for r in rs])),
                           "auroc_std": float(np.std([r["auroc"] for r in rs])),
                           "auprc": float(np.mean([r["auprc"] for r in rs])),
                           "fit_s": float(np.mean(times)) if times else None,
                           "failures": sum(r["error"] is not None for r in rs)}
    complete = [t for t in tables if len(cells[t]) == len(methods)]
    mean: dict = {}
    for m in methods:
        ranks = [1 + sum(cells[t][k]["auroc"] > cells[t][m]["auroc"] for k in methods) for t in complete]
        times = [cells[t][m]["fit_s"] for t in complete if cells[t][m]["fit_s"] is not None]
        mean[m] = {"auroc": float(np.mean([cells[t][m]["auroc"] for t in complete])) if complete else None,
                   "auprc": float(np.mean([cells[t][m]["auprc"] for t in complete])) if complete else None,
                   "mean_rank": float(np.mean(ranks)) if ranks else None,
                   "fit_s": float(np.mean(times)) if times else None}
    losses = []
    if "IForest" in methods:
        for t in complete:
            for m in methods:
                if m.split("[")[0] in OURS and cells[t]["IForest"]["auroc"] - cells[t][m]["auroc"] > LOSS_MARGIN:
                    losses.append({"table": t, "method": m, "auroc": cells[t][m]["auroc"],
                                   "iforest": cells[t]["IForest"]["auroc"]})
    return {"tables": cells, "complete": complete, "missing": missing, "mean": mean, "losses": losses}


def _label(row: dict) -> str:
    return f"{row['method']}[{row['candidate']}]" if row["method"] in OURS else row["method"]


def to_markdown(summary: dict, meta: dict, suites: dict[str, str], shapes: dict) -> str:
    methods = meta["methods"]
    lines = [f"# Detectors on ADBench tables and the defaults tasks (candidate `{meta['candidate']}`)", "",
             f"Command: `{meta['command']}`", "",
             f"{len(meta['seeds'])} seed(s) {meta['seeds']}; protocol and methods: docstring of "
             "`benchmarks/adbench.py` (fit on half the inliers, test on the other half plus all outliers, "
             f"tables above {MAX_ROWS:,} rows subsampled; ours on raw features, baselines on z-scores). "
             "`!`: failed on some seed (counted as a random ranking). Rank: 1 = best AUROC among the columns.",
             ""]
    if summary["missing"]:
        lines += [f"Incomplete (left out of the means): {len(summary['missing'])} cell(s): "
                  + ", ".join(f"{t}/{m}" for t, m in summary["missing"][:20]) + ".", ""]
    for metric, title in (("auroc", "AUROC"), ("auprc", "AUPRC"), ("fit_s", "Fit time (s)")):
        lines += [f"## {title}", "", "| table | suite | train/test | F | " + " | ".join(methods) + " |",
                  "|---|---|---|---:|" + "---:|" * len(methods)]
        for t in summary["complete"]:
            vals = []
            for m in methods:
                v = summary["tables"][t][m][metric]
                txt = "-" if v is None else (f"{v:.2f}" if metric == "fit_s" else f"{v:.3f}")
                vals.append(txt + ("!" if summary["tables"][t][m]["failures"] else ""))
            s = shapes[t]
            lines.append(f"| {t} | {suites[t]} | {s[0]}/{s[1]} | {s[2]} | " + " | ".join(vals) + " |")
        if summary["complete"]:
            lines.append("| **mean** | | | | " + " | ".join(
                "-" if summary["mean"][m][metric] is None else
                (f"**{summary['mean'][m][metric]:.2f}**" if metric == "fit_s" else f"**{summary['mean'][m][metric]:.3f}**")
                for m in methods) + " |")
        lines.append("")
    lines += ["## Summary", "", "| method | mean AUROC | mean AUPRC | mean rank | mean fit (s) |"
              + " | ".join(f" AUROC {s}" for s in meta["suite_means"]) + " |",
              "|---|---:|---:|---:|---:|" + "---:|" * len(meta["suite_means"])]
    for m in methods:
        s = summary["mean"][m]
        if s["auroc"] is None:
            continue
        per = [meta["suite_means"][k].get(m) for k in meta["suite_means"]]
        lines.append(f"| {m} | {s['auroc']:.3f} | {s['auprc']:.3f} | {s['mean_rank']:.2f} | "
                     f"{s['fit_s']:.2f} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in per) + " |")
    lines += ["", f"## Tables where our detectors are more than {LOSS_MARGIN:.2f} AUROC below IsolationForest", ""]
    if summary["losses"]:
        lines += ["| table | method | AUROC | IForest |", "|---|---|---:|---:|"]
        lines += [f"| {x['table']} | {x['method']} | {x['auroc']:.3f} | {x['iforest']:.3f} |" for x in summary["losses"]]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def report(rows: list[dict], tables: dict, seeds: list[int], candidates: list[str], methods: list[str],
           out: Path, command: str, tag: str) -> dict:
    """Write ``adbench{tag}.json`` and ``.md`` from the result rows; returns the summary."""
    wanted = set(tables)
    sel = []
    for r in rows:
        if r["table"] in wanted and (r["method"] not in OURS or r["candidate"] in candidates):
            sel.append({**r, "_label": _label(r)})
    labels = [f"{m}[{c}]" for c in candidates for m in OURS if m in methods] + [m for m in BASELINES if m in methods]
    labels = [lab for lab in labels if any(r["_label"] == lab for r in sel)]
    summary = summarise(sel, list(tables), labels, seeds)
    suites = {t: tables[t] for t in tables}
    shapes = {}
    for t in tables:
        r = next((r for r in sel if r["table"] == t), None)
        shapes[t] = (r["n_train"], r["n_test"], r["n_features"]) if r else (0, 0, 0)
    suite_means = {}
    for s in sorted(set(suites.values())):
        ts = [t for t in summary["complete"] if suites[t] == s]
        suite_means[s] = {m: float(np.mean([summary["tables"][t][m]["auroc"] for t in ts])) if ts else None
                          for m in labels}
    meta = {"command": command, "seeds": seeds, "candidate": ",".join(candidates), "methods": labels,
            "suite_means": suite_means, "cpus": os.cpu_count()}
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "summary": {k: v for k, v in summary.items() if k != "missing"},
           "missing": summary["missing"], "runs": [{k: v for k, v in r.items() if k != "_label"} for r in sel]}
    (out / f"adbench{tag}.json").write_text(json.dumps(doc, indent=1))
    md = to_markdown(summary, meta, suites, shapes)
    (out / f"adbench{tag}.md").write_text(md)
    print(md)
    return summary


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="both", help="adbench, defaults or both (default both)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds 0..N-1 (default 3)")
    parser.add_argument("--seed-list", help="comma-separated seeds to run instead of 0..N-1 (e.g. to share a run "
                        "between processes; --report with --seeds N reads them all)")
    parser.add_argument("--candidate", default="default",
                        help="candidate setting(s) of our detectors, comma-separated (default: the library's)")
    parser.add_argument("--methods", help="comma-separated subset of AEGMM,AE," + ",".join(BASELINES))
    parser.add_argument("--baselines", action="store_true", help="run the baselines only (no AEGMM/AE)")
    parser.add_argument("--tables", help="comma-separated subset of tables")
    parser.add_argument("--jsonl", default=str(RESULTS / "adbench.runs.jsonl"),
                        help="results file (appended); more files after commas are read too")
    parser.add_argument("--out", default=str(RESULTS), help="directory of the JSON + Markdown report")
    parser.add_argument("--report", action="store_true", help="only write the report from the results file")
    parser.add_argument("--epochs", type=int, help="fixed epochs for our detectors (smoke tests only)")
    parser.add_argument("--tag", help="report file suffix (default: -CANDIDATE unless it is 'default')")
    args = parser.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    tables = suite_tables(args.suite)
    if args.tables:
        names = args.tables.split(",")
        unknown = [n for n in names if n not in tables]
        if unknown:
            raise SystemExit(f"unknown table(s) {unknown}; known: {', '.join(tables)}")
        tables = {k: v for k, v in tables.items() if k in names}
    candidates = args.candidate.split(",")
    for c in candidates:
        if c not in CANDIDATES:
            raise SystemExit(f"unknown candidate {c!r}; known: {', '.join(CANDIDATES)}")
    methods = args.methods.split(",") if args.methods else (BASELINES if args.baselines else OURS + BASELINES)
    seeds = [int(v) for v in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    paths = [Path(p) for p in args.jsonl.split(",")]  # results are appended to the first; all are read
    path = paths[0]
    command = "python benchmarks/adbench.py " + " ".join(argv)
    tag = args.tag if args.tag is not None else ("" if candidates == ["default"] else "-" + "-".join(candidates))
    if not args.report:
        import torch

        torch.set_num_threads(int(os.environ.get("DAGMM_BENCH_THREADS", "1")))
        done = {key(r) for r in read_rows(path)}
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs = [(t, s, m, c) for s in seeds for t in tables for m in methods
                for c in (candidates if m in OURS else ["-"])]
        for t, s, m, c in jobs:
            suite, load = tables[t]
            if (suite, t, s, m, c) in done:
                continue
            row = run_one(t, suite, load, s, m, c if m in OURS else "default", args.epochs)
            row["candidate"] = c
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{t:>18} seed {s} {_label(row):<22} AUROC {row['auroc']:.3f} AUPRC {row['auprc']:.3f}"
                  + (f" fit {row['fit_s']:.2f}s" if row["fit_s"] is not None else f" FAILED {row['error']}"),
                  flush=True)
    rows = [r for p in paths for r in read_rows(p) if int(r["seed"]) in seeds]
    return report(rows, {t: v[0] for t, v in tables.items()}, seeds, candidates, methods, Path(args.out),
                  command, tag)


if __name__ == "__main__":
    main()
