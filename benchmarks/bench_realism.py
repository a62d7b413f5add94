"""Realism of the synthetic drops: the untrained statistics of mammo_pipeline/synth/realism.py on fresh drops and on
the evaluation-only real images in ../shared/realdata, as a table (synthetic median vs the real range), a
real | synthetic contact sheet and a statistics figure. Skips with a message when the real images are absent.

Run: .venv/bin/python benchmarks/bench_realism.py [--studies 6] [--scale 0.25] [--out reports/realism.png] [--limit 60]
(`--limit 0` measures every contact view of the drops instead of a seeded sample of 60: steadier medians)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mammo_pipeline.synth import generate_drops
from mammo_pipeline.synth.realism_report import RealdataMissing, load_real, realism_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6, help="studies per hospital (3 hospitals)")
    parser.add_argument("--scale", type=float, default=0.25, help="image size relative to the vendor matrix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--realdata", type=Path, default=None, help="default: $MAMMO_REALDATA or ../shared/realdata")
    parser.add_argument("--out", type=Path, default=None, help="contact sheet PNG (+ _stats.png); default: temp")
    parser.add_argument("--limit", type=int, default=60, help="synthetic images measured, a seeded sample; 0: all")
    args = parser.parse_args()
    try:
        load_real(args.realdata, echo=lambda _: None)
    except RealdataMissing as e:
        print(f"realism benchmark skipped: {e}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = generate_drops(
            Path(tmp) / "landing", 3, args.studies, seed=args.seed, scale=args.scale, drop="bench", workers=args.workers
        )
        synth_s = time.perf_counter() - start
        out = args.out or Path(tmp) / "realism.png"
        start = time.perf_counter()
        result = realism_report(Path(tmp) / "landing", out, args.realdata, limit=args.limit or None)
        measure_s = time.perf_counter() - start
        print(result.summary())
        print(
            f"\n{report.files_written} files drawn in {synth_s:.0f} s at scale {args.scale}; "
            f"{len(result.synthetic)} synthetic contact views and {len(result.real)} real images measured in "
            f"{measure_s:.0f} s"
        )
        if args.out:
            print("pictures: " + ", ".join(str(p) for p in result.pictures))


if __name__ == "__main__":
    main()
