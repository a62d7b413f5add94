"""The same real mammogram stored in other valid DICOM representations: does the current model give the same answer?

Run:  .venv/bin/python benchmarks/bench_representations.py [--home MAMMO_HOME] [--realdata DIR] [--only NAME,...]
      [--pixel-spacing MM] [--per-image]

Why: an image's answer must not depend on how it is stored. A PACS may send the same breast as MONOCHROME1, with
a VOI LUT or a sigmoid window, compressed (RLE, JPEG-LS, lossless JPEG 2000), mirrored, with a black border or a
Pixel Padding Value, on a larger detector, resampled, with its field one to three rows shorter (`cut1`-`cut3`: the
breast a fraction of a display pixel elsewhere on the grid), or a digitized film as MG or as Secondary Capture.

What: every real image of ../shared/realdata is wrapped (as `bench_real_samples.py` does) in each representation
below, one hospital per representation in a temporary landing folder; the real index -> cache -> predict steps
run with the model named by <home>/models/current.json, borrowed read-only (the temporary home points at the
home's models folder; nothing is written there). `plain` (MG For Presentation, MONOCHROME2, no window: the
baseline) is measured in the same run. One line per representation: files written, indexed, quarantined, the
largest mean absolute difference of its display PNG to the plain one (gray levels, after undoing its border or
mirror; `sigmoid`, `grayair` and `grayair-pad` use another display curve by design, so theirs is large), and
against the plain representation of the same image the largest |delta p_biopsy| (signed), the largest
|delta p_mag| and how many biopsy flags flip. RATIO: representations (plain excluded) whose biopsy and
magnification flags all match plain's, a lost image counting as a mismatch; RESULT names the worst one (most
flips, then the largest |delta p_biopsy|). It never trains, and the wrapped images exist only in a temporary
folder. `--pixel-spacing 0.07` writes the NYU images' inferred 70 um as Imager Pixel Spacing in every
representation (as `bench_real_samples.py --pixel-spacing`; `detector` and `down100` state their own either way):
a hospital's files carry one, and with it a border or a larger matrix leaves the breast its display size
(`normalize.AtPitch`). Skips, with a message and exit 0, when the real-data folder is absent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
from bench_real_samples import _uid, borrowing_home, current_model, real_images, realdata_absent, wrap_as_dicom
from PIL import Image
from pydicom import Dataset, dcmread, uid
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.sequence import Sequence

from mammo_pipeline.synth.realism_report import realdata_dir


@dataclass
class Rep:
    """One representation of one image: the stored pixels, header changes (None deletes), the transfer syntax,
    and how it maps back to the plain image (mirrored; (top, left, height, width) of the original inside it)."""

    stored: np.ndarray
    header: dict[str, object] = field(default_factory=dict)
    syntax: str | None = None
    flip: bool = False
    crop: tuple[int, int, int, int] | None = None


def _top(px: np.ndarray) -> int:
    """The image's own full scale: the NYU classifier files hold 0..65535, the others 0..4095."""
    return 65535 if int(px.max()) > 4095 else 4095


def _bits(bits: int) -> dict[str, object]:
    return {"BitsStored": bits, "HighBit": bits - 1}


def _v12(px: np.ndarray) -> np.ndarray:
    return np.rint(px * (4095 / _top(px))).astype(np.uint16)


