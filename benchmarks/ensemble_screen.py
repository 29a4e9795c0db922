"""Screen ensembles and reconstruction features of the default detectors (development aid, issue 19).

For each (table, split seed) of ``benchmarks/adbench.py``'s protocol, trains ``--members`` default
``OutlierAEGMM()`` and ``OutlierAE()`` fits on the same training half (member ``m`` uses seed
``split_seed + 1000 * m``; member 0 is the run ``adbench.py`` makes) and saves, per member, the scores
of the training and test rows under several scorings of the same nets:

* ``AEGMM``  - the default energy (EM mixture of ``[latent, log mse, cosine]``, K by BIC);
* ``AEGMM-s`` - the same mixture fitted to ``[latent, log scaled mse, cosine]``, where the scaled mse
  divides each feature's squared error by its mean on the training rows (``OutlierAE``'s unit);
* ``AE``     - the default ``OutlierAE()`` score.

``--report`` combines members: ``ens-rank`` averages each member's test scores turned into their rank
among that member's training scores (a score users can threshold on training data), ``ens-mean``
averages the raw scores.  Everything is from the training half only except the AUROC itself.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/ensemble_screen.py --suite both --seeds 2 --members 3
    python benchmarks/ensemble_screen.py --report --members 3 > benchmarks/results/screens/ensemble_screen.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("_adbench", ROOT / "benchmarks" / "adbench.py")
ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab)
SCORES = Path("/tmp/dagmm-ensemble-screen")  # ~50 MB of per-member scores: not committed


def _scaled_codes(od, X: np.ndarray, scale: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray]:
    """Codes with the log mean squared error in units of the training error, and the per-feature errors."""
    from dagmm.models.features import LOG_MSE_EPS

    od.aegmm.eval()
    xs = torch.from_numpy(od._checked(X))
    with torch.inference_mode():
        x_recon, z, _ = od.aegmm(xs)
    err = (xs - x_recon).double().square().numpy()  # (N, F)
    if scale is None:
        scale = err.mean(0)
        scale = np.maximum(scale, 0.01 * scale.mean())
    z = z.double().clone()
    z[:, -2] = torch.from_numpy(np.log((err / scale).mean(1) + LOG_MSE_EPS))
    return z, scale


def aegmm_scores(od, X_train: np.ndarray, X_test: np.ndarray, seed: int) -> dict:
    from dagmm.models.gmm import sample_energy
    from dagmm.models.mixture import select_mixture
    from dagmm.models.gmm import cholesky_with_jitter, precision_cholesky

    out = {"AEGMM": (od.score(X_train), od.score(X_test))}
    z_tr, scale = _scaled_codes(od, X_train, None)
    z_te, _ = _scaled_codes(od, X_test, scale)
    params, _ = select_mixture(z_tr, (1, 2, 4, 8, 16), reg=1e-6, seed=seed)
    chol, _ = cholesky_with_jitter(params.cov, 1e-6)
    prec = precision_cholesky(chol)
    out["AEGMM-s"] = tuple(sample_energy(z, params.phi, params.mu, prec).numpy() for z in (z_tr, z_te))
    return out


def run(tables: dict, seeds: list[int], members: int, out: Path) -> None:
    import dagmm

    out.mkdir(parents=True, exist_ok=True)
    for name, (suite, load) in tables.items():
        for seed in seeds:
            X, y = ab.subsample(*load(seed), seed)
            X_train, X_test, y_test = ab.split(X, y, seed)
            for m in range(members):
                path = out / f"{name}.s{seed}.m{m}.npz"
                if path.exists():
                    continue
                fs = seed + 1000 * m
                t0 = time.perf_counter()
                od = dagmm.OutlierAEGMM().fit(X_train, verbose=False, seed=fs)
                t1 = time.perf_counter()
                res = aegmm_scores(od, X_train, X_test, fs)
                t2 = time.perf_counter()
                ae = dagmm.OutlierAE().fit(X_train, verbose=False, seed=fs)
                t3 = time.perf_counter()
                res["AE"] = tuple(np.asarray(ae.score(x)[1], dtype=np.float64) for x in (X_train, X_test))
                arrays = {f"{k}.{part}": v[i] for k, v in res.items() for i, part in enumerate(("train", "test"))}
                np.savez(path, y_test=y_test, **arrays)
                print(json.dumps({"table": name, "seed": seed, "member": m, "aegmm_fit_s": round(t1 - t0, 2),
                                  "aegmm_s_s": round(t2 - t1, 2), "ae_fit_s": round(t3 - t2, 2)}), flush=True)


def report(members: int, out: Path) -> None:
    from sklearn.metrics import roc_auc_score

    files = sorted(out.glob("*.npz"))
    groups: dict = {}
    for p in files:
        table, s, m = p.stem.rsplit(".", 2)
        groups.setdefault((table, int(s[1:])), {})[int(m[1:])] = p
    res: dict = {}
    for (table, seed), mem in sorted(groups.items()):
        if len(mem) < members:
            continue
        data = [dict(np.load(mem[m])) for m in range(members)]
        y = data[0]["y_test"]
        for det in ("AEGMM", "AEGMM-s", "AE"):
            single = roc_auc_score(y, data[0][f"{det}.test"])
            ranks = [np.searchsorted(np.sort(d[f"{det}.train"]), d[f"{det}.test"]) / len(d[f"{det}.train"])
                     + 1e-9 * d[f"{det}.test"] / (1 + np.abs(d[f"{det}.test"]).max()) for d in data]
            ens_rank = roc_auc_score(y, np.mean(ranks, 0))
            ens_mean = roc_auc_score(y, np.mean([d[f"{det}.test"] for d in data], 0))
            res.setdefault(table, {}).setdefault(det, []).append((single, ens_rank, ens_mean))
    print(f"| table | " + " | ".join(f"{d} 1 / rank / mean" for d in ("AEGMM", "AEGMM-s", "AE")) + " |")
    tot = {d: [] for d in ("AEGMM", "AEGMM-s", "AE")}
    for table, dets in res.items():
        cells = []
        for d in ("AEGMM", "AEGMM-s", "AE"):
            v = np.mean(dets[d], 0)
            tot[d].append(v)
            cells.append(" / ".join(f"{x:.3f}" for x in v))
        print(f"| {table} | " + " | ".join(cells) + " |")
    print(f"| **mean of {len(res)}** | " + " | ".join(" / ".join(f"{x:.3f}" for x in np.mean(tot[d], 0))
                                                   for d in tot) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="both")
    ap.add_argument("--tables", default=None, help="comma list (default: all of the suite)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--report", action="store_true", help="print the Markdown table from the saved scores")
    ap.add_argument("--scores", type=Path, default=SCORES, help=f"folder of the per-member scores (default {SCORES})")
    args = ap.parse_args()
    if args.report:
        return report(args.members, args.scores)
    tables = ab.suite_tables(args.suite)
    if args.tables:
        tables = {k: v for k, v in tables.items() if k in args.tables.split(",")}
    torch.set_num_threads(1)
    run(tables, list(range(args.seeds)), args.members, args.scores)


if __name__ == "__main__":
    main()
