"""Batched inference in several threads (dagmm.accel.for_each_batch) and the detectors that score through it."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from dagmm import OutlierAE, OutlierAEGMM
from dagmm.accel import for_each_batch, workers_for


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _threads_of_a_new_thread() -> int:
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


@pytest.mark.parametrize("n, batch_size, workers", [(10, 3, 3), (10, 3, 1), (7, 10, 2), (12, 4, 5)])
def test_every_row_once_in_inference_mode_one_torch_thread_each(n, batch_size, workers, two_threads):
    seen = []
    lock = threading.Lock()

    def body(start, stop):
        with lock:
            seen.append((start, stop, torch.is_inference_mode_enabled(), torch.get_num_threads(),
                         threading.current_thread() is threading.main_thread()))

    for_each_batch(body, n, batch_size, workers)
    assert sorted(r for s, e, *_ in seen for r in range(s, e)) == list(range(n))
    assert all(e - s <= batch_size for s, e, *_ in seen)
    assert all(inference for _, _, inference, _, _ in seen)
    if workers > 1:
        assert {threads for *_, threads, _ in seen} == {1}
        assert not any(main for *_, main in seen)
    else:
        assert all(main for *_, main in seen) and {threads for *_, threads, _ in seen} == {2}
    # the caller's setting, and the default of threads started later, are as before
    assert torch.get_num_threads() == 2 and _threads_of_a_new_thread() == 2


def test_first_error_is_raised_and_stops_the_others(two_threads):
    done = []

    def body(start, stop):
        if start == 4:
            raise KeyError("batch at 4")
        done.append(start)

    with pytest.raises(KeyError, match="batch at 4"):
        for_each_batch(body, 1000, 2, 2)
    assert len(done) < 499  # the other thread stopped early
    assert torch.get_num_threads() == 2 and _threads_of_a_new_thread() == 2


def test_workers_follow_torch_threads_and_batches(two_threads):
    cpu = torch.device("cpu")
    assert workers_for(cpu, 10) == 2
    assert workers_for(cpu, 1) == 1
    assert workers_for(torch.device("cuda"), 10) == 1
    torch.set_num_threads(1)
    assert workers_for(cpu, 10) == 1


def test_detectors_score_the_same_in_parallel_and_in_one_thread(tabular, two_threads):
    X_train, X_test, _ = tabular
    aegmm = OutlierAEGMM(n_gmm=2, architecture="paper").fit(X_train[:400], epochs=1, batch_size=100,
                                                            verbose=False, seed=0)
    ae = OutlierAE().fit(X_train[:400], epochs=1, verbose=False, seed=0)
    parallel = [aegmm.score(X_test, batch_size=37), *ae.score(X_test, batch_size=37)]
    torch.set_num_threads(1)
    serial = [aegmm.score(X_test, batch_size=37), *ae.score(X_test, batch_size=37)]
    for a, b in zip(parallel, serial):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


class _Picky(torch.nn.Module):
    """An encoder that refuses rows holding a marker value, as a user's network might raise."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(n_features, 3)

    def forward(self, x):
        if bool((x == 123.0).any()):
            raise RuntimeError("marker row in this batch")
        return self.lin(x)


def test_an_error_in_a_worker_reaches_the_caller(tabular, two_threads):
    X_train, X_test, _ = tabular
    f = X_train.shape[1]
    od = OutlierAE(encoder_net=_Picky(f), decoder_net=torch.nn.Linear(3, f), standardize=False)
    od.fit(X_train[:200], epochs=1, verbose=False, seed=0)
    X = np.repeat(X_test[:1], 200, axis=0)
    X[150, 0] = 123.0
    with pytest.raises(RuntimeError, match="marker row in this batch"):
        od.score(X, batch_size=16)
    assert torch.get_num_threads() == 2 and _threads_of_a_new_thread() == 2
