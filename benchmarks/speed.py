"""Training and scoring speed against the hardware limit of the same run (issue 8).

The *limit* is the time the network's matrix products alone take for the shapes
a step really has, timed in this process on random tensors with best-of-several
repeats:

* Linear layers: the forward ``addmm``; for training also the two backward
  products (``grad_out @ W`` and ``grad_out^T @ x``).  The first layer's
  ``grad_out @ W`` is left out, since autograd does not compute a gradient for
  the data, so the limit is the products a training step cannot avoid.
* Convolutions (the image auto-encoder): the forward ``conv2d`` /
  ``conv_transpose2d`` and, for training, ``aten.convolution_backward`` for the
  weight gradient (and the input gradient, except for the first layer).

Shapes are read from a real forward pass with hooks on every ``nn.Linear``,
``nn.Conv2d`` and ``nn.ConvTranspose2d``.  "fraction of limit" is limit time /
measured time (1.0 would mean nothing but the products ran).  The host's speed
drifts (up to 2x between two runs of this script minutes apart), so the limit is
measured right beside what it is compared with: at the end of every training
epoch (each steady epoch against the mean of the limits at its two ends; the
median of those ratios is reported) and before and after each scoring run.

Peak memory of scoring: Linux ``/proc/self/status``; the peak (``VmHWM``) is
reset to the current resident size by writing ``5`` to ``/proc/self/clear_refs``
just before scoring, so "peak above input" is ``VmHWM - VmRSS`` taken just before
the call, with the input already resident.  It includes the returned scores
(``output_mb``; for ``OutlierAE`` the feature scores are as large as X).  On CUDA
the device peak (``torch.cuda.max_memory_allocated``) is reported as well.

Run (KDDCUP from ``--data-home``, or ``--synthetic`` random data of the same
shapes)::

    PYTHONPATH=src python3 benchmarks/speed.py --data-home ../shared/data
    PYTHONPATH=src python3 benchmarks/speed.py --synthetic --quick   # seconds

Writes ``--out`` (JSON, default benchmarks/results/speed.json) and the same
table as Markdown beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dagmm import OutlierAE, OutlierAEGMM

KDD_TRAIN_ROWS, KDD_TEST_ROWS, KDD_WIDTH = 198_371, 295_650, 120  # protocol A shapes


# ---------------------------------------------------------------- the limit
def product_shapes(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Input/output shapes of every Linear and (transposed) convolution in one forward pass."""
    found: list[dict] = []

    def hook(mod, inputs, output):
        found.append({"module": mod, "in": tuple(inputs[0].shape), "out": tuple(output.shape)})

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return found


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, reps: int, rounds: int) -> float:
    """Best, over ``rounds``, of the mean time of ``reps`` calls."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def layer_ops(entry: dict, first: bool, train: bool, device: torch.device):
    """Closures running the products of one layer on random tensors of its shapes."""
    m, kw = entry["module"], {"device": device}
    ops = {}
    if isinstance(m, nn.Linear):
        x = torch.randn(int(np.prod(entry["in"][:-1])), m.in_features, **kw)  # (B, in)
        w, b = torch.randn(m.out_features, m.in_features, **kw), torch.randn(m.out_features, **kw)
        g = torch.randn(x.shape[0], m.out_features, **kw)  # (B, out)
        ops["forward"] = lambda: torch.addmm(b, x, w.t())
        if train:
            ops["grad_weight"] = lambda: torch.mm(g.t(), x)
            if not first:
                ops["grad_input"] = lambda: torch.mm(g, w)
        return ops
    x, g = torch.randn(entry["in"], **kw), torch.randn(entry["out"], **kw)
    w, b = torch.randn_like(m.weight), torch.randn_like(m.bias) if m.bias is not None else None
    transposed = isinstance(m, nn.ConvTranspose2d)
    args = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)
    if transposed:
        ops["forward"] = lambda: F.conv_transpose2d(x, w, b, output_padding=m.output_padding, **args)
    else:
        ops["forward"] = lambda: F.conv2d(x, w, b, **args)
    if train:
        mask = [not first, True, False]
        out_pad = list(m.output_padding) if transposed else [0, 0]
        ops["backward"] = lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, list(m.stride), list(m.padding), list(m.dilation), transposed, out_pad, m.groups, mask)
    return ops


def measure_limit(model: nn.Module, x: torch.Tensor, train: bool, reps: int, rounds: int) -> dict:
    """Seconds per batch of ``x.shape[0]`` rows for the products alone, per layer and in total."""
    device = x.device
    layers, total = [], 0.0
    for i, entry in enumerate(product_shapes(model, x)):
        times = {k: best_time(f, device, reps, rounds) for k, f in layer_ops(entry, i == 0, train, device).items()}
        total += sum(times.values())
        layers.append({"layer": type(entry["module"]).__name__, "in": list(entry["in"]), "out": list(entry["out"]),
                       "seconds": times})
    return {"batch": x.shape[0], "seconds_per_batch": total, "rows_per_s": x.shape[0] / total, "layers": layers}


# ------------------------------------------------------------ measurements
def _proc_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def _reset_peak(device: torch.device) -> int:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return _proc_kb("VmRSS")


def time_fit(od, X: np.ndarray, epochs: int, batch_size: int, limit_s: Callable[[], float]) -> dict:
    """Seconds per epoch, each epoch bracketed by limit measurements at its two ends.

    ``limit_s()`` times the products of one epoch; it runs in the training loop's
    epoch-end callback (outside the epoch's own time).  The host's speed drifts
    from minute to minute (by up to 2x on this kind of shared machine), so each
    steady epoch is compared with the mean of the limits measured just before and
    just after it, and the fraction reported is the median of those per-epoch ratios.
    """
    stamps: list[float] = []
    resumed: list[float] = []
    limits: list[float] = []

    threads = torch.get_num_threads()

    def at_epoch_end(epoch, logs):
        stamps.append(time.perf_counter())
        # fit may have handed this thread's torch threads to its C kernels (dagmm.accel.kernel_threads):
        # the limit is always torch's products on the run's thread count
        during = torch.get_num_threads()
        torch.set_num_threads(threads)
        limits.append(limit_s())
        torch.set_num_threads(during)
        resumed.append(time.perf_counter())

    t0 = time.perf_counter()
    od.fit(X, epochs=epochs, batch_size=batch_size, verbose=False, seed=0, callbacks=[at_epoch_end])
    total = time.perf_counter() - t0 - sum(b - a for a, b in zip(stamps, resumed))
    per_epoch = [b - a for a, b in zip([t0] + resumed[:-1], stamps)]
    # the first epoch includes warm-up and checks, and has no limit measured before it
    steady = range(1, len(per_epoch)) if len(per_epoch) > 1 else range(len(per_epoch))
    bracket = [(limits[e - 1] + limits[e]) / 2 if e > 0 else limits[0] for e in steady]
    fractions = [lim / per_epoch[e] for lim, e in zip(bracket, steady)]
    return {"epoch_s": per_epoch, "limit_epoch_s": limits, "s_per_epoch": statistics.median(per_epoch[e] for e in steady),
            "limit_s_per_epoch": statistics.median(bracket), "fraction_of_limit": statistics.median(fractions),
            "fraction_per_epoch": fractions, "fit_total_s": total, "final_loss": od.history_[-1]["loss"]}


def time_score(score, X: np.ndarray, device: torch.device, repeats: int) -> dict:
    """Best-of-``repeats`` scoring time and the peak memory of the first call."""
    rss0 = _reset_peak(device)
    t0 = time.perf_counter()
    out = score(X)
    best = time.perf_counter() - t0
    peak_kb = _proc_kb("VmHWM") - rss0
    res = {"rows": int(len(X)), "peak_mem_above_input_mb": peak_kb / 1024,
           "output_mb": sum(np.asarray(o).nbytes for o in (out if isinstance(out, tuple) else (out,))) / 2**20}
    if device.type == "cuda":
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    del out
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        score(X)
        best = min(best, time.perf_counter() - t0)
    res.update(seconds=best, rows_per_s=len(X) / best)
    return res


def bench_detector(name: str, od, net_of, X_train, score_sets, device, args, batch_size: int,
                   score_batch: int) -> dict:
    """Train, then score each (label, X) of ``score_sets``; each against limits measured right beside it."""
    print(f"[{device}] {name}: training {args.epochs} epochs on {len(X_train):,} rows", file=sys.stderr, flush=True)
    probe = torch.from_numpy(X_train[:batch_size]).to(device)
    lim_train: dict = {}

    def epoch_limit() -> float:
        with torch.random.fork_rng(devices=[]):  # random operands must not move training's dropout draws
            lim_train.update(measure_limit(net_of(od), probe, True, args.reps, args.rounds))
        return lim_train["seconds_per_batch"] * len(X_train) / batch_size

    train = time_fit(od, X_train, args.epochs, batch_size, epoch_limit)
    train.update(rows=len(X_train), batch_size=batch_size, rows_per_s=len(X_train) / train["s_per_epoch"],
                 limit_rows_per_s=len(X_train) / train["limit_s_per_epoch"], limit=lim_train)
    net = net_of(od)
    probe = torch.from_numpy(X_train[:score_batch]).to(device)

    def score_limit() -> dict:
        return measure_limit(net, probe, False, max(1, args.reps // 4), args.rounds)

    scores, before = [], score_limit()
    for label, X in score_sets:
        s = time_score(lambda A: od.score(A, batch_size=score_batch), X, device, 1 if len(X) > 10**6 else 2)
        after = score_limit()
        limit_rows = (before["rows_per_s"] + after["rows_per_s"]) / 2  # measured just before and just after
        s.update(data=label, batch_size=score_batch, limit_rows_per_s=limit_rows,
                 fraction_of_limit=s["rows_per_s"] / limit_rows)
        scores.append(s)
        before = after
    return {"name": name, "train": train, "score": scores, "score_limit": before}


def load_data(args) -> tuple[np.ndarray, np.ndarray, str]:
    if args.synthetic:
        n_train, n_test = (2048, 4096) if args.quick else (KDD_TRAIN_ROWS, KDD_TEST_ROWS)
        rng = np.random.default_rng(0)
        return (rng.standard_normal((n_train, KDD_WIDTH), dtype=np.float32),
                rng.standard_normal((n_test, KDD_WIDTH), dtype=np.float32), "synthetic N(0,1), KDDCUP shapes")
    from dagmm.datasets import load_kddcup99, protocol_split

    X, y = load_kddcup99(data_home=args.data_home)
    X_train, X_test, _ = protocol_split(X, y, "A", seed=0)
    if args.quick:
        X_train, X_test = X_train[:2048], X_test[:4096]
    return X_train, X_test, "KDDCUP99 10%, protocol A (seed 0), z-scored on train"


def run_device(device: torch.device, X_train, X_test, args) -> list[dict]:
    dev = str(device)
    big_rows = 20_000 if args.quick else args.big_rows
    rng = np.random.default_rng(1)
    big = rng.standard_normal((big_rows, X_train.shape[1]), dtype=np.float32)
    aegmm = OutlierAEGMM(architecture="paper", device=dev)  # the KDDCUP net of the paper and issue 8
    out = [bench_detector("OutlierAEGMM KDDCUP net", aegmm, lambda od: od.aegmm, X_train,
                          [("test split", X_test), (f"synthetic {big_rows:,} rows", big)], device, args, 1024, args.score_batch)]
    del big
    out.append(bench_detector("OutlierAE tabular MLP", OutlierAE(device=dev), lambda od: od.ae, X_train,
                              [("test split", X_test)], device, args, 1024, args.score_batch))
    n_img = (256, 256) if args.quick else (10_000, 10_000)
    imgs = rng.random((sum(n_img), 32, 32, 3), dtype=np.float32)
    out.append(bench_detector("OutlierAE conv 32x32x3", OutlierAE(device=dev), lambda od: od.ae, imgs[:n_img[0]],
                              [("random images", imgs[n_img[0]:])], device, args, 256, 1024))
    for r in out:
        r["device"] = dev
    return out


def table(results: list[dict]) -> str:
    rows = ["| device | detector | phase | data | rows | batch | s | rows/s | limit rows/s | fraction of limit "
            "| peak MB above input (output MB) |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        t = r["train"]
        rows.append(f"| {r['device']} | {r['name']} | train | {t['rows']:,} rows/epoch | {t['rows']:,} | "
                    f"{t['batch_size']} | {t['s_per_epoch']:.3f} /epoch | {t['rows_per_s']:,.0f} | "
                    f"{t['limit_rows_per_s']:,.0f} | {t['fraction_of_limit']:.0%} | |")
        for s in r["score"]:
            rows.append(f"| {r['device']} | {r['name']} | score | {s['data']} | {s['rows']:,} | {s['batch_size']} | "
                        f"{s['seconds']:.3f} | {s['rows_per_s']:,.0f} | {s['limit_rows_per_s']:,.0f} | "
                        f"{s['fraction_of_limit']:.0%} | {s['peak_mem_above_input_mb']:.0f} ({s['output_mb']:.0f}) |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-home", default=None, help="holds kddcup99/kddcup.data_10_percent.gz")
    ap.add_argument("--synthetic", action="store_true", help="random data of the KDDCUP shapes instead")
    ap.add_argument("--quick", action="store_true", help="a few-second smoke run (small data, few repeats)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per detector (default 4, quick 2)")
    ap.add_argument("--big-rows", type=int, default=5_000_000, help="rows of the synthetic scoring array")
    ap.add_argument("--score-batch", type=int, default=None, help="scoring batch size (default: the library's)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "speed.json")
    args = ap.parse_args(argv)
    from dagmm.detectors.base import DEFAULT_SCORE_BATCH

    args.epochs = args.epochs or (2 if args.quick else 4)
    args.score_batch = args.score_batch or DEFAULT_SCORE_BATCH
    args.reps, args.rounds = (3, 2) if args.quick else (20, 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    X_train, X_test, source = load_data(args)
    results = []
    for d in devices:
        results += run_device(torch.device(d), X_train, X_test, args)
    meta = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "data": source, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "epochs": args.epochs, "score_batch": args.score_batch, "quick": args.quick,
            "limit": "matrix products only (see module docstring)", "memory_method": "VmHWM - VmRSS, /proc/self"}
    md = table(results)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    args.out.with_suffix(".md").write_text(
        f"# Speed (`{meta['command']}`)\n\n{source}; torch {meta['torch']}, {meta['threads']} threads"
        f"{', ' + meta['cuda'] if meta['cuda'] else ''}.\n\n{md}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
