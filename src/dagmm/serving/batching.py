"""Adaptive batching: requests that wait while a model scores are scored together next.

A request that finds its model idle is scored at once, alone: no timer, no added
latency.  Calls of up to :data:`INLINE_ROWS` rows run on the event loop; larger ones
in a worker thread, so that health probes stay quick while they run.  Requests
that arrive while a batch is being scored queue up, and the next call scores
every queued request with the same options in one ``predict`` of their rows
concatenated (at most :data:`BATCH_ROWS` rows).  Under
load this turns sixteen 100-row calls into one 1,600-row call, which costs about
as much as two of them (the per-call overhead dominates small calls).

A detector scores each row on its own, so a row's score does not depend on the
rows batched with it, up to float32 rounding of matrix products of another
size.  If a batch fails (a request with NaN, say), each of its requests is
scored alone, so only the request at fault gets the error.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import numpy as np

__all__ = ["Batcher", "BATCH_ROWS", "INLINE_ROWS"]

#: Most rows scored in one call (one request larger than this is scored alone).
BATCH_ROWS = 16384
#: Calls of at most this many rows run on the event loop itself.  Handing a call to a
#: worker thread costs two thread wake-ups, which on a busy host take longer than
#: scoring a few hundred rows; a call this small holds the loop for a few ms at most.
INLINE_ROWS = 1024


def _key(opts: dict) -> str:
    return repr(sorted(opts.items()))


class Batcher:
    """Serialises and batches the scoring of one :class:`~dagmm.serving.model.ServedModel`."""

    def __init__(self, model: Any, max_rows: int = BATCH_ROWS, inline_rows: int = INLINE_ROWS) -> None:
        from starlette.concurrency import run_in_threadpool

        self.model, self.max_rows, self.inline_rows = model, max_rows, inline_rows
        self._queue: deque = deque()
        self._running = False
        self._to_thread = run_in_threadpool

    async def score(self, X: np.ndarray, opts: dict) -> dict:
        """The ``data`` dict for the rows ``X`` (as :meth:`ServedModel.run` returns it)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((_key(opts), X, opts, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list:
        """The oldest waiting request and every later one with the same options, up to max_rows."""
        key = self._queue[0][0]
        taken, kept, rows = [], deque(), 0
        while self._queue:
            item = self._queue.popleft()
            if item[0] == key and (not taken or rows + len(item[1]) <= self.max_rows):
                taken.append(item)
                rows += len(item[1])
            else:
                kept.append(item)
        self._queue.extendleft(reversed(kept))
        return taken

    async def _drain(self) -> None:
        try:
            while self._queue:
                # one turn of the loop first, so that requests already read join this batch
                await asyncio.sleep(0)
                batch = self._take()
                if len(batch) == 1:
                    _, X, opts, future = batch[0]
                    await self._settle(future, X, opts)
                    continue
                opts = batch[0][2]
                try:
                    X = np.concatenate([item[1] for item in batch])  # (sum of rows, *features)
                    data = await self._run(X, opts)
                except Exception:  # each request alone, so the error goes to the request that caused it
                    for _, Xi, opts_i, future in batch:
                        await self._settle(future, Xi, opts_i)
                    continue
                start = 0
                for _, Xi, _, future in batch:
                    stop = start + len(Xi)
                    if not future.cancelled():
                        future.set_result({k: None if v is None else v[start:stop] for k, v in data.items()})
                    start = stop
        finally:
            self._running = False

    async def _run(self, X: np.ndarray, opts: dict) -> dict:
        if len(X) <= self.inline_rows:
            return self.model.run(X, opts)
        return await self._to_thread(self.model.run, X, opts)

    async def _settle(self, future: asyncio.Future, X: np.ndarray, opts: dict) -> None:
        try:
            result = await self._run(X, opts)
        except Exception as err:
            if not future.cancelled():
                future.set_exception(err)
            return
        if not future.cancelled():
            future.set_result(result)
