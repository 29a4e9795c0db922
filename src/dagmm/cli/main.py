"""The ``dagmm`` command line (``dagmm fit|score|evaluate|info|export|bench|demo``).

Exit codes: 0 success, 1 runtime error (one line on stderr; ``--debug`` shows
the traceback), 2 usage error, 130 interrupted (Ctrl-C, SIGINT), 141 output
pipe closed early (``dagmm info MODEL | head``: no message, as other tools).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional, Sequence

__all__ = ["main"]


def _csv_list(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def _add_engine(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--engine", choices=["local", "dask"], default="local",
                   help=f"'local' (default): this process; 'dask': {what}")
    p.add_argument("--scheduler", metavar="ADDRESS", help="with --engine dask: address of a running Dask scheduler "
                   "(default: a LocalCluster on 127.0.0.1)")
    p.add_argument("--workers", type=int, default=None,
                   help="with --engine dask and no --scheduler: LocalCluster worker processes (default: Dask's choice)")


def _parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(prog="dagmm", description="Unsupervised deep outlier detection.")
    parser.add_argument("--version", action="version", version=f"dagmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="train OutlierAEGMM on synthetic data and print its quality")
    demo.add_argument("--samples", type=int, default=20000, help="rows of synthetic data (default 20000)")
    demo.add_argument("--epochs", type=int, default=None,
                      help="training epochs (default: the automatic schedule with early stopping)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(demo)

    fit = sub.add_parser("fit", help="train a detector on a CSV, Parquet or .npy file")
    fit.add_argument("data", help="training data: .csv, .csv.gz, .parquet or .npy")
    fit.add_argument("--out", required=True, help="model directory to write")
    fit.add_argument("--detector", choices=["aegmm", "ae"], default="aegmm", help="detector type (default aegmm)")
    fit.add_argument("--epochs", type=int, default=None,
                     help="training epochs (default: automatic step budget with early stopping)")
    fit.add_argument("--batch-size", type=int, default=None, help="training batch size (default: from the row count)")
    fit.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    fit.add_argument("--n-gmm", type=int, default=None,
                     help="mixture components for aegmm (default: the estimation network's from the row count, "
                          "1 to 4; the scoring mixture's chosen by BIC among 1, 2, 4, 8, 16)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument("--threshold-perc", type=float, default=95.0,
                     help="percentile of the threshold data's scores used as threshold (default 95)")
    fit.add_argument("--threshold-data", help="file to infer the threshold on (default: the training data)")
    fit.add_argument("--columns", type=_csv_list, help="comma-separated feature columns (default: all)")
    fit.add_argument("--exclude", type=_csv_list, default=[], help="comma-separated columns to leave out")
    fit.add_argument("--label-column", help="column holding labels; never used as a feature")
    fit.add_argument("--max-categories", type=int, default=None,
                     help="most distinct values of a text column (default 256, and at most half the rows); "
                          "more is refused as an id column")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_engine(fit, "DATA is a Parquet directory or glob; train on a sample (--sample-rows), the scoring mixture "
                "by EM on the sample's codes, then the threshold over every row on Dask")
    fit.add_argument("--sample-rows", type=int, default=200_000,
                     help="with --engine dask: rows sampled for training (default 200000)")
    fit.add_argument("--distributed", action="store_true",
                     help="train with torch.distributed under torchrun (DDP; gloo on CPU, NCCL on GPU); each rank "
                     "reads its shard of DATA, rank 0 saves")
    fit.add_argument("--global-mixture", action="store_true",
                     help="with --distributed: all-reduce the batch mixture statistics of the loss, so it is the "
                     "loss of the global batch")
    _add_common(fit)

    score = sub.add_parser("score", help="score a file with a saved model, chunk by chunk")
    score.add_argument("model", help="model directory written by `dagmm fit`, or a detector saved with "
                       "dagmm.save_detector (numeric columns: by the names it was fitted on, else in file order)")
    score.add_argument("data", help="data to score: .csv, .csv.gz, .parquet or .npy")
    score.add_argument("--out", required=True, help="scores file to write (.csv or .parquet); with --engine dask, "
                       "the directory to write one .parquet per input file to")
    score.add_argument("--id-column", help="column copied to the output as the row id (default: row number)")
    score.add_argument("--chunk-rows", type=int, default=100_000, help="rows read at a time (default 100000)")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_engine(score, "DATA is a Parquet directory or glob and --out a directory: one output file per input file")
    _add_common(score)

    ev = sub.add_parser("evaluate", help="precision/recall/F1/AUROC/AUPRC of a saved model on labelled data")
    ev.add_argument("model", help="model directory written by `dagmm fit` or dagmm.save_detector")
    ev.add_argument("data", help="labelled data: .csv, .csv.gz, .parquet or .npy")
    ev.add_argument("--label-column", required=True, help="column with 1 (or --positive-label) for outliers")
    ev.add_argument("--positive-label", default="1", help="label value of outliers (default 1)")
    ev.add_argument("--roc", help="write a ROC curve plot to this PNG file")
    ev.add_argument("--chunk-rows", type=int, default=100_000, help="rows read at a time (default 100000)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(ev)

    info = sub.add_parser("info", help="describe a saved model")
    info.add_argument("model", help="model directory written by `dagmm fit` or save_detector")
    _add_common(info)

    export = sub.add_parser("export", help="write a saved model as one ONNX graph (scaling, network, scores)")
    export.add_argument("model", help="model directory written by `dagmm fit` or save_detector")
    export.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    export.add_argument("--outlier-perc", type=float, default=100.0,
                        help="OutlierAE: percentage of the worst features averaged per row (default 100)")
    _add_common(export)

    serve = sub.add_parser("serve", help="serve detector directories over the Open Inference Protocol (REST)")
    serve.add_argument("models", nargs="+", metavar="DIR", help="directories from `dagmm fit` or save_detector; "
                       "each model is named after its directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1); dead ones are replaced")
    serve.add_argument("--api-key-file", help="file holding a token that requests must send as 'Authorization: "
                       "Bearer <token>'")
    serve.add_argument("--max-rows", type=int, default=100_000, help="most rows per request (default 100000)")
    serve.add_argument("--max-body-mb", type=float, default=64, help="largest request body in MiB (default 64)")
    serve.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                       help="server log level (default warning)")
    _add_common(serve)

    bench = sub.add_parser("bench", help="run a benchmark from a source checkout: paper or speed")
    bench.add_argument("which", choices=["paper", "speed", "defaults"], help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark script")
    _add_common(bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from . import commands

    handler = getattr(commands, f"cmd_{args.command}")
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except KeyboardInterrupt:
        print("dagmm: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    except BrokenPipeError:
        _silence_stdout()
        return 141  # 128 + SIGPIPE: the reader (e.g. `head`) stopped reading; not an error to report
    except Exception as err:  # one clear line, as promised in the docs
        if args.debug:
            traceback.print_exc()
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"dagmm {args.command}: error: {message}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's exit flush does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
