"""dagmm.training.scaling.fit_scaling over parts of the rows (its ``reduce`` hook) against the whole."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dagmm.training.scaling import fit_scaling


def _in_parts(parts, **kwargs):
    """fit_scaling on each part in its own thread, the reductions exchanged as an all-reduce would."""
    barrier = threading.Barrier(len(parts))
    slots: list = [None] * len(parts)
    results: list = [None] * len(parts)

    def run(i):
        def reduce(a, op):
            slots[i] = a.copy()
            barrier.wait()
            out = np.sum(slots, axis=0) if op == "sum" else np.max(slots, axis=0)
            barrier.wait()  # every holder has read the slots before they are reused
            return out

        try:
            results[i] = fit_scaling(parts[i], reduce=reduce, **kwargs)
        except Exception as err:  # reported to the caller, as every rank would raise it
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_parts_give_the_scaling_of_the_whole():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(1.7e9, 10, 999), rng.normal(0, 1e-9, 999), np.full(999, 3.0),
                         rng.exponential(5, 999)])  # (999, 4): an offset, tiny units, a constant, a skew
    mean, scale = fit_scaling(X)
    for got_mean, got_scale in _in_parts([X[:100], X[100:700], X[700:]]):
        # float64 sums of the same terms in another grouping: a few ulps of the sums
        np.testing.assert_allclose(got_mean, mean, rtol=1e-12)
        np.testing.assert_allclose(got_scale, scale, rtol=1e-9)
    assert scale[2] == 1.0  # the constant column keeps scale 1 in parts too


def test_a_nan_in_one_part_is_an_error_for_every_part():
    X = np.ones((10, 2))
    X[7, 1] = np.nan
    errors = _in_parts([X[:5], X[5:]], columns=["a", "b"])
    for err in errors:
        assert isinstance(err, ValueError)
        assert str(err).startswith("Column(s) 'b' hold NaN or infinite values")


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
