"""Rows per second of scoring a Parquet dataset: in one process against Dask with 1 and 2 workers.

Writes ``--rows`` synthetic rows (``--features`` float32 columns plus an
``id``) as ``--files`` Parquet files, trains a small ``OutlierAEGMM`` with
``dagmm fit`` on 20,000 of them, then scores every file three ways, all with
the same per-file code (:func:`dagmm.tables.scoring.write_scores`, chunks of
``--chunk-rows``):

- ``in-process``: one Python process scoring the files one after the other
  (torch's default threads: every core), as ``dagmm score`` does per file;
- ``dask, N worker(s)``: ``dagmm score --engine dask`` on a ``LocalCluster``
  of N single-threaded worker processes on 127.0.0.1, one task per file.

Peak memory is the resident-set high-water mark (``ru_maxrss``) of the
scoring process, and of each Dask worker process.  Prints a Markdown table and
writes ``benchmarks/results/scale.{json,md}``.

    nice -n 10 env PYTHONPATH=src python3 benchmarks/scale.py [--rows 20000000] [--files 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

_IN_PROCESS = """
import sys, time, resource, glob, os
from dagmm.tables.model import load_table_model
from dagmm.tables.scoring import write_scores
model, src, out, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
od, pre, _ = load_table_model(model)
os.makedirs(out, exist_ok=True)
t = time.perf_counter()
n = 0
for f in sorted(glob.glob(os.path.join(src, "*.parquet"))):
    n += write_scores(od, pre, f, os.path.join(out, os.path.basename(f)), "id", chunk)[0]
print(n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _write_data(path: Path, rows: int, files: int, features: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(features, features)).astype(np.float32) / np.sqrt(features)
    start = 0
    for i, n in enumerate(np.diff(np.linspace(0, rows, files + 1).astype(np.int64))):
        x = rng.standard_normal((int(n), features), dtype=np.float32) @ mix
        cols = {f"f{j}": x[:, j] for j in range(features)}
        cols["id"] = np.arange(start, start + n, dtype=np.int64)
        pq.write_table(pa.table(cols), path / f"part-{i:04d}.parquet", row_group_size=250_000)
        start += n


def _dask_run(model: Path, src: Path, out: Path, workers: int, chunk: int) -> dict:
    from distributed import Client, LocalCluster

    from dagmm.distributed.files import score_files

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("dagmm.distributed.files"))  # workers start and import before the clock
        client.run(lambda: __import__("dagmm.tables.scoring") and __import__("pyarrow.parquet"))
        before = client.run(lambda: __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss)
        t = time.perf_counter()
        n, _, _ = score_files(str(model), str(src), str(out), id_column="id", chunk_rows=chunk,
                              scheduler=cluster.scheduler_address)
        seconds = time.perf_counter() - t
        peaks = client.run(lambda: __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss)
    return {"rows": n, "seconds": seconds, "peak_rss_mb": [peaks[w] / 1024 for w in sorted(peaks)],
            "rss_before_mb": [before[w] / 1024 for w in sorted(peaks)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--chunk-rows", type=int, default=100_000)
    ap.add_argument("--workers", default="1,2", help="comma-separated Dask worker counts")
    ap.add_argument("--data-dir", default="/tmp/dagmm-scale")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--tag", default="", help="suffix of the results files")
    args = ap.parse_args(argv)
    from dagmm.cli import main as cli

    root = Path(args.data_dir)
    src, model = root / "data", root / "model"
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    _write_data(src, args.rows, args.files, args.features, 0)
    gen_s = time.perf_counter() - t0
    disk_mb = sum(f.stat().st_size for f in src.iterdir()) / 2**20
    import pandas as pd

    pd.read_parquet(next(iter(sorted(src.iterdir())))).head(20_000).to_parquet(root / "sample.parquet")
    assert cli(["fit", str(root / "sample.parquet"), "--out", str(model), "--epochs", "2", "--exclude", "id",
                "--quiet"]) == 0
    runs = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _IN_PROCESS, str(model), str(src), str(root / "out-local"),
                           str(args.chunk_rows)], env=env, capture_output=True, text=True, check=True)
    n, sec, peak = proc.stdout.split()
    runs.append({"setting": "in-process", "workers": 0, "rows": int(n), "seconds": float(sec),
                 "peak_rss_mb": [int(peak) / 1024]})
    for w in (int(v) for v in args.workers.split(",")):
        r = _dask_run(model, src, root / f"out-dask{w}", w, args.chunk_rows)
        runs.append({"setting": f"dask, {w} worker(s)", "workers": w, **r})
    base = runs[0]["rows"] / runs[0]["seconds"]
    lines = [f"Scoring {args.rows:,} rows x {args.features} features in {args.files} Parquet files "
             f"({disk_mb:.0f} MiB on disk), chunks of {args.chunk_rows:,} rows; {os.cpu_count()} cores "
             f"({platform.processor() or platform.machine()}), load average at start "
             f"{load:.1f} (other work shares the cores).", "",
             "| setting | rows | seconds | rows/s | vs in-process | peak RSS per process (MiB) | before the job (MiB) |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in runs:
        rate = r["rows"] / r["seconds"]
        lines.append(f"| {r['setting']} | {r['rows']:,} | {r['seconds']:.1f} | {rate:,.0f} | {rate / base:.2f}x | "
                     f"{', '.join(f'{m:.0f}' for m in r['peak_rss_mb'])} | "
                     f"{', '.join(f'{m:.0f}' for m in r.get('rss_before_mb', [])) or 'n/a (own process)'} |")
    table = "\n".join(lines)
    print(table)
    cmd = "nice -n 10 env PYTHONPATH=src python3 benchmarks/scale.py " + " ".join(argv or sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    (RESULTS / f"scale{tag}.md").write_text(f"# Scoring at scale\n\nCommand: `{cmd.strip()}` (data written in "
                                            f"{gen_s:.0f} s, not counted)\n\n{table}\n")
    (RESULTS / f"scale{tag}.json").write_text(json.dumps({"command": cmd.strip(), "rows": args.rows,
                                                         "features": args.features, "files": args.files,
                                                         "disk_mib": disk_mb, "runs": runs}, indent=2))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
