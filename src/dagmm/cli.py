"""The ``dagmm`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dagmm", description="Unsupervised deep outlier detection.")
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"dagmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train OutlierAEGMM on synthetic data and print its quality")
    demo.add_argument("--samples", type=int, default=20000, help="rows of synthetic data (default 20000)")
    demo.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(n_samples=args.samples, epochs=args.epochs, seed=args.seed, verbose=not args.quiet)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
