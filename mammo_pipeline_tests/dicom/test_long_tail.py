"""Issue 17 (the real-DICOM long tail) and the index side of issue 14: each failing input, and the kind it stands
for, with its right value."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_pipeline.cache import cache_hospital, read_manifest
from mammo_pipeline.dicom.decode import decode_frame
from mammo_pipeline.dicom.errors import InvalidUID, Tomosynthesis, Truncated, Unsupported
from mammo_pipeline.dicom.headers import (
    BREAST_PROJECTION_FOR_PRESENTATION,
    MG_FOR_PROCESSING,
    check_uid,
    classify,
    pseudonymize,
    read_header_row,
)
from mammo_pipeline.dicom.index import SCHEMA, conform_record, conform_row, index_hospital, write_index
from mammo_pipeline.dicom.normalize import render, to_uint8, window_linear
from mammo_pipeline.dicom.source_paths import lookup_path, pseudonymize_path, resolve
from mammo_pipeline.labels.audit import assign_splits
from mammo_pipeline.synth.realism_report import realdata_dir
from mammo_pipeline.warehouse import read_partition
from mammo_pipeline_tests.dicom.crafted import (
    BREAST_TOMOSYNTHESIS,
    CT_IMAGE,
    MULTIFRAME_GRAYSCALE_WORD_SC,
    SECONDARY_CAPTURE,
    breast,
    functional_group_window_ds,
    make_ds,
    signed_j2k_unsigned_header_ds,
    tissue_image,
    write_bare,
)
from mammo_pipeline_tests.dicom.test_headers import PATIENT, SALT, code_item, write_mg

REALDATA = realdata_dir()  # $MAMMO_REALDATA or ../shared/realdata
FRAME_BYTES = 48 * 64 * 2
TOMO_TYPE = ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "NONE"]


def _row(tmp_path: Path, name: str = "img.dcm", **tags: object) -> dict:
    path = write_mg(tmp_path / "land" / "h1" / "d1" / name, **tags)
    return read_header_row(path, tmp_path / "land", "h1", "d1", SALT)


# --- 1. Routing: tomosynthesis, synthesized 2D, digitized film, For Processing -------------------------------


@pytest.mark.parametrize(
    ("tags", "kind", "rule"),
    [
        ({}, "2d", "sop_class"),
        ({"SOPClassUID": MG_FOR_PROCESSING}, "for_processing", "sop_class"),
        ({"SeriesDescription": "L CC C-View"}, "synthesized_2d", "series_description"),
        ({"SeriesDescription": "R MLO V-Preview"}, "synthesized_2d", "series_description"),
        ({"ImageType": ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"]}, "synthesized_2d", "image_type"),
        ({"SOPClassUID": SECONDARY_CAPTURE, "ConversionType": "DF"}, "digitized_film", "conversion_type"),
        ({"SOPClassUID": SECONDARY_CAPTURE, "ConversionType": "WSD"}, "secondary_capture", "sop_class"),
        ({"SOPClassUID": BREAST_PROJECTION_FOR_PRESENTATION, "NumberOfFrames": 1}, "2d", "sop_class"),
        ({"SOPClassUID": BREAST_TOMOSYNTHESIS, "NumberOfFrames": 1}, "tomosynthesis", "sop_class"),
        ({"ImageType": TOMO_TYPE}, "tomosynthesis", "image_type"),
        ({"SOPClassUID": MULTIFRAME_GRAYSCALE_WORD_SC, "NumberOfFrames": 10}, "tomosynthesis", "number_of_frames"),
        ({"SOPClassUID": CT_IMAGE, "Modality": "CT", "BodyPartExamined": "BREAST"}, "tomosynthesis", "sop_class"),
        ({"SeriesDescription": "L CC Tomo"}, "tomosynthesis", "series_description"),
        # "CC View" holds "C View" but names no C-View: a plain view, and a tomosynthesis slice stays one
        ({"SeriesDescription": "R CC View"}, "2d", "sop_class"),
        ({"SeriesDescription": "L CC VIEW"}, "2d", "sop_class"),
        ({"SeriesDescription": "R CC View", "ImageType": TOMO_TYPE}, "tomosynthesis", "image_type"),
        ({"SeriesDescription": "Tomo L CC View"}, "tomosynthesis", "series_description"),
        ({"SeriesDescription": "R_CC_C-View"}, "synthesized_2d", "series_description"),
    ],
)
def test_classify_routes_by_sop_class_frames_image_type_and_description_together(tags, kind, rule):
    ds = Dataset()
    ds.SOPClassUID, ds.Modality, ds.ImageType = "1.2.840.10008.5.1.4.1.1.1.2", "MG", ["ORIGINAL", "PRIMARY"]
    for key, value in tags.items():
        setattr(ds, key, value)
    assert classify(ds) == (kind, rule)


def test_tomosynthesis_next_to_a_2d_image_is_quarantined_and_never_cached(settings):
    root = settings.landing / "h1" / "d1" / "p1" / "s1"
    write_mg(root / "2d.dcm")
    tomo = {"ImageType": TOMO_TYPE, "NumberOfFrames": 12, "pixel_bytes": b"\x00\x01" * (FRAME_BYTES // 2) * 12}
    write_mg(root / "tomo.dcm", SOPClassUID=BREAST_TOMOSYNTHESIS, **tomo)
    write_mg(root / "sc.dcm", SOPClassUID=MULTIFRAME_GRAYSCALE_WORD_SC, **{**tomo, "ImageType": ["DERIVED"]})
    write_mg(root / "cview.dcm", SeriesDescription="L CC C-View")
    result = index_hospital(settings, "h1")
    assert result.quarantined == {"tomosynthesis": 2} and result.rows == 2
    index = read_partition(settings, "dicom_index", "h1")
    assert sorted(index["image_kind"]) == ["2d", "synthesized_2d"]
    quarantine = read_partition(settings, "quarantine", "h1")
    assert quarantine["message"].str.contains("not a 2D view").all()
    cached = cache_hospital(settings, "h1")
    assert cached.new == 2 and set(read_manifest(settings, "h1")["sop_instance_uid"]) == set(index["sop_instance_uid"])


def test_a_garbage_number_of_frames_neither_routes_nor_overflows(tmp_path):
    for value in ("1e30", "9223372036854775807", "0", "-3"):
        with pytest.raises(Unsupported, match=r"\(0028,0008\) Number of Frames"):
            _row(tmp_path, NumberOfFrames=value)


# --- 2. Window only in the functional groups -----------------------------------------------------------------


def test_window_in_shared_functional_groups_is_used():
    ds = functional_group_window_ds(1800, 1200)
    rendition = render(ds, (80,))
    expected = to_uint8(window_linear(ds.pixel_array.astype(np.float32), 1800, 1200))
    assert rendition.voi_method == "window:LINEAR" and rendition.fallback_reason is None
    assert np.abs(rendition.images[80].astype(float) - expected).mean() < 0.5


@pytest.mark.parametrize("where", ["SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"])
def test_a_breast_projection_objects_side_comes_from_its_frame_anatomy(tmp_path, where):
    """Breast Projection X-Ray objects keep the side in the Frame Anatomy macro (Frame Laterality, PS3.3
    C.7.6.16.2.8), not in (0020,0062) Image Laterality: before, such a view was indexed without a side."""
    ds = functional_group_window_ds(1800, 1200)
    anatomy = Dataset()
    anatomy.FrameLaterality = "R"
    group = Dataset()
    group.FrameAnatomySequence = [anatomy]
    setattr(ds, where, [group])
    ds.ViewPosition, ds.PatientID = "CC", "PAT-7"
    path = tmp_path / "land" / "h1" / "d1" / "bp.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    row = read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert (row["laterality"], row["laterality_source"]) == ("R", "FrameLaterality")
    ds.ImageLaterality = "L"  # a top-level side, where one is written, still comes first
    ds.save_as(path, enforce_file_format=True)
    row = read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert (row["laterality"], row["laterality_source"]) == ("L", "ImageLaterality")


def test_window_in_per_frame_functional_groups_is_used_when_shared_has_none():
    ds = functional_group_window_ds(1800, 1200)
    item = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    ds.SharedFunctionalGroupsSequence = [Dataset()]
    per_frame = Dataset()
    per_frame.FrameVOILUTSequence = [item]
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1000, "US"
    per_frame.PixelValueTransformationSequence = [transform]
    ds.PerFrameFunctionalGroupsSequence = [per_frame]
    rendition = render(ds, (80,))
    expected = to_uint8(window_linear(ds.pixel_array.astype(np.float32) - 1000, 1800, 1200))
    assert rendition.voi_method == "window:LINEAR"
    assert np.abs(rendition.images[80].astype(float) - expected).mean() < 0.5


def test_functional_group_window_reaches_the_index(tmp_path):
    ds = functional_group_window_ds(1800, 1200)
    path = tmp_path / "land" / "h1" / "d1" / "bpx.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    row = read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert (row["window_centers"], row["window_widths"], row["voi_lut_function"]) == ([1800.0], [1200.0], "LINEAR")
    assert row["image_kind"] == "2d"


# --- 3. Signed J2K codestream, unsigned header ---------------------------------------------------------------


def test_signed_j2k_codestream_with_unsigned_header_keeps_values_on_the_reduced_path():
    arr = breast(512, 416)
    assert (arr >= 2048).mean() > 0.15
    ds = signed_j2k_unsigned_header_ds(arr)
    assert np.array_equal(decode_frame(ds).pixels, arr)  # full size: pydicom reinterprets
    reduced = decode_frame(ds, 128)  # the size the cache asks for
    assert reduced.reduction == 1 and np.array_equal(reduced.pixels, arr)  # value mod 4096, never clipped to 0
    shown = render(ds, (128,)).images[128]
    native = render(make_ds(arr), (128,)).images[128]
    assert np.abs(shown.astype(int) - native).max() <= 1  # no black tiles where values are >= 2048


# --- 4. Padding in the automatic window ----------------------------------------------------------------------


def test_padding_is_left_out_of_the_automatic_window():
    arr = tissue_image(64, 80, padding_fraction=0.4)
    tissue = arr > 0
    with_padding = render(make_ds(arr, PixelPaddingValue=0), (80,))
    assert with_padding.voi_method == "range"
    shown = with_padding.images[80][tissue]
    assert shown.min() <= 2 and shown.max() >= 253  # tissue spans 0..255
    assert (with_padding.images[80][~tissue] == 0).all()
    without = render(make_ds(arr), (80,)).images[80][tissue]
    assert without.min() >= 80  # the old behaviour: padding in the percentiles squeezes tissue to 85..255


def test_padding_range_limit_and_edges_are_kept_out_of_area_averaging():
    arr = np.full((60, 80), 3000, np.uint16)
    arr[2:, :28] = np.random.default_rng(1).integers(0, 51, size=(58, 28))  # padding 0..50, edge inside a block
    # (below two rows of tissue: padding, but no frame that `normalize.content_box` would cut away)
    arr[:, -4:] = 1000  # a darker strip so the percentile window has a range
    ds = make_ds(arr, PixelPaddingValue=0, PixelPaddingRangeLimit=50)
    image = render(ds, (30,)).images[30]
    interior = image[:, : image.shape[1] - 3]
    assert set(np.unique(interior)) <= {0, 255}  # an edge pixel is the mean of its tissue only: never dimmed
    assert (image[1:, 0] == 0).all() and (interior[:, -1] == 255).all()


@pytest.mark.parametrize(
    ("signed", "pad", "window"),
    [(False, 0xFFFF, True), (False, 0xFFFF, False), (True, -32768, True), (False, 0x8000, False)],
)
def test_a_padding_value_outside_bits_stored_is_still_padding(signed, pad, window):
    """A 12-bit image padded with 0xFFFF (or -32768 when signed): fitting the cells to Bits Stored folds that value
    into an image value (4095: as white as metal; 0: mid-gray after the rescale), so the padding is matched on the
    cells as decoded. Before, it showed white or gray, and without a window it stretched the range too."""
    arr = tissue_image(64, 80)
    arr = (arr.astype(np.int16) - 2048) if signed else arr  # tissue -1048..952 signed, 1000..3000 unsigned
    arr[1:, :24] = pad  # below a row of tissue: padding, no frame (`normalize.content_box` would cut one away)
    tags = {"WindowCenter": 0 if signed else 2048, "WindowWidth": 4096} if window else {}
    ds = make_ds(arr.astype(np.int16 if signed else np.uint16), signed=signed, PixelPaddingValue=pad, **tags)
    if signed:
        ds["PixelPaddingValue"].VR = "SS"
    image = render(ds, (80,)).images[80]
    assert (image[1:, :24] == 0).all()  # padding is black
    tissue = image[:, 26:]
    if window:
        assert tissue.min() >= 50 and tissue.max() <= 200 and tissue.std() > 10  # 1000..3000 of 0..4095
    else:
        assert tissue.min() <= 2 and tissue.max() >= 253  # the range window is the tissue's own, not 0..65535


# --- 5. No preamble, no File Meta ----------------------------------------------------------------------------


def test_bare_implicit_vr_data_set_is_accepted_and_flagged(settings):
    ds = make_ds(tissue_image(), PatientID="PAT-9", ViewPosition="CC", ImageLaterality="R")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = generate_uid()
    path = write_bare(ds, settings.landing / "h1" / "d1" / "IM000001")
    assert path.read_bytes()[:4] == b"\x08\x00\x05\x00"
    result = index_hospital(settings, "h1")
    assert result.rows == 1 and result.quarantined == {}
    row = read_partition(settings, "dicom_index", "h1").iloc[0]
    assert bool(row["no_file_meta"]) is True and row["transfer_syntax"] == "1.2.840.10008.1.2"
    assert cache_hospital(settings, "h1").new == 1  # and it renders


def test_a_text_file_is_still_not_dicom(tmp_path):
    path = tmp_path / "land" / "h1" / "d1" / "IM000002"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x08\x00\x05\x00" + b"garbage without any element structure" * 3)
    with pytest.raises(Exception) as info:
        read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert getattr(info.value, "reason", None) in {"not_dicom", "truncated"}


# --- 6. Images without a Patient ID --------------------------------------------------------------------------


def test_images_without_patient_id_never_share_a_key(settings):
    for i in range(20):
        patient = {"PatientID": None} if i < 10 else {"PatientID": ""}
        # fixed UIDs: with random ones all 20 keys fell in the train split in about 1 run in 87 (0.8 ** 20)
        study = generate_uid(entropy_srcs=[f"long-tail study {i}"])
        write_mg(settings.landing / "h1" / "d1" / f"s{i}" / "img.dcm", StudyInstanceUID=study, **patient)
    index_hospital(settings, "h1")
    index = read_partition(settings, "dicom_index", "h1")
    assert len(index) == 20 and index["patient_key"].nunique() == 20
    assert set(index["patient_key_source"]) == {"study_instance_uid"}
    assert assign_splits(index, seed=0).nunique() == 2  # drawn one by one, not together


def test_patient_key_comes_from_the_raw_id_exactly_as_stored(tmp_path):
    a = _row(tmp_path, "a.dcm", PatientID="A\\B")
    b = _row(tmp_path, "b.dcm", PatientID="A\\C")
    assert a["patient_key"] != b["patient_key"]  # not split at the backslash
    assert a["patient_key"] == pseudonymize(b"A\\B", SALT) and a["patient_key_source"] == "patient_id"
    assert _row(tmp_path, "c.dcm", PatientID=" PAT-0042")["patient_key"] != _row(tmp_path, "d.dcm")["patient_key"]
    assert _row(tmp_path, "e.dcm")["patient_key"] == pseudonymize("PAT-0042", SALT)  # unchanged for plain IDs
    latin = _row(tmp_path, "f.dcm", SpecificCharacterSet="ISO_IR 100", PatientID="Åse-1")
    utf8 = _row(tmp_path, "g.dcm", SpecificCharacterSet="ISO_IR 192", PatientID="Åse-1")
    assert latin["patient_key"] != utf8["patient_key"]  # different stored bytes, different IDs


# --- 8. Laterality and view in the wrong places ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "laterality", "view"),
    [
        ({}, ("L", "ImageLaterality"), ("CC", "ViewPosition")),
        ({"ImageLaterality": None, "Laterality": "R"}, ("R", "Laterality"), ("CC", "ViewPosition")),
        ({"ImageLaterality": "U", "Laterality": "R"}, ("R", "Laterality"), ("CC", "ViewPosition")),
        ({"ImageLaterality": "U", "Laterality": None}, ("U", "ImageLaterality"), ("CC", "ViewPosition")),
        ({"ViewPosition": None}, ("L", "ImageLaterality"), ("CC", "ViewCodeSequence")),
        (
            {"ViewPosition": None, "ViewCodeSequence": [code_item("R-10226", "SNM3", "medio-lateral oblique")]},
            ("L", "ImageLaterality"),
            ("MLO", "ViewCodeSequence"),
        ),
        (
            {
                "ViewPosition": None,
                "ViewCodeSequence": None,
                "PatientOrientation": "MLO",
                "ImageLaterality": None,
                "Laterality": "L",
            },
            ("L", "Laterality"),
            ("MLO", "PatientOrientation"),
        ),
        (
            {"ViewPosition": None, "ViewCodeSequence": None, "PatientOrientation": ["A", "R"]},
            ("L", "ImageLaterality"),
            (None, None),
        ),
    ],
)
def test_laterality_and_view_sources_are_taken_in_order_and_recorded(tmp_path, tags, laterality, view):
    row = _row(tmp_path, **tags)
    assert (row["laterality"], row["laterality_source"]) == laterality
    assert (row["view_position"], row["view_source"]) == view


# --- 9. The 12-bit JPEG Extended file --------------------------------------------------------------------------


@pytest.mark.skipif(not (REALDATA / "dicom-wg04" / "MG1_JPLY.dcm").exists(), reason="shared realdata absent")
def test_wg04_12_bit_jpeg_extended_with_se_0_renders_as_its_jpeg_2000_copy():
    """MG1_JPLY.dcm's scan header says Se = 0 under SOF1, which pylibjpeg refuses; read as IJG libjpeg reads it, it
    shows the same film as the JPEG 2000 copy of the same WG04 image (both lossy, so close, not equal)."""
    from mammo_pipeline.dicom.decode import REPAIRED_DECODER

    path = REALDATA / "dicom-wg04" / "MG1_JPLY.dcm"
    assert decode_frame(pydicom.dcmread(path), 256, path=str(path)).decoder == REPAIRED_DECODER
    a, b = (render(REALDATA / "dicom-wg04" / f"MG1_{enc}.dcm", (256,)).images[256] for enc in ("JPLY", "J2KI"))
    a, b = a.astype(np.float64), b.astype(np.float64)
    assert a.shape == b.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99 and np.abs(a - b).mean() < 3.0


# --- Issue 14, index side: invalid UIDs, per-file isolation, no raw identifier, stale temps ------------------


@pytest.mark.parametrize(
    "uid", ["../../../../escaped-1", "1.2.3/../4", "1..2", "1.2.", "1.2.3a", "1." + "2" * 64, " 1.2.3", ""]
)
def test_invalid_uids_are_quarantined(uid):
    with pytest.raises(InvalidUID):
        check_uid(uid, "(0008,0018) SOP Instance UID", "x")


def test_uid_rule_accepts_leading_zeros_and_64_characters():
    check_uid("1.2.840.010008.1", "(0008,0018)", "x")
    check_uid("1." + "2" * 62, "(0008,0018)", "x")


def test_index_quarantines_a_traversal_uid_and_a_huge_frame_count_and_goes_on(settings):
    root = settings.landing / "h1" / "d1"
    write_mg(root / "good.dcm")
    write_mg(root / "escape.dcm", SOPInstanceUID="../../../../../../escaped-1")
    write_mg(root / "frames1.dcm", NumberOfFrames="1e30")
    write_mg(root / "frames2.dcm", NumberOfFrames="9223372036854775807")
    result = index_hospital(settings, "h1")
    assert result.rows == 1 and result.quarantined == {"invalid_uid": 1, "unsupported": 2}
    assert index_hospital(settings, "h1").unchanged == 4  # and a re-run does not fail either


def test_conform_row_clamps_every_value_into_the_schema(tmp_path):
    row = {name: None for name in SCHEMA.names} | {
        "hospital": "h1",
        "drop": "d1",
        "rel_path": "h1/d1/x",
        "rows": 2**70,
        "number_of_frames": 1e30,
        "pixel_spacing": float("inf"),
        "window_centers": [1.0, float("nan"), "x"],
        "meta_mag": "yes",
        "manufacturer": 12,
        "bits_stored": 12.0,  # an integral float in an int column: kept as 12
        "columns": True,  # a bool is no int here
        "rescale_slope": 2,  # an int in a float column: 2.0
        "compression_force": float("nan"),
        "focal_spot": True,
    }
    clean = conform_row(row)
    assert (clean["bits_stored"], clean["columns"], clean["rescale_slope"]) == (12, None, 2.0)
    assert (clean["compression_force"], clean["focal_spot"]) == (None, None)
    assert conform_record(row) == tuple(clean.get(name) for name in SCHEMA.names)  # the workers' form of it
    assert (clean["rows"], clean["number_of_frames"], clean["pixel_spacing"]) == (None, None, None)
    assert (clean["window_centers"], clean["meta_mag"], clean["manufacturer"]) == ([1.0], None, None)
    assert write_index([row], tmp_path / "d1.parquet").exists()  # the raw row, conformed on write


def test_no_raw_identifier_leaves_the_dicom_files(settings):
    """Drops laid out <hospital>/<drop>/<PatientID>/<Study>/<file>: no table, message or file name carries them."""
    patient_folder = settings.landing / "h1" / "d1" / PATIENT["PatientID"] / "Doe_Jane_study"
    write_mg(patient_folder / "IM0001.dcm")
    write_mg(patient_folder / "IM0002.dcm", pixel_bytes=b"\x00\x01" * 10)  # quarantined by the cache
    (patient_folder / "notes.dcm").write_text("not DICOM")  # quarantined by the index
    index_hospital(settings, "h1")
    cache_hospital(settings, "h1")
    texts = []
    for table in ("dicom_index", "quarantine", "image_cache"):
        df = read_partition(settings, table, "h1")
        assert len(df) > 0
        texts += [str(v) for v in df.to_numpy().ravel()]
    for path in settings.warehouse.rglob("*"):
        texts.append(str(path.relative_to(settings.home)))
    blob = "\n".join(texts)
    for secret in (*PATIENT.values(), "Doe_Jane", "IM0001", "IM0002", "notes"):
        assert secret not in blob, secret
    rels = read_partition(settings, "dicom_index", "h1")["rel_path"]
    assert {resolve(settings, "h1", rel) for rel in rels} == {
        patient_folder / "IM0001.dcm",
        patient_folder / "IM0002.dcm",
    }
    lookup = lookup_path(settings, "h1", "d1")
    assert stat.S_IMODE(lookup.stat().st_mode) == 0o600 and settings.warehouse not in lookup.parents
    with pytest.raises(KeyError):
        resolve(settings, "h1", "h1/d1/" + "0" * 24)


def test_pseudonymized_path_is_salted_and_keeps_only_hospital_and_drop():
    a = pseudonymize_path(b"s1", "h1/d1/PAT-1/S/IM1")
    assert a.startswith("h1/d1/") and len(a.split("/")) == 3 and "PAT" not in a
    assert a == pseudonymize_path(b"s1", "h1/d1/PAT-1/S/IM1") != pseudonymize_path(b"s2", "h1/d1/PAT-1/S/IM1")


def test_index_removes_only_stale_temp_files(settings):
    folder = settings.table_dir("dicom_index", "h1")
    folder.mkdir(parents=True)
    stale, fresh = folder / ".d1.parquet.dead0001.tmp", folder / ".d1.parquet.live0002.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - 7 * 3600
    os.utime(stale, (old, old))
    write_mg(settings.landing / "h1" / "d1" / "a.dcm")
    index_hospital(settings, "h1")
    assert not stale.exists() and fresh.exists()


def test_rendered_functional_group_file_reads_back_with_pydicom(tmp_path):
    ds = functional_group_window_ds()
    path = tmp_path / "bpx.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert render(pydicom.dcmread(path), (80,)).voi_method == "window:LINEAR"


def test_header_row_refuses_tomosynthesis_with_its_reason(tmp_path):
    with pytest.raises(Tomosynthesis, match="not a 2D view") as info:
        _row(tmp_path, SOPClassUID=BREAST_TOMOSYNTHESIS, NumberOfFrames=1)
    assert info.value.reason == "tomosynthesis"


def test_file_meta_without_preamble_is_read_and_not_flagged(tmp_path):
    full = write_mg(tmp_path / "full.dcm")
    path = tmp_path / "land" / "h1" / "d1" / "nopreamble.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(full.read_bytes()[132:])  # starts with (0002,0000)
    row = read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert row["no_file_meta"] is False and row["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert render(path, (64,)).images[64].shape == (48, 64)


def test_a_row_pyarrow_still_refuses_is_quarantined_alone():
    from mammo_pipeline.dicom.index import _isolate

    base = {name: None for name in SCHEMA.names} | {"hospital": "h1", "drop": "d1", "file_size": 1, "file_mtime_ns": 1}
    good = base | {"rel_path": "h1/d1/a", "rows": 10}
    bad = base | {"rel_path": "h1/d1/b", "rows": 2**70}  # as if it skipped conform_row
    kept, refused = _isolate([good, bad])
    assert kept == [good] and [(q["rel_path"], q["reason"]) for q in refused] == [("h1/d1/b", "unsupported")]


# --- 12. Fuzz sweep: a zero Rescale Slope, a DICOMDIR, a file cut inside an undefined-length sequence ----------


def test_a_zero_rescale_slope_is_ignored_instead_of_rendering_black():
    arr = breast(96, 80)
    rendition = render(make_ds(arr, RescaleSlope=0, RescaleIntercept=0), (80,))
    image = rendition.images[80]
    assert int(image.max()) - int(image.min()) > 200  # not one gray level (all black before)
    assert np.array_equal(image, render(make_ds(arr), (80,)).images[80])  # as if the rescale were absent
    assert "(0028,1053) Rescale Slope 0 ignored" in rendition.fallback_reason


def test_a_dicomdir_is_quarantined_as_not_an_image(settings):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "CD0001"
    ds.PatientName = PATIENT["PatientName"]  # a DICOMDIR's PATIENT records name the patient
    ds.DirectoryRecordSequence = []
    path = settings.landing / "h1" / "d1" / "DICOMDIR"
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    write_mg(settings.landing / "h1" / "d1" / "img.dcm")
    result = index_hospital(settings, "h1")
    assert result.rows == 1 and result.quarantined == {"not_mammography": 1}
    message = read_partition(settings, "quarantine", "h1")["message"].iloc[0]
    assert "a DICOMDIR" in message and "Doe" not in message


def test_a_file_cut_inside_an_undefined_length_sequence_is_truncated(tmp_path):
    from pydicom.uid import ImplicitVRLittleEndian

    ds = make_ds(tissue_image(), ViewPosition="CC", ImageLaterality="L")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.ViewCodeSequence = [code_item("399162004", "SCT", "cranio-caudal")]
    ds["ViewCodeSequence"].is_undefined_length = True
    path = tmp_path / "land" / "h1" / "d1" / "cut.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    path.write_bytes(raw[: raw.index(b"399162004") + 4])  # the file ends inside the sequence's only item
    with pytest.raises(Truncated, match="header ends early"):
        read_header_row(path, tmp_path / "land", "h1", "d1", SALT)


def test_an_invalid_uid_is_quarantined_without_its_value(settings):
    root = settings.landing / "h1" / "d1"
    write_mg(root / "accession.dcm", StudyInstanceUID=PATIENT["AccessionNumber"])  # an accession number as the UID
    write_mg(root / "patient.dcm", SOPInstanceUID=f"1.2.3.{PATIENT['PatientID']}.{PATIENT['PatientBirthDate']}")
    write_mg(root / "long.dcm", SeriesInstanceUID="1." + "2" * 70)
    result = index_hospital(settings, "h1")
    assert result.quarantined == {"invalid_uid": 3}
    messages = sorted(read_partition(settings, "quarantine", "h1")["message"])
    assert sum("holds characters other than digits and dots" in m for m in messages) == 2
    assert sum("(0020,000E) Series Instance UID has 72 characters" in m for m in messages) == 1
    for value in (PATIENT["AccessionNumber"], PATIENT["PatientID"], PATIENT["PatientBirthDate"], "2" * 70):
        assert not any(value in m for m in messages)
