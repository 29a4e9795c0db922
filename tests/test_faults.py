"""Faults a user meets with real exports (issue 17): each gives the right result or one clear error,
and nothing on disk is lost or left half written.

The table, one row per case (the number is the issue's item):

| case | test |
|---|---|
| 1 cross-path tolerance on another CPU | test_1_cross_path_tolerance_admits_another_summation_order |
| 2 CLI categorical column read per chunk | test_2_categorical_columns_are_text_in_every_chunk |
| 3 one huge value in a column | test_3_a_huge_value_keeps_the_column_finite_and_in_use |
| 4 id column one-hot encoded | test_4_an_id_column_is_refused_with_the_fix |
| 5 float64 precision before scaling | test_5_float64_input_is_scaled_before_the_cast |
| 6 DataFrame column order | test_6_dataframe_columns_are_matched_by_name |
| 7 killed save | test_7_save_detector_killed_at_any_step_leaves_old_or_new, test_7_dagmm_fit_killed_between_renames, test_7_dagmm_fit_failed_replace_leaves_the_old_model_and_no_staging |
| 8 registry path / bomb / duplicates | test_8_* |
| 9 CLI arguments before training | test_9_cli_arguments_are_checked_before_training |
| 10 smaller ones | test_10_* |
| more: tiny magnitudes, overflow at score time, text in a numeric column, blanks | test_more_* |
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dagmm
from dagmm import DAGMM, OutlierAE, OutlierAEGMM, load_detector, save_detector
from dagmm.cli.main import main as cli
from dagmm.tables.preprocess import TabularPreprocessor

from conftest import float64_reordered

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ------------------------------------------------------------------------------------------ 1
def test_1_cross_path_tolerance_admits_another_summation_order():
    """The numbers of the report: energy -0.00527, off by 5.6e-15 on an AVX-512 CPU (1.05e-12 relative)."""
    rng = np.random.default_rng(0)
    ref = np.r_[-0.00527, rng.normal(2.0, 3.0, size=99)]  # energies of a 3-dim latent mixture, O(1..10)
    other_cpu = ref.copy()
    other_cpu[0] += 5.6e-15
    with pytest.raises(AssertionError):  # the tolerance the suite used: relative only, fails on that CPU
        np.testing.assert_allclose(other_cpu, ref, rtol=1e-12)
    tol = float64_reordered(ref, 64, scale=np.abs(ref).max() + 3)  # the stated bound of test_speed/test_native
    np.testing.assert_allclose(other_cpu, ref, **tol)
    broken = ref.copy()
    broken[0] += 1e-9  # a real change of the formula (e.g. a lost term of 1e-9) is still caught
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(broken, ref, **tol)


# ------------------------------------------------------------------------------------------ 2
def _table(n: int, seed: int = 0, codes=("A", "1", "2")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(size=n), "y": rng.normal(size=n) * 10 + 3,
                         "code": rng.choice(list(codes), size=n)})


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    _table(600).to_csv(root / "train.csv", index=False)
    assert cli(["fit", str(root / "train.csv"), "--out", str(root / "model"), "--epochs", "2", "--quiet"]) == 0
    return root


def _python_scores(model: Path, df: pd.DataFrame) -> np.ndarray:
    from dagmm.tables.model import load_table_model

    od, pre, _ = load_table_model(model)
    return od.score(pre.transform(df))


def test_2_categorical_columns_are_text_in_every_chunk(cli_model, tmp_path):
    test = _table(300, seed=1, codes=("1", "2"))  # in a file of its own, pandas would read 'code' as numbers
    test.loc[5, "code"] = None  # one blank
    path = tmp_path / "test.csv"
    test.to_csv(path, index=False)
    assert pd.read_csv(path)["code"].dtype.kind == "f"  # the trap: 1.0 and 2.0, not "1" and "2"
    want = test.astype({"code": object})
    pre = TabularPreprocessor.from_dict(json.loads((cli_model / "model" / "preprocessing.json").read_text())[
        "preprocessor"])
    enc = pre.transform(want)
    groups = enc[:, [i for i, n in enumerate(pre.output_names()) if n.startswith("code=")]]
    assert groups.sum(1).tolist() == [0.0 if i == 5 else 1.0 for i in range(300)]  # a blank: unseen category
    expected = _python_scores(cli_model / "model", want)
    for chunk in ("100000", "7"):
        out = tmp_path / f"scores{chunk}.csv"
        assert cli(["score", str(cli_model / "model"), str(path), "--out", str(out), "--chunk-rows", chunk,
                    "--quiet"]) == 0
        got = pd.read_csv(out)
        # 7-row chunks: float32 network products at another batch size; see test_cli_commands
        np.testing.assert_allclose(got["score"], expected, rtol=1e-4, atol=1e-5)
        assert got["is_outlier"].mean() < 0.2  # 92% were flagged when "1" read as 1.0 matched nothing


def test_2_missing_category_has_its_own_meaning():
    from dagmm.tables.preprocess import MISSING

    df = pd.DataFrame({"c": ["a", None, "b", "a"] * 10, "v": np.arange(40.0)})
    pre = TabularPreprocessor().fit(df)
    assert pre.categorical_["c"] == sorted(["a", "b", MISSING])  # blanks in training: a category learnt
    row = pre.transform(pd.DataFrame({"c": [None], "v": [1.0]}))
    assert row[0, pre.output_names().index(f"c={MISSING}")] == 1.0


# ------------------------------------------------------------------------------------------ 3
def test_3_a_huge_value_keeps_the_column_finite_and_in_use():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"amount": rng.normal(100, 10, size=200), "other": rng.normal(size=200)})
    df.loc[7, "amount"] = 1e300
    pre = TabularPreprocessor().fit(df)
    mean, std = pre.numeric_["amount"]
    assert np.isfinite(mean) and np.isfinite(std) and std > 0
    json.dumps(pre.to_dict(), allow_nan=False)  # no Infinity in preprocessing.json
    a = pre.transform(pd.DataFrame({"amount": [100.0], "other": [0.0]}))
    b = pre.transform(pd.DataFrame({"amount": [1e299], "other": [0.0]}))
    assert a[0, 0] != b[0, 0]  # the column still moves the encoding (it was 0 for every row)
    od = OutlierAEGMM(n_gmm=1).fit(df.to_numpy(), epochs=1, verbose=False, seed=0)  # and in the detectors
    assert np.isfinite(od.scaler_scale_).all() and np.isfinite(od.score(df.to_numpy())).all()


# ------------------------------------------------------------------------------------------ 4
def test_4_an_id_column_is_refused_with_the_fix(tmp_path, capsys):
    df = _table(400)
    df["user"] = [f"u{i:05d}" for i in range(400)]
    with pytest.raises(ValueError, match=r"Column 'user' has 400 distinct values in 400 rows, more than 200 "
                                         r"\(half the rows\).*--exclude user.*--id-column user"):
        TabularPreprocessor().fit(df)
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    assert cli(["fit", str(path), "--out", str(tmp_path / "m"), "--epochs", "1", "--quiet"]) == 1
    assert "--exclude user" in capsys.readouterr().err and not (tmp_path / "m").exists()
    small = pd.DataFrame({"c": [f"v{i % 30}" for i in range(100)]})
    with pytest.raises(ValueError, match=r"more than 20 \(--max-categories\)"):
        TabularPreprocessor(max_categories=20).fit(small)
    assert len(TabularPreprocessor().fit(small).categorical_["c"]) == 30  # a real category passes


# ------------------------------------------------------------------------------------------ 5
def test_5_float64_input_is_scaled_before_the_cast():
    rng = np.random.default_rng(0)
    X = np.c_[1.7e9 + rng.normal(0, 10, size=500), rng.normal(size=500)]  # a timestamp-like column
    ref = ((X - X.mean(0)) / X.std(0)).astype(np.float32)  # numpy, float64 throughout
    for od in (OutlierAEGMM(n_gmm=1), OutlierAE()):
        od.fit(X, epochs=1, verbose=False, seed=0)
        # float32 rounding of the result (|z| < 5: 6e-7) plus the float64 mean's rounding in another
        # summation order (log2(500) * EPS64 * 1.7e9 / std 10 = 3e-7): 1e-5 leaves a factor 10. The cast
        # first would put the float32 spacing at 1.7e9 (128) into the column: errors of ~6 standard deviations
        np.testing.assert_allclose(od._checked(X), ref, rtol=0, atol=1e-5)
    est = DAGMM(comp_hiddens=[4, 1], est_hiddens=[3, 2], epoch_size=1, minibatch_size=100).fit(X)
    np.testing.assert_allclose(est._normalized(X), ref, rtol=0, atol=1e-5)
    assert est.x_mean_.dtype == np.float64


# ------------------------------------------------------------------------------------------ 6
def test_6_dataframe_columns_are_matched_by_name(tmp_path):
    df = _table(300).drop(columns="code")
    df["z"] = np.random.default_rng(1).exponential(size=300)
    od = OutlierAEGMM(n_gmm=1).fit(df, epochs=1, verbose=False, seed=0)
    assert od.feature_names_in_ == ["x", "y", "z"]
    np.testing.assert_array_equal(od.score(df[["z", "y", "x"]]), od.score(df))  # reordered by name: same rows
    with pytest.raises(ValueError, match=r"missing 'z'.*not seen in fit 'w'"):
        od.score(df.rename(columns={"z": "w"}))
    save_detector(od, tmp_path / "det")  # the names are saved with the detector
    np.testing.assert_array_equal(load_detector(tmp_path / "det").score(df[["y", "z", "x"]]), od.score(df))
    est = DAGMM(comp_hiddens=[4, 1], est_hiddens=[3, 2], epoch_size=1, minibatch_size=100).fit(df)
    np.testing.assert_array_equal(est.predict(df[["y", "x", "z"]]), est.predict(df))


# ------------------------------------------------------------------------------------------ 7
_KILLER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from dagmm import OutlierAE, save_detector
    from dagmm.persistence import _fs, io as pio
    where, target = sys.argv[1], sys.argv[2]
    od = OutlierAE(standardize=False).fit(np.load(sys.argv[3]), epochs=1, verbose=False, seed=1)
    od.threshold = 2.0
    kind, n = where.split(":")
    count = [0]
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "write":  # half a weights file, then killed
        def write(tensors, path):
            path.write_bytes(b"half")
            die()
        pio._write_weights = write
    elif kind == "replace":
        real = os.replace
        def replace(src, dst):
            count[0] += 1
            if count[0] == int(n):
                die()
            return real(src, dst)
        _fs.os.replace = replace
    elif kind == "rmtree":  # while the old copy is being deleted
        real_rm = _fs.shutil.rmtree
        def rmtree(path, *a, **k):
            if ".del-" in str(path):
                os.remove(os.path.join(path, "config.json"))
                die()
            return real_rm(path, *a, **k)
        _fs.shutil.rmtree = rmtree
    save_detector(od, target)
    print("finished")
""")


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    X = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    np.save(root / "X.npy", X)
    old = OutlierAEGMM(n_gmm=1).fit(X, epochs=1, verbose=False, seed=0)
    new = OutlierAE(standardize=False).fit(X, epochs=1, verbose=False, seed=1)  # what the child saves
    return root, X, old, new


