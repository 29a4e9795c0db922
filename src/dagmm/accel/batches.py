"""Batched inference on CPU: one batch per thread, each thread single-threaded.

DAGMM's networks are narrow (the KDDCUP net is 120-60-30-10-1 and back), so a
batch's matrix products are too small to keep two cores busy inside one
product, and every elementwise pass and every Python call between operations
leaves a core idle.  Giving each thread its own batches, with torch's
intra-op parallelism set to one thread inside it, keeps every core on useful
work (``benchmarks/results/NOTES-speed.md``, fifth pass; ``benchmarks/speed.py``
measures scoring against the products' limit).

Threads: ``torch.get_num_threads()`` of the calling thread, at most one per
batch; on other devices, or with one thread or one batch, the batches run in
the calling thread.  Torch's thread setting is per thread once a thread has
run an operation, so the caller's own setting is untouched; the process-wide
default that *new* threads start from is set back when each worker ends.
Each row's result is the same function of that row whichever thread computes
it; matrix products may round differently with one thread than with two, so
results can differ from a one-thread run by float rounding only.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

__all__ = ["for_each_batch", "workers_for"]


def workers_for(device: torch.device, n_batches: int) -> int:
    """How many threads :func:`for_each_batch` uses for ``n_batches`` batches on ``device``."""
    if device.type != "cpu" or n_batches < 2:
        return 1
    return max(1, min(torch.get_num_threads(), n_batches))


def for_each_batch(body: Callable[[int, int], None], n: int, batch_size: int, workers: int) -> None:
    """Call ``body(start, stop)`` for consecutive row ranges of at most ``batch_size`` rows.

    Every call runs in inference mode.  With ``workers > 1`` the ranges are dealt out
    to that many threads, each with torch's intra-op threads set to one; the
    first exception raised by ``body`` stops the other threads after their
    current batch and is raised here.  ``body`` must write each range's result
    to its own place (it may run concurrently with itself).
    """
    starts = range(0, n, batch_size)
    if workers <= 1:
        with torch.inference_mode():
            for start in starts:
                body(start, min(n, start + batch_size))
        return
    threads = torch.get_num_threads()
    stop = threading.Event()

    def work(first: int) -> None:
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                for start in starts[first::workers]:
                    if stop.is_set():
                        return
                    body(start, min(n, start + batch_size))
        except BaseException:
            stop.set()
            raise
        finally:
            # set_num_threads also changes the default of threads started later: put it back
            torch.set_num_threads(threads)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dagmm-batch") as pool:
        futures = [pool.submit(work, w) for w in range(workers)]
        try:
            for future in futures:
                future.result()
        finally:
            stop.set()  # an interrupt while waiting stops the workers too