def _pad(px: np.ndarray, frac: float, value: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    h, w = px.shape
    top, left = int(frac * h), int(frac * w)
    out = np.full((h + 2 * top, w + 2 * left), value, dtype=px.dtype)
    out[top : top + h, left : left + w] = px
    return out, (top, left, h, w)


def sigmoid(px: np.ndarray, lat: str) -> Rep:
    """A vendor window on the tissue (0.5th..99.9th percentile of the non-zero 12-bit values), SIGMOID."""
    v12 = _v12(px)
    tissue = v12[v12 > 0]
    tissue = tissue[:: max(1, tissue.size // 400_000)]
    lo, hi = (float(x) for x in np.percentile(tissue, [0.5, 99.9]))
    window = {"WindowCenter": f"{(lo + hi) / 2:.1f}", "WindowWidth": f"{max(hi - lo, 2.0):.1f}"}
    return Rep(v12, {**_bits(12), **window, "VOILUTFunction": "SIGMOID"})


def voi_lut(px: np.ndarray, lat: str) -> Rep:
    """12-bit values with a linear VOI LUT Sequence instead of a window."""
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor: entries, first value mapped, bits
    item.LUTExplanation = "LINEAR"
    item.add_new(0x00283006, "OW", np.arange(4096, dtype="<u2").tobytes())
    return Rep(_v12(px), {**_bits(12), "VOILUTSequence": Sequence([item])})


def grayair(px: np.ndarray, lat: str) -> Rep:
    """A display curve that leaves the air dark gray (values + 500, window 0..4595: air about 11 % gray)."""
    return Rep(_v12(px) + 500, {**_bits(13), "WindowCenter": "2298", "WindowWidth": "4596"})


def grayair_pad(px: np.ndarray, lat: str) -> Rep:
    """grayair with a black 25 % border declared as Pixel Padding Value 0 (a detector's unexposed area)."""
    rep = grayair(px, lat)
    rep.stored, rep.crop = _pad(rep.stored, 0.25)
    rep.header["PixelPaddingValue"] = 0
    return rep


def pad(frac: float) -> Callable[[np.ndarray, str], Rep]:
    def make(px: np.ndarray, lat: str) -> Rep:
        stored, crop = _pad(px, frac)
        return Rep(stored, crop=crop)

    return make


def detector(px: np.ndarray, lat: str) -> Rep:
    """The breast on a 1.23x larger matrix (24 x 29 instead of 18 x 24 cm at 70 um), against the chest-wall edge."""
    h, w = px.shape
    out = np.zeros((round(h * 4096 / 3328), round(w * 3328 / 2560)), dtype=px.dtype)
    top, left = (out.shape[0] - h) // 2, 0 if lat == "L" else out.shape[1] - w
    out[top : top + h, left : left + w] = px
    return Rep(out, {"PixelSpacing": ["0.07", "0.07"], "ImagerPixelSpacing": ["0.07", "0.07"]}, crop=(top, left, h, w))


def down100(px: np.ndarray, lat: str) -> Rep:
    """Area-resampled from 70 to 100 um, Pixel Spacing 0.1."""
    size = (round(px.shape[1] * 0.7), round(px.shape[0] * 0.7))
    small = np.asarray(Image.fromarray(px.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX))
    spacing = {"PixelSpacing": ["0.1", "0.1"], "ImagerPixelSpacing": ["0.1", "0.1"]}
    return Rep(np.clip(np.rint(small), 0, 65535).astype(np.uint16), spacing)


def rows_cut(k: int) -> Callable[[np.ndarray, str], Rep]:
    """The matrix without its first `k` rows (a field stored `k` pixels shorter): the breast moves `k` stored
    pixels up the pixel grid, a fraction of a display pixel (about 0.3 per stored pixel at 70 um), which must not
    change an answer."""

    def make(px: np.ndarray, lat: str) -> Rep:
        return Rep(np.ascontiguousarray(px[k:]))

    return make


def film(sc: bool) -> Callable[[np.ndarray, str], Rep]:
    """The WG04 film (only): as MG For Presentation, or as Secondary Capture (Conversion Type DF), window 2047/4095."""
    header: dict[str, object] = {**_bits(12), "WindowCenter": "2047", "WindowWidth": "4095"}
    if sc:
        header |= {"SOPClassUID": uid.SecondaryCaptureImageStorage, "ConversionType": "DF"}
        header |= {"PresentationIntentType": None, "ImageType": ["DERIVED", "SECONDARY"]}

    def make(px: np.ndarray, lat: str) -> Rep:
        return Rep(px, dict(header))

    return make


REPRESENTATIONS: dict[str, Callable[[np.ndarray, str], Rep]] = {
    "plain": lambda px, lat: Rep(px),
    "mono1": lambda px, lat: Rep(
        _top(px) - px, {**_bits(_top(px).bit_length()), "PhotometricInterpretation": "MONOCHROME1"}
    ),
    "voi-lut": voi_lut,
    "sigmoid": sigmoid,
    "rle": lambda px, lat: Rep(px, syntax=uid.RLELossless),
    "jpegls": lambda px, lat: Rep(px, syntax=uid.JPEGLSLossless),
    "j2k": lambda px, lat: Rep(px, syntax=uid.JPEG2000Lossless),
    "flip": lambda px, lat: Rep(np.ascontiguousarray(px[:, ::-1]), flip=True),
    "pad10": pad(0.10),
    "pad": pad(0.25),
    "grayair": grayair,
    "grayair-pad": grayair_pad,
    "detector": detector,
    "down100": down100,
    "cut1": rows_cut(1),
    "cut2": rows_cut(2),
    "cut3": rows_cut(3),
    "film-mg": film(sc=False),
    "film-sc": film(sc=True),
}
FILM_ONLY = {"film-mg", "film-sc"}


def write(rep: Rep, name: str, lat: str, view: str, path: Path, spacing_mm: float | None = None) -> None:
    """Write the representation with `bench_real_samples.wrap_as_dicom` (SOP Instance UID `_uid(name)`, Imager
    Pixel Spacing `spacing_mm` when given), then apply its Patient Orientation, header and transfer syntax."""
    wrap_as_dicom(name, rep.stored, lat, view, path, spacing_mm)
    ds = dcmread(path)
    toward_nipple = "A" if lat == "L" else "P"
    row = {"A": "P", "P": "A"}[toward_nipple] if rep.flip else toward_nipple
    ds.PatientOrientation = [row, ("R" if lat == "L" else "L") if view == "CC" else ("FR" if lat == "L" else "FL")]
    for key, value in rep.header.items():
        if value is None and key in ds:
            delattr(ds, key)
        elif value is not None:
            setattr(ds, key, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    correct_ambiguous_vr(ds, is_little_endian=True)  # Pixel Padding Value: US (Pixel Representation 0)
    if rep.syntax is not None:
        ds.compress(rep.syntax, rep.stored, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def display_mad(plain_png: Path, png: Path, rep: Rep, trimmed: bool = False) -> float:
    """Mean |difference| in gray levels of a display PNG to the plain one, its border cut (unless the rendition cut
    it already: `trimmed`, the manifest's `padding_trimmed`) and mirror undone."""
    with Image.open(plain_png) as a, Image.open(png) as b:
        base, img = np.asarray(a.convert("L"), np.float32), np.asarray(b.convert("L"), np.float32)
    if rep.crop is not None and not trimmed:
        (top, left, h, w), (sy, sx) = rep.crop, (img.shape[0] / rep.stored.shape[0], img.shape[1] / rep.stored.shape[1])
        img = img[round(top * sy) : round((top + h) * sy), round(left * sx) : round((left + w) * sx)]
    if rep.flip:
        img = img[:, ::-1]
    if img.shape != base.shape:
        resample = Image.Resampling.BOX if img.shape[0] >= base.shape[0] else Image.Resampling.BILINEAR
        resized = Image.fromarray(np.ascontiguousarray(img), mode="F").resize(base.shape[::-1], resample)
        img = np.asarray(resized, np.float32)
    return float(np.abs(img - base).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="MAMMO_HOME whose current model to use (default: env)")
    parser.add_argument(
        "--realdata", type=Path, default=realdata_dir(), help="default: $MAMMO_REALDATA or ../shared/realdata"
    )
    parser.add_argument("--only", default="", help=f"comma-separated, plain always added: {', '.join(REPRESENTATIONS)}")
    parser.add_argument(
        "--pixel-spacing", type=float, default=None, help="mm, written for the NYU images (default: none, as stored)"
    )
    parser.add_argument("--per-image", action="store_true", help="also each image's dp_biopsy and p_mag")
    args = parser.parse_args()
    wanted = ["plain", *(n for n in args.only.split(",") if n and n != "plain")] if args.only else list(REPRESENTATIONS)
    if unknown := [n for n in wanted if n not in REPRESENTATIONS]:
        parser.error(f"unknown representation(s) {', '.join(unknown)}; known: {', '.join(REPRESENTATIONS)}")
    if realdata_absent(args.realdata):
        return 0
    from mammo_pipeline.cache import cache_hospital
    from mammo_pipeline.dicom.index import index_hospital
    from mammo_pipeline.model.infer import load_model, write_predictions

    model_home, ref = current_model(args.home)
    images = real_images(args.realdata)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-repr-") as tmp:
        settings = borrowing_home(tmp, model_home)
        model = load_model(settings, ref)
        counts, frames, reps = {}, [], {}
        for rep_name in wanted:
            hospital = f"repr-{rep_name}"
            written = 0
            for name, px, lat, view in images:
                if rep_name in FILM_ONLY and not name.startswith("dicom-wg04/"):
                    continue
                rep, sop = REPRESENTATIONS[rep_name](px, lat), _uid(f"{rep_name}/{name}")
                spacing = args.pixel_spacing if name.startswith("nyu-") else None
                path = settings.landing / hospital / "drop" / f"{sop}.dcm"
                write(rep, f"{rep_name}/{name}", lat, view, path, spacing)
                reps[sop], written = (rep_name, name.rsplit("/", 1)[1], rep), written + 1
            indexed = index_hospital(settings, hospital)
            cached = cache_hospital(settings, hospital)
            quarantined = sum(indexed.quarantined.values()) + sum(cached.quarantined.values())
            counts[rep_name] = (written, indexed.new, quarantined)
            manifest = pd.read_parquet(settings.table_dir("image_cache", hospital) / "manifest.parquet")
            manifest = manifest[manifest["model_png"].notna() & (manifest["model_png"] != "")]
            path = settings.table_dir("image_predictions", hospital) / "predictions.parquet"
            if len(manifest):
                write_predictions(settings, manifest, model, path)
                frames.append(
                    pd.read_parquet(path).merge(
                        manifest[["sop_instance_uid", "display_png", "padding_trimmed"]], on="sop_instance_uid"
                    )
                )
        preds = pd.concat(frames, ignore_index=True)
        preds[["rep", "image"]] = [reps[s][:2] for s in preds["sop_instance_uid"]]
        by = preds.set_index(["rep", "image"])
        point = model.point("biopsy")
        print(
            f"model {ref.model_version}, biopsy threshold {point['threshold']:.4f}, magnification threshold "
            f"{model.point('mag')['threshold']:.3f}; {len(images)} real images, {len(wanted)} representations"
        )
        plain = by.loc["plain"]
        print("plain p_biopsy: " + ", ".join(f"{i} {r.p_biopsy:.3f}" for i, r in plain.sort_index().iterrows()))
        print(
            f"{'representation':14} {'files':>5} {'indexed':>7} {'quar':>4} {'MAD':>6} {'dp_biopsy':>9} "
            f"{'|dp_mag|':>8} {'biopsy flips':>12}"
        )
        same, worst = 0, ("", -1, 0.0)
        for rep_name in wanted:
            files, n_indexed, quarantined = counts[rep_name]
            mads, dps, dmags, mags, flips, other_flags = [], [], [], [], 0, 0
            for r_name, stem, rep in reps.values():
                if r_name != rep_name:
                    continue
                if (rep_name, stem) not in by.index:
                    other_flags += 1  # lost: not predicted
                    continue
                a, b = plain.loc[stem], by.loc[(rep_name, stem)]
                trimmed = pd.notna(b.padding_trimmed)
                mads.append(display_mad(settings.cache / a.display_png, settings.cache / b.display_png, rep, trimmed))
                dps.append(float(b.p_biopsy - a.p_biopsy))
                dmags.append(abs(float(b.p_mag - a.p_mag)))
                mags.append(float(b.p_mag))
                flips += bool(a.has_biopsy_marker) != bool(b.has_biopsy_marker)
                other_flags += bool(a.is_mag_view) != bool(b.is_mag_view)
            dp = max(dps, key=abs, default=float("nan"))
            print(
                f"{rep_name:14} {files:5d} {n_indexed:7d} {quarantined:4d} {max(mads, default=float('nan')):6.2f} "
                f"{dp:+9.3f} {max(dmags, default=float('nan')):8.3f} {flips:5d} of {len(dps)}"
            )
            if args.per_image and rep_name != "plain":
                stems = [stem for r_name, stem, _ in reps.values() if r_name == rep_name and (r_name, stem) in by.index]
                pairs = zip(stems, dps, mags, strict=True)
                print("  dp_biopsy / p_mag: " + ", ".join(f"{stem} {d:+.3f} / {m:.2f}" for stem, d, m in pairs))
            if rep_name != "plain":
                same += flips + other_flags == 0
                if (flips + other_flags, abs(dp)) > worst[1:]:
                    worst = (rep_name, flips + other_flags, abs(dp))
        others = len(wanted) - 1
        print(
            f"RATIO representations whose flags all match plain's: {same}/{others} = {same / max(others, 1):.2f} "
            f"(plain, the reference, not counted)"
        )
        print(
            f"RESULT worst representation: {worst[0] or 'none'} ({worst[1]} flag(s) differ from plain's, largest "
            f"|dp_biopsy| {worst[2]:.3f}); {time.monotonic() - start:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
