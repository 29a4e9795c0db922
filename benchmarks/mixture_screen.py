"""Screen post-hoc scoring mixtures of one trained ``OutlierAEGMM()`` per table (development aid).

Trains the default ``OutlierAEGMM()`` once per (table, seed) under the protocol of
``benchmarks/adbench.py`` and scores the test rows with several mixtures fitted to the same training
codes: the estimation network's (the paper's), EM started from the network's memberships, and EM with
``K`` components started from k-means.  Only the mixture differs, so the comparison is paired.
Results are appended to a JSONL file (resumable); ``--report`` prints the means.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/mixture_screen.py --suite both --seeds 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

KS = (1, 2, 4, 8)
ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("_adbench", ROOT / "benchmarks" / "adbench.py")
ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab)


def codes(od, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    od.aegmm.eval()
    Xs = od._checked(X)
    with torch.inference_mode():
        _, z, gamma = od.aegmm(torch.from_numpy(Xs))
    return z.double(), gamma.double()


def variants(z_tr: torch.Tensor, g_tr: torch.Tensor, seed: int) -> dict:
    from sklearn.cluster import KMeans

    from dagmm.models.mixture import fit_gmm_em

    out = {"em-net": fit_gmm_em(z_tr, g_tr)[0]}
    zs = ((z_tr - z_tr.mean(0)) / z_tr.std(0).clamp_min(1e-12)).numpy()
    for k in KS:
        if k * 20 > len(zs):
            continue
        lab = KMeans(k, n_init=3, random_state=seed).fit_predict(zs)
        out[f"em-k{k}"] = fit_gmm_em(z_tr, torch.nn.functional.one_hot(torch.from_numpy(lab.astype(np.int64)), k).double())[0]
    return out


def energies(params, z: torch.Tensor) -> np.ndarray:
    from dagmm.models.gmm import cholesky_with_jitter, precision_cholesky, sample_energy

    chol, _ = cholesky_with_jitter(params.cov, 1e-6)
    return sample_energy(z, params.phi, params.mu, precision_cholesky(chol)).numpy()


def main() -> None:
    import dagmm

    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="both")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--jsonl", default="/tmp/h19_mixture_screen.jsonl")
    p.add_argument("--report", action="store_true")
    p.add_argument("--ks", help="comma-separated components of the k-means-started EM variants (default 1,2,4,8)")
    p.add_argument("--reverse", action="store_true", help="tables in reverse order")
    p.add_argument("--codes", help="directory to save the training and test codes to (npz per table and seed)")
    a = p.parse_args()
    torch.set_num_threads(1)
    path = Path(a.jsonl)
    tables = ab.suite_tables(a.suite)
    if a.reverse:
        tables = dict(reversed(list(tables.items())))
    global KS
    if a.ks:
        KS = tuple(int(k) for k in a.ks.split(","))
    if not a.report:
        done = {(r["table"], r["seed"]) for r in ab.read_rows(path)} if path.exists() else set()
        for s in range(a.seeds):
            for t, (suite, load) in tables.items():
                if (t, s) in done:
                    continue
                X, y = ab.subsample(*load(s), s)
                X_tr, X_te, y_te = ab.split(X, y, s)
                t0 = time.perf_counter()
                od = dagmm.OutlierAEGMM().fit(X_tr, verbose=False, seed=s)
                fit_s = time.perf_counter() - t0
                row = {"table": t, "seed": s, "suite": suite, "method": "screen", "candidate": "-", "fit_s": fit_s,
                       "auroc": {}}
                row["auroc"]["net"] = ab.metrics(y_te, od.score(X_te))[0]
                z_tr, g_tr = codes(od, X_tr)
                z_te, _ = codes(od, X_te)
                if a.codes:
                    Path(a.codes).mkdir(parents=True, exist_ok=True)
                    np.savez(Path(a.codes) / f"{t}-{s}.npz", z_tr=z_tr.numpy(), g_tr=g_tr.numpy(), z_te=z_te.numpy(),
                             y_te=y_te)
                row["auroc"]["logmse"] = ab.metrics(y_te, z_te[:, -2].numpy())[0]
                try:
                    for name, params in variants(z_tr, g_tr, s).items():
                        row["auroc"][name] = ab.metrics(y_te, energies(params, z_te))[0]
                except Exception as err:  # noqa: BLE001
                    row["error"] = repr(err)[:200]
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(t, s, f"fit {fit_s:.1f}s", {k: round(v, 3) for k, v in row["auroc"].items()}, flush=True)
    rows = ab.read_rows(path)
    names = sorted({k for r in rows for k in r["auroc"]})
    common = [r for r in rows if all(k in r["auroc"] for k in names)]
    print(f"{len(common)} of {len(rows)} rows have every variant")
    for k in names:
        print(f"{k:>8}: mean AUROC {np.mean([r['auroc'][k] for r in common]):.4f}")


if __name__ == "__main__":
    main()
