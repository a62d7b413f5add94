"""Synthetic drops: layout, ground truth checked on the pixels' geometry, coverage of every confounder and
special view, determinism, incremental drops, corrupt files."""

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from scipy import ndimage

from mammo_pipeline.landing import SLUG, list_drops, list_hospitals
from mammo_pipeline.synth import generate_drops, hospital_slugs, markers, read_truth
from mammo_pipeline.synth.image import CONFOUNDERS, LESIONS
from mammo_pipeline.synth.markers import CLIP_MIN
from mammo_pipeline.synth.profiles import PROFILES

SCALE = 0.1


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("landing")
    generate_drops(
        out, hospitals=3, studies_per_hospital=8, seed=3, scale=SCALE, corrupt_fraction=0.1, drop="d1", workers=1
    )
    return out


def _display(ds) -> np.ndarray:
    """Stored pixels as display fractions (white = 1), undoing MONOCHROME1."""
    v = ds.pixel_array.astype(np.float64) / ((1 << ds.BitsStored) - 1)
    return 1.0 - v if ds.PhotometricInterpretation == "MONOCHROME1" else v


def _has_unexposed_border(v: np.ndarray) -> bool:
    """A flat, bright strip along some edge: the collimator shadow of a mag view."""
    strips = [v[:2], v[-2:], v[:, :2], v[:, -2:]]
    return any(((s > 0.88) & (s < 0.95)).mean() > 0.99 and s.std() < 0.01 for s in strips)


def test_generate_drops_layout_ready_and_truth(landing):
    assert list_hospitals(landing) == sorted(hospital_slugs(3))
    truth = read_truth(landing)
    for hospital in hospital_slugs(3):
        assert list_drops(landing, hospital) == ["d1"]
        assert (landing / hospital / "d1" / "_READY").exists()
    for row in truth.itertuples():
        parts = Path(row.rel_path).parts
        assert parts[:3] == (row.hospital, "d1", row.patient_id)
        assert parts[3:] == (row.study_instance_uid, f"{row.sop_instance_uid}.dcm")
        assert (landing / row.rel_path).stat().st_size == row.file_size
    good = truth[truth["corrupt_kind"].isna()]
    assert set(good["label"]) == {"neither", "biopsy", "mag", "both"}
    assert set(truth["vendor_profile"]) == set(PROFILES)
    assert truth["sop_instance_uid"].is_unique
    assert (good.groupby("study_instance_uid").size() >= 2).all()
    assert (good[good["study_kind"] == "screening"].groupby("study_instance_uid").size() >= 4).all()
    assert good.groupby("patient_id")["study_instance_uid"].nunique().max() >= 2


def _images(landing):
    truth = read_truth(landing)
    return truth[truth["corrupt_kind"].isna() & ~truth["for_processing"].astype(bool)]


def _in_boxes(shape, boxes, pad=1) -> np.ndarray:
    inside = np.zeros(shape, dtype=bool)
    for _, r0, r1, c0, c1 in boxes:
        inside[max(0, r0 - pad) : r1 + pad, max(0, c0 - pad) : c1 + pad] = True
    return inside


