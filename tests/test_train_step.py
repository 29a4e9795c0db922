"""The default OutlierAEGMM loss as one node on the C kernels (dagmm.accel.aegmm_loss) against the modules."""

from __future__ import annotations

import pytest
import torch
from conftest import require_fast
from torch import nn

from dagmm import OutlierAEGMM, accel
from dagmm.accel import _lib, _train
from dagmm.models.features import default_recon_features, log_mse_cosine
from dagmm.models.losses import loss_aegmm, loss_mse
from dagmm.models.nets import AEGMMNet, paper_kddcup_nets


@pytest.fixture(autouse=True)
def _built(monkeypatch):
    require_fast()
    monkeypatch.setattr(accel, "enabled", True)


def _model(recon=default_recon_features, n_features=20):
    enc, dec, head = paper_kddcup_nets(n_features)
    return AEGMMNet(enc, dec, head, recon)


def _reference(model, xb, **kw):
    """The loss of the modules, with the estimation network's dropout drawn as the C head draws it.

    The head kernel keeps a unit where ``floor(u + keep)`` is 1 for uniforms ``u = torch.rand(N, h)``
    (three times cheaper than ``nn.Dropout``'s ``bernoulli_``), so in training mode the reference
    applies that mask by hand; in eval mode it is the modules as they are.
    """
    latent = model.encoder(xb)
    x_recon = model.decoder(latent)
    z = torch.cat([latent, model.recon_features(xb, x_recon)], 1)
    lin1, _, drop, lin2, _ = model.gmm_density
    h = torch.tanh(lin1(z))
    if model.training and drop.p:
        keep = 1.0 - drop.p
        h = h * torch.floor(torch.rand(h.shape) + keep) / keep
    return loss_aegmm(xb, x_recon, z, torch.softmax(lin2(h), 1), **kw)


def _both(model, xb, scale=1.0, **kw):
    """(loss, grads) from the modules and from the single node, with the same dropout draws."""
    params = list(model.parameters())
    torch.manual_seed(7)
    ref = _reference(model, xb, **kw) * scale
    ref_grads = torch.autograd.grad(ref, params)
    torch.manual_seed(7)
    loss, x_recon = accel.aegmm_loss(model, xb, loss_aegmm, **kw)
    grads = torch.autograd.grad(loss * scale, params)
    torch.testing.assert_close(x_recon, model.decoder(model.encoder(xb)), rtol=1e-5, atol=1e-6)
    return (ref, ref_grads), (loss * scale, grads)


@pytest.mark.parametrize("recon", [default_recon_features, log_mse_cosine])
@pytest.mark.parametrize("training", [True, False])
def test_loss_and_gradients_match_the_modules(recon, training):
    model = _model(recon).train(training)
    xb = torch.randn(300, 20)
    xb[7] = 0.0  # a zero row: the relative distance divides by the floor on ||x||
    (ref, ref_grads), (loss, grads) = _both(model, xb, w_energy=0.1, w_cov_diag=0.005, cov_eps=1e-6)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


def test_an_incoming_gradient_other_than_one_scales_every_gradient():
    model = _model()
    xb = torch.randn(200, 20)
    (ref, ref_grads), (loss, grads) = _both(model, xb, scale=3.5, w_energy=0.2, w_cov_diag=0.01)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


class _Wrapped(AEGMMNet):
    pass


@pytest.mark.parametrize("case", ["other loss", "subclass", "hooked", "float64", "native off", "user features",
                                  "no grad", "plain estimation net", "sigmoid encoder", "dropping encoder",
                                  "activation last", "decoder width", "strided batch", "not fast"])
