"""imap_unordered against a real Dask cluster: two worker processes on this machine."""

import os
import time

import pytest

from mammo_pipeline.parallel import imap_unordered

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        yield cluster.scheduler_address


def square(x: int) -> int:
    return x * x


def square_and_pid(x: int) -> tuple[int, int]:
    time.sleep(0.01)
    return x * x, os.getpid()


def slow_first(x: int) -> int:
    """The first chunk sleeps long enough that later chunks finish before it."""
    time.sleep(0.3 if x < 4 else 0.0)
    return x


def fail_on_13(x: int) -> int:
    if x == 13:
        raise ValueError(f"bad item {x}")
    return x


def test_dask_returns_every_result_from_worker_processes(scheduler):
    results = list(imap_unordered(square_and_pid, range(60), dask_scheduler=scheduler, chunksize=3))
    assert sorted(r for r, _ in results) == [x * x for x in range(60)]
    pids = {pid for _, pid in results}
    assert len(pids) == 2 and os.getpid() not in pids


def test_dask_yields_in_completion_order(scheduler):
    results = list(imap_unordered(slow_first, range(40), dask_scheduler=scheduler, chunksize=4, max_pending=4))
    assert sorted(results) == list(range(40))
    assert results[:4] != [0, 1, 2, 3]  # the slow first chunk did not hold back the others


def test_dask_bounds_items_in_flight(scheduler):
    pulled = []

    def items():
        for i in range(200):
            pulled.append(i)
            yield i

    results = imap_unordered(square, items(), dask_scheduler=scheduler, chunksize=5, max_pending=2)
    first = next(results)
    assert len(pulled) <= 5 * 3  # max_pending chunks submitted plus the one being assembled
    assert sorted([first, *results]) == sorted(x * x for x in range(200))


def test_dask_worker_exception_reaches_the_caller(scheduler):
    with pytest.raises(ValueError, match="bad item 13"):
        list(imap_unordered(fail_on_13, range(40), dask_scheduler=scheduler, chunksize=4))


def nap(x: int) -> tuple[float, float]:
    start = time.time()
    time.sleep(0.3)
    return start, time.time()


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_dask_keeps_every_cluster_thread_busy_whatever_local_workers_say():
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=4, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        spans = list(imap_unordered(nap, range(16), workers=1, dask_scheduler=cluster.scheduler_address, chunksize=1))
    assert max_overlap(spans) == 4
