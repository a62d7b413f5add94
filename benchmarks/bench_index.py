"""Discovery speed: headers/s of `index_hospital` (pydicom, the project's one DICOM reader, in the process pool)
vs `dcmread(stop_before_pixels=True)` and a naive full `dcmread` of each file, both in one process.

Builds realistic vendor files with `mammo_pipeline.synth` (every profile, no corrupt files), clones them
under fresh SOP Instance UIDs up to `--n` files, then times the readers over the same warm files. Prints the
load average before and after, since the figure depends on what else runs on the machine.

    .venv/bin/python benchmarks/bench_index.py --n 4000 --workers 2
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import tempfile
import time
from pathlib import Path

from pydicom import dcmread

from mammo_pipeline.dicom.index import index_hospital
from mammo_pipeline.settings import Settings
from mammo_pipeline.synth.drops import generate_drops, read_truth

HOSPITAL, DROP = "bench", "d1"


def build_landing(settings: Settings, n: int, scale: float, workers: int) -> list[Path]:
    """`n` files under landing/bench/d1, cloned from one synthetic study set of every vendor profile."""
    templates_root = settings.home / "templates"
    report = generate_drops(templates_root, hospitals=6, studies_per_hospital=3, seed=0, scale=scale, workers=workers)
    truth = read_truth(templates_root)
    templates = [
        (templates_root / rel, uid) for rel, uid in zip(truth["rel_path"], truth["sop_instance_uid"], strict=True)
    ]
    print(f"templates: {len(templates)} files from {len(report.hospitals)} vendor profiles, scale {scale}")
    paths = []
    for i, (template, uid) in enumerate(itertools.islice(itertools.cycle(templates), n)):
        data = template.read_bytes()
        new_uid = uid[:-8] + f"{i:08d}"  # same length, so every element length stays valid
        path = settings.landing / HOSPITAL / DROP / f"p{i // 50:05d}" / f"{new_uid}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.replace(uid.encode(), new_uid.encode()))
        paths.append(path)
    return paths


NAIVE_KEYWORDS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "ImageType",
    "ViewPosition",
    "ImageLaterality",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsStored",
    "BitsAllocated",
    "PhotometricInterpretation",
    "PresentationLUTShape",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "RescaleSlope",
    "RescaleIntercept",
    "ViewCodeSequence",
    "SeriesDescription",
    "EstimatedRadiographicMagnificationFactor",
    "FocalSpots",
    "Grid",
    "PaddleDescription",
]


def naive_index(paths: list[Path]) -> float:
    """Baseline: full dcmread of every file and the same fields by attribute, one process; returns headers/s."""
    start = time.perf_counter()
    rows = []
    for path in paths:
        ds = dcmread(path)
        row = {keyword: ds.get(keyword) for keyword in NAIVE_KEYWORDS}
        row["has_pixels"] = "PixelData" in ds
        rows.append(row)
    return len(rows) / (time.perf_counter() - start)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool's workers), in seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def header_only(paths: list[Path]) -> float:
    """Baseline: pydicom `dcmread(stop_before_pixels=True)` of every file, one process; returns headers/s."""
    start = time.perf_counter()
    for path in paths:
        dcmread(path, stop_before_pixels=True)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="files to index")
    parser.add_argument("--scale", type=float, default=0.25, help="synthetic image scale (1.0 = full detector)")
    parser.add_argument("--workers", type=int, default=2, help="processes for index_hospital")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.under(tmp, workers=args.workers, salt="bench").ensure_dirs()
        paths = build_landing(settings, args.n, args.scale, args.workers)
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        print(f"files: {len(paths)} ({megabytes:.0f} MB, {megabytes / len(paths):.2f} MB/file)")
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        baseline = naive_index(paths)
        cpu = cpu_seconds()
        headers = header_only(paths)
        headers_cpu = len(paths) / (cpu_seconds() - cpu)
        cpu = cpu_seconds()
        result = index_hospital(settings, HOSPITAL)
        index_cpu = result.read / (cpu_seconds() - cpu)
        assert result.rows == len(paths), result
        # the baseline once more, right after: on a shared machine the load drifts while the index runs
        cpu = cpu_seconds()
        headers_after = header_only(paths)
        headers_cpu_after = len(paths) / (cpu_seconds() - cpu)
        again = index_hospital(settings, HOSPITAL)
    print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"naive full dcmread, 1 process:                 {baseline:8.0f} headers/s")
    print(f"dcmread(stop_before_pixels=True), 1 process:   {headers:8.0f} headers/s ({headers_after:.0f} after)")
    print(f"index_hospital, {args.workers} workers (end to end):          {result.headers_per_s:8.0f} headers/s")
    print(
        f"ratio: {result.headers_per_s / baseline:.1f}x naive, {result.headers_per_s / headers:.2f}x header-only"
        "  (target >= 2,000 headers/s on 2 cores)"
    )
    # Per CPU-second figures depend less on what else runs on the machine: 2 cores busy give twice as much.
    header_cpu_mean = (headers_cpu + headers_cpu_after) / 2
    print(
        f"per CPU-second: dcmread header-only {headers_cpu:.0f} before / {headers_cpu_after:.0f} after the index, "
        f"index_hospital {index_cpu:.0f} headers ({index_cpu / header_cpu_mean:.2f}x header-only)"
    )
    print(f"index_hospital on {args.workers} idle cores would reach about {args.workers * index_cpu:.0f} headers/s")
    print(f"re-run with nothing new: {again.seconds:.2f} s for {again.unchanged} unchanged files")


if __name__ == "__main__":
    main()
