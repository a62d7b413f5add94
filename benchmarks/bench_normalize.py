"""Display normalization throughput: `render` at (1024, 256) vs a naive pydicom pipeline, same run, same files.

Makes its own full-size mammogram-like images (4096x3328, 12-bit, smooth tissue + noise) in a temp dir,
stored as JPEG 2000 lossless and as Explicit VR Little Endian, then times per image, single process:

- baseline: dcmread, pixel_array, apply_modality_lut, apply_voi_lut, min-max to uint8, PIL LANCZOS resize
  to each size, PNG encode;
- ours: normalize.render(path, (1024, 256)) (reduced-resolution J2K decode, average-then-VOI), PNG encode.

Both sides encode PNG with the same zlib level (default 1: at Pillow's default 6 the encode of a noisy
1024x832 image alone costs ~100 ms and dominates; try --png-level 6).

Run: .venv/bin/python benchmarks/bench_normalize.py [--repeat N] [--png-level L]
Targets on 2 cores: >= 15x the baseline on JPEG 2000, >= 4x on uncompressed.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from mammo_pipeline.dicom.normalize import render

SIZES = (1024, 256)
MG = "1.2.840.10008.5.1.4.1.1.1.2"


def breast_image(rows: int = 4096, cols: int = 3328, seed: int = 0) -> np.ndarray:
    """A smooth 12-bit breast-like image: background, half-ellipse of tissue with texture, Gaussian noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    r = np.sqrt(((y - rows / 2) / (rows * 0.45)) ** 2 + (x / (cols * 0.8)) ** 2)
    tissue = np.clip(1 - r, 0, 1) ** 0.5
    texture = np.asarray(
        Image.fromarray(rng.normal(0, 1, (rows // 64, cols // 64)).astype(np.float32)).resize(
            (cols, rows), Image.Resampling.BICUBIC
        )
    )
    img = 200 + 3000 * tissue + 300 * texture * (tissue > 0) + rng.normal(0, 20, (rows, cols)).astype(np.float32)
    return np.clip(img, 0, 4095).astype(np.uint16)


def write_dicom(arr: np.ndarray, path: Path, j2k: bool, padding: bool = False) -> Path:
    """`arr` as an MG file; `padding` zeroes the background and declares (0028,0120) Pixel Padding Value 0, which
    sends render() through its masked path (padding kept out of area averages and percentiles)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MG
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2047, 4096
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if padding:
        arr = np.where(arr < 300, 0, arr).astype(np.uint16)
        ds.PixelPaddingValue = 0
    ds.PixelData = arr.tobytes()
    if j2k:
        ds.compress(JPEG2000Lossless, arr)
    ds.save_as(path, enforce_file_format=True)
    return path


PNG_LEVEL = [1]  # zlib level for both sides; set from --png-level


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_LEVEL[0])
    return buffer.getvalue()


def naive(path: Path) -> list[bytes]:
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    lo, hi = float(arr.min()), float(arr.max())
    image = Image.fromarray(((arr - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8))
    out = []
    for size in SIZES:
        scale = size / max(image.size)
        resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        out.append(png(np.asarray(resized)))
    return out


def ours(path: Path) -> list[bytes]:
    rendition = render(path, SIZES)
    return [png(rendition.images[size]) for size in SIZES]


def seconds_per_image(fn: Callable[[Path], list[bytes]], path: Path, repeat: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds per image; CPU time is what to trust on a machine shared with other work."""
    fn(path)  # warm-up: imports, page cache
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(path)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per pipeline and format (median)")
    parser.add_argument("--png-level", type=int, default=1, help="PNG zlib level, same on both sides (Pillow: 6)")
    args = parser.parse_args()
    PNG_LEVEL[0] = args.png_level
    with tempfile.TemporaryDirectory() as tmp:
        arr = breast_image()
        files = {
            "JPEG 2000 lossless": write_dicom(arr, Path(tmp) / "j2k.dcm", j2k=True),
            "Explicit VR LE": write_dicom(arr, Path(tmp) / "uncompressed.dcm", j2k=False),
            "Explicit VR LE, Pixel Padding Value": write_dicom(arr, Path(tmp) / "padded.dcm", j2k=False, padding=True),
        }
        print(f"4096x3328 12-bit, sizes {SIZES}, PNG level {args.png_level} on both sides, 1 process")
        print(f"median of {args.repeat} runs (baseline: {max(2, args.repeat // 2)})")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall times suffer when it is high)")
        for name, path in files.items():
            base_wall, base_cpu = seconds_per_image(naive, path, max(2, args.repeat // 2))
            fast_wall, fast_cpu = seconds_per_image(ours, path, args.repeat)
            print(f"{name}")
            for what, base, fast in (("wall", base_wall, fast_wall), ("cpu ", base_cpu, fast_cpu)):
                print(
                    f"  {what}  baseline {1 / base:6.2f} img/s ({base * 1000:6.0f} ms)   "
                    f"render {1 / fast:6.2f} img/s ({fast * 1000:5.0f} ms)   ratio {base / fast:5.1f}x"
                )
            print(f"  PNG bytes at {SIZES}: {[len(b) for b in ours(path)]}")


if __name__ == "__main__":
    main()