def test_falls_back_where_it_does_not_apply(case, monkeypatch):
    model, xb, loss_fn = _model(), torch.randn(50, 20), loss_aegmm
    if case == "other loss":
        loss_fn = loss_mse
    elif case == "subclass":
        model = _Wrapped(model.encoder, model.decoder, model.gmm_density, default_recon_features)
    elif case == "hooked":
        model.register_forward_hook(lambda m, i, o: o)
    elif case == "float64":
        model, xb = model.double(), xb.double()
    elif case == "native off":
        monkeypatch.setattr(accel, "enabled", False)
    elif case == "not fast":  # a build or CPU without the AVX2 + FMA clone
        monkeypatch.setattr(_lib, "FAST", False)
    elif case == "sigmoid encoder":
        model.encoder[1] = nn.Sigmoid()
    elif case == "dropping encoder":
        model.encoder.insert(2, nn.Dropout(0.2))
    elif case == "activation last":  # x' must be a bare Linear
        model.decoder.append(nn.Tanh())
    elif case == "decoder width":  # a decoder that does not map back to the input width
        model.decoder = nn.Sequential(nn.Linear(1, 5))
    elif case == "strided batch":
        xb = torch.randn(20, 50).T
    elif case == "user features":
        model.recon_features = lambda x, r: default_recon_features(x, r)
    elif case == "plain estimation net":
        model.gmm_density = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1))
    if case == "no grad":
        with torch.no_grad():
            assert accel.aegmm_loss(model, xb, loss_fn, 0.1, 0.005) is None
    else:
        assert accel.aegmm_loss(model, xb, loss_fn, 0.1, 0.005) is None


def test_fit_trains_through_the_single_node(monkeypatch, rng):
    calls = []
    real = accel.aegmm_loss

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(accel, "aegmm_loss", spy)
    X = rng.normal(size=(600, 12)).astype("float32")

    def fit():
        # the paper nets without dropout: the modules and the C head draw their dropout masks differently
        torch.manual_seed(0)
        enc, dec, head = paper_kddcup_nets(12, dropout=0.0)
        return OutlierAEGMM(encoder_net=enc, decoder_net=dec, gmm_density_net=head).fit(
            X, epochs=2, batch_size=200, verbose=False, seed=0)

    fast = fit()
    assert calls and all(calls)
    # the same fit on the composed modules ends close by (float32 rounding differs along the way)
    monkeypatch.setattr(accel, "aegmm_loss", lambda *a, **k: None)
    slow = fit()
    for a, b in zip(fast.history_, slow.history_):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def _net(n_features, latent, act, bias=True):
    def stack(widths, last_act=False):
        layers = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(a, b, bias=bias))
            if i < len(widths) - 2 or last_act:
                layers.append(act())
        return nn.Sequential(*layers)

    enc = stack([n_features, 13, 7, latent])
    dec = stack([latent, 7, 13, n_features])
    head = nn.Sequential(nn.Linear(latent + 2, 10), nn.Tanh(), nn.Dropout(0.5), nn.Linear(10, 4), nn.Softmax(dim=1))
    return AEGMMNet(enc, dec, head, default_recon_features)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(20, 1, nn.Tanh, True), (16, 3, nn.ReLU, True), (33, 2, nn.Tanh, False),
                                   (120, 1, nn.Tanh, True)])
@pytest.mark.parametrize("rows", [1, 5, 47, 48, 49, 97, 1000])
def test_training_kernels_match_the_modules(threads, shape, rows, monkeypatch):
    """The node's C calls, rows split over 1-3 threads, against the modules: loss, x' and every gradient."""
    n_features, latent, act, bias = shape
    torch.manual_seed(3)
    model = _net(n_features, latent, act, bias) if n_features != 120 else _model(n_features=120)
    model.eval()  # no dropout: the modules draw their masks with bernoulli_, the head kernel from uniforms
    xb = torch.randn(rows, n_features) * 2.0
    params = list(model.parameters())
    monkeypatch.setattr(_train, "_threads", lambda: threads)
    calls = []
    real = _train.TrainNet.forward
    monkeypatch.setattr(_train.TrainNet, "forward", lambda self, x, t: calls.append(t) or real(self, x, t))
    loss, x_recon = accel.aegmm_loss(model, xb, loss_aegmm, 0.1, 0.005)
    grads = torch.autograd.grad(loss, params)
    assert calls == [threads]  # the C path ran once, with the threads asked for
    if rows < 4:  # a mixture of 4 components needs more rows than this for a covariance: the jitter decides
        return
    ref = loss_aegmm(xb, *model(xb), w_energy=0.1, w_cov_diag=0.005)
    ref_grads = torch.autograd.grad(ref, params)
    # float32 layers summed in another order; the mixture algebra in float64 on both sides
    torch.testing.assert_close(loss, ref.to(loss.dtype), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x_recon, model.decoder(model.encoder(xb)).detach(), rtol=1e-5, atol=1e-5)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4 * max(r.abs().max().item(), 1e-3), msg=name)


