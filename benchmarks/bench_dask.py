"""Per-image work through a Dask cluster: images/s with one worker vs two, same run, same files.

Writes a small synthetic drop (`mammo_pipeline.synth.generate_drops`) to a temp dir, then renders every
DICOM with the real display normalization (`normalize.render` at 1024 and 256, as image_cache does)
through `parallel.imap_unordered` on a `distributed.LocalCluster` of one, then two single-threaded worker
processes. Each cluster is warmed up (imports, first decode) before it is timed. The in-process map
(`workers=1`, no Dask) is printed as well, to show Dask's overhead.

Run: .venv/bin/python benchmarks/bench_dask.py [--studies N] [--scale S] [--copies K] [--repeat R]
Expect a ratio near 2 on two idle cores; less when other work shares them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from distributed import LocalCluster

from mammo_pipeline.parallel import imap_unordered
from mammo_pipeline.synth import generate_drops

SIZES = (1024, 256)


def render_one(path: Path) -> int:
    """The per-image work of image_cache: decode and normalize once, at both sizes (PNG encode excluded)."""
    from mammo_pipeline.dicom.normalize import render

    rendition = render(path, SIZES)
    return sum(img.size for img in rendition.images.values())


def dicom_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm") if p.is_file())


def rate(run: Callable[[], list[int]], n: int, repeat: int) -> float:
    """Best images/s over `repeat` timed passes (the least disturbed by other processes)."""
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        assert len(run()) == n
        rates.append(n / (time.perf_counter() - start))
    return max(rates)


def dask_rate(files: list[Path], n_workers: int, repeat: int) -> float:
    with LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        address = cluster.scheduler_address
        list(imap_unordered(render_one, files[: 2 * n_workers], dask_scheduler=address, chunksize=1))  # warm-up
        run = lambda: list(imap_unordered(render_one, files, dask_scheduler=address, chunksize=1))  # noqa: E731
        return rate(run, len(files), repeat)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=6, help="synthetic studies (about 4 images each)")
    p.add_argument("--scale", type=float, default=0.5, help="image scale of the synthetic drop (0, 1]")
    p.add_argument("--copies", type=int, default=4, help="render every file this many times per pass")
    p.add_argument("--repeat", type=int, default=2, help="timed passes per setting (best is kept)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        landing = Path(tmp)
        generate_drops(landing, hospitals=1, studies_per_hospital=args.studies, scale=args.scale, workers=1)
        files = dicom_files(landing) * args.copies
        if not files:
            raise SystemExit("the synthetic drop holds no .dcm files")
        render_one(files[0])  # warm this process too
        load = os.getloadavg()
        local = rate(lambda: list(imap_unordered(render_one, files, workers=1)), len(files), args.repeat)
        one = dask_rate(files, 1, args.repeat)
        two = dask_rate(files, 2, args.repeat)

    n, copies = len(files) // args.copies, args.copies
    print(f"images: {n} synthetic DICOMs x {copies} (scale {args.scale}), render at {SIZES}, best of {args.repeat}")
    print(f"load average before/after: {load[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"in-process, no Dask     : {local:7.2f} images/s")
    print(f"Dask, 1 worker process  : {one:7.2f} images/s  (Dask overhead: {one / local:.2f}x in-process)")
    print(f"Dask, 2 worker processes: {two:7.2f} images/s")
    print(f"speed-up 1 -> 2 workers : {two / one:.2f}x  (ideal 2.00x on two idle cores)")


if __name__ == "__main__":
    main()