def test_truth_agrees_with_pixel_geometry(landing):
    """Confounders are as bright as clips, so the truth is checked on where things are, not on a gray gap."""
    for row in _images(landing).itertuples():
        hot_level = row.metal_gray - markers.METAL_TOLERANCE  # CLIP_MIN; on digitized film its base + fog
        v = _display(pydicom.dcmread(landing / row.rel_path))
        boxes = json.loads(row.boxes)
        kinds = [b[0] for b in boxes]
        stray = (v >= hot_level) & ~_in_boxes(v.shape, boxes)
        if row.metal_gray < CLIP_MIN and (
            row.is_mag_view or row.is_spot_view
        ):  # film: its collimator shadow is clear film
            labels, _ = ndimage.label(v >= 0.85)  # the collimator's bright shadow reaches the frame
            frame = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
            stray &= ~np.isin(labels, frame[frame > 0])
        assert not stray.any(), f"{row.rel_path}: bright pixels outside every box"
        for i, (kind, r0, r1, c0, c1) in enumerate(boxes):
            patch = v[r0:r1, c0:c1]
            others = _in_boxes(v.shape, boxes[:i] + boxes[i + 1 :], pad=0)[r0:r1, c0:c1]
            if kind == "clip_unsaturated" and not others.any():  # below saturation, visible above the tissue
                pad = max(3, r1 - r0, c1 - c0)
                ring = v[max(0, r0 - pad) : r1 + pad, max(0, c0 - pad) : c1 + pad]
                assert patch.max() < hot_level and patch.max() - np.median(ring) > 0.08, row.rel_path
            elif kind == "film_dust":  # a white speck on whatever lies beneath (alone in its box)
                pad = max(3, r1 - r0, c1 - c0)
                ring = v[max(0, r0 - pad) : r1 + pad, max(0, c0 - pad) : c1 + pad]
                # a speck stops 80-100 % of the screen's light: it lifts the film most of the way to clear film
                # (`synth/film.py`), so by a share of the room left below clear film (none on cleared gland)
                room = row.metal_gray - np.median(ring)
                assert others.any() or patch.max() - np.median(ring) > 0.3 * room, row.rel_path
            elif kind in LESIONS:  # a soft-tissue lump: lifted over the tissue beside it, never to metal's gray
                assert patch.max() < hot_level or others.any(), (row.rel_path, kind)
            elif (
                kind != "clip_unsaturated"
            ):  # clips, wires, every confounder and a film's clear edge reach metal's gray
                assert patch.max() >= hot_level, (row.rel_path, kind)
        visible = kinds.count("clip") + kinds.count("clip_unsaturated")
        assert (visible > 0) == row.has_biopsy_marker, row.rel_path  # the labels are visual
        assert visible + kinds.count("hidden_clip") == row.n_clips, row.rel_path
        assert kinds.count("hidden_clip") == row.n_clips_hidden, row.rel_path
        assert kinds.count("clip_unsaturated") == row.n_clips_unsaturated, row.rel_path
        assert kinds.count("hook_wire") == int(row.hook_wire), row.rel_path
        for kind in (*CONFOUNDERS, *LESIONS):
            assert (kind in kinds) == getattr(row, kind), (row.rel_path, kind)
        if not row.film_edge:  # (a film's clear edge is checked as a box above)
            assert _has_unexposed_border(v) == (row.is_mag_view or row.is_spot_view), row.rel_path
        assert (kinds.count("film_edge") > 0) == row.film_edge and ("film_dust" in kinds) == row.film_dust
        assert row.metal_gray == CLIP_MIN or row.vendor_profile == "FILM-DF", row.rel_path
        assert (row.mag_factor > 1.0) == row.is_mag_view, row.rel_path
        if row.marker_partly_outside:  # cut off at the chest-wall edge (column 0 for a left breast)
            edge = v[:, 0] if row.laterality == "L" else v[:, -1]
            assert (edge >= hot_level).any(), row.rel_path


def test_drops_cover_every_confounder_and_special_view(landing):
    images = _images(landing)
    for kind in (*CONFOUNDERS, *LESIONS):
        assert images[kind].any(), kind
    assert images["marker_partly_outside"].any() and images["subtle_mag"].any() and images["hook_wire"].any()
    assert (images["n_clips_unsaturated"] > 0).any()  # some clips do not saturate
    assert (images["n_clips"] > images["n_clips_unsaturated"]).any()  # and most do
    spot_only = images["is_spot_view"] & ~images["is_mag_view"]
    assert spot_only.any() and (images["is_mag_view"] & images["is_spot_view"]).any()
    assert not images.loc[spot_only, "label"].isin(["mag", "both"]).any()  # spot compression is not a mag view
    assert set(images["density"]) <= {"a", "b", "c", "d"} and images["density"].nunique() >= 3


def test_confounders_are_as_bright_as_clips(landing):
    """The old brightness gap is gone: some negative image holds a confounder at or above the clips' gray."""
    hot_level = CLIP_MIN - markers.METAL_TOLERANCE
    negatives = _images(landing)
    negatives = negatives[~negatives["has_biopsy_marker"].astype(bool) & negatives[list(CONFOUNDERS)].any(axis=1)]
    brightest = [float(_display(pydicom.dcmread(landing / p)).max()) for p in negatives["rel_path"]]
    assert brightest and max(brightest) >= hot_level


