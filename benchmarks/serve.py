"""`dagmm serve` under load: latency and throughput against in-process scoring, in one run (issue 20).

A KDDCUP-shaped ``OutlierAEGMM`` (120 features; the net 120-60-30-10-1 and back) is
saved and served by ``dagmm serve`` in a child process on 127.0.0.1.  Clients are
threads of this process, each with its own keep-alive HTTP connection
(``http.client``), sending requests of 1, 100 and 10,000 rows with 1, 4 and 16 of
them at once, in JSON and in the binary tensor format (Triton's, as
``tritonclient`` sends it).  Request bodies are encoded once up front, so the
figures are the server's work plus the transfer and the client's decoding of the
response; a client that encodes 10,000-row JSON requests itself pays that on top.

"in-process" is ``detector.predict`` on the same rows, called in a loop in this
process before the server starts.  "vs in-process" is served rows/s over
in-process rows/s at the same rows per request.  Latency is from the first byte
sent to the response decoded; p50/p99 over all requests of a cell.

Clients and server share this machine's cores, and the host may be shared with
other work: the load average before and after the run is written with the results.

Run::

    PYTHONPATH=src python3 benchmarks/serve.py               # about 3 minutes
    PYTHONPATH=src python3 benchmarks/serve.py --quick       # seconds, for a smoke test

Writes ``--out`` (JSON, default benchmarks/results/serve.json) and the table as
Markdown beside it (``.md``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import dagmm
from dagmm.serving import ServerProcess

WIDTH = 120
ROWS = (1, 100, 10_000)
CLIENTS = (1, 4, 16)
TARGET_RATIO, TARGET_P99_MS = 0.70, 50.0


def _bodies(X: np.ndarray) -> dict:
    """(mode, rows) -> (body, headers), encoded once."""
    out = {}
    for rows in ROWS:
        x = np.ascontiguousarray(X[:rows])
        body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}).encode()
        out["json", rows] = (body, {"Content-Type": "application/json"})
        raw = x.tobytes()
        head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"binary_data_output": True}}).encode()
        out["binary", rows] = (head + raw, {"Content-Type": "application/octet-stream",
                                            "Inference-Header-Content-Length": str(len(head))})
    return out


def _decode(response: http.client.HTTPResponse, rows: int) -> np.ndarray:
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {body[:300]!r}")
    header_length = response.getheader("Inference-Header-Content-Length")
    if header_length is None:
        outs = {o["name"]: o for o in json.loads(body)["outputs"]}
        scores = np.asarray(outs["instance_score"]["data"], dtype=np.float64)
    else:
        n = int(header_length)
        head = json.loads(body[:n])
        offset, scores = n, None
        for o in head["outputs"]:
            size = o["parameters"]["binary_data_size"]
            if o["name"] == "instance_score":
                scores = np.frombuffer(body, dtype="<f8", count=rows, offset=offset)
            offset += size
    if scores is None or scores.shape != (rows,):
        raise RuntimeError("response without the right instance_score")
    return scores


def _cell(port: int, body: bytes, headers: dict, rows: int, clients: int, seconds: float, min_requests: int) -> dict:
    latencies: list = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    errors: list = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        try:
            while time.perf_counter() < stop_at or len(mine) < min_requests:
                t0 = time.perf_counter()
                conn.request("POST", "/v2/models/kdd/infer", body=body, headers=headers)
                _decode(conn.getresponse(), rows)
                mine.append(time.perf_counter() - t0)
                if len(mine) >= 100_000:  # bounded whatever the speed
                    break
        except Exception as err:  # reported, not hidden
            errors.append(repr(err))
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"client errors: {errors[:3]}")
    lat = np.asarray(latencies)
    return {"requests": int(lat.size), "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "rows_per_s": float(lat.size * rows / wall),
            "seconds": wall}


def _in_process(od, X: np.ndarray, rows: int, seconds: float, min_calls: int) -> dict:
    x = np.ascontiguousarray(X[:rows])
    od.predict(x)  # warm-up
    times = []
    stop_at = time.perf_counter() + seconds
    t_start = time.perf_counter()
    while time.perf_counter() < stop_at or len(times) < min_calls:
        t0 = time.perf_counter()
        od.predict(x)
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start
    lat = np.asarray(times)
    return {"requests": int(lat.size), "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "rows_per_s": float(lat.size * rows / wall),
            "seconds": wall}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _markdown(res: dict) -> str:
    lines = ["# `dagmm serve` under load (`benchmarks/serve.py`)", "",
             f"Command: `{res['command']}`  ",
             (f"Commit {res['commit']}, {res['machine']}, torch {res['torch']}, {res['cores']} cores; "
              f"load average {res['load_before']} before, {res['load_after']} after.  "),
             (f"Model: OutlierAEGMM, {WIDTH} features, served by `dagmm serve {' '.join(res['serve_args'])}` "
              "(one process); clients are threads on the same machine, bodies encoded up front."), "",
             "| mode | rows/request | clients | requests | p50 ms | p99 ms | rows/s | vs in-process |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["rows"]: r for r in res["in_process"]}
    for r in res["in_process"]:
        lines.append(f"| in-process | {r['rows']} | 1 | {r['requests']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['rows_per_s']:,.0f} | 1.00 |")
    for r in res["served"]:
        ratio = r["rows_per_s"] / base[r["rows"]]["rows_per_s"]
        lines.append(f"| {r['mode']} | {r['rows']} | {r['clients']} | {r['requests']} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['rows_per_s']:,.0f} | {ratio:.2f} |")
    lines += ["", "Targets (issue 20):", ""]
    for t in res["targets"]:
        lines.append(f"- {t['what']}: {t['value']} ({'met' if t['met'] else 'NOT met'})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per cell (default 3)")
    ap.add_argument("--quick", action="store_true", help="0.3 s per cell, 1 and 4 clients only")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    args = ap.parse_args(argv)
    seconds = 0.3 if args.quick else args.seconds
    clients_list = (1, 4) if args.quick else CLIENTS
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, WIDTH)).astype(np.float32)
    od = dagmm.OutlierAEGMM(n_gmm=4, data_type="tabular")
    od.fit(X[:4096], epochs=1, verbose=False, seed=0)
    od.infer_threshold(X[:4096], 95)
    in_process = []
    for rows in ROWS:
        r = _in_process(od, X, rows, seconds, 5)
        in_process.append({"rows": rows, **r})
        print(f"in-process {rows:>6} rows: p50 {r['p50_ms']:.2f} ms, {r['rows_per_s']:,.0f} rows/s", flush=True)

    served = []
    serve_args = ["--max-rows", "20000", "--max-body-mb", "128"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kdd")
        dagmm.save_detector(od, path)
        reference = od.predict(X[:100])["data"]["instance_score"]
        bodies = _bodies(X)
        with ServerProcess([path], args=serve_args) as server:
            for mode in ("binary", "json"):  # the served scores are the in-process ones (float32 rounding)
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
                body, headers = bodies[mode, 100]
                conn.request("POST", "/v2/models/kdd/infer", body=body, headers=headers)
                np.testing.assert_allclose(_decode(conn.getresponse(), 100), reference, rtol=1e-5)
                conn.close()
            for mode in ("binary", "json"):
                for rows in ROWS:
                    for clients in clients_list:
                        body, headers = bodies[mode, rows]
                        r = _cell(server.port, body, headers, rows, clients, seconds, 2)
                        served.append({"mode": mode, "rows": rows, "clients": clients, **r})
                        print(f"{mode:>6} {rows:>6} rows x {clients:>2} clients: p50 {r['p50_ms']:.2f} ms, "
                              f"p99 {r['p99_ms']:.2f} ms, {r['rows_per_s']:,.0f} rows/s", flush=True)

    base = {r["rows"]: r["rows_per_s"] for r in in_process}
    big = [r for r in served if r["mode"] == "binary" and r["rows"] == 10_000]
    best = max(big, key=lambda r: r["rows_per_s"])
    targets = [{"what": f"binary, 10,000 rows/request, best of {', '.join(map(str, clients_list))} clients: "
                        f"rows/s vs in-process (target >= {TARGET_RATIO:.0%})",
                "value": f"{best['rows_per_s'] / base[10_000]:.2f} at {best['clients']} client(s)",
                "met": best["rows_per_s"] / base[10_000] >= TARGET_RATIO}]
    for mode in ("binary", "json"):
        cell = [r for r in served if r["mode"] == mode and r["rows"] == 100 and r["clients"] == max(clients_list)]
        targets.append({"what": f"{mode}, 100 rows/request, {max(clients_list)} clients: p99 "
                                f"(target < {TARGET_P99_MS:.0f} ms)",
                        "value": f"{cell[0]['p99_ms']:.1f} ms", "met": cell[0]["p99_ms"] < TARGET_P99_MS})
    res = {"command": "PYTHONPATH=src python3 benchmarks/serve.py" + (" --quick" if args.quick else ""),
           "commit": _git_commit(), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
           "torch": torch.__version__, "cores": os.cpu_count(), "load_before": load_before,
           "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()), "serve_args": serve_args,
           "in_process": in_process, "served": served, "targets": targets}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(res))
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
