"""Every vendor profile writes files pydicom reads and decodes, with the profile's hard cases in the header."""

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from mammo_pipeline.synth.dicom_writer import ImageHeader, Patient, build_dataset, encode, to_stored
from mammo_pipeline.synth.drops import StudyTask, render_study
from mammo_pipeline.synth.profiles import PROFILES, machines_of

SCALE = 0.05


def test_three_hospitals_run_every_profile():
    assert {key for i in range(3) for key in machines_of(i)} == set(PROFILES)
    assert "FILM-DF" in PROFILES and PROFILES["FILM-DF"].secondary_capture
    assert all(2 <= len(machines_of(i)) <= 3 for i in range(10))


@pytest.mark.parametrize("key", sorted(PROFILES))
def test_profile_files_read_back_and_decode(tmp_path, key):
    profile = PROFILES[key]
    rows = render_study(StudyTask(str(tmp_path / "h" / "d"), "h", "d", 0, SCALE, 0, "both", key, 0))
    assert [r["label"] for r in rows if not r["for_processing"]] == ["both", "both"]
    for row in rows:
        ds = pydicom.dcmread(tmp_path / row["rel_path"])
        expected = profile.for_processing_syntax if row["for_processing"] else profile.transfer_syntax
        assert ds.file_meta.TransferSyntaxUID in (expected, profile.alt_transfer_syntax)
        assert ds.file_meta.TransferSyntaxUID == row["transfer_syntax"]
        arr = ds.pixel_array
        assert arr.shape == (round(profile.rows * SCALE), round(profile.columns * SCALE))
        assert arr.max() < 1 << profile.bits_stored and ds.BitsStored == profile.bits_stored
        spacing = ds.NominalScannedPixelSpacing if profile.secondary_capture else ds.PixelSpacing
        assert float(spacing[0]) == pytest.approx(profile.pixel_spacing / SCALE, rel=1e-4)
        if profile.secondary_capture:  # digitized film
            assert ds.SOPClassUID == uid.SecondaryCaptureImageStorage and ds.Modality == "MG"
        elif not row["for_processing"]:
            assert ds.SOPClassUID == uid.DigitalMammographyXRayImageStorageForPresentation
            shown = apply_voi_lut(apply_modality_lut(arr, ds), ds)
            assert np.isfinite(shown).all() and shown.max() > shown.min()


@pytest.mark.parametrize("key", sorted(k for k, p in PROFILES.items() if p.other_matrix))
def test_a_two_field_machine_stores_each_paddle_at_its_own_matrix(tmp_path, key):
    """Contact views come at either matrix (per study: both breasts of a woman on the same paddle), the truth
    names it, the pixel spacing stays the detector's; magnification views keep the profile's matrix."""
    profile = PROFILES[key]
    seen: dict[str, set[tuple[int, int]]] = {"contact": set(), "mag": set()}
    for index in range(12):
        kind = "neither" if index % 3 else "mag"
        rows = render_study(StudyTask(str(tmp_path / "h" / "d"), "h", "d", 0, SCALE, index, kind, key, index))
        study = {r["matrix"] for r in rows if not r["is_mag_view"]}
        assert len(study) <= 1
        for row in rows:
            ds = pydicom.dcmread(tmp_path / row["rel_path"])
            full = tuple(int(v) for v in row["matrix"].split("x"))
            assert ds.pixel_array.shape == (round(full[0] * SCALE), round(full[1] * SCALE))
            spacing = ds.PixelSpacing
            assert float(spacing[0]) == pytest.approx(profile.pixel_spacing / SCALE, rel=1e-4)
            seen["mag" if row["is_mag_view"] else "contact"].add(full)
    assert seen["contact"] == {(profile.rows, profile.columns), profile.other_matrix}
    assert seen["mag"] == {(profile.rows, profile.columns)}


def test_a_one_field_machine_keeps_its_matrix(tmp_path):
    key = next(k for k, p in PROFILES.items() if not p.other_matrix and not p.secondary_capture)
    profile = PROFILES[key]
    for index in range(6):
        rows = render_study(StudyTask(str(tmp_path / "h" / "d"), "h", "d", 0, SCALE, index, "neither", key, index))
        assert {r["matrix"] for r in rows} == {f"{profile.rows}x{profile.columns}"}


