"""Progress for long work: a tqdm bar on the command line, periodic log lines inside Dagster."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

# A callback the domain code calls as work advances: (done, total). Dagster assets pass one that logs.
ProgressFn = Callable[[int, int], None]


def bar(items: Iterable[T], total: int | None = None, desc: str = "", silent: bool = False) -> Iterator[T]:
    """Wrap `items` in a progress bar on stderr (nothing when `silent`)."""
    yield from tqdm(items, total=total, desc=desc, disable=silent, unit="img", dynamic_ncols=True)


def every(seconds: float, log: Callable[[str], None], what: str) -> ProgressFn:
    """A ProgressFn that logs `what: done/total (rate/s)` at most once per `seconds`, and at the end."""
    start = last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done == total or now - last >= seconds:
            last = now
            rate = done / max(now - start, 1e-9)
            log(f"{what}: {done}/{total} ({rate:.1f}/s)")

    return report
