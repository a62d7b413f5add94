"""Synthetic hospital drops: plan studies per hospital, render them in parallel (one task per study), and
keep the ground truth apart in `_truth/<hospital>.parquet`.

Layout: `out/<hospital>/<drop>/<PatientID>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`, plus `_READY` in each
finished drop. The truth (one row per file) names every clip and confounder drawn, with its bounding box
(`boxes`, JSON `[kind, row0, row1, col0, col1]` in stored pixels), the view type (`is_mag_view` = geometric
magnification; `is_spot_view` = spot paddle, with or without magnification), the BI-RADS density, and on
digitized film its clear border and dust (`film_edge`, `film_dust`) and the gray its metal reaches (`metal_gray`:
the film's base + fog, where detectors draw metal at markers.CLIP_MIN).
UIDs, dates and pixels derive from (seed, hospital, drop, study), so the same call gives byte-identical files
and a new drop never reuses a UID.
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from mammo_pipeline import atomic
from mammo_pipeline.labels.codes import label_of
from mammo_pipeline.landing import READY_MARKER
from mammo_pipeline.parallel import imap_unordered
from mammo_pipeline.progress import ProgressFn
from mammo_pipeline.synth import corrupt
from mammo_pipeline.synth.dicom_writer import ImageHeader, build_dataset, encode, to_stored
from mammo_pipeline.synth.identities import hospital_slugs, institution_name, make_patient, make_uid, rng_for
from mammo_pipeline.synth.image import CONFOUNDERS, LESIONS, ImageSpec, draw_image
from mammo_pipeline.synth.profiles import CLASS_MIX, OTHER_MATRIX_SHARE, PROFILES, machines_of

TRUTH_DIR = "_truth"
STUDY_IMAGES: dict[str, int] = {"neither": 4, "biopsy": 2, "mag": 2, "both": 2}
_BOOL_COLUMNS = (
    "has_biopsy_marker",
    "is_mag_view",
    "hook_wire",
    "marker_partly_outside",
    "subtle_mag",
    "distractor",
    "grid_streaks",
    "bright_stripes",
    "for_processing",
    "is_spot_view",
    *CONFOUNDERS,
    *LESIONS,
    "film_edge",
    "film_dust",
)
FORCED_PER_HOSPITAL = 4  # studies per hospital that carry a forced confounder: 3 hospitals cover all ten
SPOT_SHARE = 0.35  # diagnostic biopsy studies whose second image is a spot-compression view (†)
_SCREENING_DESCRIPTIONS = ("SCREENING MAMMOGRAPHY", "Breast Screening", "MAMMO SCREEN BILATERAL")
_DIAGNOSTIC_DESCRIPTIONS = ("DIAGNOSTIC", "MAMMO DIAGNOSTIC", "Breast Assessment", "Further views")


@dataclass(frozen=True)
class StudyTask:
    """One study to render (picklable; the worker derives everything else from these fields)."""

    drop_dir: str
    hospital: str
    drop: str
    seed: int
    scale: float
    index: int
    kind: str  # neither | biopsy | mag | both
    profile: str
    patient_index: int
    corrupt: tuple[str, ...] = ()
    force: tuple[str, ...] = ()  # confounders forced onto the study's first image (coverage of small drops)

    @property
    def n_files(self) -> int:
        return STUDY_IMAGES[self.kind] + len(self.corrupt)


@dataclass
class SynthReport:
    """What a generate_drops call wrote."""

    out: Path
    drop: str
    hospitals: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # hospital -> label / corrupt kind -> n
    files_written: int = 0
    skipped: list[str] = field(default_factory=list)  # hospitals whose drop was already complete
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.files_written} files in {self.seconds:.1f} s -> {self.out} (drop {self.drop})"]
        for hospital, counts in sorted(self.counts.items()):
            lines.append(f"  {hospital}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        lines += [f"  {h}: already complete, skipped" for h in self.skipped]
        return "\n".join(lines)


def default_drop_name(today: date | None = None) -> str:
    return f"drop-{(today or datetime.now(UTC).date()):%Y%m%d}"


def plan_hospital(
    out: Path,
    hospital: str,
    hospital_index: int,
    drop: str,
    studies: int,
    seed: int,
    scale: float,
    corrupt_fraction: float,
) -> list[StudyTask]:
    """The studies of one hospital's drop: classes by quota (every class once if studies >= 4), machines
    round-robin within each class, 2-3 studies per patient, corrupt files spread over studies."""
    rng = rng_for(seed, hospital, drop, "plan")
    weights = {k: CLASS_MIX[k] / STUDY_IMAGES[k] for k in CLASS_MIX}
    total_w = sum(weights.values())
    quota = {k: int(studies * w / total_w) for k, w in weights.items()}
    if studies >= len(quota):
        for k in quota:
            quota[k] = max(quota[k], 1)
    while sum(quota.values()) > studies:
        quota[max(quota, key=lambda k: quota[k])] -= 1
    short = sorted(weights, key=lambda k: quota[k] - studies * weights[k] / total_w)
    for i in range(studies - sum(quota.values())):
        quota[short[i % len(short)]] += 1
    machines = machines_of(hospital_index)
    kinds: list[tuple[str, str]] = []
    for kind, n in quota.items():
        offset = int(rng.integers(len(machines)))
        kinds += [(kind, machines[(offset + j) % len(machines)]) for j in range(n)]
    order = rng.permutation(len(kinds))
    first_patient = int(rng.integers(0, 10**6))
    n_patients = max(1, round(studies / 2.5))
    drop_dir = str(out / hospital / drop)
    tasks = [
        StudyTask(drop_dir, hospital, drop, seed, scale, i, kinds[j][0], kinds[j][1], first_patient + i % n_patients)
        for i, j in enumerate(order)
    ]
    contact = [i for i, t in enumerate(tasks) if t.kind in ("neither", "biopsy")][:FORCED_PER_HOSPITAL]
    for slot, i in enumerate(contact):
        kind = CONFOUNDERS[(hospital_index * FORCED_PER_HOSPITAL + slot) % len(CONFOUNDERS)]
        tasks[i] = StudyTask(**{**tasks[i].__dict__, "force": (kind,)})
    biopsy = [i for i, t in enumerate(tasks) if t.kind == "biopsy"][:1]  # one spot-compression view per drop,
    for i in biopsy:  # and a hook wire on its contact view, so that a small drop covers both
        tasks[i] = StudyTask(**{**tasks[i].__dict__, "force": (*tasks[i].force, "spot_view", "hook_wire")})
    n_images = sum(t.n_files for t in tasks)
    n_corrupt = round(corrupt_fraction * n_images)
    if n_corrupt and tasks:
        start = hospital_index * n_corrupt  # neighbouring hospitals continue the cycle of kinds
        extra: dict[int, list[str]] = {}
        for j in range(n_corrupt):
            extra.setdefault(int(rng.integers(len(tasks))), []).append(
                corrupt.CORRUPT_KINDS[(start + j) % len(corrupt.CORRUPT_KINDS)]
            )
        tasks = [StudyTask(**{**t.__dict__, "corrupt": tuple(extra.get(i, ()))}) for i, t in enumerate(tasks)]
    return tasks


def _study_date(task: StudyTask) -> tuple[str, str]:
    rng = rng_for(task.seed, task.hospital, task.drop, "study-date", task.index)
    day = date(2019, 1, 1) + timedelta(days=int(rng.integers(0, 6 * 365)))
    return (
        f"{day:%Y%m%d}",
        f"{int(rng.integers(8, 18)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}",
    )


def _views(kind: str, side: str, spot_second: bool = False) -> list[tuple[str, str, bool, bool, bool]]:
    """(laterality, view, biopsy, mag, spot) per image of a study kind.

    Mag views are spot magnification (coned paddle, is_spot_view True); a diagnostic biopsy study may have a
    spot-compression view without magnification as its second image (a hard negative for is_mag_view).
    """
    if kind == "neither":
        return [
            ("R", "CC", False, False, False),
            ("L", "CC", False, False, False),
            ("R", "MLO", False, False, False),
            ("L", "MLO", False, False, False),
        ]
    mag = kind in ("mag", "both")
    biopsy = kind in ("biopsy", "both")
    if mag:
        return [(side, "CC", biopsy, True, True), (side, "ML", biopsy, True, True)]
    second = (side, "CC", biopsy, False, True) if spot_second else (side, "MLO", biopsy, False, False)
    return [(side, "CC", biopsy, False, False), second]


def study_matrix(task: StudyTask) -> tuple[int, int]:
    """(Rows, Columns) at full size of the study's contact views: the profile's matrix, or for a machine with two
    paddle fields its other one in OTHER_MATRIX_SHARE of studies (a stream of its own, so the rest of the study
    draws the same numbers either way)."""
    profile = PROFILES[task.profile]
    other = rng_for(task.seed, task.hospital, task.drop, "matrix", task.index).random() < OTHER_MATRIX_SHARE
    return profile.other_matrix if profile.other_matrix and other else (profile.rows, profile.columns)


def render_study(task: StudyTask) -> list[dict]:
    """Draw, encode and write every file of one study; return its truth rows."""
    profile = PROFILES[task.profile]
    rng = rng_for(task.seed, task.hospital, task.drop, "study", task.index)
    patient = make_patient(task.seed, task.hospital, task.patient_index)
    study_uid = make_uid(task.seed, task.hospital, task.drop, task.index, "study")
    study_date, study_time = _study_date(task)
    screening = task.kind == "neither"
    descriptions = _SCREENING_DESCRIPTIONS if screening else _DIAGNOSTIC_DESCRIPTIONS
    description = str(rng.choice(descriptions))
    folder = Path(task.drop_dir) / patient.patient_id / study_uid
    contact_matrix = study_matrix(task)
    spacing = profile.pixel_spacing / task.scale
    accession = (
        f"{task.hospital[:3].upper()}{rng_for(task.seed, task.hospital, task.drop, task.index).integers(10**8):08d}"
    )
    base = {
        "study_instance_uid": study_uid,
        "patient_id": patient.patient_id,
        "hospital": task.hospital,
        "drop": task.drop,
        "vendor_profile": profile.key,
        "study_kind": "screening" if screening else "diagnostic",
    }
    rows: list[dict] = []
    last_ds = None
    side = str(rng.choice(["L", "R"]))
    spot_second = task.kind == "biopsy" and (rng.random() < SPOT_SHARE or "spot_view" in task.force)
    for k, (laterality, view, biopsy, mag, spot) in enumerate(_views(task.kind, side, spot_second)):
        matrix = (profile.rows, profile.columns) if mag or spot else contact_matrix
        spec = ImageSpec(
            max(16, round(matrix[0] * task.scale)),
            max(16, round(matrix[1] * task.scale)),
            spacing,
            task.scale,
            "CC" if view == "CC" else "MLO",
            laterality,
            biopsy,
            mag,
            screening,
            spot=spot,
            vendor=profile.key.split("-")[0],
            film=profile.secondary_capture,
            force=task.force if k == 0 else (),
        )
        display, drawn = draw_image(spec, rng_for(task.seed, task.hospital, task.drop, task.index, "image", k))
        # the labels are visual: a view whose every marker was drawn on metal-white (under an implant) shows none
        biopsy = biopsy and (drawn.n_clips > drawn.n_clips_hidden or drawn.hook_wire)
        flags = {
            "mag_modifier": rng.random() < profile.mag_modifier_fraction,
            "mag_in_description": rng.random() < profile.mag_in_series_description,
            "ermf_right": rng.random() < profile.magnification_factor_right,
            "spot_modifier": rng.random() < profile.spot_modifier_fraction,
            "voi_lut_sequence": rng.random() < profile.voi_lut_sequence_fraction,
        }
        partner = rng.random() < profile.for_processing_fraction
        syntax = profile.transfer_syntax
        if profile.alt_transfer_syntax and rng.random() < profile.alt_transfer_fraction:
            syntax = profile.alt_transfer_syntax
        sop = make_uid(task.seed, task.hospital, task.drop, task.index, "sop", k)
        proc_sop = make_uid(task.seed, task.hospital, task.drop, task.index, "sop-processing", k) if partner else None
        header = ImageHeader(
            patient=patient,
            institution=institution_name(task.hospital),
            station=f"{profile.key}-{task.hospital[:4]}",
            study_uid=study_uid,
            series_uid=make_uid(task.seed, task.hospital, task.drop, task.index, "series", k),
            sop_uid=sop,
            study_date=study_date,
            study_time=study_time,
            accession=accession,
            study_description=description,
            series_number=k + 1,
            instance_number=1,
            view=view,
            laterality=laterality,
            pixel_spacing=spacing,
            mag=mag,
            spot=spot,
            mag_factor=drawn.mag_factor,
            flags=flags,
            source_sop_uid=proc_sop,
        )
        truth = {
            **base,
            "sop_instance_uid": sop,
            "series_instance_uid": header.series_uid,
            "view_position": view,
            "laterality": laterality,
            "has_biopsy_marker": biopsy,
            "is_mag_view": mag,
            "is_spot_view": spot,
            "label": label_of(biopsy, mag),
            "n_clips": drawn.n_clips,
            "n_clips_unsaturated": drawn.n_clips_unsaturated,
            "n_clips_hidden": drawn.n_clips_hidden,
            "hook_wire": drawn.hook_wire,
            "marker_partly_outside": drawn.marker_partly_outside,
            "subtle_mag": drawn.subtle_mag,
            "mag_factor": drawn.mag_factor,
            "distractor": drawn.distractor,
            "grid_streaks": drawn.grid_streaks,
            "bright_stripes": drawn.bright_stripes,
            **{kind: kind in drawn.confounders for kind in CONFOUNDERS},
            **{kind: kind in drawn.lesions for kind in LESIONS},
            "film_edge": bool(drawn.film_edges),
            "film_dust": drawn.film_dust,
            "metal_gray": drawn.metal_gray,
            "density": drawn.density,
            "matrix": f"{matrix[0]}x{matrix[1]}",
            "boxes": json.dumps([list(b) for b in drawn.boxes]),
            "corrupt_kind": None,
        }
        stored = to_stored(display, profile, for_processing=False)
        ds = build_dataset(stored, header, profile)
        data = encode(ds, stored, syntax, profile.jpeg_predictor)
        rows.append(_write(folder, sop, data, truth, for_processing=False, transfer_syntax=syntax))
        last_ds = ds
        if proc_sop:
            proc_header = ImageHeader(
                **{
                    **header.__dict__,
                    "sop_uid": proc_sop,
                    "for_processing": True,
                    "source_sop_uid": None,
                    "series_number": 100 + k + 1,
                }
            )
            raw = to_stored(display, profile, for_processing=True)
            proc = encode(build_dataset(raw, proc_header, profile), raw, profile.for_processing_syntax)
            rows.append(
                _write(
                    folder, proc_sop, proc, {**truth, "sop_instance_uid": proc_sop}, True, profile.for_processing_syntax
                )
            )
    for j, kind in enumerate(task.corrupt):
        sop = make_uid(task.seed, task.hospital, task.drop, task.index, "corrupt", j)
        crng = rng_for(task.seed, task.hospital, task.drop, task.index, "corrupt", j)
        data = _corrupt_bytes(kind, last_ds, sop, crng)
        row = {**base, "sop_instance_uid": sop, "label": None, "corrupt_kind": kind}
        rows.append(_write(folder, sop, data, row, for_processing=False, transfer_syntax=None))
    return rows


def _write(folder: Path, sop: str, data: bytes, truth: dict, for_processing: bool, transfer_syntax) -> dict:
    path = folder / f"{sop}.dcm"
    atomic.write_bytes(path, data)
    drop_dir = folder.parent.parent
    return {
        **truth,
        "for_processing": for_processing,
        "transfer_syntax": transfer_syntax,
        "rel_path": str(path.relative_to(drop_dir.parent.parent)),
        "file_size": len(data),
    }


def _corrupt_bytes(kind: str, ds, sop: str, rng) -> bytes:
    header = copy.deepcopy(ds)
    header.SOPInstanceUID = sop
    header.file_meta.MediaStorageSOPInstanceUID = sop
    if kind == "truncated":
        buf = io.BytesIO()
        header.save_as(buf, enforce_file_format=True)
        return corrupt.truncated(buf.getvalue(), rng)
    if kind == "not_dicom":
        return corrupt.not_dicom(rng)
    if kind == "no_pixel_data":
        return corrupt.no_pixel_data(header)
    if kind == "not_mammography":
        return corrupt.not_mammography(header, rng)
    raise ValueError(f"unknown corrupt kind {kind!r}; expected one of {corrupt.CORRUPT_KINDS}")


def read_truth(out: Path, hospital: str | None = None) -> pd.DataFrame:
    """The ground truth of one hospital, or of all hospitals under `out`."""
    folder = out / TRUTH_DIR
    files = [folder / f"{hospital}.parquet"] if hospital else sorted(folder.glob("*.parquet"))
    frames = [pd.read_parquet(f) for f in files if f.exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _update_truth(out: Path, hospital: str, drop: str, rows: list[dict]) -> None:
    path = out / TRUTH_DIR / f"{hospital}.parquet"
    new = pd.DataFrame(rows).sort_values(["study_instance_uid", "sop_instance_uid"], kind="stable")
    new = new.astype(
        {c: "boolean" for c in _BOOL_COLUMNS if c in new}
        | {c: "Int64" for c in ("n_clips", "n_clips_unsaturated", "n_clips_hidden")}
    )
    if path.exists():
        old = pd.read_parquet(path)
        new = pd.concat([old[old["drop"] != drop], new], ignore_index=True)
    atomic.write_parquet(new.reset_index(drop=True), path)


def generate_drops(
    out: Path,
    hospitals: int,
    studies_per_hospital: int,
    seed: int = 0,
    scale: float = 1.0,
    corrupt_fraction: float = 0.0,
    drop: str | None = None,
    only: Sequence[str] | None = None,
    workers: int = 0,
    progress: ProgressFn | None = None,
) -> SynthReport:
    """Write one drop for each of the first `hospitals` hospitals (or just `only`) under `out`.

    A drop that already holds `_READY` is skipped, so a re-run completes an interrupted call. Running again
    with another `drop` name adds a drop; a larger `hospitals` adds hospitals.
    """
    if not 0.0 <= corrupt_fraction <= 1.0:
        raise ValueError(f"corrupt_fraction must be between 0 and 1, got {corrupt_fraction}")
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    if studies_per_hospital < 0:
        raise ValueError(f"studies_per_hospital must be >= 0, got {studies_per_hospital}")
    started = time.monotonic()
    out = Path(out)
    drop = drop or default_drop_name()
    if drop in (".", "..") or any(c in drop for c in "/\\\0") or drop.startswith((".", "_")) or drop != drop.strip():
        raise ValueError(
            f"drop {drop!r} must be one folder name: no '/', no surrounding spaces, and not starting with '.' or '_' "
            "(the landing zone skips those)"
        )
    slugs = hospital_slugs(hospitals)
    if only:
        unknown = sorted(set(only) - set(slugs))
        if unknown:
            raise ValueError(f"--only {', '.join(unknown)}: not among the {hospitals} hospitals ({', '.join(slugs)})")
    chosen = [s for s in slugs if not only or s in only]
    report = SynthReport(out=out, drop=drop, hospitals=chosen)
    tasks: list[StudyTask] = []
    for i, hospital in enumerate(slugs):
        if hospital not in chosen:
            continue
        if (out / hospital / drop / READY_MARKER).exists():
            report.skipped.append(hospital)
            continue
        tasks += plan_hospital(out, hospital, i, drop, studies_per_hospital, seed, scale, corrupt_fraction)
    total = sum(t.n_files for t in tasks)
    rows_by_hospital: dict[str, list[dict]] = {t.hospital: [] for t in tasks}
    done = 0
    for rows in imap_unordered(render_study, tasks, workers=workers, chunksize=1):
        rows_by_hospital[rows[0]["hospital"]] += rows
        done += sum(1 for r in rows if not r["for_processing"])
        if progress:
            progress(min(done, total), total)
    for hospital, rows in rows_by_hospital.items():
        _update_truth(out, hospital, drop, rows)
        atomic.write_text(out / hospital / drop / READY_MARKER, "")
        report.counts[hospital] = dict(
            Counter("for_processing" if r["for_processing"] else r["corrupt_kind"] or r["label"] for r in rows)
        )
        report.files_written += len(rows)
    report.seconds = time.monotonic() - started
    return report
