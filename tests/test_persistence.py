"""save_detector / load_detector: exact round trips, atomic writes and clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dagmm
from dagmm import OutlierAE, OutlierAEGMM, load_detector, save_detector
from dagmm.persistence import architecture, io as pio
from dagmm.persistence.architecture import build_module, describe_module


# ---------------------------------------------------------------------------- helpers
def _fitted_attrs(od) -> dict:
    return {k: v for k, v in vars(od).items() if k.endswith("_") and not k.startswith("_")}


def _assert_same_value(a, b, name):
    assert type(a) is type(b), name
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.device == b.device and torch.equal(a, b), name
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), name
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_value(x, y, f"{name}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), name
        for k in a:
            _assert_same_value(a[k], b[k], f"{name}[{k!r}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), name
    else:
        assert a == b, name


def _scores(od, X):
    s = od.score(X)
    return s if isinstance(s, tuple) else (s,)


def _roundtrip(od, path, X=None, **load_kw):
    save_detector(od, path)
    back = load_detector(path, **load_kw)
    assert type(back) is type(od)
    for attr in ("threshold", "data_type", "device", "_fitted", "default_architecture", "n_gmm", "cov_eps"):
        if hasattr(od, attr):
            assert getattr(back, attr) == getattr(od, attr), attr
    assert _fitted_attrs(back).keys() == _fitted_attrs(od).keys()
    for name, value in _fitted_attrs(od).items():
        _assert_same_value(value, getattr(back, name), name)
    if X is not None and od._fitted:
        for a, b in zip(_scores(od, X), _scores(back, X)):
            assert a.dtype == b.dtype and np.array_equal(a, b)  # bit for bit
        if od.threshold is not None:
            pa, pb = od.predict(X), back.predict(X)
            assert pa["meta"] == pb["meta"]
            for key, value in pa["data"].items():
                _assert_same_value(value, pb["data"][key], key)
    return back


def _edit_config(path: Path, fn) -> None:
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def _mlp_nets(n_features: int, latent: int = 2, n_gmm: int = 2) -> dict:
    enc = nn.Sequential(nn.Linear(n_features, 16), nn.LeakyReLU(0.1), nn.Linear(16, latent))
    dec = nn.Sequential(nn.Linear(latent, 16), nn.ELU(0.7), nn.Linear(16, n_features))
    dens = nn.Sequential(nn.Linear(latent + 2, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, n_gmm), nn.Softmax(dim=1))
    return {"encoder_net": enc, "decoder_net": dec, "gmm_density_net": dens}


class MyEncoder(nn.Module):
    """A user module dagmm cannot describe."""

    def __init__(self, n_features: int = 10, latent: int = 2) -> None:
        super().__init__()
        self.lin = nn.Linear(n_features, latent)

    def forward(self, x):
        return torch.tanh(self.lin(x)) * 2.0


def my_recon_features(x, x_recon):
    return (x - x_recon).square().mean(1, keepdim=True)  # (N, 1)


@pytest.fixture
def data(tabular):
    X_train, X_test, _ = tabular
    return X_train[:300], X_test[:200]


@pytest.fixture
def fitted_aegmm(data):
    od = OutlierAEGMM(n_gmm=2, data_type="tabular").fit(data[0], epochs=1, verbose=False, seed=0)
    od.infer_threshold(data[0], threshold_perc=90)
    return od


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("with_threshold", [True, False])
def test_aegmm_default_fitted_roundtrip(data, tmp_path, with_threshold):
    od = OutlierAEGMM(n_gmm=2, data_type="tabular").fit(data[0], epochs=1, verbose=False, seed=0)
    if with_threshold:
        od.infer_threshold(data[0], threshold_perc=90)
    back = _roundtrip(od, tmp_path / "det", data[1])
    assert back.default_architecture and back.aegmm.training == od.aegmm.training
    assert str(back.aegmm) == str(od.aegmm)
    for name in ("error_scale_", "residual_mean_", "residual_prec_chol_", "residual_means_", "residual_prec_chols_"):
        got, want = getattr(back, name), getattr(od, name)
        assert want is not None and got.dtype == want.dtype and np.array_equal(got, want), name


def test_aegmm_user_nets_fitted_roundtrip(data, tmp_path):
    od = OutlierAEGMM(**_mlp_nets(10), n_gmm=2).fit(data[0], epochs=1, verbose=False, seed=1)
    od.infer_threshold(data[0])
    back = _roundtrip(od, tmp_path / "det", data[1])
    assert not back.default_architecture and str(back.aegmm) == str(od.aegmm)


@pytest.mark.parametrize("user_nets", [False, True])
def test_unfitted_roundtrip_then_fits_identically(data, tmp_path, user_nets):
    od = OutlierAEGMM(**(_mlp_nets(10) if user_nets else {}), n_gmm=2, cov_eps=1e-5)
    back = _roundtrip(od, tmp_path / "det")
    assert back._fitted is False and back.threshold is None and back.cov_eps == 1e-5
    assert (back.aegmm is None) == (not user_nets)
    a = od.fit(data[0], epochs=1, verbose=False, seed=3).score(data[1])
    b = back.fit(data[0], epochs=1, verbose=False, seed=3).score(data[1])
    np.testing.assert_array_equal(a, b)


def test_ae_tabular_roundtrip_fitted_and_unfitted(data, tmp_path):
    od = OutlierAE(data_type="tabular")
    back = _roundtrip(od, tmp_path / "unfitted")
    assert back.ae is None and back._fitted is False
    od.fit(data[0], epochs=1, verbose=False, seed=0)
    back = _roundtrip(od, tmp_path / "fitted", data[1])
    od.infer_threshold(data[0], outlier_perc=50)
    _roundtrip(od, tmp_path / "fitted", data[1])  # replaces the saved one


def test_ae_image_default_conv_roundtrip(digits_images, tmp_path):
    X = digits_images[:64]
    od = OutlierAE(data_type="image").fit(X, epochs=1, batch_size=32, verbose=False, seed=0)
    od.infer_threshold(X)
    back = _roundtrip(od, tmp_path / "det", X)
    cfg = json.loads((tmp_path / "det" / "config.json").read_text())
    assert cfg["modules"]["ae"]["architecture"]["encoder"] == {
        "type": "dagmm.ConvEncoder", "args": {"image_shape": [1, 16, 16], "channels_last": True, "latent_dim": 32,
                                              "widths": [32, 64]}}
    np.testing.assert_array_equal(od.reconstruct(X), back.reconstruct(X))


def test_ae_user_conv_sequential_with_batchnorm(digits_images, tmp_path):
    X = np.ascontiguousarray(digits_images[:64].transpose(0, 3, 1, 2))  # (N, 1, 16, 16)
    enc = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.GELU(approximate="tanh"),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.LayerNorm(8))
    dec = nn.Sequential(nn.Linear(8, 4 * 4 * 4), nn.Softplus(beta=2.0), nn.Unflatten(1, (4, 4, 4)),
                        nn.ConvTranspose2d(4, 1, 4, stride=4), nn.Identity())
    od = OutlierAE(encoder_net=enc, decoder_net=dec).fit(X, epochs=1, batch_size=32, verbose=False, seed=0)
    back = _roundtrip(od, tmp_path / "det", X)
    assert str(back.ae) == str(od.ae)
    torch.testing.assert_close(back.ae.encoder[1].running_var, od.ae.encoder[1].running_var, rtol=0, atol=0)


def test_custom_module_passed_at_load(data, tmp_path):
    od = OutlierAEGMM(**{**_mlp_nets(10), "encoder_net": MyEncoder()}, n_gmm=2)
    od.fit(data[0], epochs=1, verbose=False, seed=0)
    save_detector(od, tmp_path / "det")
    cfg = json.loads((tmp_path / "det" / "config.json").read_text())
    assert cfg["modules"]["aegmm"]["architecture"]["encoder"]["custom"] == f"{__name__}.MyEncoder"
    with pytest.raises(ValueError, match=r"custom module .*MyEncoder.*load_detector\(path, encoder_net=\.\.\.\)"):
        load_detector(tmp_path / "det")
    _roundtrip(od, tmp_path / "det", data[1], encoder_net=MyEncoder())
    with pytest.raises(ValueError, match="do not match the architecture of aegmm"):
        load_detector(tmp_path / "det", encoder_net=MyEncoder(latent=3))
    with pytest.raises(TypeError, match=r"argument\(s\) \['ae'\] that the saved OutlierAEGMM does not use"):
        load_detector(tmp_path / "det", encoder_net=MyEncoder(), ae=nn.Identity())


def test_custom_recon_features_passed_at_load(data, tmp_path):
    dens = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Softmax(dim=1))
    od = OutlierAEGMM(**{**_mlp_nets(10), "gmm_density_net": dens}, recon_features=my_recon_features)
    od.fit(data[0], epochs=1, verbose=False, seed=0)
    save_detector(od, tmp_path / "det")
    with pytest.raises(ValueError, match=r"custom function .*my_recon_features.*load_detector\(path, recon_features="):
        load_detector(tmp_path / "det")
    back = _roundtrip(od, tmp_path / "det", data[1], recon_features=my_recon_features)
    assert back.recon_features is my_recon_features and back.aegmm.recon_features is my_recon_features


def test_any_underscore_attribute_round_trips(fitted_aegmm, data, tmp_path):
    od = fitted_aegmm
    od.extra_ = {"pair": (1, 2.5), "ids": np.arange(5, dtype=np.int16), "half": torch.ones(2, dtype=torch.float16),
                 "nested": [np.float32(1.5), None, "x", {"__tuple__": 1}], "flag": np.bool_(True),
                 "tricky": {"__tensor__": "not a tensor", "shape": 3}}
    od.nan_ = float("nan")
    od.inf_ = (float("-inf"), np.array([[1.0, 2.0]], dtype=">f8"))
    save_detector(od, tmp_path / "det")
    text = (tmp_path / "det" / "config.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = load_detector(tmp_path / "det")
    assert back.extra_["pair"] == (1, 2.5) and back.extra_["nested"] == [1.5, None, "x", {"__tuple__": 1}]
    assert back.extra_["ids"].dtype == np.int16 and back.extra_["half"].dtype == torch.float16
    assert back.extra_["flag"] is True and np.isnan(back.nan_)
    assert back.extra_["tricky"] == {"__tensor__": "not a tensor", "shape": 3}
    assert back.inf_[0] == float("-inf") and back.inf_[1].dtype == np.float64 and back.inf_[1].tolist() == [[1, 2]]
    od.bad_ = object()
    with pytest.raises(TypeError, match=r"Cannot save attribute 'bad_' of OutlierAEGMM: builtins.object values"):
        save_detector(od, tmp_path / "det2")
    assert not (tmp_path / "det2").exists()


def test_every_listed_layer_rebuilds_exactly():
    seq = nn.Sequential(
        nn.Linear(6, 8, bias=False), nn.ReLU(), nn.LeakyReLU(0.3), nn.ELU(0.4), nn.CELU(0.9), nn.SELU(), nn.GELU(),
        nn.SiLU(), nn.Mish(), nn.Softsign(), nn.Softplus(1.5, 15), nn.Tanhshrink(), nn.Hardtanh(-2.0, 2.0),
        nn.Hardsigmoid(), nn.Hardswish(), nn.LogSigmoid(), nn.PReLU(8), nn.ReLU6(), nn.Sigmoid(), nn.Tanh(),
        nn.Dropout(0.2), nn.AlphaDropout(0.1), nn.BatchNorm1d(8, eps=1e-3, momentum=None), nn.LayerNorm(8, bias=False),
        nn.GroupNorm(2, 8), nn.Unflatten(1, (2, 4)), nn.Conv1d(2, 3, 2, padding=1, padding_mode="reflect"),
        nn.ConvTranspose1d(3, 2, 2, stride=2, output_padding=1), nn.MaxPool1d(2, ceil_mode=True), nn.AvgPool1d(2),
        nn.AdaptiveAvgPool1d(3), nn.Flatten(), nn.Identity(), nn.Linear(6, 4), nn.LogSoftmax(dim=1),
        nn.Softmax(dim=-1),
    )
    desc = json.loads(json.dumps(describe_module(seq, "encoder_net")))  # through real JSON
    rebuilt = build_module(desc, {})
    assert str(rebuilt) == str(seq)
    rebuilt.load_state_dict(seq.state_dict())
    x = torch.randn(5, 6)
    torch.testing.assert_close(rebuilt.eval()(x), seq.eval()(x), rtol=0, atol=0)


def test_named_sequential_and_subclassed_layer():
    from collections import OrderedDict

    class MyLinear(nn.Linear):
        pass

    named = nn.Sequential(OrderedDict(first=nn.Linear(3, 2), act=nn.Tanh()))
    assert set(build_module(describe_module(named, "x"), {}).state_dict()) == {"first.weight", "first.bias"}
    desc = describe_module(nn.Sequential(nn.Linear(3, 2), MyLinear(2, 2)), "decoder_net")
    assert desc["argument"] == "decoder_net" and desc["custom"] == "torch.nn.modules.container.Sequential"
    assert "MyLinear is not a layer dagmm rebuilds" in desc["reason"]


def test_loading_keeps_global_random_state(fitted_aegmm, tmp_path):
    save_detector(fitted_aegmm, tmp_path / "det")
    before = torch.get_rng_state()
    load_detector(tmp_path / "det")
    assert torch.equal(before, torch.get_rng_state())


# ---------------------------------------------------------------------------- devices
def test_cuda_saved_detector_loads_on_cpu_with_warning(fitted_aegmm, data, tmp_path, monkeypatch):
    path = tmp_path / "det"
    save_detector(fitted_aegmm, path)
    _edit_config(path, lambda c: c.update(device="cuda:0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"saved on cuda:0, which is not available here; loading it on the CPU"):
        back = load_detector(path)
    assert back.device == torch.device("cpu") and back.phi_.device.type == "cpu"
    np.testing.assert_array_equal(back.score(data[1]), fitted_aegmm.score(data[1]))
    assert load_detector(path, device="cpu").device == torch.device("cpu")  # override: no warning needed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_detector_roundtrip_and_cpu_load(data, tmp_path):
    od = OutlierAEGMM(n_gmm=2, device="cuda").fit(data[0], epochs=1, verbose=False, seed=0)
    od.infer_threshold(data[0])
    back = _roundtrip(od, tmp_path / "det", data[1])
    assert back.phi_.device.type == "cuda" and next(back.aegmm.parameters()).device.type == "cuda"
    cpu = load_detector(tmp_path / "det", device="cpu")
    assert cpu.phi_.device.type == "cpu" and next(cpu.aegmm.parameters()).device.type == "cpu"
    np.testing.assert_allclose(cpu.score(data[1]), od.score(data[1]), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- atomic writes
def test_crash_while_saving_keeps_old_detector(fitted_aegmm, data, tmp_path, monkeypatch):
    path = tmp_path / "det"
    save_detector(fitted_aegmm, path)
    other = OutlierAE().fit(data[0], epochs=1, verbose=False, seed=0)

    def crash(tensors, target):
        target.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pio, "_write_weights", crash)
    with pytest.raises(OSError, match="disk full"):
        save_detector(other, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det"]  # no half-written sibling left
    np.testing.assert_array_equal(load_detector(path).score(data[1]), fitted_aegmm.score(data[1]))
    monkeypatch.undo()
    save_detector(other, path)  # a complete save replaces it
    assert isinstance(load_detector(path), OutlierAE) and sorted(p.name for p in tmp_path.iterdir()) == ["det"]


def test_crash_during_swap_keeps_old_detector(fitted_aegmm, data, tmp_path, monkeypatch):
    from dagmm.persistence import _fs

    path = tmp_path / "det"
    save_detector(fitted_aegmm, path)
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old moved aside, new about to move in
            raise OSError("power cut")
        return real(src, dst)

    monkeypatch.setattr(_fs.os, "replace", replace)
    with pytest.raises(OSError, match="power cut"):
        save_detector(OutlierAE(), path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det"]
    assert isinstance(load_detector(path), OutlierAEGMM)


def test_refuses_to_overwrite_other_paths(fitted_aegmm, tmp_path):
    (tmp_path / "file.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="Refusing to overwrite .*file.txt: it exists and is not a directory"):
        save_detector(fitted_aegmm, tmp_path / "file.txt")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="it is not a saved dagmm detector"):
        save_detector(fitted_aegmm, tmp_path / "dir")
    assert (tmp_path / "dir" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    save_detector(fitted_aegmm, tmp_path / "empty")  # an empty directory is fine
    assert isinstance(load_detector(tmp_path / "empty"), OutlierAEGMM)


def test_only_known_detector_classes_are_saved(tmp_path):
    class Mine(OutlierAE):
        pass

    with pytest.raises(TypeError, match="save_detector saves OutlierAEGMM, OutlierAE, DAGMM detectors, got"):
        save_detector(Mine(), tmp_path / "det")


# ---------------------------------------------------------------------------- bad files
@pytest.fixture
def saved(fitted_aegmm, tmp_path):
    path = tmp_path / "det"
    save_detector(fitted_aegmm, path)
    return path


def test_missing_paths(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="No saved detector at .*nowhere: the directory does not exist"):
        load_detector(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json: it is not a detector saved by"):
        load_detector(tmp_path / "empty")
    (saved / "weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights.safetensors: the save was incomplete"):
        load_detector(saved)


def test_truncated_and_corrupted_weights(saved):
    w = saved / "weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"is truncated or corrupted: it has \d+ bytes but config.json records"):
        load_detector(saved)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    w.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="is corrupted: its SHA-256 does not match the one in config.json"):
        load_detector(saved)
    # A file whose size and checksum were recorded but which is not safetensors at all
    junk = b"\x00" * 64
    w.write_bytes(junk)
    _edit_config(saved, lambda c: c["weights"].update(size=64, sha256=pio._sha256(junk)))
    with pytest.raises(ValueError, match="is not a valid safetensors file"):
        load_detector(saved)


def test_invalid_json_and_newer_format(saved):
    cfg = (saved / "config.json").read_text()
    (saved / "config.json").write_text(cfg[:-20])
    with pytest.raises(ValueError, match="config.json is not valid JSON .*the file is damaged"):
        load_detector(saved)
    (saved / "config.json").write_text(cfg)
    _edit_config(saved, lambda c: c.update(format_version=pio.FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=rf"saved in format_version {pio.FORMAT_VERSION + 1} by dagmm .* "
                                         "Upgrade dagmm to load it"):
        load_detector(saved)
    _edit_config(saved, lambda c: c.pop("format_version"))
    with pytest.raises(ValueError, match="has no integer format_version"):
        load_detector(saved)


def test_unknown_class_and_layer(saved):
    _edit_config(saved, lambda c: c.update({"class": "os.system"}))
    with pytest.raises(ValueError, match=r"names detector class 'os.system', which dagmm cannot load"):
        load_detector(saved)
    _edit_config(saved, lambda c: c.update({"class": "OutlierAEGMM"}))

    def layer(c):
        c["modules"]["aegmm"]["architecture"]["encoder"]["layers"][1]["type"] = "subprocess.Popen"
    _edit_config(saved, layer)
    with pytest.raises(ValueError, match=r"aegmm.encoder layer 1 has unknown layer type 'subprocess.Popen'"):
        load_detector(saved)


def test_shapes_not_matching_architecture(saved):
    def widen(c):
        c["modules"]["aegmm"]["architecture"]["encoder"]["layers"][0]["args"]["out_features"] = 61
        c["modules"]["aegmm"]["architecture"]["encoder"]["layers"][2]["args"]["in_features"] = 61
    _edit_config(saved, widen)
    with pytest.raises(ValueError, match=r"(?s)do not match the architecture of aegmm in config.json: .*size mismatch "
                                         r"for encoder.0.weight"):
        load_detector(saved)


def test_fitted_tensor_shape_checked(saved):
    _edit_config(saved, lambda c: c["fitted"]["phi_"].update(shape=[3]))
    with pytest.raises(ValueError, match=r"Tensor 'fitted.phi_' in weights.safetensors has shape \[2\] but "
                                         r"config.json records \[3\]"):
        load_detector(saved)


def test_cli_info_reads_saved_detector(saved, capsys):
    from types import SimpleNamespace

    from dagmm.cli.commands import cmd_info

    assert cmd_info(SimpleNamespace(model=str(saved))) == 0
    out = capsys.readouterr().out
    assert "detector: OutlierAEGMM" in out and "components (n_gmm): 2" in out


def test_registry_of_callables_is_by_identity():
    # registry names are the saved format's (the pre-layout module path), not where the function lives now
    assert architecture.callable_name(dagmm.models.features.default_recon_features) == \
        "dagmm.features.default_recon_features"
    assert architecture.callable_name(lambda x, y: x) is None


# ---------------------------------------------------------------------------- DAGMM estimator (nested detector)
def test_dagmm_estimator_with_nested_detector(data, tmp_path):
    from dagmm import DAGMM

    est = DAGMM(comp_hiddens=(16, 3), est_hiddens=(8, 2), minibatch_size=64, epoch_size=1,
                random_seed=5).fit(data[0])
    save_detector(est, tmp_path / "est")
    cfg = json.loads((tmp_path / "est" / "config.json").read_text())
    assert cfg["class"] == "DAGMM" and cfg["constructor"]["comp_hiddens"] == {"__tuple__": [16, 3]}
    assert cfg["fitted"]["detector_"]["__detector__"]["class"] == "OutlierAEGMM"
    back = load_detector(tmp_path / "est")
    assert type(back) is DAGMM and back.get_params() == est.get_params()
    assert back.x_mean_.dtype == np.float64 and back.n_features_in_ == 10
    np.testing.assert_array_equal(back.predict(data[1]), est.predict(data[1]))
    _roundtrip(est.detector_, tmp_path / "inner", data[1])
    unscaled = DAGMM(comp_hiddens=(16, 3), est_hiddens=(8, 2), minibatch_size=64, epoch_size=1,
                     normalize=False).fit(data[0])
    save_detector(unscaled, tmp_path / "est")  # normalize=False stores None
    assert load_detector(tmp_path / "est").x_mean_ is None


def test_tensor_on_indexed_cuda_device_counts_as_detector_device():
    from dagmm.persistence.values import _same_device

    assert _same_device(torch.device("cuda:0"), torch.device("cuda"))  # device="cuda" puts tensors on cuda:0
    assert _same_device(torch.device("cuda:1"), torch.device("cuda:1"))
    assert not _same_device(torch.device("cuda:1"), torch.device("cuda:0"))
    assert not _same_device(torch.device("cpu"), torch.device("cuda"))
    assert _same_device(torch.device("cpu"), torch.device("cpu"))


def test_config_cannot_set_dunder_attributes(saved):
    _edit_config(saved, lambda c: c["attributes"].update(__dict__={"threshold": 1.0}))
    with pytest.raises(ValueError, match=r"names attribute '__dict__' in 'attributes', which is not a plain"):
        load_detector(saved)


def test_whole_custom_ae_passed_at_load(data, tmp_path):
    class MyAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(10, 10)

        def forward(self, x):
            return self.lin(x)

    od = OutlierAE(ae=MyAE()).fit(data[0], epochs=1, verbose=False, seed=0)
    save_detector(od, tmp_path / "det")
    with pytest.raises(ValueError, match=r"custom module .*MyAE \(ae\).*load_detector\(path, ae=\.\.\.\)"):
        load_detector(tmp_path / "det")
    _roundtrip(od, tmp_path / "det", data[1], ae=MyAE())
