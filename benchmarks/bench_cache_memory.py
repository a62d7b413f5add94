"""Peak memory of `cache_hospital` over a large partition vs a naive cache that keeps every decoded image.

Writes `--n` tiny uncompressed MG files (distinct UIDs), indexes them, then runs each cacher in its own
process while sampling the RSS of that process and all its children (psutil, every 20 ms). RSS of forked
workers counts shared pages once per process, so the figure for the pool is an upper bound.

    nice .venv/bin/python benchmarks/bench_cache_memory.py --n 10000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammo_pipeline.settings import Settings

HOSPITAL, DROP = "bench", "d1"
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def write_landing(settings: Settings, n: int, rows: int, columns: int) -> None:
    """`n` copies of one small For Presentation image, each with its own SOP Instance UID (same length)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    uid = generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=["bench"])[:56]
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MG_FOR_PRESENTATION, uid, "MG"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = generate_uid(), generate_uid(), "BENCH"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2047, 4096
    yy, xx = np.mgrid[:rows, :columns]
    ds.add_new("PixelData", "OW", ((yy * 37 + xx * 11) % 4096).astype(np.uint16).tobytes())
    template = settings.home / "template.dcm"
    ds.save_as(template, enforce_file_format=True)
    data = template.read_bytes()
    for i in range(n):
        new_uid = uid[:-8] + f"{i:08d}"
        path = settings.landing / HOSPITAL / DROP / f"p{i // 500:04d}" / f"{i}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.replace(uid.encode(), new_uid.encode()))


def run_ours(settings: Settings) -> int:
    from mammo_pipeline.cache import cache_hospital

    return cache_hospital(settings, HOSPITAL).new


def run_naive(settings: Settings) -> int:
    """Baseline: decode and render every image in one process, keep them all, write the PNGs at the end."""
    from PIL import Image

    from mammo_pipeline.dicom.normalize import AtPitch, render
    from mammo_pipeline.warehouse import read_partition

    index = read_partition(settings, "dicom_index", HOSPITAL)
    kept = []
    for rel_path, sop in zip(index["rel_path"], index["sop_instance_uid"], strict=True):
        ds = dcmread(settings.landing / rel_path)
        pixels = ds.pixel_array
        kept.append((sop, pixels, render(ds, sizes=(AtPitch(settings.display_size), settings.model_size)).images))
    out = settings.home / "naive-cache"
    for sop, _, images in kept:
        for size, image in images.items():
            folder = out / str(getattr(size, "long_side", size))  # AtPitch(n) -> n, as the cache's folders
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{sop}.png")
    return len(kept)


def measure(mode: str, settings: Settings) -> dict[str, float]:
    """Run one cacher in a child process; sample the RSS of its process tree; return peak MB and rate."""
    env = settings.as_env()
    cmd = [sys.executable, __file__, "--child", mode]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env={**env, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, text=True)
    proc, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    out, _ = child.communicate()
    if child.returncode:
        raise SystemExit(f"{mode} failed with exit code {child.returncode}")
    done = json.loads(out.strip().splitlines()[-1])
    seconds = time.perf_counter() - start
    return {
        "peak_mb": peak / 2**20,
        "images": done["images"],
        "seconds": seconds,
        "images_per_s": done["images"] / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="images in the partition")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=128, help="image rows (tiny keeps the run short)")
    parser.add_argument("--columns", type=int, default=104)
    parser.add_argument("--display-size", type=int, default=256, help="long side of the display PNG")
    parser.add_argument("--model-size", type=int, default=128, help="long side of the model PNG")
    parser.add_argument("--child", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        settings = Settings.from_env()
        images = run_ours(settings) if args.child == "ours" else run_naive(settings)
        print(json.dumps({"images": images}))
        return

    from mammo_pipeline.dicom.index import index_hospital

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.under(
            tmp, workers=args.workers, salt="bench", display_size=args.display_size, model_size=args.model_size
        ).ensure_dirs()
        write_landing(settings, args.n, args.rows, args.columns)
        indexed = index_hospital(settings, HOSPITAL)
        print(f"{indexed.rows} images of {args.rows}x{args.columns}, PNGs {args.display_size} and {args.model_size}")
        ours = measure("ours", settings)
        naive = measure("naive", settings)
    print(f"naive (every image kept, 1 process): peak {naive['peak_mb']:7.0f} MB, {naive['images_per_s']:6.1f} img/s")
    print(
        f"cache_hospital ({args.workers} workers, incl. children): peak {ours['peak_mb']:7.0f} MB, "
        f"{ours['images_per_s']:6.1f} img/s"
    )
    print(f"ratio naive/ours: {naive['peak_mb'] / ours['peak_mb']:.1f}x  (target < 1,536 MB for 10,000 images)")


if __name__ == "__main__":
    main()
