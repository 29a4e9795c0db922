"""dagmm.distributed on a real LocalCluster (2 worker processes on 127.0.0.1), one cluster for the module."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask", reason="dagmm.distributed needs Dask: pip install 'dagmm[dask]'")
distributed = pytest.importorskip("distributed", reason="needs distributed: pip install 'dagmm[dask]'")
pytest.importorskip("pyarrow", reason="the Parquet tests need pyarrow: pip install 'dagmm[dask]'")
import dask.array as da  # noqa: E402
import dask.dataframe as dd  # noqa: E402
import pandas as pd  # noqa: E402

import dagmm  # noqa: E402
from dagmm import distributed as ddist  # noqa: E402
from dagmm.cli import main  # noqa: E402
from dagmm.tables.model import load_table_model  # noqa: E402

F = 6
CHUNK = 700


@pytest.fixture(scope="module")
def client():
    # workers import dagmm from this checkout, as the test process does
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(dagmm.__file__).parents[1]),
                                                os.environ.get("PYTHONPATH", "")])
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, memory_limit="2GiB")
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(5000, 3))
    X = np.c_[base, base @ rng.normal(size=(3, F - 3))] + 0.05 * rng.normal(size=(5000, F))
    return X.astype(np.float32)


@pytest.fixture(scope="module")
def aegmm(data):
    od = dagmm.OutlierAEGMM(n_gmm=2)
    od.fit(data[:1500], epochs=2, verbose=False, seed=0)
    od.infer_threshold(data, 90)
    return od


def _same_scores(got, want):
    """Equal up to float32 rounding: the same per-row code, run over other row counts (partitions). The
    network's float32 products may round otherwise for another batch length on another CPU (a few float32
    ulps, ~1e-7 relative, which the energy's quadratic form can amplify tenfold); here the C kernels give
    equal bits and the torch path last-bit float64 differences."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _same_flags(got, scores, threshold):
    """Flags equal except, possibly, for rows whose score lies within _same_scores' tolerance of the threshold."""
    clear = np.abs(np.asarray(scores) - threshold) > 1e-5 * (1 + abs(threshold))
    np.testing.assert_array_equal(np.asarray(got)[clear], (np.asarray(scores) > threshold)[clear])


def _loads(client) -> dict:
    # the import runs on each worker (a closure over this process's STATS would ship its copy)
    return client.run(lambda: dict(__import__("dagmm.distributed._ship", fromlist=["STATS"]).STATS))


