"""The current model on a folder of real mammograms (by default the public ones of ../shared/realdata): probabilities
and heat maps.

Run:  .venv/bin/python benchmarks/bench_real_samples.py [--home MAMMO_HOME] [--realdata DIR] [--truth CSV]
      [--rewrap-dicom] [--out PNG] [--pixel-spacing MM] [--model VERSION|promoted]

What it reads: every file below the real folder (`--realdata`, else $MAMMO_REALDATA, else ../shared/realdata; any
depth, in path order; README, CSV and hidden files passed over) that is DICOM, whatever its name (a Part 10 file,
preamble and "DICM", or a bare data set whose forced read finds Pixel Data), or a raster image PIL opens (PNG,
TIFF, JPEG; colour made gray, 8 and 16 bits kept). Any other file is named once as skipped, with the reason. An
evaluator's folder has its own names and formats, so nothing is assumed of either.

How it runs them: into a temporary landing folder, then the real index -> cache -> predict steps with the model
named by <home>/models/current.json (borrowed read only; nothing is written in that home but the contact sheet). By
default a DICOM file goes in as stored, byte for byte: that is the product's path (the index's routing, which takes
a CR/DX/RG/OT radiograph of the BREAST and a Secondary Capture as mammograms, and the file's own decoder, window and
photometric interpretation), and a file the index or the cache refuses is named with its quarantine reason, not
dropped. Two files of one image count once ("N files, M images"): a copy under the same SOP Instance UID by the
index's own de-duplication (quarantined `duplicate`), another encoding of an image by the benchmark (`image_uid`: a
lossy copy gets its own SOP Instance UID and names the image it was made from in its Source Image Sequence, as the
WG04 pair, J2KI and JPLY, do), which scores both and counts the first file by path. `--rewrap-dicom` restores what
this benchmark did up to stop 67, so those figures can be reproduced: each DICOM image's pixels (the first file of
each image only) re-wrapped as MG For Presentation without a window, which sends it to the pipeline's own fallback
window. A raster image holds no header, so it is always wrapped (`wrap_as_dicom`: Modality MG, no window, no patient
data), its laterality and view read from a token of its name (`L_CC`, `L-CC`, `LCC`, `RMLO`, `left_cc`, ...;
`laterality_view`), else left out: the index then records no laterality and no view (`laterality` / `view_position`
null, counted missing by the completeness report), and the image is cached and predicted all the same, since nothing
downstream of the index reads either. Images are grouped into exams by the name before that token (`exam_of`); a
wrapped image without one is its own exam, and a DICOM file's study is its own Study Instance UID.

What it prints: each image's probabilities, flags and needs_review against the truth, the study flags (one study
per exam: `summary.aggregate_studies` at the model's study thresholds) and, for a model with a second look, each
image's three most clip-like crops (patch probability and the crop's centre in display PNG px: what decided its
p_biopsy), where the clip-free real images' p_biopsy fall among the model's own clip-free audit images (the
synthetic images its threshold was chosen on: is a false flag the real tissue or the operating point?), and a
contact sheet with each image's biopsy-marker heat map. It never trains on these images. A raster image holds
no pixel spacing, so by default none is written and each display has the plain long side; `--pixel-spacing
0.07` writes the 70 um the realdata README infers for the NYU PNGs (an 18 x 24 cm detector at 2560 x 3328) as
Imager Pixel Spacing of every wrapped raster image, so they show at one pitch as a hospital's files would
(`normalize.AtPitch`; a DICOM file keeps what it states, and a re-wrapped one none, as before). Skips, with a
message, when the folder is absent.

Truth: `--truth CSV`, else a `truth.csv` in the real folder, with the columns `image` (the path below the folder,
with or without its extension), `clip` (1/0, true/false, yes/no; empty: not known) and optionally `mag` (the
same). Without a CSV the built-in truth of the shared set below applies, to the ten files of that set only (by
their path without extension). An image without truth is printed with `?` and left out of every count, the
ranking and its study's truth (a line says how many); its contact-sheet title says "truth: ?".

The shared set's truth (decided by looking at every image at full resolution, see README "Real images"): only
`nyu-breast_cancer_classifier/2_R_CC` holds a metal clip inside the breast (a saturated, sharp-edged barbell,
about 3 mm, inside dense tissue). The round BBs on or beside the nipple (1_L_CC, 1_R_CC, the four nyu-gmic
views) and the perfectly round disk over the mass of the WG04 film (a palpable-lump BB) are skin markers; the
bright specks of 2_L_CC, 0_R-MLO and 1_R_CC are calcifications (clustered or under 1 mm). No image is a
magnification or spot view. Target: biopsy flagged exactly on 2_R_CC (and on its study, exam 2), mag on none.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
from PIL import Image

from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.settings import Settings
from mammo_pipeline.synth.realism_report import realdata_dir

HOSPITAL, DROP = "realdata", "drop-real"
CLIP_IMAGES = {"nyu-breast_cancer_classifier/2_R_CC"}
# the shared set's files (path below the folder, no extension): the only ones the built-in truth speaks for
SHARED_SET = {
    *(f"nyu-breast_cancer_classifier/{n}_{s}_CC" for n in (1, 2) for s in "LR"),
    *(f"nyu-gmic/0_{s}-{v}" for s in "LR" for v in ("CC", "MLO")),
    "dicom-wg04/MG1_J2KI",
    "dicom-wg04/MG1_JPLY",
}
# a side then a view, as one token of a file name: not inside a word or a number ("L_CC", "rmlo", "left-cc")
LAT_VIEW = re.compile(
    r"(?<![a-z0-9])(?P<lat>left|right|l|r)[ _-]?(?P<view>cc|mlo|ml|lm|xccl|xccm)(?![a-z0-9])", re.IGNORECASE
)
RASTER_FORMATS = {"PNG", "TIFF", "JPEG", "MPO"}  # MPO: what Pillow calls some cameras' JPEG files
DIGITAL_MAMMO_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
# (0040,A170) Purpose of Reference of a Source Image Sequence item naming the image a lossy copy was made from
# (DCM 121320 "Uncompressed predecessor", PS3.16 CID 7202)
UNCOMPRESSED_PREDECESSOR = "121320"
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes", "y"}, {"0", "false", "no", "n"}


@dataclass(frozen=True)
class RealFile:
    """One image file of the real folder: `name` is its path below the folder without extension (how every line
    names it), `rel` with it; `image_uid` the image a DICOM file holds (`image_uid`), None when not known."""

    name: str
    rel: str
    path: Path
    kind: str  # "dicom" | "raster"
    image_uid: str | None = None


@dataclass(frozen=True)
class Truth:
    """What an image holds; None: not known."""

    clip: bool | None
    mag: bool | None = None


class TruthError(ValueError):
    """A truth CSV that cannot be read as `image,clip[,mag]`."""


def _uid(text: str) -> str:
    """A deterministic DICOM UID from a text (2.25 + decimal of a hash)."""
    return "2.25." + str(int(hashlib.sha256(text.encode()).hexdigest()[:30], 16))


def laterality_view(stem: str) -> tuple[str, str]:
    """("L" | "R", view) from a side-and-view token of a file name ("1_L_CC", "0_L-MLO", "case7_rmlo",
    "left_cc"), else ("", ""): a name without one says nothing, and a wrong guess would be worse than none."""
    match = LAT_VIEW.search(stem)
    if match is None:
        return "", ""
    return match["lat"][0].upper(), match["view"].upper()


def exam_of(name: str) -> str:
    """The exam (one patient's study) of a wrapped image: its folder and the part of its file name before the
    side-and-view token ('nyu-gmic/0_L-CC' -> 'nyu-gmic/0', 'nyu-breast_cancer_classifier/2_R_CC' -> '.../2');
    a name without such a token is an exam of its own (two unrelated files must not become one study)."""
    folder, _, stem = name.rpartition("/")
    match = LAT_VIEW.search(stem)
    prefix = stem[: match.start()].rstrip(" _-.") if match else ""
    return f"{folder}/{prefix or stem}" if folder else prefix or stem


def _skipped_by_name(rel: Path) -> bool:
    """README, CSV (the truth) and hidden files or folders: notes beside the images, never images."""
    return (
        any(part.startswith(".") for part in rel.parts)
        or rel.name.lower().startswith("readme")
        or (rel.suffix.lower() == ".csv")
    )


def dicom_header(path: Path, *, forced: bool):
    """The header of a DICOM file (no pixels), or None when pydicom cannot read one; `forced`: a file without the
    Part 10 preamble, which counts as DICOM only when the forced read finds Pixel Data."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a forced read of a stray file warns about every odd element
            ds = pydicom.dcmread(path, force=forced, defer_size=1024)
    except Exception:  # any parse failure: not a header pydicom can read
        return None
    if forced and "PixelData" not in ds:
        return None
    return ds


def image_uid(ds) -> str | None:
    """The image a DICOM header holds: the uncompressed predecessor its Source Image Sequence names, else its own
    SOP Instance UID. A lossy-compressed copy gets a new SOP Instance UID (PS3.3 C.7.6.1.1.5) and names the image
    it was made from, so two encodings of one image (the WG04 pair: J2KI and JPLY, SOP Instance UIDs .3 and .5,
    both made from .1) are one image here, though the index, rightly by the standard, keeps both."""
    for item in ds.get("SourceImageSequence", None) or []:
        purposes = item.get("PurposeOfReferenceCodeSequence", None) or []
        if any(str(code.get("CodeValue", "")) == UNCOMPRESSED_PREDECESSOR for code in purposes):
            return str(item.get("ReferencedSOPInstanceUID", "")) or None
    return str(ds.get("SOPInstanceUID", "")) or None


def _raster_format(path: Path) -> str | None:
    """Pillow's format name of a raster image it opens (its header only), else None."""
    try:
        with Image.open(path) as img:
            return img.format if img.format in RASTER_FORMATS else None
    except Exception:  # Pillow raises many types for a file it does not know
        return None


def classify(path: Path) -> tuple[str | None, str | None]:
    """("dicom" | "raster", `image_uid` of a DICOM file) or (None, why not) for a file of the real folder.
    A Part 10 file (PS3.10 7.1) is DICOM even when pydicom cannot read its header (the index then names what is
    wrong); a bare data set is tried last, after Pillow, so no image gets a forced DICOM read."""
    from pydicom.misc import is_dicom

    try:
        part10 = is_dicom(path)
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or type(exc).__name__})"
    if part10:
        ds = dicom_header(path, forced=False)
        return "dicom", image_uid(ds) if ds is not None else None
    if _raster_format(path) is not None:
        return "raster", None
    ds = dicom_header(path, forced=True)
    if ds is not None:
        return "dicom", image_uid(ds)
    return None, "neither DICOM (no DICM preamble, no Pixel Data in a forced read) nor an image Pillow opens"


