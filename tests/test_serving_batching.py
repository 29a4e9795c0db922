"""Adaptive batching (dagmm.serving.batching) with a stand-in model whose calls are recorded."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="starlette comes with fastapi (the serve extra): pip install '.[test]'")

from dagmm.serving.batching import Batcher
from dagmm.serving.protocol import ProtocolError


class RecordingModel:
    """Scores a row as its sum (times 2 with opts scale=2); slow enough for requests to queue."""

    def __init__(self) -> None:
        self.calls: list = []
        self.gate = threading.Event()

    def run(self, X, opts):
        self.calls.append((len(X), opts["scale"]))
        if len(self.calls) == 1:
            self.gate.wait(10)  # the first call holds the model until every other request has queued
        if np.isnan(X).any():
            raise ProtocolError("X contains NaN")
        return {"instance_score": X.sum(1) * opts["scale"], "feature_score": None}


def test_waiting_requests_are_scored_together_and_each_gets_its_own_rows():
    model = RecordingModel()
    rng = np.random.default_rng(0)
    first = rng.normal(size=(3, 4))
    same = [rng.normal(size=(n, 4)) for n in (1, 5, 2, 7)]
    other = rng.normal(size=(4, 4))
    bad = np.full((2, 4), np.nan)

    async def go():
        batcher = Batcher(model, inline_rows=0)  # in a thread, so the gate can hold it
        t0 = asyncio.create_task(batcher.score(first, {"scale": 1}))
        await asyncio.sleep(0.05)  # the first call is running and blocked on the gate
        tasks = [asyncio.create_task(batcher.score(x, {"scale": 1})) for x in same[:2]]
        tasks.append(asyncio.create_task(batcher.score(other, {"scale": 2})))
        tasks += [asyncio.create_task(batcher.score(x, {"scale": 1})) for x in same[2:]]
        tasks.append(asyncio.create_task(batcher.score(bad, {"scale": 1})))
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(t0, *tasks, return_exceptions=True)

    results = asyncio.run(go())
    expected = [first.sum(1), *(x.sum(1) for x in same[:2]), other.sum(1) * 2, *(x.sum(1) for x in same[2:])]
    for got, want in zip(results[:-1], expected):
        np.testing.assert_array_equal(got["instance_score"], want)  # the same arithmetic, sliced
        assert got["feature_score"] is None
    assert isinstance(results[-1], ProtocolError) and "NaN" in str(results[-1])
    # the first alone; then the five scale-1 requests together (which fails on the NaN one, so each
    # runs alone); the scale-2 request on its own
    assert model.calls[0] == (3, 1)
    assert model.calls[1] == (1 + 5 + 2 + 7 + 2, 1)
    assert sorted(model.calls[2:]) == sorted([(1, 1), (5, 1), (2, 1), (7, 1), (2, 1), (4, 2)])


def test_a_batch_never_exceeds_the_row_cap():
    model = RecordingModel()
    model.gate.set()
    calls_before = []

    async def go():
        batcher = Batcher(model, max_rows=10, inline_rows=0)
        slow = threading.Event()
        original = model.run

        def run(X, opts):  # hold the first call so the rest queue up
            if not calls_before:
                calls_before.append(1)
                slow.wait(10)
            return original(X, opts)

        model.run = run
        first = asyncio.create_task(batcher.score(np.ones((1, 2)), {"scale": 1}))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batcher.score(np.ones((4, 2)), {"scale": 1})) for _ in range(5)]
        await asyncio.sleep(0.05)
        slow.set()
        return await asyncio.gather(first, *rest)

    t = time.monotonic()
    out = asyncio.run(go())
    assert time.monotonic() - t < 10
    assert all(len(o["instance_score"]) == n for o, n in zip(out, [1, 4, 4, 4, 4, 4]))
    assert [n for n, _ in model.calls] == [1, 8, 8, 4]  # 4+4 <= 10 < 4+4+4


def test_small_calls_run_on_the_event_loop_and_large_ones_in_a_thread():
    threads = []

    class WhereModel:
        def run(self, X, opts):
            threads.append((len(X), threading.get_ident()))
            return {"instance_score": X.sum(1), "feature_score": None}

    async def go():
        batcher = Batcher(WhereModel(), inline_rows=8)
        small = await batcher.score(np.ones((8, 2)), {})
        large = await batcher.score(np.ones((9, 2)), {})
        return threading.get_ident(), small, large

    loop_thread, small, large = asyncio.run(go())
    np.testing.assert_array_equal(small["instance_score"], np.full(8, 2.0))
    np.testing.assert_array_equal(large["instance_score"], np.full(9, 2.0))
    assert threads[0] == (8, loop_thread)
    assert threads[1][0] == 9 and threads[1][1] != loop_thread