def test_array_scores_and_flags_equal_in_memory(client, aegmm, data):
    before = _loads(client)
    X = da.from_array(data, chunks=(CHUNK, 3))  # feature axis split on purpose: rechunked to whole rows
    scores = ddist.score(aegmm, X)
    assert scores.numblocks == (-(-len(data) // CHUNK),)
    _same_scores(scores.compute(), aegmm.score(data))
    pred = ddist.predict(aegmm, X)
    want = aegmm.predict(data)
    _same_flags(pred["data"]["is_outlier"].compute(), want["data"]["instance_score"], aegmm.threshold)
    assert pred["meta"] == want["meta"] and pred["data"]["feature_score"] is None
    after = _loads(client)
    # the detector is loaded at most once per worker process however many blocks it scores
    assert all(after[w]["loads"] - before[w]["loads"] <= 1 for w in after)
    assert sum(after[w]["loads"] - before[w]["loads"] for w in after) >= 1


def test_dataframe_scores_by_column_name_keep_the_index(client, aegmm, data):
    cols = [f"f{i}" for i in range(F)]
    pdf = pd.DataFrame(data, columns=cols, index=np.arange(len(data)) * 3 + 10)
    pdf["id"] = np.arange(len(data))
    shuffled = pdf[["id"] + cols[::-1]]  # other order, an extra column: read by name
    df = dd.from_pandas(shuffled, npartitions=4)
    got = ddist.score(aegmm, df, columns=cols).compute()
    _same_scores(got.to_numpy(), aegmm.score(data))
    assert (got.index == pdf.index).all()
    flags = ddist.predict(aegmm, df, columns=cols)["data"]["is_outlier"].compute()
    _same_flags(flags.to_numpy(), aegmm.score(data), aegmm.threshold)
    with pytest.raises(ValueError, match="pass columns="):
        ddist.score(aegmm, df)


def test_outlier_ae_feature_scores_equal_in_memory(client, data):
    ae = dagmm.OutlierAE()
    ae.fit(data[:1000], epochs=1, verbose=False, seed=0)
    fs, inst = ddist.score(ae, da.from_array(data, chunks=CHUNK), outlier_perc=50, return_feature_score=True)
    want_f, want_i = ae.score(data, outlier_perc=50)
    # float32 squared errors of reconstructions made over other row counts (see _same_scores)
    np.testing.assert_allclose(fs.compute(), want_f, rtol=1e-5, atol=1e-6)
    _same_scores(inst.compute(), want_i)
    t = ddist.infer_threshold(ae, da.from_array(data, chunks=CHUNK), 80, outlier_type="feature")
    assert t == pytest.approx(np.percentile(want_f, 80), rel=1e-5, abs=1e-6)  # in-memory scores: see above


def _reference_mixture(od, X):
    """phi, mu, cov from z and gamma of all rows, in NumPy float64 (the paper's formulas, independent code)."""
    import torch

    Xs = (X - od.scaler_mean_) / od.scaler_scale_ if od.scaler_mean_ is not None else X
    with torch.no_grad():
        od.aegmm.eval()
        _, z, gamma = od.aegmm(torch.from_numpy(np.ascontiguousarray(Xs, dtype=np.float32)))
    z, g = z.double().numpy(), gamma.double().numpy()
    s = g.sum(0)
    mu = g.T @ z / s[:, None]
    cov = np.stack([(g[:, k, None] * (z - mu[k])).T @ (z - mu[k]) / s[k] for k in range(g.shape[1])])
    return s / len(z), mu, cov


def test_fit_mixture_is_exact_over_partitions(client, aegmm, data):
    import copy

    od = copy.deepcopy(aegmm)
    parts = (1000, 37, 1963, 2000)  # uneven partitions, one tiny
    # the default detector's mixture was fitted by EM: replacing it with the membership mixture must be asked for
    with pytest.raises(ValueError, match=r"fitted by EM on its training codes .* pass membership=True"):
        ddist.fit_mixture(od, da.from_array(data, chunks=(parts, F)))
    assert np.array_equal(od.mu_.numpy(), aegmm.mu_.numpy())  # and nothing changed
    ddist.fit_mixture(od, da.from_array(data, chunks=(parts, F)), membership=True)
    assert od.auto_config_["mixture"] == "membership" and "mixture_fit" not in od.auto_config_
    phi, mu, cov = _reference_mixture(od, data)
    for got, want in zip((od.phi_, od.mu_, od.cov_), (phi, mu, cov)):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-8)
    # the mixture really changed: it was estimated on the 1500 training rows before
    assert np.abs(aegmm.mu_.numpy() - mu).max() > 1e-4
    # and a DataFrame gives the same
    od2 = copy.deepcopy(aegmm)
    ddist.fit_mixture(od2, dd.from_pandas(pd.DataFrame(data, columns=list("abcdef")), npartitions=3), membership=True)
    np.testing.assert_allclose(od2.cov_.numpy(), cov, rtol=0, atol=1e-8)
    with pytest.raises(TypeError, match="OutlierAEGMM"):
        ddist.fit_mixture(dagmm.OutlierAE(), da.from_array(data))


def test_infer_threshold_exact_and_approximate(client, aegmm, data):
    import copy

    od = copy.deepcopy(aegmm)
    X = da.from_array(data, chunks=CHUNK)
    s = ddist.score(aegmm, X).compute()  # the values the percentile is taken of (see _same_scores)
    for q in (0, 37.5, 95, 99.9, 100):
        assert ddist.infer_threshold(od, X, q) == np.percentile(s, q)
    assert od.threshold == np.percentile(s, 100)
    # bins=8 forces refinement; max_fetch=5 forces a further pass inside the bucket
    assert ddist.percentile(da.from_array(s, chunks=900), 61.3, bins=8, max_fetch=5) == np.percentile(s, 61.3)
    approx = ddist.infer_threshold(od, X, 95, method="approx", bins=1000)
    assert abs(approx - np.percentile(s, 95)) <= 2 * (s.max() - s.min()) / 1000  # the stated bound
    ties = np.repeat([1.0, 2.0, 3.0], [5, 3000, 4])  # one value repeated past max_fetch
    assert ddist.percentile(da.from_array(ties, chunks=500), 50, max_fetch=10) == 2.0
    with pytest.raises(ValueError, match="method must be"):
        ddist.infer_threshold(od, X, 95, method="median")


def test_bad_input_is_refused_by_name(client, aegmm, data):
    with pytest.raises(TypeError, match="dask.array.Array or a dask.dataframe.DataFrame"):
        ddist.score(aegmm, data)
    with pytest.raises(ValueError, match="feature shape"):
        ddist.score(aegmm, da.from_array(data[:, :4]))
    with pytest.raises(dagmm.NotFittedError):
        ddist.score(dagmm.OutlierAEGMM(), da.from_array(data))


def test_memory_per_worker_is_bounded_by_the_partition(client, aegmm):
    """Score 55 MB of rows made on the workers; no worker's peak memory grows by more than a fraction of it."""
    import resource

    rows, f = 32 * 75_000, F
    X = da.random.RandomState(0).standard_normal((rows, f), chunks=(75_000, f)).astype(np.float32)  # 1.8 MB/block
    client.run(lambda: __import__("dagmm.distributed._ship", fromlist=["STATS"]).STATS.update(max_rows=0))
    peak_before = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB
    total = float(ddist.score(aegmm, X).sum().compute())
    assert np.isfinite(total)
    peak_after = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    stats = _loads(client)
    assert max(s["max_rows"] for s in stats.values()) == 75_000  # a task holds one partition, never more
    data_mb = rows * f * 4 / 2**20
    grown = {w: (peak_after[w] - peak_before[w]) / 1024 for w in peak_after}
    # one partition's rows, its float64 scores and the networks' activations (16-row-wide layers, a few
    # blocks in flight): tens of MB; holding the whole collection would take more than data_mb
    assert max(grown.values()) < data_mb / 2, (grown, data_mb)


def _write_parts(tmp_path, data, n_files=3):
    src = tmp_path / "in"
    (src / "day=2").mkdir(parents=True)
    frames = []
    for i, idx in enumerate(np.array_split(np.arange(len(data)), n_files)):
        part = pd.DataFrame(data[idx], columns=[f"f{j}" for j in range(F)])
        part["kind"] = np.where(idx % 3 == 0, "tcp", "udp")
        part["id"] = idx + 100_000
        part.to_parquet((src / "day=2" if i == 2 else src) / f"part{i}.parquet")
        frames.append(part)
    return src, frames


def test_cli_score_a_parquet_directory(client, data, tmp_path, capsys):
    src, frames = _write_parts(tmp_path, data)
    model = tmp_path / "model"
    whole = pd.concat(frames, ignore_index=True)
    whole.to_parquet(tmp_path / "all.parquet")
    assert main(["fit", str(tmp_path / "all.parquet"), "--out", str(model), "--epochs", "1", "--exclude", "id",
                 "--quiet"]) == 0
    out = tmp_path / "scores"
    assert main(["score", str(model), str(src), "--engine", "dask", "--scheduler", client.scheduler.address,
                 "--id-column", "id", "--chunk-rows", "400", "--out", str(out)]) == 0
    assert "in 3 partition(s)" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["day=2__part2.parquet", "part0.parquet", "part1.parquet"]
    od, pre, _ = load_table_model(model)
    for name, frame in zip(["part0", "part1", "day=2__part2"], frames):
        got = pd.read_parquet(out / f"{name}.parquet")
        assert list(got.columns) == ["id", "score", "is_outlier"]
        np.testing.assert_array_equal(got["id"].to_numpy(), frame["id"].to_numpy())
        want = od.score(pre.transform(frame))
        _same_scores(got["score"].to_numpy(), want)
        _same_flags(got["is_outlier"].to_numpy(), want, od.threshold)
    assert main(["score", str(model), str(tmp_path / "nothing-*.parquet"), "--engine", "dask", "--out",
                 str(out)]) == 1
    assert "No Parquet files" in capsys.readouterr().err


def test_cli_fit_on_dask_trains_on_a_sample_and_fits_on_all(client, data, tmp_path, capsys):
    src, frames = _write_parts(tmp_path, data)
    model = tmp_path / "m"
    assert main(["fit", str(src), "--engine", "dask", "--scheduler", client.scheduler.address, "--sample-rows", "800",
                 "--epochs", "1", "--exclude", "id", "--quiet", "--out", str(model)]) == 0
    msg = capsys.readouterr().out
    assert f"of {len(data)} rows" in msg, msg
    od, pre, settings = load_table_model(model)
    assert settings["n_rows"] == len(data) and od.auto_config_["n_rows"] < 1200  # trained on the sample only
    # the default's scoring mixture stays the EM one of the sample's codes (not replaced by the membership one)
    k = od.auto_config_["mixture_fit"]["n_components"]
    assert f"scoring mixture by EM on the sample's codes ({k} component(s))" in msg, msg
    X = pre.transform(pd.concat(frames, ignore_index=True))
    phi, mu, cov = _reference_mixture(od, X)
    assert od.phi_.shape[0] == k and not (od.phi_.shape == phi.shape and np.allclose(od.mu_.numpy(), mu, atol=1e-4))
    assert od.threshold == pytest.approx(np.percentile(od.score(X), 95), rel=1e-5)  # see _same_scores


def test_a_worker_killed_mid_job_the_job_still_completes(client, aegmm, data):
    """SIGKILL one worker process while blocks are being scored; Dask reruns its tasks and the result is whole."""
    def slow(block):
        time.sleep(0.15)
        return block

    X = da.from_array(data, chunks=250).map_blocks(slow, dtype=np.float32)  # 20 blocks, ~1.5 s per worker
    fut = client.compute(ddist.score(aegmm, X))
    def done(dask_scheduler):
        return sum(ts.state == "memory" for ts in dask_scheduler.tasks.values())

    deadline = time.monotonic() + 60
    while client.run_on_scheduler(done) < 3 and time.monotonic() < deadline:  # some blocks scored, most not
        time.sleep(0.05)
    assert not fut.done(), "the job finished before the kill; make the blocks slower"
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    os.kill(pids[victim], signal.SIGKILL)
    got = fut.result(timeout=120)
    _same_scores(got, aegmm.score(data))
    client.wait_for_workers(2, timeout=60)  # the nanny starts a fresh worker process
    assert pids[victim] not in client.run(os.getpid, on_error="ignore").values()
