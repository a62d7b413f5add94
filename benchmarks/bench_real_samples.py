"""The current model on the real public mammograms of ../shared/realdata: probabilities and heat maps.

Run:  .venv/bin/python benchmarks/bench_real_samples.py [--home MAMMO_HOME] [--realdata DIR] [--out PNG]
      [--pixel-spacing MM]

Wraps every real image as a DICOM object (Modality MG, Digital Mammography X-Ray For Presentation, laterality
and view from the file name, no window so the pipeline's own percentile fallback applies) in a temporary
landing folder, runs the real index -> cache -> predict steps with the model named by <home>/models/
current.json, prints each image's probabilities, flags and needs_review against the clip truth written down
below, the study flags (one study per exam: `summary.aggregate_studies` at the model's study thresholds) and,
for a model with a second look, each image's three most clip-like crops (patch probability and the crop's
centre in display PNG px: what decided its p_biopsy), where the clip-free real images' p_biopsy fall among the
model's own clip-free audit images (the synthetic images its threshold was chosen on: is a false flag the real
tissue or the operating point?), and draws a contact sheet with each image's biopsy-marker heat map. It never
trains on these images. The PNGs hold no pixel spacing, so by default none is written and each display has the
plain long side; `--pixel-spacing 0.07` writes the 70 um the realdata README infers from the 2560 x 3328 matrix
(an 18 x 24 cm detector) as Imager Pixel Spacing of the NYU images, so they show at one pitch as a hospital's
files would (`normalize.AtPitch`; the film keeps none: its scanner's pitch is not known).
Skips, with a message, when the folder is absent.

Truth (decided by looking at every image at full resolution, see README "Real images"): only
`nyu-breast_cancer_classifier/2_R_CC` holds a metal clip inside the breast (a saturated, sharp-edged barbell,
about 3 mm, inside dense tissue). The round BBs on or beside the nipple (1_L_CC, 1_R_CC, the four nyu-gmic
views) and the perfectly round disk over the mass of the WG04 film (a palpable-lump BB) are skin markers; the
bright specks of 2_L_CC, 0_R-MLO and 1_R_CC are calcifications (clustered or under 1 mm). No image is a
magnification or spot view. Target: biopsy flagged exactly on 2_R_CC (and on its study, exam 2), mag on none.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
from PIL import Image

from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.settings import Settings
from mammo_pipeline.synth.realism_report import realdata_dir

CLIP_IMAGES = {"nyu-breast_cancer_classifier/2_R_CC"}
NAME = re.compile(r"(?P<exam>\w+?)[_-](?P<lat>[LR])[_-](?P<view>CC|MLO)$")
DIGITAL_MAMMO_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def _uid(text: str) -> str:
    """A deterministic DICOM UID from a text (2.25 + decimal of a hash)."""
    return "2.25." + str(int(hashlib.sha256(text.encode()).hexdigest()[:30], 16))


def exam_of(name: str) -> str:
    """The exam (one patient's study) of a real image name: its folder and the file name's prefix
    ('nyu-gmic/0_L-CC' -> 'nyu-gmic/0', 'nyu-breast_cancer_classifier/2_R_CC' -> '.../2', 'dicom-wg04/MG1_J2KI'
    -> 'dicom-wg04/MG1')."""
    folder, _, stem = name.rpartition("/")
    return f"{folder}/{stem.split('_', 1)[0]}"


def real_images(root: Path) -> list[tuple[str, np.ndarray, str, str]]:
    """(name, pixels uint16, laterality, view) for every real image; the WG04 pair counts once (J2KI)."""
    import pydicom

    out = []
    for path in sorted(root.rglob("*.png")):
        match = NAME.search(path.stem)
        if not match:
            continue
        with Image.open(path) as img:
            pixels = np.asarray(img).astype(np.uint16)
        out.append((f"{path.parent.name}/{path.stem}", pixels, match["lat"], match["view"]))
    wg04 = root / "dicom-wg04" / "MG1_J2KI.dcm"
    if wg04.exists():
        ds = pydicom.dcmread(wg04)
        lat = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "L")
        out.append(("dicom-wg04/MG1_J2KI", ds.pixel_array.astype(np.uint16), lat, str(ds.get("ViewPosition", "MLO"))))
    return out


def wrap_as_dicom(
    name: str, pixels: np.ndarray, laterality: str, view: str, path: Path, spacing_mm: float | None = None
) -> None:
    """Write `pixels` as an uncompressed MG For Presentation object (MONOCHROME2, no patient data), with
    `spacing_mm` as Imager Pixel Spacing (0018,1164) when given."""
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
    ds.ImageLaterality, ds.ViewPosition = laterality, view
    ds.Rows, ds.Columns = pixels.shape
    if spacing_mm is not None:
        ds.ImagerPixelSpacing = [f"{spacing_mm:g}", f"{spacing_mm:g}"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = max(int(pixels.max()).bit_length(), 8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


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
        verdict = "clip" if row.truth_clip else "no clip"
        ax.set_title(
            f"{row.name}\ntruth: {verdict}\np_biopsy {row.p_biopsy:.2f} p_mag {row.p_mag:.2f}"
            + (" (review)" if row.needs_review else ""),
            fontsize=7,
            # none of these images is a magnification view, so a mag flag is wrong too
            color="black" if bool(row.has_biopsy_marker) == bool(row.truth_clip) and not row.is_mag_view else "red",
        )
    fig.suptitle(
        "Real public mammograms: biopsy-marker heat map of the current model (red title: a flag is wrong)", fontsize=9
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


def current_model(home: Path | None) -> tuple[Settings, ModelRef]:
    """The settings of `home` (MAMMO_HOME when None) and the model its models/current.json names."""
    model_home = Settings.from_env() if home is None else Settings.under(home)
    return model_home, ModelRef.load(model_home.models)


def borrowing_home(tmp: Path, model_home: Settings) -> Settings:
    """A fresh home under `tmp` whose models folder is `model_home`'s, read only: the real images are indexed,
    cached and predicted there, never in the user's home."""
    return replace(Settings.under(Path(tmp) / "home", workers=2).ensure_dirs(), models=model_home.models)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="MAMMO_HOME whose current model to use (default: env)")
    parser.add_argument(
        "--realdata", type=Path, default=realdata_dir(), help="default: $MAMMO_REALDATA or ../shared/realdata"
    )
    parser.add_argument("--out", type=Path, default=None, help="contact sheet PNG (default: <home>/reports/)")
    parser.add_argument(
        "--pixel-spacing", type=float, default=None, help="mm, written for the NYU images (default: none, as stored)"
    )
    args = parser.parse_args()
    if realdata_absent(args.realdata):
        return 0
    from mammo_pipeline.cache import cache_hospital
    from mammo_pipeline.dicom.index import index_hospital
    from mammo_pipeline.model.infer import load_model, write_predictions
    from mammo_pipeline.model.second_look_model import candidates_of, torch_probs
    from mammo_pipeline.model.train import load_network, load_second_look

    model_home, ref = current_model(args.home)
    images = real_images(args.realdata)
    with tempfile.TemporaryDirectory() as tmp:
        settings = borrowing_home(tmp, model_home)
        names = {}
        for name, pixels, lat, view in images:
            spacing = args.pixel_spacing if name.startswith("nyu-") else None
            path = settings.landing / "realdata" / "drop-real" / f"{_uid(name)}.dcm"
            wrap_as_dicom(name, pixels, lat, view, path, spacing)
            names[_uid(name)] = name
        start = time.monotonic()
        index_hospital(settings, "realdata")
        cache_hospital(settings, "realdata")
        manifest = pd.read_parquet(settings.table_dir("image_cache", "realdata") / "manifest.parquet")
        manifest = manifest[manifest["model_png"].notna() & (manifest["model_png"] != "")]
        out_path = settings.table_dir("image_predictions", "realdata") / "predictions.parquet"
        write_predictions(settings, manifest, load_model(settings, ref), out_path)
        pngs = manifest[["sop_instance_uid", "model_png", "display_png"]]
        preds = pd.read_parquet(out_path).merge(pngs, on="sop_instance_uid")
        preds["name"] = preds["sop_instance_uid"].map(names)
        preds["truth_clip"] = preds["name"].isin(CLIP_IMAGES)
        preds = preds.sort_values("name").reset_index(drop=True)
        print(
            f"model {ref.model_version} (input {ref.input_size} px, thresholds {ref.thresholds()}), "
            f"{len(preds)} of {len(images)} images through index -> cache -> predict in "
            f"{time.monotonic() - start:.0f} s"
        )
        print(f"{'image':40} {'p_biopsy':>8} {'p_mag':>6} {'biopsy':>6} {'mag':>4} {'review':>6} {'truth':>7}")
        for r in preds.itertuples():
            print(
                f"{r.name:40} {r.p_biopsy:8.3f} {r.p_mag:6.3f} {r.has_biopsy_marker!s:>6} {r.is_mag_view!s:>4} "
                f"{r.needs_review!s:>6} {'clip' if r.truth_clip else '-':>7}"
            )
        right = (preds["has_biopsy_marker"] == preds["truth_clip"]).sum()
        print(
            f"RESULT biopsy flag right on {right}/{len(preds)} (target all), mag flagged on "
            f"{int(preds['is_mag_view'].sum())} (target 0)"
        )
        from mammo_pipeline.model.evaluate import roc_auc, study_point
        from mammo_pipeline.summary import aggregate_studies

        # the study flag (MAX over a study's images at the model's study threshold): one study per exam
        points = ref.extra.get("operating_points") or {}
        studies = aggregate_studies(out_path, points)
        clip_studies = set(preds.loc[preds["truth_clip"], "study_instance_uid"])
        studies["truth_clip"] = studies["study_instance_uid"].isin(clip_studies)
        exams = preds.groupby("study_instance_uid")["name"].agg(lambda n: f"{exam_of(n.iloc[0])} ({len(n)} images)")
        point = study_point(points, "biopsy")
        print(f"study threshold {'(none: ANY image flagged)' if point is None else round(point['threshold'], 3)}")
        for r in studies.itertuples():
            print(
                f"  study {exams[r.study_instance_uid]}: max p_biopsy {r.max_p_biopsy:.3f} -> biopsy "
                f"{r.has_biopsy_marker}, mag {r.is_mag_view}, needs review {r.needs_review} "
                f"(truth {'clip' if r.truth_clip else '-'})"
            )
        wrong = studies["has_biopsy_marker"] != studies["truth_clip"]
        reviewed = int(studies.loc[wrong, "needs_review"].fillna(False).astype(bool).sum())
        print(
            f"STUDIES biopsy flag right on {int((~wrong).sum())}/{len(studies)} studies (target all), mag flagged on "
            f"{int(studies['is_mag_view'].sum())} (target 0); {reviewed} of the {int(wrong.sum())} wrong ones "
            "need review"
        )

        audit = audit_clip_free(model_home, ref.model_version)
        if len(audit):  # are the real clip-free images scored like the synthetic ones the threshold was set on?
            threshold = ref.thresholds()[0]
            real = preds.loc[~preds["truth_clip"], "p_biopsy"].to_numpy(float)
            ranks = [float((audit < p).mean()) for p in real]
            print(
                f"AGAINST THE AUDIT the real clip-free images' p_biopsy sit at the {np.median(ranks):.0%} point "
                f"(median; {min(ranks):.0%}-{max(ranks):.0%}) of the model's {len(audit)} clip-free audit images; "
                f"at the image threshold {threshold:.3f} it flags {(real >= threshold).mean():.0%} of these and "
                f"{(audit >= threshold).mean():.0%} of those"
            )
        truth = preds["truth_clip"].to_numpy(bool)
        if 0 < truth.sum() < len(truth):  # the threshold-free view: how the clip images rank among all
            auc = roc_auc(truth, preds["p_biopsy"].to_numpy(float))
            ranks = preds["p_biopsy"].rank(ascending=False, method="min")[truth].astype(int).tolist()
            print(
                f"RANKING biopsy ROC-AUC on these images {auc:.3f}: clip image(s) ranked {ranks} of {len(preds)} "
                "by p_biopsy (1 = most probable)"
            )
        sheet = args.out or model_home.reports / "real_samples.png"
        net, look = load_network(settings, ref), load_second_look(settings, ref)
        if look is not None:  # what decided each p_biopsy: its most clip-like crops (display PNG px)
            found = candidates_of([settings.cache / p for p in preds["display_png"]], long_side=settings.display_size)
            _, patch = torch_probs(look, found)
            for name, centres, probs in zip(preds["name"], found.centres, patch, strict=True):
                top = np.argsort(-probs)[:3]
                crops = ", ".join(f"{probs[k]:.2f} at ({centres[k][0]}, {centres[k][1]})" for k in top)
                print(f"{name:40} top crops: {crops}")
        contact_sheet(preds, settings, net, ref.input_size, sheet, look)
        print(f"contact sheet: {sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
