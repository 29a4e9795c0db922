"""The C inference kernel for fully connected stacks (``dagmm/accel/_native_mlp.c``) against torch, one batch.

For the paper's KDDCUP encoder (120-60-30-10-1) and decoder (1-10-30-60-120),
one thread, ``--rows`` rows: milliseconds per batch of the torch module, of the
C kernel (called directly, as ``dagmm.accel`` calls it), and of the C kernel with no
activation (the products alone); GFLOP/s of the products (2 x multiply-adds
per row).  Then both stacks on two Python threads at once against one, the
scaling a scoring run can get from two cores.  Best of ``--rounds`` rounds,
the settings interleaved so that all see the same moments of the host.

    PYTHONPATH=src python3 benchmarks/mlp_kernel.py [--rows 16384] [--rounds 5]
"""

from __future__ import annotations

import argparse
import threading
import time

import torch
from torch import nn

from dagmm import accel
from dagmm.accel import _lib
from dagmm.models.nets import mlp

STACKS = {"encoder": [120, 60, 30, 10, 1], "decoder": [1, 10, 30, 60, 120]}


def c_stack(net: nn.Sequential, rows: int):
    """``fn(x)``: the stack by one ``mlp_forward`` call into a reused output (the chain checked by dagmm.accel)."""
    chain = accel._chain(net)
    spec, out = chain.spec(), torch.empty(rows, chain.n_out)

    def run(x: torch.Tensor) -> torch.Tensor:
        _lib.lib.mlp_forward(x.data_ptr(), x.shape[0], out.data_ptr(), spec.data_ptr(), len(chain.layers),
                             _lib.lib.TILE)
        return out

    return run


def best_ms(fn, reps: int = 10) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if not accel.fast():
        raise SystemExit("the C kernels were not built, or not as their AVX2 + FMA clone: nothing to compare")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    n = args.rows
    rows = []
    for name, widths in STACKS.items():
        seq = mlp(widths, nn.Tanh).eval()
        bare = nn.Sequential(*[m for m in seq if isinstance(m, nn.Linear)]).eval()  # same products, no tanh
        x = torch.randn(n, widths[0])
        macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        best = {"torch": float("inf"), "C": float("inf"), "C, no activation": float("inf")}
        runs = {"torch": seq, "C": c_stack(seq, n), "C, no activation": c_stack(bare, n)}
        with torch.inference_mode():
            for _ in range(args.rounds):
                for setting, fn in runs.items():
                    best[setting] = min(best[setting], best_ms(lambda: fn(x)))
        rows.append((name, best, 2 * n * macs))
    print(f"one thread, {n:,} rows per batch\n")
    print("| stack | torch ms | C ms | C, no activation ms | C GFLOP/s | C, no activation GFLOP/s |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, b, flops in rows:
        print(f"| {name} | {b['torch']:.2f} | {b['C']:.2f} | {b['C, no activation']:.2f} | "
              f"{flops / b['C'] / 1e6:.1f} | {flops / b['C, no activation'] / 1e6:.1f} |")

    nets = [[c_stack(mlp(w, nn.Tanh).eval(), n) for w in STACKS.values()] for _ in range(2)]  # own outputs
    inputs = [[torch.randn(n, w[0]) for w in STACKS.values()] for _ in range(2)]

    def work(i: int, reps: int) -> None:
        torch.set_num_threads(1)
        with torch.inference_mode():
            for _ in range(reps):
                for net, x in zip(nets[i], inputs[i]):
                    net(x)

    print("\n| round | one thread, ms per batch | two threads, ms per two batches | speed-up |\n|---|---:|---:|---:|")
    for r in range(args.rounds):
        t0 = time.perf_counter()
        work(0, 10)
        one = (time.perf_counter() - t0) / 10
        threads = [threading.Thread(target=work, args=(i, 10)) for i in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        two = (time.perf_counter() - t0) / 10
        print(f"| {r} | {one * 1e3:.2f} | {two * 1e3:.2f} | {2 * one / two:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
