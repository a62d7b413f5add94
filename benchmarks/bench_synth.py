"""Synthetic drop generation speed: images per second at scale 0.25 (parallel vs one process) and at full vendor
size (vendor transfer syntax vs writing uncompressed), measured in the same run. With --baseline-checkout, the
CPU seconds per file of this generator against another checkout's (e.g. the main branch), same drop call.

Run: .venv/bin/python benchmarks/bench_synth.py [--studies 12] [--workers 2] [--full-images 4]
     [--baseline-checkout ../main]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom import uid

from mammo_pipeline.synth import generate_drops
from mammo_pipeline.synth.dicom_writer import ImageHeader, Patient, build_dataset, encode, to_stored
from mammo_pipeline.synth.identities import rng_for
from mammo_pipeline.synth.image import ImageSpec, draw_image
from mammo_pipeline.synth.profiles import PROFILES


def drop_rate(out: Path, studies: int, workers: int) -> tuple[float, float, int]:
    """(images per wall second, images per CPU second of this process and its workers, files) for
    3 hospitals x `studies` studies at scale 0.25. CPU rate is what an idle core would give on a shared box."""
    start, cpu0 = time.perf_counter(), _cpu_seconds()
    report = generate_drops(out, 3, studies, seed=0, scale=0.25, drop="bench", workers=workers)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    return report.files_written / wall, report.files_written / cpu, report.files_written


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def full_size_rate(n: int, compressed: bool) -> float:
    """Images per second drawing and encoding full-size images, cycling through the profiles."""
    keys = list(PROFILES)
    start = time.perf_counter()
    for i in range(n):
        profile = PROFILES[keys[i % len(keys)]]
        spec = ImageSpec(profile.rows, profile.columns, profile.pixel_spacing, 1.0, "MLO", "L", i % 2 == 0, i % 3 == 0)
        display, drawn = draw_image(spec, rng_for("bench", i))
        stored = to_stored(display, profile, False)
        header = ImageHeader(
            Patient("P", "DOE^JANE", "19600101"),
            "Bench Hospital",
            "S",
            "1.2.3",
            "1.2.3.4",
            f"1.2.3.4.{i}",
            "20240101",
            "101010",
            "A1",
            "DIAGNOSTIC",
            1,
            1,
            "MLO",
            "L",
            profile.pixel_spacing,
            mag=spec.mag,
            mag_factor=drawn.mag_factor,
        )
        syntax = profile.transfer_syntax if compressed else uid.ExplicitVRLittleEndian
        encode(build_dataset(stored, header, profile), stored, syntax, profile.jpeg_predictor)
    return n / (time.perf_counter() - start)


CPU_PER_FILE = """
import tempfile, time
from pathlib import Path
from mammo_pipeline.synth import generate_drops
with tempfile.TemporaryDirectory() as tmp:
    t = time.process_time()
    r = generate_drops(Path(tmp), 3, {studies}, seed=0, scale=0.25, drop="b", workers=1)
    print((time.process_time() - t) / r.files_written)
"""


def cpu_per_file(checkout: Path, studies: int) -> float:
    """CPU seconds per written file of `checkout`'s generator (3 hospitals x `studies`, scale 0.25, one process)."""
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    code = CPU_PER_FILE.format(studies=studies)
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12, help="studies per hospital at scale 0.25 (3 hospitals)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--full-images", type=int, default=6, help="full-size images (cycling through profiles)")
    parser.add_argument("--baseline-checkout", type=Path, default=None, help="another checkout to compare CPU with")
    args = parser.parse_args()
    if args.baseline_checkout:
        here = Path(__file__).resolve().parents[1]
        new, old = cpu_per_file(here, 4), cpu_per_file(args.baseline_checkout, 4)
        print(
            f"CPU per file at scale 0.25 (3 hospitals x 4 studies, one process): {new:.3f} s here vs {old:.3f} s "
            f"in {args.baseline_checkout} (ratio {new / old:.2f}x)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        single, single_cpu, n = drop_rate(Path(tmp) / "single", args.studies, 1)
        parallel, parallel_cpu, _ = drop_rate(Path(tmp) / "parallel", args.studies, args.workers)
    print(
        f"scale 0.25, {n} files: {parallel:.1f} img/s with {args.workers} workers vs {single:.1f} img/s "
        f"in one process (ratio {parallel / single:.2f}x); per CPU-second {single_cpu:.1f} img "
        f"(one process) / {parallel_cpu:.1f} img (workers), so ~{args.workers * parallel_cpu:.0f} img/s on "
        f"{args.workers} idle cores (load now {os.getloadavg()[0]:.1f})"
    )
    vendor = full_size_rate(args.full_images, compressed=True)
    raw = full_size_rate(args.full_images, compressed=False)
    print(
        f"full size, {args.full_images} images, one process: {vendor:.2f} img/s in the vendors' transfer syntaxes "
        f"vs {raw:.2f} img/s uncompressed (ratio {vendor / raw:.2f}x)"
    )


if __name__ == "__main__":
    main()
