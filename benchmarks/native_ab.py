"""The training step with the C kernels of ``dagmm.native`` against the torch code, in one process.

Builds the paper's KDDCUP network (120 inputs), then alternates rounds of
training steps (batch 1024, fused Adam, random rows of a synthetic array) with
``dagmm.native.enabled`` on and off, so both see the same moments of a host
whose speed drifts.  Prints ms per step for each round, the median of the
per-round ratios, and the ATen operations per step of each (counted with a
``TorchDispatchMode``).

    PYTHONPATH=src python3 benchmarks/native_ab.py [--rounds 10] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dagmm import OutlierAEGMM, native
from dagmm.losses import loss_aegmm
from dagmm.training import default_adam


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
    args = ap.parse_args(argv)
    if not native.available():
        raise SystemExit("dagmm._native was not built (no C compiler at install): nothing to compare")
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.standard_normal((args.steps * 1024, 120), dtype=np.float32))
    od = OutlierAEGMM(architecture="paper").fit(X[:2048].numpy(), epochs=1, batch_size=1024, verbose=False, seed=0)
    model = od.aegmm.train()
    opt = default_adam(model.parameters(), 1e-4)

    def steps(n: int) -> float:
        perm = torch.randperm(X.shape[0])
        t0 = time.perf_counter()
        for s in range(n):
            xb = X.index_select(0, perm[s * 1024:(s + 1) * 1024])
            x_recon, z, gamma = model(xb)
            loss = loss_aegmm(xb, x_recon, z, gamma, w_energy=0.1, w_cov_diag=0.005)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / n * 1e3

    times: dict[str, list[float]] = {"torch": [], "native": []}
    ops = {}
    for name in times:
        native.enabled = name == "native"
        steps(5)  # warm-up
        with _Count() as count:
            steps(2)
        ops[name] = count.n / 2
    for r in range(args.rounds):
        for name in times:
            native.enabled = name == "native"
            times[name].append(steps(args.steps))
        print(f"round {r}: torch {times['torch'][-1]:.2f} ms, native {times['native'][-1]:.2f} ms", flush=True)
    native.enabled = True
    ratios = [a / b for a, b in zip(times["native"], times["torch"])]
    print("\n| code | ms/step (min) | ms/step (median) | ATen ops/step |\n|---|---:|---:|---:|")
    for name, v in times.items():
        print(f"| {name} | {min(v):.2f} | {statistics.median(v):.2f} | {ops[name]:.0f} |")
    print(f"\nnative / torch, median of per-round ratios: {statistics.median(ratios):.3f} "
          f"(native faster in {sum(x < 1 for x in ratios)} of {len(ratios)} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