# the steps of save_detector over an existing detector (dagmm.persistence._fs): write, tmp->new,
# target->old, new->target, old->del, delete
@pytest.mark.parametrize("where", ["write:0", "replace:1", "replace:2", "replace:3", "replace:4", "rmtree:0"])
def test_7_save_detector_killed_at_any_step_leaves_old_or_new(old_and_new, tmp_path, where):
    root, X, old, new = old_and_new
    target = tmp_path / "det"
    save_detector(old, target)
    proc = subprocess.run([sys.executable, "-c", _KILLER, where, str(target), str(root / "X.npy")],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    back = load_detector(target)  # recovers a target that the kill left missing
    if isinstance(back, OutlierAEGMM):  # the same code on the same weights twice: bit for bit
        np.testing.assert_array_equal(back.score(X), old.score(X))
        assert where in ("write:0", "replace:1", "replace:2")
    else:
        np.testing.assert_array_equal(back.score(X)[1], new.score(X)[1])
        assert where in ("replace:3", "replace:4", "rmtree:0")
    save_detector(old, target)  # the next save cleans the dead process's leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det"]


def test_7_dagmm_fit_killed_between_renames(cli_model, tmp_path):
    out = tmp_path / "model"
    train = cli_model / "train.csv"
    assert cli(["fit", str(train), "--out", str(out), "--epochs", "1", "--quiet", "--seed", "3"]) == 0
    before = (out / "preprocessing.json").read_text()
    code = textwrap.dedent("""
        import os, signal, sys
        from dagmm.persistence import _fs
        real = os.replace
        def replace(src, dst):
            if os.path.basename(str(dst)).startswith(".model.old-"):  # the old model is aside, the new not in
                real(src, dst)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        _fs.os.replace = replace
        from dagmm.cli.main import main
        main(sys.argv[1:])
    """)
    proc = subprocess.run([sys.executable, "-c", code, "fit", str(train), "--out", str(out), "--epochs", "1",
                           "--quiet", "--seed", "4"], capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()  # the instant of the report: neither name holds the model
    scores = tmp_path / "s.csv"
    assert cli(["score", str(out), str(train), "--out", str(scores), "--quiet"]) == 0  # the new one, put back
    assert (out / "preprocessing.json").read_text() != before
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # item 10: not mkdtemp's 0700


def test_7_dagmm_fit_failed_replace_leaves_the_old_model_and_no_staging(cli_model, tmp_path, monkeypatch, capsys):
    from dagmm.persistence import _fs

    out = tmp_path / "model"
    train = str(cli_model / "train.csv")
    assert cli(["fit", train, "--out", str(out), "--epochs", "1", "--quiet", "--seed", "3"]) == 0
    before = (out / "preprocessing.json").read_text()
    real = os.replace

    def replace(src, dst):
        if os.path.basename(str(dst)).startswith(".model.old-"):
            raise OSError("device busy")  # the old model cannot be moved aside
        return real(src, dst)

    monkeypatch.setattr(_fs.os, "replace", replace)
    assert cli(["fit", train, "--out", str(out), "--epochs", "1", "--quiet", "--seed", "4"]) == 1
    assert "device busy" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .dagmm-new-* (or any) leftover
    assert (out / "preprocessing.json").read_text() == before


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------ 8
def _registry(tmp_path: Path, members: list, path_in_index: str = "det.tar.gz") -> tuple[str, Path]:
    import hashlib

    root = tmp_path / "registry"
    root.mkdir(exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    (root / "det.tar.gz").write_bytes(blob)
    entry = {"detector_type": "outlier", "dataset": "d", "detector_name": "n", "path": path_in_index,
             "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    (root / "index.json").write_text(json.dumps({"artifacts": [entry]}))
    return root.as_uri() + "/", root


def _fetch(base: str, target: Path, **kw):
    return dagmm.fetch_detector(target, "outlier", "d", "n", base_url=base, **kw)


def test_8_percent_encoded_parent_path_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    base, root = _registry(tmp_path, [("config.json", b"{}")], path_in_index="%2e%2e/outside/det.tar.gz")
    (outside / "det.tar.gz").write_bytes((root / "det.tar.gz").read_bytes())
    with pytest.raises(ValueError, match=r"lists artifact path '%2e%2e/outside/det.tar.gz'; paths must be "
                                         r"relative, without '\.\.' \(also percent-encoded"):
        _fetch(base, tmp_path / "got")
    assert not (tmp_path / "got").exists()


def test_8_archive_bomb_and_member_count_are_capped(tmp_path):
    base, _ = _registry(tmp_path, [("config.json", b"{}"), ("weights.safetensors", bytes(30 << 20))])
    with pytest.raises(ValueError, match=r"expands to more than \d+ bytes .*refusing to extract it"):
        _fetch(base, tmp_path / "got")  # 30 MiB of zeros from a ~30 KB archive: over 50x + 1 MiB
    assert not (tmp_path / "got").exists() and list(tmp_path.glob(".got*")) == []
    base, _ = _registry(tmp_path, [(f"f{i}", b"x") for i in range(10)])
    with pytest.raises(ValueError, match="holds more than 5 members"):
        _fetch(base, tmp_path / "got", max_members=5)
    with pytest.raises(ValueError, match="max_extract_bytes must be a positive integer"):
        _fetch(base, tmp_path / "got", max_extract_bytes=0)


def test_8_duplicate_member_is_a_clear_error(tmp_path):
    base, _ = _registry(tmp_path, [("config.json", b"{}"), ("config.json", b"{}")])
    with pytest.raises(ValueError, match="holds 'config.json' twice"):
        _fetch(base, tmp_path / "got")
    assert not (tmp_path / "got").exists()


# ------------------------------------------------------------------------------------------ 9
def test_9_cli_arguments_are_checked_before_training(cli_model, tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(OutlierAEGMM, "fit", no_training)
    train = str(cli_model / "train.csv")
    (tmp_path / "file.txt").write_text("keep me")
    cases = [
        (["--threshold-perc", "150"], "--threshold-perc must be a percentile in [0, 100], got 150.0."),
        (["--out", str(tmp_path / "file.txt")], "exists and is not a directory"),
        (["--threshold-data", str(tmp_path / "nope.csv")], "--threshold-data: No such file"),
        (["--threshold-data", str(tmp_path / "x.txt")], "Unsupported file type"),
        (["--max-categories", "0"], "--max-categories must be a positive integer"),
    ]
    for extra, message in cases:
        argv = ["fit", train, "--out", str(tmp_path / "m"), "--quiet", *extra]
        if "--out" in extra:
            argv = ["fit", train, "--quiet", *extra]
        assert cli(argv) == 1
        assert message in capsys.readouterr().err
    assert (tmp_path / "file.txt").read_text() == "keep me" and not (tmp_path / "m").exists()
    bad = tmp_path / "thr.csv"
    _table(50).drop(columns="y").to_csv(bad, index=False)  # a threshold file without a fitted column
    assert cli(["fit", train, "--out", str(tmp_path / "m"), "--quiet", "--threshold-data", str(bad)]) == 1
    assert "'y'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- 10
def test_10_score_accepts_a_detector_saved_from_python(tmp_path):
    df = _table(300).drop(columns="code")
    od = OutlierAEGMM(n_gmm=1).fit(df, epochs=1, verbose=False, seed=0)
    od.infer_threshold(df, threshold_perc=90)
    save_detector(od, tmp_path / "det")
    df[["y", "x"]].assign(id=range(300)).to_csv(tmp_path / "t.csv", index=False)  # other order, an id column
    assert cli(["score", str(tmp_path / "det"), str(tmp_path / "t.csv"), "--out", str(tmp_path / "s.csv"),
                "--id-column", "id", "--quiet", "--chunk-rows", "1000"]) == 0
    # CSV text round-trips float64 exactly; one chunk = one batch: the same code on the same rows
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "s.csv")["score"], od.score(df))
    plain = OutlierAE().fit(df.to_numpy(), epochs=1, verbose=False, seed=0)  # fitted on an array: file order
    plain.infer_threshold(df.to_numpy())
    save_detector(plain, tmp_path / "plain")
    df.to_csv(tmp_path / "p.csv", index=False)
    assert cli(["score", str(tmp_path / "plain"), str(tmp_path / "p.csv"), "--out", str(tmp_path / "s2.csv"),
                "--quiet"]) == 0
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "s2.csv")["score"], plain.score(df.to_numpy())[1])


def test_10_error_rows_count_from_the_start_of_the_file(cli_model, tmp_path, capsys):
    df = _table(3000, seed=2)
    df["x"] = df["x"].astype(object)
    df.loc[2400, "x"] = "oops"
    df.to_csv(tmp_path / "bad.csv", index=False)
    assert cli(["score", str(cli_model / "model"), str(tmp_path / "bad.csv"), "--out", str(tmp_path / "s.csv"),
                "--chunk-rows", "1000", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Column 'x' was numeric in training but holds non-numeric values here (e.g. 'oops') in 1 row(s): 2400." \
        in err
    df.loc[2400, "x"] = None
    df.to_csv(tmp_path / "blank.csv", index=False)
    assert cli(["score", str(cli_model / "model"), str(tmp_path / "blank.csv"), "--out", str(tmp_path / "s.csv"),
                "--chunk-rows", "1000", "--quiet"]) == 1
    assert "Column 'x' has NaN or infinite values in 1 row(s): 2400. A blank cell is NaN" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "s.csv.partial").exists()


def _stderr_on_a_terminal(args: list) -> tuple[int, str]:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 0-column pty hides tqdm
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=slave, env=_env())
    os.close(slave)  # the child holds the terminal now; read while it runs
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child exited and closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_10_score_shows_progress_on_a_terminal_unless_quiet(cli_model, tmp_path):
    args = [sys.executable, "-m", "dagmm", "score", str(cli_model / "model"), str(cli_model / "train.csv"),
            "--out", str(tmp_path / "s.csv"), "--chunk-rows", "100"]
    code, shown = _stderr_on_a_terminal(args)
    assert code == 0 and "dagmm score" in shown and "row" in shown, shown
    code, shown = _stderr_on_a_terminal(args + ["--quiet"])
    assert code == 0 and shown == "", shown
    # (piped to a log there is no bar: test_cli_commands checks that errors stay one line)


def test_10_info_shows_the_schedule_that_ran(cli_model, capsys):
    assert cli(["info", str(cli_model / "model")]) == 0
    out = capsys.readouterr().out
    assert "None" not in out.split("training:")[1] and "training: epochs 2, batch " in out
    assert "lr 0.001" in out


def test_10_threshold_assignment_is_checked():
    od = OutlierAE()
    with pytest.raises(TypeError, match="threshold must be a number or None, got str 'abc'"):
        od.threshold = "abc"
    with pytest.raises(ValueError, match="threshold must be a finite number, got nan"):
        od.threshold = float("nan")
    od.threshold = np.float32(1.5)
    assert od.threshold == 1.5 and type(od.threshold) is float


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.__setitem__("modules", "x"), "'modules' must be a JSON object"),
    (lambda c: c["attributes"].__setitem__("score", "x"), "sets 'score' in 'attributes', which is a method"),
    (lambda c: c["attributes"].__setitem__("meta", {}), "sets 'meta' in 'attributes', which is a method or prop"),
    (lambda c: c["attributes"].__setitem__("threshold", "abc"), "attribute 'threshold' in 'attributes' is invalid"),
    (lambda c: c.__setitem__("fitted", [1]), "'fitted' must be a JSON object"),
])
def test_10_hostile_config_sections_are_clear_errors(old_and_new, tmp_path, edit, message):
    _, X, old, _ = old_and_new
    save_detector(old, tmp_path / "det")
    cfg = json.loads((tmp_path / "det" / "config.json").read_text())
    edit(cfg)
    (tmp_path / "det" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        load_detector(tmp_path / "det")


def test_10_closed_pipe_and_interrupt_exit_codes(cli_model, monkeypatch, capsys):
    proc = subprocess.Popen([sys.executable, "-m", "dagmm", "info", str(cli_model / "model")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    proc.stdout.close()  # the reader is gone before dagmm writes: `dagmm info | head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Errno 32" not in err and err == "", err
    from dagmm.cli import commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_info", interrupted)
    assert cli(["info", "x"]) == 130 and "interrupted" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- more
def test_more_tiny_magnitudes_are_not_constant():
    rng = np.random.default_rng(0)
    X = np.c_[rng.normal(size=300) * 1e-9, rng.normal(size=300)]  # a column in other units (e.g. farads)
    od = OutlierAEGMM(n_gmm=1).fit(X, epochs=1, verbose=False, seed=0)
    # the old rule (std <= 1e-7 * max(1, |mean|)) called it constant and divided by 1: the column vanished.
    # Against numpy's float64 std: 300 sums in another order, 300 * EPS64 < 1e-12 relative
    np.testing.assert_allclose(od.scaler_scale_[0], X[:, 0].std(), rtol=1e-12)
    from dagmm.training.scaling import fit_scaling

    _, scale = fit_scaling(np.full((50, 1), 0.1, dtype=np.float32))
    assert scale[0] == 1.0  # float32 0.1 repeated: constant up to float32 rounding
    _, scale = fit_scaling(np.array([[1.7e9], [1.7e9 + 1.0]]))
    assert scale[0] == pytest.approx(0.5, rel=1e-6)  # float64: a variation of 1 on 1.7e9 is kept


def test_more_overflow_after_scaling_is_an_error_not_inf():
    X = np.random.default_rng(0).normal(size=(200, 3))
    od = OutlierAEGMM(n_gmm=1).fit(X, epochs=1, verbose=False, seed=0)
    bad = X[:5].copy()
    bad[3, 1] = 1e300  # finite float64, its z-score does not fit float32
    with pytest.raises(ValueError, match=r"too large for float32 after standardisation .* in 1 row\(s\): 3\."):
        od.score(bad)
    with pytest.raises(ValueError, match=r"contains NaN or infinite values .*in 1 row\(s\): 2"):
        od.score(np.where(np.arange(15).reshape(5, 3) == 7, np.nan, bad))


def test_more_fit_scaling_names_non_finite_columns():
    from dagmm.training.scaling import fit_scaling

    X = np.ones((10, 3))
    X[4, 2] = np.inf
    with pytest.raises(ValueError, match=r"Column\(s\) 'c' hold NaN or infinite values"):
        fit_scaling(X, columns=["a", "b", "c"])
    mean, scale = fit_scaling(np.array([[1.7e308], [-1.7e308], [0.0]]))  # sums would overflow naively
    assert np.isfinite(mean).all() and np.isfinite(scale).all()
    np.testing.assert_allclose(scale, [1.7e308 * np.sqrt(2 / 3)], rtol=1e-15)


def test_more_blank_in_a_numeric_training_column_names_rows_and_fix():
    df = pd.DataFrame({"amount": [1.0, 2.0, None, 4.0] * 5, "k": ["a", "b"] * 10})
    with pytest.raises(ValueError, match=r"Column 'amount' has NaN or infinite values in 5 row\(s\): "
                                         r"2, 6, 10, 14, 18\. A blank cell is NaN: impute them first, or leave the "
                                         r"column out with --exclude amount\."):
        TabularPreprocessor().fit(df)


def test_more_a_file_with_no_rows_still_gets_a_scores_file(cli_model, tmp_path):
    (tmp_path / "empty.csv").write_text("x,y,code\n")
    out = tmp_path / "s.csv"
    assert cli(["score", str(cli_model / "model"), str(tmp_path / "empty.csv"), "--out", str(out), "--quiet"]) == 0
    assert out.read_text().splitlines() == ["row,score,is_outlier"]


def test_more_numbers_written_as_text_are_named_in_the_id_error():
    df = pd.DataFrame({"amount": [f"{i:,} EUR" for i in range(1000, 1100)]})
    with pytest.raises(ValueError, match=r"or numbers written as text, e\.g\. with units or thousands separators"):
        TabularPreprocessor().fit(df)
