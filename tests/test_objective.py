"""The closed-form gradient of the mixture objective (dagmm.models.losses) against autograd through dagmm.models.gmm.

The C kernel of the same objective is compared with this code in ``test_native.py``.
"""

from __future__ import annotations

import pytest
import torch

from dagmm.models.gmm import (
    CholeskyError,
    batch_gmm_params,
    cholesky_with_jitter,
    cov_diag_penalty,
    precision_cholesky,
    sample_energy,
)
from dagmm.models.losses import mixture_objective

from conftest import float64_reordered


def _reference(z, gamma, w_energy, w_cov_diag, cov_eps):
    phi, mu, cov = batch_gmm_params(z, gamma)
    chol, eps = cholesky_with_jitter(cov, cov_eps)
    return w_energy * sample_energy(z, phi, mu, precision_cholesky(chol)).mean() + w_cov_diag * cov_diag_penalty(cov, eps)


def _inputs(n, d, k, dtype=torch.float64, offset=5.0):
    z = torch.randn(n, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64) + offset
    gamma = torch.softmax(2 * torch.randn(n, k, dtype=torch.float64), 1)
    return z.to(dtype).requires_grad_(True), gamma.to(dtype).requires_grad_(True)


@pytest.mark.parametrize("n,d,k", [(1024, 3, 4), (64, 2, 1), (200, 5, 3), (30, 4, 6)])
@pytest.mark.parametrize("weights", [(0.1, 0.005), (0.3, 0.0), (0.0, 0.02)])
def test_value_and_gradients_match_autograd(n, d, k, weights):
    z, gamma = _inputs(n, d, k)
    ref = _reference(z, gamma, *weights, 1e-6)
    got = mixture_objective(z, gamma, *weights, 1e-6)
    # two float64 formulas of one value: ~N*D*D operations (N energies of D x D solves, then the mean),
    # each rounding by EPS64 at the size of the terms
    torch.testing.assert_close(got, ref, **float64_reordered(ref, n * d * d + 64))
    g_ref = torch.autograd.grad(3.0 * ref, [z, gamma], allow_unused=True)
    g_got = torch.autograd.grad(3.0 * got, [z, gamma])
    for a, b in zip(g_got, g_ref):
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12 * max(1.0, b.abs().max().item()))


def test_gradcheck_small_problem():
    z, gamma = _inputs(25, 2, 2, offset=0.0)
    assert torch.autograd.gradcheck(lambda a, b: mixture_objective(a, b, 0.1, 0.005, 1e-6), (z, gamma))


def test_float32_inputs_get_float32_gradients_and_float64_value():
    z, gamma = _inputs(300, 3, 4, dtype=torch.float32)
    out = mixture_objective(z, gamma, 0.1, 0.005)
    assert out.dtype == torch.float64
    gz, gg = torch.autograd.grad(out, [z, gamma])
    assert gz.dtype == torch.float32 and gg.dtype == torch.float32
    ref = torch.autograd.grad(_reference(z, gamma, 0.1, 0.005, 1e-6), [z, gamma])
    torch.testing.assert_close(gz, ref[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gg, ref[1], rtol=1e-5, atol=1e-7)


def test_degenerate_dimension_uses_the_same_raised_jitter():
    z, gamma = _inputs(100, 3, 2)
    z = torch.cat([z[:, :2], torch.full_like(z[:, :1], 0.5)], 1).detach().requires_grad_(True)  # constant column
    ref = _reference(z, gamma, 0.1, 0.005, 1e-12)
    got = mixture_objective(z, gamma, 0.1, 0.005, 1e-12)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)
    for a, b in zip(torch.autograd.grad(got, [z, gamma]), torch.autograd.grad(ref, [z, gamma])):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9 * b.abs().max().item())


def test_non_finite_latent_raises_cholesky_error():
    z, gamma = _inputs(50, 3, 2)
    with torch.no_grad():
        z[3, 1] = float("nan")
    with pytest.raises(CholeskyError, match="NaN or inf"):
        mixture_objective(z, gamma, 0.1, 0.005)


def test_cholesky_failure_message_names_components_and_jitter():
    z, gamma = _inputs(40, 3, 3)
    with torch.no_grad():
        z[:, 2] = float("inf")
    with pytest.raises(CholeskyError) as err:
        mixture_objective(z, gamma, 0.1, 0.005, 1e-6)
    assert str(err.value) == (
        "Cholesky factorisation of the GMM covariance failed for component(s) [0, 1, 2] even with diagonal "
        "jitter 1.0e+00 (the covariance contains NaN or inf: training diverged). Try a larger `cov_eps`, a "
        "larger `batch_size`, fewer components (`n_gmm`), a lower learning rate, or standardising the input features."
    )


def test_strided_memberships_light_component_and_scaled_gradient():
    # gamma as a transposed view (as the C head kernel returns it), a component with little
    # mass (~0.03 of the batch's 120), and an incoming gradient other than 1
    z, _ = _inputs(120, 3, 1)
    logits = 3 * torch.randn(3, 120, dtype=torch.float64)
    logits[1] -= 8.0
    gamma = torch.softmax(logits, 0).T.detach().requires_grad_(True)  # (N, K), strides (1, N)
    assert not gamma.is_contiguous()
    ref = _reference(z, gamma, 0.1, 0.005, 1e-6)
    got = mixture_objective(z, gamma, 0.1, 0.005, 1e-6)
    torch.testing.assert_close(got, ref, **float64_reordered(ref, 120 * 3 * 3 + 64))  # as above
    for a, b in zip(torch.autograd.grad(-2.5 * got, [z, gamma]), torch.autograd.grad(-2.5 * ref, [z, gamma])):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * b.abs().max().item())
