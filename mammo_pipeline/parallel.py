"""One `map` over a local process pool or a Dask cluster, so per-image work scales past one machine.

Both paths submit work in bounded chunks and yield results as they finish, so memory stays flat however
many items a partition holds. Local pool workers die with the process that started them (`die_with_parent`):
a `kill -9` of a cache run leaves no worker rendering on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 1.0


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker when `parent_pid` dies, even by SIGKILL.

    Linux: prctl(PR_SET_PDEATHSIG, SIGKILL) through ctypes, so the kernel kills the worker at once. Everywhere
    (and in case the parent died before prctl ran): a daemon thread that exits when the parent changes.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc/prctl: the watcher thread below still works
            pass
    if os.getppid() != parent_pid:
        os._exit(1)
    # Ctrl-C reaches the whole process group: the parent alone handles it and stops the pool (`_stop`); a worker
    # interrupted inside the pool's queue lock left the others waiting on it, and the run hung (3 of 5 tries)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


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
        pool = ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),))
        try:
            yield from _drive(pool, fn, items, chunksize, max_pending)
        except BaseException:  # Ctrl-C, a failed item, or the caller closing the generator early
            _stop(pool)
            raise
        pool.shutdown()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now: `shutdown(wait=True)`, which leaving a `with` block
    does, waits for the chunks in flight (minutes on a large partition) before an interrupted run can end."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # CPython's pool keeps its workers here
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)


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