def discover(root: Path) -> tuple[list[RealFile], list[tuple[str, str]]]:
    """(image files, [(path below the folder, why skipped)]) of every file below `root`, in path order."""
    files: list[RealFile] = []
    skipped: list[tuple[str, str]] = []
    taken: set[str] = set()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if _skipped_by_name(rel):
            continue
        kind, detail = classify(path)
        if kind is None:
            skipped.append((rel.as_posix(), detail or "unknown"))
            continue
        name = rel.with_suffix("").as_posix()
        name = rel.as_posix() if name in taken else name  # 'a/x.png' beside 'a/x.dcm': the second keeps its suffix
        taken.add(name)
        files.append(RealFile(name, rel.as_posix(), path, kind, detail if kind == "dicom" else None))
    return files, skipped


def read_raster(path: Path) -> np.ndarray:
    """uint8 or uint16 [rows, cols]: a raster image's first frame, colour made gray (Pillow's ITU-R 601 luma), 8
    and 16 bits kept; deeper or float data (a 32-bit TIFF) brought into 16 bits."""
    with Image.open(path) as img:
        img.seek(0)
        if img.mode not in {"L", "I", "I;16", "I;16B", "I;16L", "F"}:  # RGB, RGBA, LA, P, 1, CMYK, YCbCr
            img = img.convert("L")
        pixels = np.asarray(img)
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize <= 2:
        return pixels.astype(np.uint8 if pixels.dtype.itemsize == 1 else np.uint16)
    pixels = pixels.astype(np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    if low >= 0 and high <= 65535 and np.all(pixels == np.round(pixels)):
        return pixels.astype(np.uint16)
    return np.round((pixels - low) / max(high - low, 1e-12) * 65535).astype(np.uint16)


def wrap_as_dicom(
    name: str, pixels: np.ndarray, laterality: str, view: str, path: Path, spacing_mm: float | None = None
) -> None:
    """Write `pixels` as an uncompressed MG For Presentation object (MONOCHROME2, no patient data), with
    `spacing_mm` as Imager Pixel Spacing (0018,1164) when given; an empty `laterality` or `view` is left out."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    exam = exam_of(name)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_MAMMO_PRESENTATION
    meta.MediaStorageSOPInstanceUID = _uid(name)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["mammo-pipeline bench_real_samples"])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DIGITAL_MAMMO_PRESENTATION, _uid(name)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid("study " + exam), _uid("series " + name)
    ds.PatientID = "REAL-" + hashlib.sha256(exam.encode()).hexdigest()[:8]
    ds.Modality, ds.Manufacturer = "MG", "public sample"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if laterality:
        ds.ImageLaterality = laterality
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    if spacing_mm is not None:
        ds.ImagerPixelSpacing = [f"{spacing_mm:g}", f"{spacing_mm:g}"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = max(int(pixels.max()).bit_length(), 8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def dicom_pixels(file: RealFile) -> tuple[np.ndarray, str, str]:
    """(pixels uint16, laterality, view) of a DICOM file, as the benchmark read them before it landed files as
    stored (`--rewrap-dicom`): pydicom's first frame, MONOCHROME1 turned into MONOCHROME2, side and view from the
    header, else from the name."""
    import pydicom

    ds = pydicom.dcmread(file.path, force=True)
    pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise ValueError(f"{pixels.shape} pixels: --rewrap-dicom takes one gray frame (run it as stored)")
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        pixels = pixels.max() - pixels
    lat, view = laterality_view(Path(file.name).name)
    lat = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or lat)
    return pixels.astype(np.uint16), lat, str(ds.get("ViewPosition", "") or view)


def first_files(files: Iterable[RealFile]) -> dict[str, str]:
    """{name: name of the first file, in path order, of the image it holds}: a DICOM file whose `image_uid` an
    earlier file holds is another copy or encoding of that image; every other file is its own first."""
    first: dict[str, str] = {}
    by_image: dict[str, str] = {}
    for file in files:
        first[file.name] = by_image.setdefault(file.image_uid, file.name) if file.image_uid else file.name
    return first


def first_of_each_image(files: list[RealFile]) -> tuple[list[RealFile], list[tuple[RealFile, str]]]:
    """(the first file of each image, [(another file of an image, the first one's name)]): what `--rewrap-dicom`
    lands, since it gives every file a new SOP Instance UID and the index could not tell the copies."""
    first = first_files(files)
    kept = [f for f in files if first[f.name] == f.name]
    return kept, [(f, first[f.name]) for f in files if first[f.name] != f.name]


def real_images(root: Path, skipped: list[tuple[str, str]] | None = None) -> list[tuple[str, np.ndarray, str, str]]:
    """(name, pixels, laterality, view) of every distinct image below `root`, DICOM pixels re-wrapped (the input
    of `--rewrap-dicom` and of bench_representations); a file that cannot be read is appended to `skipped`."""
    files, skipped_here = discover(root)
    out = []
    for file in first_of_each_image(files)[0]:
        try:
            if file.kind == "dicom":
                out.append((file.name, *dicom_pixels(file)))
            else:
                out.append((file.name, read_raster(file.path), *laterality_view(Path(file.name).name)))
        except Exception as exc:  # one bad file is named, never the end of the run
            skipped_here.append((file.rel, f"cannot be read ({type(exc).__name__}: {exc})"))
    if skipped is not None:
        skipped += skipped_here
    return out


def land(
    files: list[RealFile], folder: Path, *, rewrap: bool, spacing_mm: float | None
) -> tuple[dict[str, RealFile], list[tuple[str, str]]]:
    """Write every file into the drop folder `folder` (a DICOM file copied byte for byte unless `rewrap`, a raster
    image wrapped) under its position in path order, so the index's de-duplication keeps the first file of an image
    as it does by name; ({landed file name: its real file}, [(path below the real folder, why skipped)])."""
    landed: dict[str, RealFile] = {}
    skipped: list[tuple[str, str]] = []
    folder.mkdir(parents=True, exist_ok=True)
    for k, file in enumerate(files):
        target = folder / f"{k:05d}{'' if file.kind == 'dicom' and not rewrap else '.dcm'}"
        try:
            if file.kind == "dicom" and not rewrap:
                shutil.copyfile(file.path, target)
            elif file.kind == "dicom":
                pixels, lat, view = dicom_pixels(file)
                wrap_as_dicom(file.name, pixels, lat, view, target)
            else:
                lat, view = laterality_view(Path(file.name).name)
                wrap_as_dicom(file.name, read_raster(file.path), lat, view, target, spacing_mm)
        except Exception as exc:  # one bad file is named, never the end of the run
            target.unlink(missing_ok=True)
            skipped.append((file.rel, f"cannot be read ({type(exc).__name__}: {exc})"))
            continue
        landed[target.name] = file
    return landed, skipped


def _real_file(settings: Settings, rel_path: str, landed: dict[str, RealFile]) -> RealFile | None:
    """The real file behind a pseudonymized path of the index or the cache (`source_paths.resolve`)."""
    from mammo_pipeline.dicom import source_paths

    try:
        return landed.get(source_paths.resolve(settings, HOSPITAL, rel_path).name)
    except KeyError:
        return None


def indexed_names(settings: Settings, landed: dict[str, RealFile]) -> dict[str, str]:
    """{SOP Instance UID: real name} of every image the index holds (the first file of each image)."""
    folder = settings.table_dir("dicom_index", HOSPITAL)
    rows = pd.concat(
        [pd.read_parquet(p, columns=["sop_instance_uid", "rel_path"]) for p in sorted(folder.glob("*.parquet"))]
        or [pd.DataFrame(columns=["sop_instance_uid", "rel_path"])]
    )
    names = {}
    for sop, rel_path in zip(rows["sop_instance_uid"], rows["rel_path"], strict=True):
        file = _real_file(settings, rel_path, landed)
        names[sop] = file.name if file is not None else rel_path
    return names


def unscored_lines(settings: Settings, names: dict[str, str], scored: set[str], quarantine: list[dict]) -> list[str]:
    """A line for each indexed image with no prediction that no quarantine row explains: a For Processing image,
    which the cache never renders (raw detector values are no display), is indexed and then left, by design."""
    explained = {q["sop_instance_uid"] for q in quarantine}
    folder = settings.table_dir("dicom_index", HOSPITAL)
    lines = []
    for path in sorted(folder.glob("*.parquet")):
        rows = pd.read_parquet(path, columns=["sop_instance_uid", "image_kind"])
        for sop, kind in zip(rows["sop_instance_uid"], rows["image_kind"], strict=True):
            if sop not in scored and sop not in explained:
                lines.append(f"  NOT SCORED {names.get(sop, sop)}: indexed as `{kind}`, no display rendered for it")
    return lines


def quarantined(settings: Settings, landed: dict[str, RealFile]) -> list[dict]:
    """The quarantine rows the index and the cache wrote for the real files (as `dicom.quarantine` writes them),
    each with the real file's `name`."""
    from mammo_pipeline.dicom.quarantine import read_quarantine_rows

    folder = settings.table_dir("quarantine", HOSPITAL)
    rows = [row for path in sorted(folder.glob("*.parquet")) for row in read_quarantine_rows(path)]
    for row in rows:
        file = _real_file(settings, row["rel_path"], landed)
        row["name"] = file.name if file is not None else row["rel_path"]
    return rows


def landing_lines(
    files: list[RealFile],
    skipped: list[tuple[str, str]],
    quarantine: list[dict],
    names: dict[str, str],
    first: dict[str, str],
) -> list[str]:
    """What became of every file: "N files, M images" (M: the images the index holds, another encoding of one of
    them counted once), then each copy the index counted once, each file the product refused (its quarantine
    reason and message) and each file skipped."""
    from mammo_pipeline.dicom.quarantine import DUPLICATE

    n_dicom = sum(f.kind == "dicom" for f in files)
    images = {first.get(n, n) for n in names.values()}
    encodings = sum(first.get(n, n) != n for n in names.values())
    lines = [
        f"{len(files)} files, {len(images)} images ({n_dicom} DICOM files, {len(files) - n_dicom} raster images; "
        f"{sum(q['reason'] == DUPLICATE for q in quarantine)} a copy under an indexed SOP Instance UID, {encodings} "
        f"another encoding of an image, {sum(q['reason'] != DUPLICATE for q in quarantine)} refused, "
        f"{len(skipped)} skipped)"
    ]
    for q in quarantine:
        if q["reason"] == DUPLICATE:
            kept = names.get(q["sop_instance_uid"], "an indexed image")
            lines.append(f"  {q['name']}: the same image as {kept} (index: {DUPLICATE}), counted once")
        else:
            message = str(q["message"]).replace(str(q["rel_path"]), q["name"])
            lines.append(f"  REFUSED {q['name']}: {q['stage']} quarantined it `{q['reason']}`: {message}")
    lines += [f"  SKIPPED {rel}: {why}" for rel, why in skipped]
    return lines


def once_per_image(preds: pd.DataFrame, first: dict[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """(the predictions of the first file of each image, a line for each other encoding of one): the index keeps
    two encodings of one image (their SOP Instance UIDs differ), and both are scored, but the image counts once,
    in the table, the counts, the ranking and its study."""
    is_first = preds["name"].map(lambda n: first.get(n, n) == n)
    p_of = dict(zip(preds["name"], preds["p_biopsy"], strict=True))
    lines = [
        f"  {r.name}: another encoding of {first[r.name]} (Source Image Sequence: the same uncompressed "
        f"predecessor), p_biopsy {r.p_biopsy:.3f} against {p_of.get(first[r.name], float('nan')):.3f}, counted once"
        for r in preds[~is_first].itertuples()
    ]
    return preds[is_first].reset_index(drop=True), lines


def studies_source(preds: pd.DataFrame, predictions: Path) -> Path:
    """A predictions file of `preds`' images only (beside `predictions`), for `summary.aggregate_studies`."""
    rows = pd.read_parquet(predictions)
    out = predictions.with_name("once-per-image.parquet")
    rows[rows["sop_instance_uid"].isin(preds["sop_instance_uid"])].to_parquet(out, index=False)
    return out


def parse_flag(value: str | None, where: str) -> bool | None:
    """1/0, true/false, yes/no (any case) -> bool; empty -> None (not known); TruthError otherwise."""
    text = (value or "").strip().lower()
    if not text:
        return None
    if text in TRUE_WORDS | FALSE_WORDS:
        return text in TRUE_WORDS
    raise TruthError(f"{where}: {value!r} is not 1/0, true/false or yes/no")


def read_truth(path: Path) -> dict[str, Truth]:
    """{image path below the folder, as written (with or without extension): Truth} of a truth CSV."""
    with path.open(newline="", encoding="utf-8-sig") as fp:
        reader = csv.DictReader(fp)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        if not {"image", "clip"} <= columns.keys():
            raise TruthError(f"{path}: needs the columns image and clip (and optionally mag), has {reader.fieldnames}")
        table = {}
        for line, row in enumerate(reader, start=2):
            key = row[columns["image"]].strip().replace("\\", "/").removeprefix("./")
            mag = row.get(columns["mag"]) if "mag" in columns else None
            where = f"{path}, line {line}"
            table[key] = Truth(parse_flag(row[columns["clip"]], where), parse_flag(mag, where))
    return table


def builtin_truth() -> dict[str, Truth]:
    """The truth of the shared set's ten files (module docstring): a clip in `CLIP_IMAGES` only, no mag view."""
    return {name: Truth(name in CLIP_IMAGES, False) for name in sorted(SHARED_SET)}


def truth_csv(root: Path, given: Path | None) -> Path | None:
    """The truth CSV: `given`, else `root`/truth.csv when there is one, else None (the built-in truth)."""
    return given or (root / "truth.csv" if (root / "truth.csv").is_file() else None)


def unmatched_truth(table: dict[str, Truth], files: list[RealFile]) -> list[str]:
    """The CSV's images that name no file of the folder (a typo would otherwise leave an image unknown)."""
    return sorted(set(table) - {f.rel for f in files} - {f.name for f in files})


def truth_of(file: RealFile, table: dict[str, Truth]) -> Truth:
    """The truth of one file: its row by path with extension, else without; unknown when none names it."""
    return table.get(file.rel) or table.get(file.name) or Truth(None, None)


def truth_label(clip: bool | None, mag: bool | None) -> str:
    """How the tables print a truth: 'clip', '-' (no clip) or '?' (not known), '+mag' for a magnification view."""
    label = "?" if clip is None or pd.isna(clip) else "clip" if clip else "-"
    return label + ("+mag" if mag is True else "")


def study_truth(clips: Iterable[bool | None]) -> bool | None:
    """A study holds a clip when one of its images does; it is clip-free only when every image's truth is known."""
    values = [None if v is None or pd.isna(v) else bool(v) for v in clips]
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


def flags_right(flags: pd.Series, truth: pd.Series) -> tuple[int, int]:
    """(right, judged): flags that match a known truth, and how many have one (unknown truth left out)."""
    known = truth.notna()
    return int((flags[known].astype(bool) == truth[known].astype(bool)).sum()), int(known.sum())


def title_wrong(row) -> bool:
    """Whether a contact-sheet title is red: a flag contradicts a known truth (an unknown truth is never red)."""
    clip, mag = row.truth_clip, row.truth_mag
    wrong_clip = clip is not None and not pd.isna(clip) and bool(row.has_biopsy_marker) != bool(clip)
    wrong_mag = mag is not None and not pd.isna(mag) and bool(row.is_mag_view) != bool(mag)
    return wrong_clip or wrong_mag


def contact_sheet(rows: pd.DataFrame, settings: Settings, net, size: int, out: Path, look=None) -> None:
    """Each image with its biopsy-marker heat map (the second look's candidates when the model has one), its
    probabilities and the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mammo_pipeline.model.explain import image_heatmaps, with_second_look

    n = len(rows)
    cols = min(5, n)
    lines = -(-n // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(2.6 * cols, 3.9 * lines), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows.itertuples(), strict=False):
        explanation = image_heatmaps(net, settings.cache / row.model_png, size, occlude=look is None)
        if look is not None:
            explanation = with_second_look(explanation, look, settings.cache / row.display_png, settings.display_size)
        ax.imshow(explanation.gray, cmap="gray", vmin=0, vmax=255)
        ax.imshow(np.ma.masked_less(explanation.maps[0], 0.15), cmap="jet", alpha=0.55, vmin=0, vmax=1)
        y, x = np.unravel_index(int(np.argmax(explanation.maps[0])), explanation.maps[0].shape)
        print(f"{row.name:40} biopsy heat map peaks at (row {y}, col {x}) of the {explanation.gray.shape} model PNG")
        ax.plot([x], [y], marker="+", color="white", markersize=9, mew=1.2)
        verdict = {"clip": "clip", "-": "no clip"}.get(truth_label(row.truth_clip, None), "?")
        ax.set_title(
            f"{row.name}\ntruth: {verdict}\np_biopsy {row.p_biopsy:.2f} p_mag {row.p_mag:.2f}"
            + (" (review)" if row.needs_review else ""),
            fontsize=7,
            color="red" if title_wrong(row) else "black",
        )
    fig.suptitle(
        "Real mammograms: biopsy-marker heat map of the current model (red title: a flag is wrong)", fontsize=9
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())


def audit_clip_free(settings: Settings, model_version: str) -> np.ndarray:
    """float [n]: p_biopsy of the audit images labelled clip-free, predicted by `model_version` (the images its
    biopsy threshold was chosen on); empty when the home has no such labels or predictions."""
    import duckdb

    from mammo_pipeline import warehouse

    labels_path = settings.warehouse / "labels" / "current.parquet"
    if not labels_path.exists():
        return np.zeros(0)
    labels = pd.read_parquet(labels_path, columns=["sop_instance_uid", "split", "has_biopsy_marker"])
    clip_free = labels[(labels["split"] == "audit") & ~labels["has_biopsy_marker"].astype(bool)]
    try:
        sql = "SELECT sop_instance_uid, p_biopsy FROM image_predictions WHERE model_version = ?"
        preds = warehouse.query(settings, sql, [model_version])
    except duckdb.Error:  # a home without predictions yet: nothing to compare with
        return np.zeros(0)
    return preds.merge(clip_free, on="sop_instance_uid")["p_biopsy"].to_numpy(float)


def realdata_absent(realdata: Path) -> bool:
    """Whether the real samples are missing, said with a message (the benchmark then skips, exit 0)."""
    if realdata.is_dir():
        return False
    print(f"SKIP: {realdata} is absent; the real samples live only beside the project (never copied in)")
    return True


def current_model(home: Path | None, version: str | None = None) -> tuple[Settings, ModelRef]:
    """The settings of `home` (MAMMO_HOME when None) and the model its models/current.json names, or `version`:
    an exported model's own, or "promoted", the one promoted for every hospital (what predicts when the newest
    model was held back from promotion, `defs/predict.promoted_model`). Raises SystemExit when there is none."""
    from mammo_pipeline import promotions

    model_home = Settings.from_env() if home is None else Settings.under(home)
    if version is None:
        return model_home, ModelRef.load(model_home.models)
    if version == "promoted" and (version := promotions.promoted_version(model_home)) is None:
        raise SystemExit(f"{model_home.home}: no model was promoted for every hospital")
    try:
        return model_home, promotions.model_ref(model_home, version)
    except promotions.UnknownModel as e:
        raise SystemExit(str(e)) from e


def borrowing_home(tmp: Path, model_home: Settings) -> Settings:
    """A fresh home under `tmp` whose models folder is `model_home`'s, read only: the real images are indexed,
    cached and predicted there, never in the user's home."""
    return replace(Settings.under(Path(tmp) / "home", workers=2).ensure_dirs(), models=model_home.models)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="MAMMO_HOME whose current model to use (default: env)")
    parser.add_argument(
        "--realdata", type=Path, default=realdata_dir(), help="default: $MAMMO_REALDATA or ../shared/realdata"
    )
    parser.add_argument(
        "--truth", type=Path, default=None, help="CSV image,clip[,mag] (default: <realdata>/truth.csv, else built in)"
    )
    parser.add_argument(
        "--rewrap-dicom",
        action="store_true",
        help="re-wrap DICOM pixels as MG without a window, as before stop 68 (default: DICOM files as stored)",
    )
    parser.add_argument("--out", type=Path, default=None, help="contact sheet PNG (default: <home>/reports/)")
    parser.add_argument(
        "--pixel-spacing", type=float, default=None, help="mm, written for raster images (default: none, as stored)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a model version of the home, or 'promoted' (default: the one models/current.json names)",
    )
    args = parser.parse_args(argv)
    if args.truth is not None and not args.truth.is_file():
        parser.error(f"--truth {args.truth}: no such file")
    return args


def predict_landed(settings: Settings, ref: ModelRef) -> tuple[pd.DataFrame, Path]:
    """(predictions with each image's PNGs, the predictions file): index -> cache -> predict on the landed drop."""
    from mammo_pipeline.cache import cache_hospital
    from mammo_pipeline.dicom.index import index_hospital
    from mammo_pipeline.model.infer import load_model, write_predictions

    indexed = index_hospital(settings, HOSPITAL)
    for why in indexed.refused:  # a drop or file the landing rules refuse: said, never silent
        print(f"  REFUSED by the index: {why}")
    cache_hospital(settings, HOSPITAL)
    manifest = pd.read_parquet(settings.table_dir("image_cache", HOSPITAL) / "manifest.parquet")
    manifest = manifest[manifest["model_png"].notna() & (manifest["model_png"] != "")]
    out_path = settings.table_dir("image_predictions", HOSPITAL) / "predictions.parquet"
    write_predictions(settings, manifest, load_model(settings, ref), out_path)
    pngs = manifest[["sop_instance_uid", "model_png", "display_png"]]
    return pd.read_parquet(out_path).merge(pngs, on="sop_instance_uid"), out_path


def print_images(preds: pd.DataFrame) -> None:
    """The per-image table and the RESULT line (images without truth left out of its counts)."""
    print(f"{'image':40} {'p_biopsy':>8} {'p_mag':>6} {'biopsy':>6} {'mag':>4} {'review':>6} {'truth':>7}")
    for r in preds.itertuples():
        print(
            f"{r.name:40} {r.p_biopsy:8.3f} {r.p_mag:6.3f} {r.has_biopsy_marker!s:>6} {r.is_mag_view!s:>4} "
            f"{r.needs_review!s:>6} {truth_label(r.truth_clip, r.truth_mag):>7}"
        )
    right, judged = flags_right(preds["has_biopsy_marker"], preds["truth_clip"])
    known_mag = preds["truth_mag"].notna()
    mag_target = int(preds.loc[known_mag, "truth_mag"].astype(bool).sum())
    print(
        f"RESULT biopsy flag right on {right}/{judged} (target all), mag flagged on "
        f"{int(preds.loc[known_mag, 'is_mag_view'].astype(bool).sum())} (target {mag_target})"
    )
    if unknown := int(preds["truth_clip"].isna().sum()):
        print(f"{unknown} of {len(preds)} images have no truth (`?`): left out of the counts, the ranking and studies")


def print_studies(preds: pd.DataFrame, predictions: Path, ref: ModelRef) -> None:
    """The study flags (MAX over a study's images at the model's study threshold) against the study truth."""
    from mammo_pipeline.model.evaluate import study_point
    from mammo_pipeline.summary import aggregate_studies

    points = ref.extra.get("operating_points") or {}
    studies = aggregate_studies(predictions, points)
    truth = preds.groupby("study_instance_uid")["truth_clip"].agg(study_truth)
    studies["truth_clip"] = studies["study_instance_uid"].map(truth).astype(object)
    exams = preds.groupby("study_instance_uid")["name"].agg(lambda n: f"{exam_of(n.iloc[0])} ({len(n)} images)")
    point = study_point(points, "biopsy")
    print(f"study threshold {'(none: ANY image flagged)' if point is None else round(point['threshold'], 3)}")
    for r in studies.itertuples():
        print(
            f"  study {exams[r.study_instance_uid]}: max p_biopsy {r.max_p_biopsy:.3f} -> biopsy "
            f"{r.has_biopsy_marker}, mag {r.is_mag_view}, needs review {r.needs_review} "
            f"(truth {truth_label(r.truth_clip, None)})"
        )
    known = studies[studies["truth_clip"].notna()]
    wrong = known["has_biopsy_marker"].astype(bool) != known["truth_clip"].astype(bool)
    reviewed = int(known.loc[wrong, "needs_review"].fillna(False).astype(bool).sum())
    print(
        f"STUDIES biopsy flag right on {int((~wrong).sum())}/{len(known)} studies (target all), mag flagged on "
        f"{int(studies['is_mag_view'].sum())} (target 0); {reviewed} of the {int(wrong.sum())} wrong ones "
        "need review"
        + (f"; {len(studies) - len(known)} studies without truth left out" if len(known) < len(studies) else "")
    )


def print_against_audit(preds: pd.DataFrame, model_home: Settings, ref: ModelRef) -> None:
    """Are the real clip-free images scored like the synthetic ones the threshold was set on?"""
    audit = audit_clip_free(model_home, ref.model_version)
    clip_free = preds["truth_clip"].notna() & ~preds["truth_clip"].astype(bool)
    real = preds.loc[clip_free, "p_biopsy"].to_numpy(float)
    if not len(audit) or not len(real):
        return
    threshold = ref.thresholds()[0]
    ranks = [float((audit < p).mean()) for p in real]
    print(
        f"AGAINST THE AUDIT the real clip-free images' p_biopsy sit at the {np.median(ranks):.0%} point "
        f"(median; {min(ranks):.0%}-{max(ranks):.0%}) of the model's {len(audit)} clip-free audit images; "
        f"at the image threshold {threshold:.3f} it flags {(real >= threshold).mean():.0%} of these and "
        f"{(audit >= threshold).mean():.0%} of those"
    )


def print_ranking(preds: pd.DataFrame) -> None:
    """The threshold-free view: how the clip images rank among the images with known truth."""
    from mammo_pipeline.model.evaluate import roc_auc

    known = preds[preds["truth_clip"].notna()]
    truth = known["truth_clip"].to_numpy(bool)
    if not 0 < truth.sum() < len(truth):
        return
    auc = roc_auc(truth, known["p_biopsy"].to_numpy(float))
    ranks = known["p_biopsy"].rank(ascending=False, method="min")[truth].astype(int).tolist()
    print(
        f"RANKING biopsy ROC-AUC on these images {auc:.3f}: clip image(s) ranked {ranks} of {len(known)} "
        "by p_biopsy (1 = most probable)"
    )


def print_top_crops(preds: pd.DataFrame, settings: Settings, look) -> None:
    """What decided each p_biopsy of a model with a second look: its most clip-like crops (display PNG px)."""
    from mammo_pipeline.model.second_look_model import candidates_of, torch_probs

    found = candidates_of([settings.cache / p for p in preds["display_png"]], long_side=settings.display_size)
    _, patch = torch_probs(look, found)
    for name, centres, probs in zip(preds["name"], found.centres, patch, strict=True):
        top = np.argsort(-probs)[:3]
        crops = ", ".join(f"{probs[k]:.2f} at ({centres[k][0]}, {centres[k][1]})" for k in top)
        print(f"{name:40} top crops: {crops}")


def with_truth(preds: pd.DataFrame, names: dict[str, str], truth: dict[str, Truth]) -> pd.DataFrame:
    """`preds` with each image's real `name`, `truth_clip` and `truth_mag` (None: not known), sorted by name."""
    preds = preds.assign(name=preds["sop_instance_uid"].map(names))
    known = [truth.get(n, Truth(None, None)) for n in preds["name"]]
    preds["truth_clip"] = pd.Series([t.clip for t in known], index=preds.index, dtype=object)
    preds["truth_mag"] = pd.Series([t.mag for t in known], index=preds.index, dtype=object)
    return preds.sort_values("name").reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if realdata_absent(args.realdata):
        return 0
    from mammo_pipeline.model.train import load_network, load_second_look

    model_home, ref = current_model(args.home, args.model)
    files, skipped = discover(args.realdata)
    csv_path = truth_csv(args.realdata, args.truth)
    try:
        table = read_truth(csv_path) if csv_path else builtin_truth()
    except TruthError as exc:  # the evaluator's file: say what is wrong in it, no traceback
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    truth = {f.name: truth_of(f, table) for f in files}
    to_land, copies = first_of_each_image(files) if args.rewrap_dicom else (files, [])
    with tempfile.TemporaryDirectory() as tmp:
        settings = borrowing_home(tmp, model_home)
        landed, unreadable = land(
            to_land, settings.landing / HOSPITAL / DROP, rewrap=args.rewrap_dicom, spacing_mm=args.pixel_spacing
        )
        start = time.monotonic()
        preds, predictions = predict_landed(settings, ref)
        names = indexed_names(settings, landed)
        first = first_files(files)
        print(f"real folder {args.realdata} ({'DICOM re-wrapped' if args.rewrap_dicom else 'DICOM as stored'}):")
        quarantine = quarantined(settings, landed)
        for line in landing_lines(files, skipped + unreadable, quarantine, names, first):
            print(line)
        for line in unscored_lines(settings, names, set(preds["sop_instance_uid"]), quarantine):
            print(line)
        for copy, kept in copies:
            print(f"  {copy.name}: the same image as {kept}, left out (--rewrap-dicom)")
        preds, encodings = once_per_image(with_truth(preds, names, truth), first)
        for line in encodings:
            print(line)
        print(f"truth: {csv_path or 'the shared set written down above (its ten files only)'}")
        if csv_path and (unmatched := unmatched_truth(table, files)):
            print(f"  the truth names {len(unmatched)} image(s) not in the folder: {', '.join(unmatched[:5])}")
        print(
            f"model {ref.model_version} (input {ref.input_size} px, thresholds {ref.thresholds()}), "
            f"{len(preds)} of {len({first.get(n, n) for n in names.values()})} images through index -> cache -> "
            "predict in "
            f"{time.monotonic() - start:.0f} s"
        )
        print_images(preds)
        print_studies(preds, studies_source(preds, predictions), ref)
        print_against_audit(preds, model_home, ref)
        print_ranking(preds)
        sheet = args.out or model_home.reports / "real_samples.png"
        net, look = load_network(settings, ref), load_second_look(settings, ref)
        if look is not None:
            print_top_crops(preds, settings, look)
        contact_sheet(preds, settings, net, ref.input_size, sheet, look)
        print(f"contact sheet: {sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
