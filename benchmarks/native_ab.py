"""The training step with the C kernels of ``dagmm.accel`` against the plain torch code, in one process.

Builds the paper's KDDCUP network (120 inputs), then alternates rounds of
training steps (batch 1024, the default Adam, random rows of a synthetic array) in
two ways, so both see the same moments of a host whose speed drifts:
``torch`` (``dagmm.accel.enabled`` off: the modules of ``dagmm.models`` and
``loss_aegmm``, torch's fused Adam) and ``one node`` (what ``OutlierAEGMM.fit``
uses: :func:`dagmm.accel.aegmm_loss`, the whole loss as one autograd node on
the C kernels, inside :func:`dagmm.accel.kernel_threads`, and the C Adam step of
:class:`dagmm.training.loop.LeanAdam`).  Prints ms per step for each round, the
median of the per-round ratios to ``torch``, and the ATen operations per step of
each (counted with a ``TorchDispatchMode``).

With ``--score`` it compares ``OutlierAEGMM.score`` instead (``--score-rows``
synthetic rows, the default batch size and threads), kernels off against on
(with them on, each batch is one call of ``dagmm/accel/_native_mlp.c``).

    PYTHONPATH=src python3 benchmarks/native_ab.py [--rounds 10] [--steps 40] [--score]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dagmm import OutlierAEGMM, accel
from dagmm.models.losses import loss_aegmm
from dagmm.training.loop import default_adam


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40, help="training steps per round and setting")
    ap.add_argument("--score", action="store_true", help="compare OutlierAEGMM.score instead of training steps")
    ap.add_argument("--score-rows", type=int, default=1_000_000, help="rows scored per round and setting")
    args = ap.parse_args(argv)
    if not accel.fast():
        raise SystemExit("the C kernels were not built, or not as their AVX2 + FMA clone (dagmm.accel.fast() is "
                         "False): nothing to compare")
    rng = np.random.default_rng(0)
    if args.score:
        return score_ab(rng, args)
    X = torch.from_numpy(rng.standard_normal((max(args.steps, 5) * 1024, 120), dtype=np.float32))
    od = OutlierAEGMM(architecture="paper").fit(X[:2048].numpy(), epochs=1, batch_size=1024, verbose=False, seed=0)
    model = od.aegmm.train()
    opt = default_adam(model.parameters(), 1e-4)

    def steps(n: int, one_node: bool) -> float:
        # as OutlierAEGMM.fit trains: inside kernel_threads (torch single-threaded while the layer kernels
        # run, they split the rows over torch's thread count); without the kernels it changes nothing
        perm = torch.randperm(X.shape[0])
        with accel.kernel_threads():
            t0 = time.perf_counter()
            for s in range(n):
                xb = X.index_select(0, perm[s * 1024:(s + 1) * 1024])
                if one_node:
                    loss, _ = accel.aegmm_loss(model, xb, loss_aegmm, 0.1, 0.005)
                else:
                    x_recon, z, gamma = model(xb)
                    loss = loss_aegmm(xb, x_recon, z, gamma, w_energy=0.1, w_cov_diag=0.005)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            seconds = time.perf_counter() - t0
        return seconds / n * 1e3

    variants = {"torch": False, "one node": True}
    times: dict[str, list[float]] = {name: [] for name in variants}
    ops = {}
    for name, on in variants.items():
        accel.enabled = on
        steps(5, on)  # warm-up
        with _Count() as count:
            steps(2, on)
        ops[name] = count.n / 2
    for r in range(args.rounds):
        for name, on in variants.items():
            accel.enabled = on
            times[name].append(steps(args.steps, on))
        print(f"round {r}: " + ", ".join(f"{name} {v[-1]:.2f} ms" for name, v in times.items()), flush=True)
    accel.enabled = True
    _table(["ms/step (min)", "ms/step (median)", "ATen ops/step"],
           {name: [f"{min(v):.2f}", f"{statistics.median(v):.2f}", f"{ops[name]:.0f}",
                   _against(v, times["torch"], higher_is_faster=False)] for name, v in times.items()})
    return 0


def _table(columns: list[str], rows: dict[str, list[str]]) -> None:
    """Print a Markdown table: the code's name, ``columns``, then the ratio column of :func:`_against`."""
    columns = ["code", *columns, "to torch, median of per-round ratios"]
    print("\n| " + " | ".join(columns) + " |\n|---|" + "---:|" * (len(columns) - 1))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


def _against(values: list[float], ref: list[float], higher_is_faster: bool) -> str:
    """The median of the per-round ratios to ``ref``, and in how many rounds ``values`` was faster."""
    ratios = [a / b for a, b in zip(values, ref)]
    faster = sum((x > 1) if higher_is_faster else (x < 1) for x in ratios)
    return f"{statistics.median(ratios):.3f} (faster in {faster} of {len(ratios)})"


def score_ab(rng: np.random.Generator, args) -> int:
    """Rows per second of ``OutlierAEGMM.score``, kernels off and on, in alternating rounds."""
    X = rng.standard_normal((args.score_rows, 120), dtype=np.float32)
    od = OutlierAEGMM(architecture="paper").fit(X[:4096], epochs=1, batch_size=1024, verbose=False, seed=0)
    rates: dict[str, list[float]] = {"torch": [], "native": []}
    for r in range(args.rounds + 1):  # round 0 warms up and is not reported
        for name in rates:
            accel.enabled = name == "native"
            t0 = time.perf_counter()
            od.score(X)
            if r:
                rates[name].append(len(X) / (time.perf_counter() - t0))
        if r:
            line = ", ".join(f"{k} {v[-1] / 1e6:.2f} M rows/s" for k, v in rates.items())
            print(f"round {r - 1}: {line}", flush=True)
    accel.enabled = True
    _table(["M rows/s (max)", "M rows/s (median)"],
           {name: [f"{max(v) / 1e6:.2f}", f"{statistics.median(v) / 1e6:.2f}",
                   _against(v, rates["torch"], higher_is_faster=True)] for name, v in rates.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
