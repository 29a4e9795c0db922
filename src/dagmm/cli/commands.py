"""Implementations of the ``dagmm`` subcommands; they use only the public API.

A model directory written by ``dagmm fit`` holds ``detector/`` (a detector
saved with :func:`dagmm.save_detector`) and ``preprocessing.json`` (the
:class:`~dagmm.tables.preprocess.TabularPreprocessor` and the CLI settings).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
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


def _check_out_dir(out: str) -> None:
    """Refuse, before any training, an ``--out`` that ``dagmm fit`` could not replace."""
    if os.path.lexists(out):
        if os.path.islink(out) or not os.path.isdir(out):
            raise FileExistsError(f"--out {out} exists and is not a directory; choose another path or delete it.")
        if not os.path.isfile(os.path.join(out, PREPROCESSING)) and any(os.scandir(out)):
            raise FileExistsError(f"--out {out} exists and is not a dagmm model directory (no {PREPROCESSING}); "
                                  "choose another path or delete it.")
    parent = os.path.dirname(os.path.abspath(out))
    probe = parent
    while not os.path.exists(probe):  # the nearest existing folder must let us create the model there
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: cannot write in {probe}.")


def _check_settings(args) -> None:
    """The checks of the training settings and of ``--out``, shared by every way to fit."""
    for value, flag in ((args.epochs, "--epochs"), (args.batch_size, "--batch-size"), (args.n_gmm, "--n-gmm"),
                        (getattr(args, "max_categories", None), "--max-categories")):
        if value is not None:
            _check_positive(value, flag)
    if args.lr is not None and not (args.lr > 0 and np.isfinite(args.lr)):
        raise ValueError(f"--lr must be a positive number, got {args.lr}.")
    if not (0.0 <= args.threshold_perc <= 100.0):
        raise ValueError(f"--threshold-perc must be a percentile in [0, 100], got {args.threshold_perc}.")


def _check_fit_args(args) -> None:
    """Every check that does not need the data, before anything is read or trained."""
    from ..tables.tableio import table_format

    _check_settings(args)
    for path, flag in ((args.data, "data"), (args.threshold_data, "--threshold-data")):
        if path is None:
            continue
        table_format(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{flag + ': ' if flag.startswith('--') else ''}No such file: {path}")
    _check_out_dir(args.out)


def _read_training_table(path: str) -> Any:
    """The training table, its text columns read as text (so the categories are the file's own strings)."""
    from ..tables.preprocess import TabularPreprocessor
    from ..tables.tableio import read_table, table_format

    df = read_table(path)
    text = [c for c in df.columns if TabularPreprocessor.is_categorical(df[c])]
    if text and table_format(path) == "csv":
        df = read_table(path, str_columns=text)
    return df


def _schedule(od: Any) -> dict:
    """The schedule that ran, from the detector's ``auto_config_``."""
    cfg = getattr(od, "auto_config_", None) or {}
    return {k: cfg.get(k) for k in ("epochs", "epochs_run", "batch_size", "lr", "early_stopping")}


def _save_model(od, pre, args, n_rows: int) -> None:
    """Stage ``detector/`` and ``preprocessing.json`` beside ``--out``, then swap it in.

    A kill at any instant leaves the old or the new model (``persistence.staged_directory``).
    """
    import dagmm
    from ..persistence import staged_directory

    ran = _schedule(od)
    if args.lr is not None:
        ran["lr"] = args.lr
    settings = {"preprocessor": pre.to_dict(), "detector": args.detector, "threshold_perc": args.threshold_perc,
                "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                "schedule": ran, "trained_on": os.path.basename(str(args.data).rstrip("/")), "n_rows": int(n_rows)}
    with staged_directory(args.out, marker=PREPROCESSING, what="a dagmm model directory") as tmp:
        dagmm.save_detector(od, tmp / DETECTOR)
        with open(tmp / PREPROCESSING, "w", encoding="utf-8") as fh:
            json.dump(settings, fh, indent=2, allow_nan=False)


def _fit_options(args) -> dict:
    from ..training.loop import default_adam

    _check_settings(args)
    _check_out_dir(args.out)
    lr = args.lr
    return {"epochs": args.epochs, "batch_size": args.batch_size, "verbose": not args.quiet,
            "optimizer": None if lr is None else (lambda p: default_adam(p, lr))}


def _fit_dask(args) -> int:
    from ..distributed.files import fit_files
    from ..tables.preprocess import TabularPreprocessor

    if args.threshold_data is not None:
        raise ValueError("--threshold-data is not used with --engine dask: the threshold comes from all the rows.")
    _check_positive(args.sample_rows, "--sample-rows")
    from ..tables.preprocess import MAX_CATEGORIES

    pre = TabularPreprocessor(args.columns, args.exclude, args.label_column,
                              MAX_CATEGORIES if args.max_categories is None else args.max_categories)
    od = _new_detector(args.detector, args.n_gmm)
    n, n_sample = fit_files(od, pre, args.data, sample_rows=args.sample_rows, seed=args.seed,
                            threshold_perc=args.threshold_perc, fit_kwargs=_fit_options(args),
                            scheduler=args.scheduler, workers=args.workers)
    _save_model(od, pre, args, n)
    em = (od.auto_config_ or {}).get("mixture_fit")
    what = "threshold" if args.detector != "aegmm" or em else "mixture and threshold"
    mixture = f"; scoring mixture by EM on the sample's codes ({em['n_components']} component(s))" if em else ""
    print(f"Trained {type(od).__name__} on a sample of {n_sample} of {n} rows{mixture}; {what} from all {n} rows "
          f"on Dask (threshold {od.threshold:.6g}). Saved to {args.out}")
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
    from ..tables.preprocess import MAX_CATEGORIES, TabularPreprocessor
    from ..tables.tableio import read_table
    from ..training.loop import default_adam

    _check_fit_args(args)
    df = _read_training_table(args.data)
    pre = TabularPreprocessor(args.columns, args.exclude, args.label_column,
                              MAX_CATEGORIES if args.max_categories is None else args.max_categories).fit(df)
    X = pre.transform(df)
    X_thr = X
    if args.threshold_data is not None:  # read and checked before training, not after it
        X_thr = pre.transform(read_table(args.threshold_data, str_columns=pre.categorical_columns))
    od = _new_detector(args.detector, args.n_gmm)
    lr = args.lr
    od.fit(X, epochs=args.epochs, batch_size=args.batch_size, verbose=not args.quiet, seed=args.seed,
           optimizer=None if lr is None else (lambda p: default_adam(p, lr)))
    od.infer_threshold(X_thr, threshold_perc=args.threshold_perc)

    _save_model(od, pre, args, len(X))
    flagged = float((_instance_scores(od, X) > od.threshold).mean() * 100)
    print(f"Trained {type(od).__name__} on {len(X)} rows x {X.shape[1]} features; threshold "
          f"{od.threshold:.6g} ({flagged:.1f}% of the training rows above it). Saved to {args.out}")
    return 0


# --------------------------------------------------------------------- score
def _progress(args) -> bool:
    """A progress bar on a terminal, unless --quiet; never in logs and pipes (errors stay one line)."""
    return not args.quiet and sys.stderr.isatty()


def cmd_score(args) -> int:
    if args.engine == "dask":
        from ..distributed.files import score_files

        _check_positive(args.chunk_rows, "--chunk-rows")
        n, n_out, outs = score_files(args.model, args.data, args.out, id_column=args.id_column,
                                     chunk_rows=args.chunk_rows, scheduler=args.scheduler, workers=args.workers)
        print(f"Scored {n} rows in {len(outs)} partition(s) on Dask: {n_out} outliers "
              f"({100.0 * n_out / max(n, 1):.2f}%). Wrote {args.out}")
        return 0
    from ..tables.model import load_scoring_model
    from ..tables.scoring import write_scores

    _check_positive(args.chunk_rows, "--chunk-rows")
    od, pre, _ = load_scoring_model(args.model, skip=[args.id_column] if args.id_column else [])
    n, n_out = write_scores(od, pre, args.data, args.out, args.id_column, args.chunk_rows, progress=_progress(args))
    print(f"Scored {n} rows: {n_out} outliers ({100.0 * n_out / max(n, 1):.2f}%). Wrote {args.out}")
    return 0


# ------------------------------------------------------------------ evaluate
def cmd_evaluate(args) -> int:
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    from ..tables.model import load_scoring_model
    from ..tables.scoring import score_chunks

    _check_positive(args.chunk_rows, "--chunk-rows")
    od, pre, _ = load_scoring_model(args.model, skip=[args.label_column])
    scores, labels = [], []
    for _, s, y in score_chunks(od, pre, args.data, args.chunk_rows, args.label_column, progress=_progress(args)):
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

    from ..persistence import read_config
    from ..tables.model import is_table_model

    path = Path(args.model)
    settings = None
    if is_table_model(path):
        with open(path / PREPROCESSING, encoding="utf-8") as fh:
            settings = json.load(fh)
        path = path / DETECTOR
    # a missing directory is reported (or, after a killed save, put back) by load_detector

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
              f"seed {settings.get('seed')}, threshold percentile {settings.get('threshold_perc')}")
    ran = _schedule(od)
    if settings is not None:  # what ran; files of dagmm 0.1 hold only what was asked for
        ran = {**ran, **{k: v for k, v in (settings.get("schedule") or {}).items() if v is not None}}
        for key, asked in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr")):
            if ran.get(key) is None:
                ran[key] = settings.get(asked)
    if any(v is not None for v in ran.values()):
        epochs = ran.get("epochs")
        run = ran.get("epochs_run")
        text = f"{run} of {epochs}" if run is not None and epochs is not None and run != epochs else f"{epochs}"
        stop = " (stopped early)" if ran.get("early_stopping") else ""
        lr = "the optimizer's own" if ran.get("lr") is None else f"{ran['lr']:g}"
        print(f"training: epochs {text}{stop}, batch {ran.get('batch_size')}, lr {lr}")
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
