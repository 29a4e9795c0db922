"""torch.distributed training: two gloo processes on loopback against one process on the same global batches.

One ``torchrun --nproc-per-node 2`` run (tests/_ddp_worker.py) trains with
``dagmm.distributed.ddp.train_ddp`` and runs ``dagmm fit --distributed --global-mixture``;
the reference here is written from the batch rule in the ddp module's docstring
with the plain single-process pieces (loss_aegmm, default_adam).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _ddp_common import BATCH, EPOCHS, LR, SEED, W_C, W_E, data, nets  # noqa: E402

import dagmm  # noqa: E402
from dagmm.models.gmm import gmm_params_from_stats  # noqa: E402
from dagmm.models.losses import loss_aegmm  # noqa: E402
from dagmm.tables.model import load_table_model  # noqa: E402
from dagmm.tables.preprocess import TabularPreprocessor  # noqa: E402
from dagmm.training.loop import default_adam  # noqa: E402
from dagmm.training.scaling import fit_scaling  # noqa: E402

pytest.importorskip("pyarrow", reason="the CLI run reads Parquet: pip install 'dagmm[dask]'")
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    import pandas as pd

    df = pd.DataFrame(rng.normal(size=(1000, 4)), columns=list("abcd"))
    df["kind"] = rng.choice(["u", "v", "w"], len(df))
    df["id"] = np.arange(len(df))
    df.to_parquet(out / "train.parquet")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(dagmm.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(Path(__file__).parent / "_ddp_worker.py"),
           str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, df, proc.stdout


def _single_process(global_batches: bool) -> tuple[dict, list]:
    """One process, the global batches of the ddp docstring; per-rank batches kept apart when not global."""
    X = data()
    shards = np.array_split(np.arange(len(X)), WORLD)
    b = BATCH // WORLD
    steps = min(len(s) for s in shards) // b
    model = nets()
    opt = default_adam(model.parameters(), LR)
    losses = []
    model.train()
    for epoch in range(EPOCHS):
        perms = [np.random.default_rng([SEED, epoch, r]).permutation(len(s)) for r, s in enumerate(shards)]
        total = 0.0
        for t in range(steps):
            parts = [torch.from_numpy(X[s[p[t * b:(t + 1) * b]]]) for s, p in zip(shards, perms)]
            if global_batches:
                xb = torch.cat(parts)
                x_recon, z, gamma = model(xb)
                loss = loss_aegmm(xb, x_recon, z, gamma, W_E, W_C)
            else:  # DDP's mean of the ranks' own losses
                loss = sum(loss_aegmm(xb, *model(xb), W_E, W_C) for xb in parts) / WORLD
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / steps)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}, losses


def test_global_mixture_training_equals_one_process_on_the_global_batch(ddp_run):
    out, _, _ = ddp_run
    got = np.load(out / "ddp.npz")
    ref, ref_loss = _single_process(True)
    local_ref, _ = _single_process(False)
    # float32 networks, float64 mixture: the two processes sum the same terms in another order (per-rank
    # partial sums, then all-reduce), so values agree to float32 rounding carried through 12 Adam steps
    worst = max(np.abs(got[f"True/{k}"] - v).max() for k, v in ref.items())
    assert worst < 2e-5, worst
    np.testing.assert_allclose(got["True/loss"], ref_loss, rtol=1e-5)
    # without --global-mixture DDP trains the mean of per-rank losses: the same as that reference, and a
    # different model from the global batch's (so the comparison above can tell the two apart)
    worst_local = max(np.abs(got[f"False/{k}"] - v).max() for k, v in local_ref.items())
    assert worst_local < 2e-5, worst_local
    gap = max(np.abs(got[f"False/{k}"] - v).max() for k, v in ref.items())
    assert gap > 20 * worst, (gap, worst)


def test_cli_fit_distributed_saves_the_mixture_and_threshold_of_all_rows(ddp_run):
    out, df, stdout = ddp_run
    assert "over 2 process(es)" in stdout
    od, pre, settings = load_table_model(out / "model")
    # the preprocessing merged over ranks equals fitting it on the whole table
    whole = TabularPreprocessor(exclude=["id"]).fit(df)
    assert pre.categorical_ == whole.categorical_
    for name, (m, s) in whole.numeric_.items():
        np.testing.assert_allclose(pre.numeric_[name], (m, s), rtol=1e-12)
    X = pre.transform(df)
    mean, scale = fit_scaling(X)  # the detector's own scaling, as fit() would set it on all rows
    np.testing.assert_allclose(od.scaler_mean_, mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(od.scaler_scale_, scale, rtol=1e-9)
    # the scoring mixture summed over ranks equals the one-process estimate over all rows
    params = gmm_params_from_stats(od.mixture_stats(X))
    for got, want in zip((od.phi_, od.mu_, od.cov_), params):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-8, atol=1e-10)
    assert od.threshold == pytest.approx(np.percentile(od.score(X), settings["threshold_perc"]), rel=1e-5)  # ranks scored their shards: float32 over other row counts
    assert od.auto_config_["distributed"] == {"world_size": 2, "global_mixture": True}
    assert settings["n_rows"] == len(df)


def test_cli_flags_are_checked_before_any_process_group(tmp_path, capsys, monkeypatch):
    from dagmm.cli import main

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    data = tmp_path / "t.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    assert main(["fit", str(data), "--distributed", "--out", str(tmp_path / "m")]) == 1
    assert "--distributed runs under torchrun (environment RANK, WORLD_SIZE" in capsys.readouterr().err
    assert main(["fit", str(data), "--global-mixture", "--out", str(tmp_path / "m")]) == 1
    assert "--global-mixture applies to --distributed training only." in capsys.readouterr().err
    assert main(["fit", str(data), "--distributed", "--engine", "dask", "--out", str(tmp_path / "m")]) == 1
    assert "pick one" in capsys.readouterr().err
