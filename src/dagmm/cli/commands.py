"""Implementations of the ``dagmm`` subcommands; they use only the public API.

A model directory written by ``dagmm fit`` holds ``detector/`` (a detector
saved with :func:`dagmm.save_detector`) and ``preprocessing.json`` (the
:class:`~dagmm.tables.preprocess.TabularPreprocessor` and the CLI settings).
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..tables.model import DETECTOR, PREPROCESSING
from ..tables.model import load_table_model as _load_model
from ..tables.scoring import instance_scores as _instance_scores


def _check_positive(value: int, flag: str) -> None:
    if value < 1:
        raise ValueError(f"{flag} must be a positive integer, got {value}.")


# ---------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from .demo import run_demo

    _check_positive(args.samples, "--samples")
    if args.epochs is not None:
        _check_positive(args.epochs, "--epochs")
    run_demo(n_samples=args.samples, epochs=args.epochs, seed=args.seed, verbose=not args.quiet)
    return 0


# ----------------------------------------------------------------------- fit
def _new_detector(kind: str, n_gmm: int):
    import dagmm

    if kind == "aegmm":
        return dagmm.OutlierAEGMM(n_gmm=n_gmm, data_type="tabular")
    return dagmm.OutlierAE(data_type="tabular")


def _replace_dir(tmp: str, out: str) -> None:
    """Move the finished ``tmp`` to ``out``; an old model is removed only afterwards."""
    if os.path.exists(out):
        if not os.path.isfile(os.path.join(out, PREPROCESSING)):
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"Refusing to replace {out}: it exists and is not a dagmm model directory.")
        old = tempfile.mkdtemp(prefix=".dagmm-old-", dir=os.path.dirname(os.path.abspath(out)))
        os.rmdir(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _save_model(od, pre, args, n_rows: int) -> None:
    """Write ``detector/`` and ``preprocessing.json`` to a sibling directory, then move it to ``--out``."""
    import dagmm

    out = os.path.abspath(args.out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".dagmm-new-", dir=parent)
    try:
        dagmm.save_detector(od, os.path.join(tmp, DETECTOR))
        settings = {"preprocessor": pre.to_dict(), "detector": args.detector, "threshold_perc": args.threshold_perc,
                    "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                    "trained_on": os.path.basename(args.data.rstrip("/")), "n_rows": int(n_rows)}
        with open(os.path.join(tmp, PREPROCESSING), "w", encoding="utf-8") as fh:
            json.dump(settings, fh, indent=2)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, out)


def _fit_options(args) -> dict:
    from ..training.loop import default_adam

    for value, flag in ((args.epochs, "--epochs"), (args.batch_size, "--batch-size"), (args.n_gmm, "--n-gmm")):
        if value is not None:
            _check_positive(value, flag)
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be a positive number, got {args.lr}.")
    lr = args.lr
    return {"epochs": args.epochs, "batch_size": args.batch_size, "verbose": not args.quiet,
            "optimizer": None if lr is None else (lambda p: default_adam(p, lr))}


def _fit_dask(args) -> int:
    from ..distributed.files import fit_files
    from ..tables.preprocess import TabularPreprocessor

    if args.threshold_data is not None:
        raise ValueError("--threshold-data is not used with --engine dask: the threshold comes from all the rows.")
    _check_positive(args.sample_rows, "--sample-rows")
    pre = TabularPreprocessor(args.columns, args.exclude, args.label_column)
    od = _new_detector(args.detector, args.n_gmm)
    n, n_sample = fit_files(od, pre, args.data, sample_rows=args.sample_rows, seed=args.seed,
                            threshold_perc=args.threshold_perc, fit_kwargs=_fit_options(args),
                            scheduler=args.scheduler, workers=args.workers)
    _save_model(od, pre, args, n)
    what = "mixture and threshold" if args.detector == "aegmm" else "threshold"
    print(f"Trained {type(od).__name__} on a sample of {n_sample} of {n} rows; {what} from all {n} rows on Dask "
          f"(threshold {od.threshold:.6g}). Saved to {args.out}")
    return 0


def _fit_distributed(args) -> int:
    from ..distributed.ddp import fit_table

    if args.detector != "aegmm":
        raise ValueError("--distributed trains OutlierAEGMM (--detector aegmm) only.")
    if args.threshold_data is not None:
        raise ValueError("--threshold-data is not used with --distributed: the threshold comes from all ranks' rows.")
    opts = _fit_options(args)
    od, pre, n, rank, world = fit_table(args.data, columns=args.columns, exclude=args.exclude,
                                        label_column=args.label_column, n_gmm=args.n_gmm, epochs=opts["epochs"],
                                        batch_size=opts["batch_size"], lr=args.lr, seed=args.seed,
                                        global_mixture=args.global_mixture, threshold_perc=args.threshold_perc,
                                        verbose=opts["verbose"])
    if rank == 0:
        _save_model(od, pre, args, n)
        print(f"Trained {type(od).__name__} on {n} rows over {world} process(es) (DDP"
              f"{', global batch mixture' if args.global_mixture else ''}); threshold {od.threshold:.6g}. "
              f"Saved to {args.out}")
    return 0


def cmd_fit(args) -> int:
    if args.global_mixture and not args.distributed:
        raise ValueError("--global-mixture applies to --distributed training only.")
    if args.distributed and args.engine == "dask":
        raise ValueError("--distributed (torchrun) and --engine dask are two different ways to scale; pick one.")
    if args.engine == "dask":
        return _fit_dask(args)
    if args.distributed:
        return _fit_distributed(args)
    from ..tables.preprocess import TabularPreprocessor
    from ..tables.tableio import read_table

    opts = _fit_options(args)
    df = read_table(args.data)
    pre = TabularPreprocessor(args.columns, args.exclude, args.label_column).fit(df)
    X = pre.transform(df)
    od = _new_detector(args.detector, args.n_gmm)
    od.fit(X, seed=args.seed, **opts)
    X_thr = X if args.threshold_data is None else pre.transform(read_table(args.threshold_data))
    od.infer_threshold(X_thr, threshold_perc=args.threshold_perc)
    _save_model(od, pre, args, len(X))
    flagged = float((_instance_scores(od, X) > od.threshold).mean() * 100)
    print(f"Trained {type(od).__name__} on {len(X)} rows x {X.shape[1]} features; threshold "
          f"{od.threshold:.6g} ({flagged:.1f}% of the training rows above it). Saved to {args.out}")
    return 0


# --------------------------------------------------------------------- score
def cmd_score(args) -> int:
    if args.engine == "dask":
        from ..distributed.files import score_files

        _check_positive(args.chunk_rows, "--chunk-rows")
        n, n_out, outs = score_files(args.model, args.data, args.out, id_column=args.id_column,
                                     chunk_rows=args.chunk_rows, scheduler=args.scheduler, workers=args.workers)
        print(f"Scored {n} rows in {len(outs)} partition(s) on Dask: {n_out} outliers "
              f"({100.0 * n_out / max(n, 1):.2f}%). Wrote {args.out}")
        return 0
    from ..tables.scoring import write_scores

    od, pre, _ = _load_model(args.model)
    n, n_out = write_scores(od, pre, args.data, args.out, args.id_column, args.chunk_rows)
    print(f"Scored {n} rows: {n_out} outliers ({100.0 * n_out / max(n, 1):.2f}%). Wrote {args.out}")
    return 0


# ------------------------------------------------------------------ evaluate
def cmd_evaluate(args) -> int:
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    from ..tables.scoring import score_chunks

    od, pre, _ = _load_model(args.model)
    scores, labels = [], []
    for _, s, y in score_chunks(od, pre, args.data, args.chunk_rows, args.label_column):
        scores.append(s)
        labels.append(y)
    scores = np.concatenate(scores)
    raw = np.concatenate(labels)
    y = (raw.astype(str) == str(args.positive_label)).astype(int)
    if y.min() == y.max():
        raise ValueError(f"--label-column {args.label_column!r} has only one class "
                         f"(positive label {args.positive_label!r}); AUROC needs both.")
    flags = (scores > od.threshold).astype(int)
    p, r, f1, _ = precision_recall_fscore_support(y, flags, average="binary", zero_division=0)
    rows = [("rows", f"{len(y)}"), ("outliers (labelled)", f"{int(y.sum())}"), ("flagged", f"{int(flags.sum())}"),
            ("precision", f"{p:.4f}"), ("recall", f"{r:.4f}"), ("F1", f"{f1:.4f}"),
            ("AUROC", f"{roc_auc_score(y, scores):.4f}"), ("AUPRC", f"{average_precision_score(y, scores):.4f}")]
    print("| metric | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    if args.roc:
        from ..utils.visualize import plot_roc

        fig = plot_roc({type(od).__name__: {"scores": scores, "labels": y}})
        fig.savefig(args.roc, dpi=100)
        print(f"Wrote ROC curve to {args.roc}")
    return 0


# ---------------------------------------------------------------------- info
def cmd_info(args) -> int:
    import dagmm

    path = Path(args.model)
    settings = None
    if (path / PREPROCESSING).is_file():
        with open(path / PREPROCESSING, encoding="utf-8") as fh:
            settings = json.load(fh)
        path = path / DETECTOR
    if not path.is_dir():
        raise FileNotFoundError(f"No model directory at {args.model}")
    from ..persistence import read_config

    od = dagmm.load_detector(str(path))
    config = read_config(path)
    print(f"detector: {type(od).__name__}")
    print(f"saved by: dagmm {config.get('dagmm_version')}, torch {config.get('torch_version')}, "
          f"format version {config.get('format_version')}")
    print(f"threshold: {od.threshold}")
    print(f"fitted: {getattr(od, '_fitted', False)}")
    if getattr(od, "feature_shape_", None) is not None:
        print(f"feature shape: {od.feature_shape_}")
    if getattr(od, "n_gmm", None) is not None:
        print(f"components (n_gmm): {od.n_gmm}")
    net = getattr(od, "aegmm", None) or getattr(od, "ae", None)
    if net is not None:
        print("architecture:")
        print("  " + str(net).replace("\n", "\n  "))
    if settings is not None:
        pre = settings["preprocessor"]
        print(f"preprocessing: {len(pre['numeric'])} numeric column(s) standardised, "
              f"{len(pre['categorical'])} categorical column(s) one-hot encoded")
        print(f"trained on: {settings.get('trained_on')} ({settings.get('n_rows')} rows), "
              f"epochs {settings.get('epochs')}, batch {settings.get('batch_size')}, lr {settings.get('lr')}, "
              f"seed {settings.get('seed')}, threshold percentile {settings.get('threshold_perc')}")
    return 0


# -------------------------------------------------------------------- export
def cmd_export(args) -> int:
    import dagmm

    path = Path(args.model)
    settings = None
    if (path / PREPROCESSING).is_file():  # a `dagmm fit` directory: the detector part, fed encoded rows
        _, pre, settings = _load_model(args.model)
        path = path / DETECTOR
    if not path.is_dir():
        raise FileNotFoundError(f"No model directory at {args.model}")
    od = dagmm.load_detector(str(path))
    meta = {}
    if settings is not None:
        meta = {"dagmm.input_columns": pre.output_names(),
                "dagmm.input": "the rows of dagmm.tables.preprocess.TabularPreprocessor.transform (preprocessing.json)"}
    out = dagmm.export_onnx(od, args.onnx, outlier_perc=args.outlier_perc, metadata=meta)
    shape = ", ".join(str(s) for s in ("N", *od.feature_shape_))
    outputs = "instance_score, feature_score" if isinstance(od, dagmm.OutlierAE) else "instance_score"
    print(f"Wrote {out}: input x float32 ({shape}), outputs {outputs}; threshold {od.threshold}.")
    if settings is not None:
        print(f"The input is the {len(pre.output_names())} encoded columns of {PREPROCESSING} (one-hot and "
              "standardised as `dagmm score` does; listed in the model's metadata as dagmm.input_columns); "
              "the detector's own scaling is inside the graph.")
    return 0


# --------------------------------------------------------------------- serve
def cmd_serve(args) -> int:
    from ..serving import serve

    return serve(args.models, host=args.host, port=args.port, workers=args.workers, api_key_file=args.api_key_file,
                 max_rows=args.max_rows, max_body_mb=args.max_body_mb, log_level=args.log_level)


# --------------------------------------------------------------------- bench
_BENCH_SCRIPTS = {"paper": "paper_table.py", "speed": "speed.py", "defaults": "defaults.py"}


def cmd_bench(args) -> int:
    script = Path(__file__).resolve().parents[3] / "benchmarks" / _BENCH_SCRIPTS[args.which]
    if not script.is_file():
        raise FileNotFoundError(
            f"{script.name} not found: `dagmm bench` runs the scripts in benchmarks/ of a source checkout "
            "(install with `pip install -e .` from the repository)."
        )
    old_argv = sys.argv
    sys.argv = [str(script), *args.args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    finally:
        sys.argv = old_argv
    return 0
