import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mammo_pipeline.parallel import imap_unordered


def square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_imap_unordered_returns_every_result(workers):
    assert sorted(imap_unordered(square, range(50), workers=workers, chunksize=4)) == [x * x for x in range(50)]


def test_imap_unordered_bounds_items_in_flight():
    pulled = []

    def items():
        for i in range(100):
            pulled.append(i)
            yield i

    results = imap_unordered(square, items(), workers=2, chunksize=5, max_pending=2)
    next(results)
    assert len(pulled) <= 5 * 3  # at most max_pending chunks (plus the one being assembled) read ahead
    assert len(list(results)) == 99


def record_and_sleep(folder: str) -> int:
    """A worker that says who it is, then works far longer than the test waits."""
    Path(folder, str(os.getpid())).touch()
    time.sleep(60)
    return 0


_PARENT = """
import sys
from mammo_pipeline.parallel import imap_unordered
from mammo_pipeline_tests.test_parallel import record_and_sleep
list(imap_unordered(record_and_sleep, [sys.argv[1]] * 8, workers=2, chunksize=1))
"""


def interrupt_group(process: subprocess.Popen, timeout: float) -> int | None:
    """Send SIGINT to `process`'s group (a terminal's Ctrl-C); its exit code, or None (the group then killed) when
    it has not ended within `timeout` s."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_pool_workers_die_when_their_parent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path)])
    deadline = time.monotonic() + 30
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p.name) for p in tmp_path.iterdir()]
    assert len(workers) == 2 and all(_running(pid) for pid in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in workers if _running(pid)]
    for pid in survivors:  # never leave orphans behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors


def record_and_nap(folder: str) -> int:
    """A worker that says who it is, then works a moment: the pool's queues stay busy, as a cache run's do."""
    Path(folder, str(os.getpid())).touch()
    time.sleep(0.01)
    return 0


_INTERRUPTED = """
import signal, sys
from mammo_pipeline.parallel import imap_unordered
from mammo_pipeline_tests.test_parallel import record_and_nap
interrupted = []
signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))  # as a Dagster step defers an interrupt ...
for _ in imap_unordered(record_and_nap, [sys.argv[1]] * 100000, workers=2, chunksize=1):
    if interrupted:
        raise KeyboardInterrupt  # ... and raises it at its next check
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_one_ctrl_c_to_the_process_group_ends_the_run_and_its_workers(tmp_path):
    """A terminal's Ctrl-C signals the whole group: the parent ends, and so do its workers. The hang a user met
    (workers interrupted inside the pool's queue lock) needed a Dagster step around the pool and is tested there
    (defs/test_interrupt.py); in plain Python the pool before the fix ended too, so this guards the pool's own
    path, with an interrupt deferred as a Dagster step defers it."""
    for attempt in range(3):  # the hang was a race: three tries make a pass mean something
        folder = tmp_path / str(attempt)
        folder.mkdir()
        parent = subprocess.Popen([sys.executable, "-c", _INTERRUPTED, str(folder)], start_new_session=True)
        deadline = time.monotonic() + 30
        while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [int(p.name) for p in folder.iterdir()]
        time.sleep(0.5)
        code = interrupt_group(parent, timeout=20)
        survivors = [pid for pid in workers if _running(pid)]
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        assert code not in (None, 0) and not survivors, (attempt, code, survivors)
