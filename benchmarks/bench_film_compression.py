"""Does lossy compression explain the realism report's film rows? Synthetic digitized films measured as drawn and
after JPEG 2000 irreversible compression at the ratio of the real film's only decodable copy.

The real WG04 film (`../shared/realdata/dicom-wg04/MG1_J2KI.dcm`) is stored as lossy JPEG 2000; its header says
LossyImageCompressionRatio 10 (16-bit stored size / codestream). Its film statistics (top-hat p99 20, noise 0.0048)
sit below the synthetic films' (README "Realism report"). If compression smoothed the scale they measure, the
synthetic films compressed the same way would move towards it. Only the header's ratio is read from the real
file (10 without it); nothing is fitted. Films are drawn at full size (scale 1.0, 50 um), since the codec acts
on the stored pixels. Prints each statistic's median as drawn, after compression and the ratio.

Run: .venv/bin/python benchmarks/bench_film_compression.py [--studies 12] [--seed 5] [--ratio R]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from mammo_pipeline.dicom.normalize import read_dataset
from mammo_pipeline.synth import generate_drops
from mammo_pipeline.synth.drops import read_truth
from mammo_pipeline.synth.identities import hospital_slugs
from mammo_pipeline.synth.profiles import PROFILES, machines_of
from mammo_pipeline.synth.realism import image_stats
from mammo_pipeline.synth.realism_report import contact_views, realdata_dir, synthetic_display

FILM = "FILM-DF"
STATS = ("tophat_p99", "tophat_p999", "noise", "skin_ratio", "beta", "hist_p05", "hist_p50", "hist_p95")


def real_ratio(realdata: Path | None) -> float | None:
    """LossyImageCompressionRatio (0028,2112) of the real film's JPEG 2000 copy, or None when it is absent."""
    path = realdata_dir(realdata) / "dicom-wg04" / "MG1_J2KI.dcm"
    if not path.is_file():
        return None
    ratio = pydicom.dcmread(path, stop_before_pixels=True).get("LossyImageCompressionRatio")
    return float(ratio[0] if isinstance(ratio, pydicom.multival.MultiValue) else ratio) if ratio else None


def j2k_lossy(pixels: np.ndarray, ratio: float) -> tuple[np.ndarray, float]:
    """(decoded pixels, achieved ratio) of uint16 `pixels` after JPEG 2000 irreversible (9/7 wavelet) compression
    to `ratio` of their 16-bit size, with Pillow's OpenJPEG."""
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint16)).save(
        buf, "JPEG2000", irreversible=True, quality_mode="rates", quality_layers=[ratio]
    )
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        decoded = np.asarray(im).astype(pixels.dtype)
    return decoded, pixels.size * 2 / len(buf.getvalue())


def stats_of(ds: pydicom.Dataset) -> dict:
    """The realism statistics of a film dataset, rendered as the realism report renders it."""
    return image_stats(*synthetic_display(ds, FILM)).as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12, help="studies of the hospital that scans films")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--ratio", type=float, default=None, help="default: the real film's header, else 10")
    parser.add_argument("--realdata", type=Path, default=None, help="default: $MAMMO_REALDATA or ../shared/realdata")
    args = parser.parse_args()
    ratio = args.ratio or real_ratio(args.realdata) or 10.0
    index = next(i for i in range(len(PROFILES)) if FILM in machines_of(i))
    slug = hospital_slugs(index + 1)[index]
    with tempfile.TemporaryDirectory() as tmp:
        landing = Path(tmp) / "landing"
        start = time.perf_counter()
        generate_drops(landing, index + 1, args.studies, seed=args.seed, scale=1.0, drop="bench", only=[slug])
        drawn_s = time.perf_counter() - start
        truth = read_truth(landing)
        films = contact_views(truth)
        films = films[films["vendor_profile"] == FILM]
        if films.empty:
            raise SystemExit(f"no film contact view among {len(truth)} files: raise --studies")
        before, after, achieved = [], [], []
        start = time.perf_counter()
        for rel in films["rel_path"]:
            ds, _ = read_dataset(landing / rel)
            pixels = ds.pixel_array
            before.append(stats_of(ds))
            decoded, got = j2k_lossy(pixels, ratio)
            ds.PixelData = decoded.tobytes()
            after.append(stats_of(ds))
            achieved.append(got)
        measure_s = time.perf_counter() - start
    print(
        f"{len(films)} synthetic film contact views ({slug}, scale 1.0) drawn in {drawn_s:.0f} s, measured twice "
        f"in {measure_s:.0f} s; JPEG 2000 irreversible at {ratio:g}:1 (achieved "
        f"{min(achieved):.1f}-{max(achieved):.1f}:1 of the 16-bit size)"
    )
    print(f"{'statistic':<12} {'as drawn':>10} {'compressed':>11} {'ratio':>7}   (medians)")
    for stat in STATS:
        b = float(np.nanmedian([s[stat] for s in before]))
        a = float(np.nanmedian([s[stat] for s in after]))
        print(f"{stat:<12} {b:>10.4g} {a:>11.4g} {a / b if b else float('nan'):>6.3f}x")


if __name__ == "__main__":
    main()