def test_training_kernels_check_the_layers():
    model = _model()
    enc, dec = accel._chain(model.encoder), accel._chain(model.decoder)
    net = _train.TrainNet(enc.layers + dec.layers, len(enc.layers), _lib.lib.FEAT_RELATIVE)
    lib = _lib.lib
    x = torch.randn(10, 20)
    acts, z = torch.empty(10 * sum(net.widths)), torch.empty(10, 3)
    norms = torch.empty(10, 5, dtype=torch.float64)
    n_layers = len(net.layers)
    with pytest.raises(ValueError, match="train_forward: the encoder \\(the first n_enc layers\\) must map the 20 "
                                         "inputs of 10 rows to a latent code at most 62 wide"):
        lib.train_forward(x.data_ptr(), 10, 20, net.spec.data_ptr(), n_layers, n_layers, 0,
                          1e-8, 1e-8, acts.data_ptr(), z.data_ptr(), norms.data_ptr(), 48, 1)
    with pytest.raises(ValueError, match="train_forward: 1 to 64 layers and a positive tile"):
        lib.train_forward(x.data_ptr(), 10, 20, net.spec.data_ptr(), n_layers, 4, 0,
                          1e-8, 1e-8, acts.data_ptr(), z.data_ptr(), norms.data_ptr(), 0, 1)


def test_a_parameter_changed_between_forward_and_backward_is_caught():
    model = _model()
    loss, _ = accel.aegmm_loss(model, torch.randn(64, 20), loss_aegmm, 0.1, 0.005)
    with torch.no_grad():
        model.encoder[0].weight.mul_(2.0)  # the backward would read the changed weights through raw addresses
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_kernel_threads_takes_torch_threads_only_inside_and_gives_them_back():
    torch.set_num_threads(2)
    try:
        assert _train._threads() == 1 and torch.get_num_threads() == 2  # outside: torch untouched
        with accel.kernel_threads():
            assert torch.get_num_threads() == 2  # nothing taken before a kernel step
            assert _train._threads() == 2 and torch.get_num_threads() == 1
            assert _train._threads() == 2  # the same count for every later step
            with accel.kernel_threads():  # nested (a fit inside a callback): its own count
                assert _train._threads() == 1
            assert _train._threads() == 2 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"), accel.kernel_threads():
            _train._threads()
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(2)


def test_training_kernels_reuse_activation_buffers_only_once_free():
    """Activations of a step stay intact while its graph lives (two losses alive, a second backward
    with retain_graph), and the buffer is reused once the graph is gone."""
    model = _model()
    params = list(model.parameters())
    xa, xb = torch.randn(100, 20), torch.randn(100, 20) * 3.0

    def loss_of(x):
        torch.manual_seed(5)
        return accel.aegmm_loss(model, x, loss_aegmm, 0.1, 0.005)[0]

    torch.manual_seed(5)
    ref_a = torch.autograd.grad(accel.aegmm_loss(model, xa, loss_aegmm, 0.1, 0.005)[0], params)
    torch.manual_seed(5)
    ref_b = torch.autograd.grad(accel.aegmm_loss(model, xb, loss_aegmm, 0.1, 0.005)[0], params)
    loss_a = loss_of(xa)
    loss_b = loss_of(xb)  # a forward while loss_a's activations are still needed
    first = torch.autograd.grad(loss_a, params, retain_graph=True)
    torch.autograd.grad(loss_b, params)
    del loss_b
    loss_of(xb)  # another forward between two backwards of loss_a
    again = torch.autograd.grad(loss_a, params)
    for g, h, r in zip(first, again, ref_a):
        torch.testing.assert_close(g, r)
        torch.testing.assert_close(h, r)
    del loss_a
    # every graph is gone now: the next forward takes a pooled buffer instead of a new one
    pool = _train._POOL.entries
    before = [entry[0].data_ptr() for entry in pool]
    assert before and all(entry[1]() is None for entry in pool)
    loss = loss_of(xb)
    assert [entry[0].data_ptr() for entry in pool] == before  # no new buffer
    assert sum(entry[1]() is not None for entry in pool) == 1  # one of them is this step's
    # a batch of another size drops the free buffers of the old size
    loss_of(xb[:50])
    assert all(entry[0].numel() == 50 * sum((w + 7) // 8 * 8 for w in (60, 30, 10, 1, 10, 30, 60))
               or entry[1]() is not None for entry in pool)
    for g, r in zip(torch.autograd.grad(loss, params), ref_b):
        torch.testing.assert_close(g, r)
