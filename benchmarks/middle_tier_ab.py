"""Was the Python middle tier worth keeping without the C kernels?  A/B in one process (issue 18).

Runs against the pre-layout commit aeebcce (``PYTHONPATH=/work/wt/old/src``), whose
flat modules still hold the Python middle tier between the plain modules and the
C kernels: ``dagmm.fused`` (hand-written stack forward/backward, ``tanh`` as
``2 sigmoid(2x) - 1``, buffers reused while scoring), ``dagmm.features._ReconPair``
(closed-form feature gradient) and ``dagmm.objective._MixtureObjective``
(closed-form mixture gradient).  With the C kernels off (``DAGMM_NATIVE=0`` as
``dagmm.native.enabled = False``) it alternates rounds of

* ``middle tier``: the code as it was (what ran with ``DAGMM_NATIVE=0``);
* ``plain``: every piece replaced by the plain modules and formulas that
  ``dagmm.models`` now holds (``module(x)``, the features by their formulas,
  the objective composed from ``dagmm.gmm`` under autograd);
* ``plain but X``: plain except the one middle-tier piece X kept,

for the training step of the paper's KDDCUP network (batch 1024, default Adam)
and for ``OutlierAEGMM.score`` of 1 M rows (stacks and features only: the
objective is not part of scoring).  Prints ms per step / M rows per second per
round and the median of the per-round ratios to ``middle tier``.

    PYTHONPATH=/work/wt/old/src python3 benchmarks/middle_tier_ab.py [--rounds 8] [--steps 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

from dagmm import OutlierAEGMM, features, fused, gmm, native, objective
from dagmm.losses import loss_aegmm
from dagmm.training import default_adam


def plain_pair(x: torch.Tensor, r: torch.Tensor, first: str) -> torch.Tensor:
    """The two reconstruction features by their formulas (as dagmm.models.features computes them now)."""
    x, r = x.flatten(1), r.flatten(1)  # (N, F)
    x_norm, r_norm = torch.linalg.vector_norm(x, dim=1), torch.linalg.vector_norm(r, dim=1)
    cos = (x * r).sum(1) / (x_norm * r_norm).clamp_min(features.RECON_EPS)
    if first == "relative":
        head = torch.linalg.vector_norm(r - x, dim=1) / x_norm.clamp_min(features.RECON_EPS)
    else:
        head = torch.log((r - x).square().mean(1) + features.LOG_MSE_EPS)
    return torch.stack([head, cos], 1)  # (N, 2)


def plain_objective(z, gamma, w_energy, w_cov_diag, cov_eps=1e-6):
    """The mixture terms composed from dagmm.gmm under autograd (as dagmm.models.losses computes them now)."""
    p = gmm.batch_gmm_params(z, gamma)
    chol, eps = gmm.cholesky_with_jitter(p.cov, cov_eps)
    energy = gmm.sample_energy(z, p.phi, p.mu, gmm.precision_cholesky(chol)).mean()
    return w_energy * energy + w_cov_diag * gmm.cov_diag_penalty(p.cov, eps)


PIECES = ("stacks", "features", "objective")


@contextlib.contextmanager
def tiers(keep: set):
    """Replace every middle-tier piece not in ``keep`` by its plain counterpart."""
    saved = (fused.plan, features._recon_pair, objective.mixture_objective)
    import dagmm.losses as losses

    if "stacks" not in keep:
        fused.plan = lambda module: None  # fused.run then calls module(x)
    if "features" not in keep:
        features._recon_pair = plain_pair
    if "objective" not in keep:
        losses.mixture_objective = plain_objective
    try:
        yield
    finally:
        fused.plan, features._recon_pair = saved[0], saved[1]
        losses.mixture_objective = saved[2]


VARIANTS = {"middle tier": set(PIECES), "plain": set(), **{f"plain but {p}": {p} for p in PIECES}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--score-rows", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    native.enabled = False
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.standard_normal((max(args.steps, 5) * 1024, 120), dtype=np.float32))
    od = OutlierAEGMM(architecture="paper").fit(X[:2048].numpy(), epochs=1, batch_size=1024, verbose=False, seed=0)
    model = od.aegmm.train()
    opt = default_adam(model.parameters(), 1e-4)

    def steps(n: int) -> float:
        perm = torch.randperm(X.shape[0])
        model.train()
        t0 = time.perf_counter()
        for s in range(n):
            xb = X.index_select(0, perm[s * 1024:(s + 1) * 1024])
            x_recon, z, gamma = model(xb)
            loss = loss_aegmm(xb, x_recon, z, gamma, w_energy=0.1, w_cov_diag=0.005)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / n * 1e3

    Xs = rng.standard_normal((args.score_rows, 120), dtype=np.float32)

    def score() -> float:
        t0 = time.perf_counter()
        od.score(Xs)
        return len(Xs) / (time.perf_counter() - t0) / 1e6

    train_t = {k: [] for k in VARIANTS}
    score_r = {k: [] for k in ("middle tier", "plain", "plain but stacks", "plain but features")}
    for name, keep in VARIANTS.items():  # warm-up
        with tiers(keep):
            steps(5)
            if name in score_r:
                score()
    for r in range(args.rounds):
        for name, keep in VARIANTS.items():
            with tiers(keep):
                train_t[name].append(steps(args.steps))
                if name in score_r:
                    score_r[name].append(score())
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in train_t.items()), flush=True)
        print("         " + ", ".join(f"{k} {v[-1]:.2f} M rows/s" for k, v in score_r.items()), flush=True)
    print(f"\nTraining step, KDDCUP paper net, batch 1024, DAGMM_NATIVE=0, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds of {args.steps} steps\n")
    print("| code | ms/step (median) | to middle tier, median of per-round ratios |\n|---|---:|---:|")
    for k, v in train_t.items():
        print(f"| {k} | {statistics.median(v):.2f} | {_ratio(v, train_t['middle tier'], False)} |")
    print(f"\nOutlierAEGMM.score, {args.score_rows:,} rows, DAGMM_NATIVE=0\n")
    print("| code | M rows/s (median) | to middle tier, median of per-round ratios |\n|---|---:|---:|")
    for k, v in score_r.items():
        print(f"| {k} | {statistics.median(v):.2f} | {_ratio(v, score_r['middle tier'], True)} |")
    return 0


def _ratio(values, ref, higher_is_faster):
    ratios = [a / b for a, b in zip(values, ref)]
    faster = sum((x > 1) if higher_is_faster else (x < 1) for x in ratios)
    return f"{statistics.median(ratios):.3f} (faster in {faster} of {len(ratios)})"


if __name__ == "__main__":
    raise SystemExit(main())
