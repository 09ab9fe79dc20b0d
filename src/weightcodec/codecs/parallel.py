"""Work on several threads: a numba kernel over chunks of one output, or one function over many items.

NumPy and the ``nogil`` numba kernels release the GIL, so Python threads run them in parallel.

:func:`run_chunks` is how the ribbon decoder runs its kernel instead of numba's
``parallel=True``: a plain ``nogil`` kernel loads from numba's cache faster than a parallel one
(no gufunc, no threading layer to start), a large part of decoding a file in a fresh process,
and its threads are ordinary Python threads, so callers that already decode several tensors at
once (:func:`ordered_map`, ``--jobs``) turn the inner split off. Each position of the output is
written by exactly one chunk, and :func:`ordered_map` yields in input order, so no result
depends on the number of threads.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["CHUNK", "default_threads", "ordered_map", "run_chunks", "single_threaded"]

T = TypeVar("T")
R = TypeVar("R")

CHUNK = 1 << 16  # outputs per chunk: the unit of work the kernels take
_local = threading.local()


def default_threads() -> int:
    """Threads per decode: ``NUMBA_NUM_THREADS`` if set, else the CPUs this process may use."""
    configured = os.environ.get("NUMBA_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class single_threaded:
    """Context manager: kernels run by :func:`run_chunks` in this thread use one thread.

    For callers that run several decodes at once (one per worker thread) and so already use the
    CPUs; nesting a second split would only add threads that compete for them.
    """

    def __enter__(self) -> None:
        self._previous = getattr(_local, "threads", None)
        _local.threads = 1

    def __exit__(self, *exc) -> None:
        _local.threads = self._previous


def run_chunks(kernel: Callable, size: int, args: tuple) -> None:
    """Call ``kernel(first_chunk, end_chunk, *args)`` over the chunks of ``size`` outputs.

    The chunks are split into one contiguous range per thread; with one thread (or one chunk)
    the kernel runs here, without a pool.
    """
    n_chunks = -(-int(size) // CHUNK)
    threads = min(getattr(_local, "threads", None) or default_threads(), max(n_chunks, 1))
    if threads <= 1:
        kernel(0, n_chunks, *args)
        return
    # the first chunk here: numba compiles or loads the kernel from its cache on this thread,
    # before any worker calls it
    kernel(0, 1, *args)
    bounds = [1 + (n_chunks - 1) * i // threads for i in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(kernel, lo, hi, *args) for lo, hi in zip(bounds, bounds[1:])]:
            future.result()


def ordered_map(function: Callable[[T], R], items: Iterable[T], jobs: int = 1) -> Iterator[R]:
    """``function(item)`` for each item, in order, computed by up to ``jobs`` threads at once.

    At most ``jobs`` results are pending or held at any time (the next item starts only once the
    oldest result has been taken), so memory stays bounded by ``jobs`` items' worth whatever the
    number of items. Results come in input order, so the output does not depend on ``jobs``.
    Each worker runs its kernels :class:`single_threaded`: the workers already share the CPUs.
    With ``jobs <= 1`` everything runs here, lazily, one item at a time.
    """
    if jobs <= 1:
        yield from map(function, items)
        return

    def work(item: T) -> R:
        with single_threaded():
            return function(item)

    with ThreadPoolExecutor(jobs) as pool:
        pending: deque = deque()
        try:
            for item in items:
                if len(pending) >= jobs:
                    yield pending.popleft().result()
                pending.append(pool.submit(work, item))
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
