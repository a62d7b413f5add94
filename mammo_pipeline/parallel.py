"""One `map` over a local process pool or a Dask cluster, so per-image work scales past one machine.

Both paths submit work in bounded chunks and yield results as they finish, so memory stays flat however
many items a partition holds.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _run_chunk(fn: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [fn(item) for item in chunk]


def _batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def imap_unordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int = 0,
    dask_scheduler: str = "",
    chunksize: int = 8,
    max_pending: int | None = None,
) -> Iterator[R]:
    """Apply a picklable `fn` to every item, yielding results in completion order.

    `workers=1` runs in this process (debuggable, no pickling). `dask_scheduler` sends chunks to that
    Dask scheduler instead of a local pool. At most `max_pending` chunks are in flight at once.
    """
    workers = workers or os.cpu_count() or 1
    if workers == 1 and not dask_scheduler:
        yield from map(fn, items)
        return
    if dask_scheduler:
        from distributed import Client  # optional dependency: pip install 'mammo-pipeline[dask]'

        with Client(dask_scheduler) as client:
            client.wait_for_workers(1, timeout=300)  # a cluster without workers would otherwise hang silently
            slots = sum(client.nthreads().values())  # the cluster's size, not this machine's cores
            yield from _drive(client.get_executor(pure=False), fn, items, chunksize, max_pending or 2 * slots)
    else:
        max_pending = max_pending or 2 * workers
        with ProcessPoolExecutor(workers) as pool:
            yield from _drive(pool, fn, items, chunksize, max_pending)


def _drive(pool: Executor, fn: Callable[[T], R], items: Iterable[T], chunksize: int, max_pending: int) -> Iterator[R]:
    pending: set[Future[list[R]]] = set()
    for chunk in _batched(items, chunksize):
        if len(pending) >= max_pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()
        pending.add(pool.submit(_run_chunk, fn, chunk))
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            yield from future.result()