def _header(**kw) -> ImageHeader:
    base = dict(
        patient=Patient("P1", "DOE^JANE", "19600101"),
        institution="X Hospital",
        station="S",
        study_uid="1.2.3",
        series_uid="1.2.3.1",
        sop_uid="1.2.3.1.1",
        study_date="20240101",
        study_time="101010",
        accession="ACC00000001",
        study_description="DIAGNOSTIC",
        series_number=1,
        instance_number=1,
        view="CC",
        laterality="L",
        pixel_spacing=0.7,
    )
    return ImageHeader(**{**base, **kw})


def _dataset(key: str, **kw):
    profile = PROFILES[key]
    stored = to_stored(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48), profile, False)
    return build_dataset(stored, _header(**kw), profile), stored


def test_fuji_is_monochrome1_inverse_and_inverted():
    ds, stored = _dataset("FUJ-AMU")
    assert (ds.PhotometricInterpretation, ds.PresentationLUTShape) == ("MONOCHROME1", "INVERSE")
    assert stored[0, 0] == 1023 and stored[-1, -1] == 0  # white display = low stored value


def test_ge_has_sigmoid_with_several_windows_and_sometimes_a_voi_lut():
    ds, _ = _dataset("GE-ESS", flags={"voi_lut_sequence": True})
    assert ds.VOILUTFunction == "SIGMOID" and len(ds.WindowCenter) == len(ds.WindowWidth) == 4
    assert "VOILUTSequence" in ds and "RescaleSlope" not in ds


def test_philips_voi_lut_declares_16_bits_with_data_up_to_4095():
    ds, _ = _dataset("PHI-MD")
    item = ds.VOILUTSequence[0]
    assert list(item.LUTDescriptor) == [1 << 14, 0, 16] and "WindowCenter" not in ds
    assert np.frombuffer(item.LUTData, dtype="<u2").max() == 4095


@pytest.mark.parametrize(
    ("key", "flags", "code", "scheme", "in_description"),
    [
        ("H-DIM", {"mag_modifier": True, "mag_in_description": True}, "R-102D6", "SNM3", True),
        ("GE-ESS", {"mag_modifier": True}, "399163009", "SCT", False),
        ("FUJ-AMU", {"mag_modifier": True}, "R-102D6", "SRT", False),
        ("PHI-MD", {"mag_in_description": True}, None, None, True),
        ("H-LOR", {}, None, None, False),
    ],
)
def test_mag_is_declared_inconsistently(key, flags, code, scheme, in_description):
    ds, _ = _dataset(key, mag=True, mag_factor=1.8, flags=flags)
    view = ds.ViewCodeSequence[0]
    modifiers = view.get("ViewModifierCodeSequence")
    if code is None:
        assert not modifiers  # absent, or present with zero items (Lorad)
    else:
        assert (modifiers[0].CodeValue, modifiers[0].CodingSchemeDesignator) == (code, scheme)
    assert ("MAG" in ds.SeriesDescription) == in_description
    assert ds.FocalSpots == "0.1"


def test_magnification_factor_is_right_or_one():
    right, _ = _dataset("H-DIM", mag=True, mag_factor=1.8, flags={"ermf_right": True})
    wrong, _ = _dataset("H-LOR", mag=True, mag_factor=1.8, flags={})
    assert float(right.EstimatedRadiographicMagnificationFactor) == 1.8
    assert float(wrong.EstimatedRadiographicMagnificationFactor) == 1.0


@pytest.mark.parametrize("syntax", [uid.RLELossless, uid.JPEGLSLossless, uid.ImplicitVRLittleEndian])
def test_for_processing_partners_decode_in_their_syntax(tmp_path, syntax):
    profile = PROFILES["H-DIM"]
    raw = to_stored(np.random.default_rng(0).random((40, 30), dtype=np.float32), profile, True)
    ds = build_dataset(raw, _header(for_processing=True), profile)
    path = tmp_path / "p.dcm"
    path.write_bytes(encode(ds, raw, syntax))
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == uid.DigitalMammographyXRayImageStorageForProcessing
    assert np.array_equal(back.pixel_array, raw) and "WindowCenter" not in back