def test_digitized_film_is_secondary_capture_with_modality_mg(landing):
    truth = _images(landing)
    film = truth[truth["vendor_profile"] == "FILM-DF"]
    assert len(film)
    ds = pydicom.dcmread(landing / film["rel_path"].iloc[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.Modality == "MG" and ds.ConversionType == "DF"
    assert not ds.Manufacturer and "PresentationIntentType" not in ds and "PixelSpacing" not in ds
    assert ds.NominalScannedPixelSpacing


def test_headers_never_reveal_a_marker_and_carry_identities(landing):
    truth = read_truth(landing)
    for row in truth[truth["corrupt_kind"].isna()].itertuples():
        ds = pydicom.dcmread(landing / row.rel_path, stop_before_pixels=True)
        text = " ".join(str(e.value) for e in ds.iterall() if e.VR in ("LO", "SH", "ST", "LT", "CS")).lower()
        assert "biopsy" not in text and "clip" not in text and "marker" not in text
        assert ds.PatientID == row.patient_id and str(ds.PatientName) and len(ds.PatientBirthDate) == 8
        assert ds.Modality == "MG" and ds.InstitutionName and ds.AccessionNumber


def test_corrupt_files_have_their_kind(landing):
    truth = read_truth(landing)
    bad = truth[truth["corrupt_kind"].notna()]
    assert set(bad["corrupt_kind"]) == {"truncated", "not_dicom", "no_pixel_data", "not_mammography"}
    assert bad["label"].isna().all()
    for row in bad.itertuples():
        path = landing / row.rel_path
        if row.corrupt_kind == "not_dicom":
            with pytest.raises(InvalidDicomError):
                pydicom.dcmread(path)
        elif row.corrupt_kind == "no_pixel_data":
            ds = pydicom.dcmread(path)
            assert ds.Modality == "MG" and "PixelData" not in ds
        elif row.corrupt_kind == "not_mammography":
            assert pydicom.dcmread(path).Modality == "CT"
        else:
            with pytest.raises(Exception):  # noqa: B017 - pydicom raises several types on truncated data
                pydicom.dcmread(path).pixel_array  # noqa: B018


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.dcm"))}


def test_generate_drops_same_seed_gives_identical_bytes(tmp_path):
    calls: list[tuple[int, int]] = []
    generate_drops(tmp_path / "a", hospitals=2, studies_per_hospital=3, seed=9, scale=SCALE, drop="d", workers=1)
    generate_drops(
        tmp_path / "b",
        hospitals=2,
        studies_per_hospital=3,
        seed=9,
        scale=SCALE,
        drop="d",
        workers=2,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1][0] == calls[-1][1] > 0 and [d for d, _ in calls] == sorted(d for d, _ in calls)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a and a == b
    generate_drops(tmp_path / "c", hospitals=2, studies_per_hospital=3, seed=10, scale=SCALE, drop="d", workers=1)
    assert set(_files(tmp_path / "c")).isdisjoint(a)


def test_second_drop_adds_files_without_touching_the_first(tmp_path):
    out = tmp_path / "landing"
    generate_drops(out, hospitals=2, studies_per_hospital=3, seed=1, scale=SCALE, drop="d1", workers=1)
    before = _files(out)
    truth1 = read_truth(out)
    report = generate_drops(
        out,
        hospitals=3,
        studies_per_hospital=3,
        seed=1,
        scale=SCALE,
        drop="d2",
        only=[hospital_slugs(3)[2], hospital_slugs(3)[0]],
        workers=1,
    )
    after = _files(out)
    assert all(after[k] == v for k, v in before.items())
    assert sorted(report.hospitals) == sorted([hospital_slugs(3)[0], hospital_slugs(3)[2]])
    truth2 = read_truth(out)
    assert len(truth2) == len(truth1) + report.files_written
    d1 = truth2[truth2["drop"] == "d1"].sort_values("sop_instance_uid").reset_index(drop=True)
    assert d1.equals(truth1.sort_values("sop_instance_uid").reset_index(drop=True))
    new = truth2[truth2["drop"] == "d2"]
    assert set(new["hospital"]) == set(report.hospitals)
    assert set(new["sop_instance_uid"]).isdisjoint(truth1["sop_instance_uid"])
    assert set(new["study_instance_uid"]).isdisjoint(truth1["study_instance_uid"])
    assert list_drops(out, hospital_slugs(3)[1]) == ["d1"]
    again = generate_drops(out, hospitals=3, studies_per_hospital=3, seed=1, scale=SCALE, drop="d2", workers=1)
    assert sorted(again.skipped) == sorted(report.hospitals) and len(read_truth(out)) > len(truth2)


@pytest.mark.parametrize("drop", ["../escaped", "a/b", "..", "_truth", ".hidden", " drop-1"])
def test_generate_drops_keeps_the_drop_one_folder_inside_out(tmp_path, drop):
    out = tmp_path / "landing"
    with pytest.raises(ValueError, match="must be one folder name"):
        generate_drops(out, 1, 1, drop=drop, scale=0.25)
    assert not any(tmp_path.rglob("*.dcm")) and not (tmp_path / "escaped").exists()


def test_generate_drops_rejects_unknown_only(tmp_path):
    with pytest.raises(ValueError, match="not-a-hospital"):
        generate_drops(tmp_path, hospitals=2, studies_per_hospital=1, only=["not-a-hospital"])


def test_hospital_slugs_are_stable_unique_slugs():
    many = hospital_slugs(60)
    assert hospital_slugs(4) == many[:4]
    assert len(set(many)) == 60
    assert all(SLUG.match(s) and "," not in s for s in many)
