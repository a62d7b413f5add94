"""What a `kill -9` of `cache_hospital` costs: images rendered again by the rerun vs images the kill left missing.

Writes `--n` tiny MG files, indexes them, starts `cache_hospital` in a subprocess, kills it with SIGKILL once the
per-run journal holds `--kill-at` finished images, then reruns it and counts renders. The baseline is the
checkpoint-every-500 manifest the cache had before issue 14: a rerun then redoes everything since the last
checkpoint. Also times an unchanged rerun (the per-image "unchanged" check: manifest, journals, PNG stat).

    nice .venv/bin/python benchmarks/bench_cache_resume.py --n 600 --kill-at 450
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time

from bench_cache_memory import HOSPITAL, write_landing

from mammo_pipeline import cache
from mammo_pipeline.settings import Settings

OLD_CHECKPOINT = 500  # images between manifest writes before the per-image journal


def _journal_rows(settings: Settings) -> int:
    folder = settings.table_dir("image_cache", HOSPITAL)
    return sum(1 for p in folder.glob(".journal-*.jsonl") for _ in cache._read_journal(p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="images in the partition")
    parser.add_argument("--kill-at", type=int, default=450, help="finished images before the SIGKILL")
    args = parser.parse_args()
    from mammo_pipeline.dicom.index import index_hospital

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.under(tmp, workers=1, salt="bench", display_size=128, model_size=64).ensure_dirs()
        write_landing(settings, args.n, 64, 52)
        index_hospital(settings, HOSPITAL)
        code = (
            "import sys; from mammo_pipeline import cache; from mammo_pipeline.settings import Settings; "
            "cache.cache_hospital(Settings.under(sys.argv[1], workers=1, salt='bench', display_size=128, "
            f"model_size=64), {HOSPITAL!r})"
        )
        child = subprocess.Popen([sys.executable, "-c", code, tmp])
        while _journal_rows(settings) < args.kill_at and child.poll() is None:
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait()
        finished = _journal_rows(settings)
        missing = args.n - finished

        start = time.monotonic()
        rerun = cache.cache_hospital(settings, HOSPITAL)
        rerun_s = time.monotonic() - start
        start = time.monotonic()
        unchanged = cache.cache_hospital(settings, HOSPITAL)
        unchanged_s = time.monotonic() - start

    baseline = args.n - (finished // OLD_CHECKPOINT) * OLD_CHECKPOINT
    print(f"{args.n} images; killed (SIGKILL) after {finished} finished; {missing} missing")
    print(f"rerun rendered {rerun.new} ({rerun.unchanged} unchanged) in {rerun_s:.1f} s")
    print(f"checkpoint-every-{OLD_CHECKPOINT} baseline would render {baseline}")
    print(f"ratio rendered/missing: {rerun.new / max(missing, 1):.2f} (baseline {baseline / max(missing, 1):.2f})")
    print(f"unchanged rerun: {unchanged.unchanged} skipped, {unchanged.new} rendered, {unchanged_s:.2f} s")


if __name__ == "__main__":
    main()
