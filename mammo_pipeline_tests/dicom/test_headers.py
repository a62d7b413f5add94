"""Header rows: every coding scheme, every mag/spot metadata variant, silence, and the header-level rejects."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_partial
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from mammo_pipeline.dicom import headers as headers_module
from mammo_pipeline.dicom.errors import NoPixelData, NotDicom, NotMammography, Truncated, UnusableImage
from mammo_pipeline.dicom.headers import (
    HEAD_BYTES,
    MG_FOR_PRESENTATION,
    MG_FOR_PROCESSING,
    meta_flags,
    normalize_code,
    pseudonymize,
    read_header_row,
)
from mammo_pipeline.dicom.source_paths import pseudonymize_path
from mammo_pipeline.synth.realism_report import realdata_dir

SALT = b"test-salt"
PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientID": "PAT-0042",
    "PatientBirthDate": "19610203",
    "AccessionNumber": "ACC-777",
    "InstitutionName": "Saint Example Hospital",
}


def rel_of(name: str, hospital: str = "h1", drop: str = "d1") -> str:
    """The pseudonymized path (as a regex) that messages and rows use for landing file <hospital>/<drop>/<name>."""
    return re.escape(pseudonymize_path(SALT, f"{hospital}/{drop}/{name}"))


def code_item(value: str, scheme: str, meaning: str = "") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def write_mg(
    path: Path,
    *,
    pixels: bool = True,
    pixel_bytes: bytes | None = None,
    modifiers: list[Dataset] | None = None,
    **tags: object,
) -> Path:
    """A small MG For Presentation file (64x48 uint16) with patient text in it; `tags` override or add keywords.

    `pixels=False` leaves out Pixel Data; `pixel_bytes` replaces the pixels (say, too few of them).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = tags.get("SOPClassUID", MG_FOR_PRESENTATION)
    meta.MediaStorageSOPInstanceUID = tags.get("SOPInstanceUID") or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.Manufacturer = "HOLOGIC, Inc."
    ds.ManufacturerModelName = "Selenia Dimensions"
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.ViewPosition, ds.ImageLaterality = "CC", "L"
    view = code_item("399162004", "SCT", "cranio-caudal")
    view.ViewModifierCodeSequence = Sequence(modifiers or [])
    ds.ViewCodeSequence = Sequence([view])
    ds.Rows, ds.Columns = 48, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.07, 0.07]
    ds.WindowCenter, ds.WindowWidth = 2047, 4096
    ds.PresentationLUTShape = "IDENTITY"
    for key, value in tags.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    if pixels:
        data = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) % 4096).tobytes()
        ds.add_new("PixelData", "OW", data if pixel_bytes is None else pixel_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_damaged_mg(path: Path, **tags: object) -> Path:
    """`write_mg`'s file RLE-compressed with the second half of its bytes zeroed, as in a transfer gone wrong: the
    header and the pixel data's length are intact, so the index takes it, and the cache cannot decode it."""
    from pydicom.uid import RLELossless

    write_mg(path, **tags)
    ds = dcmread(path)
    ds.compress(RLELossless, generate_instance_uid=False)  # the same image, as a re-sent copy of it
    ds.save_as(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : -10] = bytes(len(data) // 2 - 10)
    path.write_bytes(bytes(data))
    return path


def row_of(tmp_path: Path, **kwargs: object) -> dict:
    path = write_mg(tmp_path / "land" / "h1" / "d1" / "img.dcm", **kwargs)
    return read_header_row(path, tmp_path / "land", "h1", "d1", SALT)


@pytest.mark.parametrize(
    ("value", "scheme"), [("399163009", "SCT"), ("R-102D6", "SNM3"), ("R-102D6", "SRT"), ("R-102D6", " srt ")]
)
def test_read_header_row_mag_modifier_every_scheme_counts_as_sct(tmp_path, value, scheme):
    row = row_of(tmp_path, modifiers=[code_item(value, scheme, "Magnification")])
    assert row["view_modifier_codes"] == ["SCT:399163009"]
    assert row["view_modifier_meanings"] == ["Magnification"]
    assert (row["meta_mag"], row["meta_mag_rule"]) == (True, "view_modifier:399163009")
    assert (row["meta_spot"], row["meta_spot_rule"]) == (False, "view_modifier:other")


@pytest.mark.parametrize(("value", "scheme"), [("399055006", "SCT"), ("R-102D7", "SNM3"), ("R-102D7", "SRT")])
def test_read_header_row_spot_modifier_at_top_level(tmp_path, value, scheme):
    row = row_of(tmp_path, ViewModifierCodeSequence=Sequence([code_item(value, scheme)]))
    assert row["view_modifier_codes"] == ["SCT:399055006"]
    assert (row["meta_spot"], row["meta_spot_rule"]) == (True, "view_modifier:399055006")
    assert (row["meta_mag"], row["meta_mag_rule"]) == (False, "view_modifier:other")


def test_read_header_row_spot_mag_both_codes_in_both_places_deduplicated(tmp_path):
    row = row_of(
        tmp_path,
        modifiers=[code_item("R-102D6", "SNM3"), code_item("399055006", "SCT")],
        ViewModifierCodeSequence=Sequence([code_item("399163009", "SCT")]),
    )
    assert sorted(row["view_modifier_codes"]) == ["SCT:399055006", "SCT:399163009"]
    assert row["meta_mag"] is True and row["meta_spot"] is True


def test_read_header_row_implant_displaced_is_evidence_against_mag(tmp_path):
    row = row_of(tmp_path, modifiers=[code_item("R-102D5", "SRT", "Implant Displaced")])
    assert row["view_modifier_codes"] == ["SCT:399209000"]
    assert (row["meta_mag"], row["meta_spot"]) == (False, False)


@pytest.mark.parametrize(
    ("item", "mag", "spot"),
    [
        (("MAG1", "99HOLOGIC", "MAGNIFICATION"), (True, "view_modifier_meaning:MAG"), (None, "view_modifier:unknown")),
        (("X1", "99PRIVATE", "Paddle 7"), (None, "view_modifier:unknown"), (None, "view_modifier:unknown")),
        (("399163009", "SRT", ""), (True, "view_modifier:399163009"), (False, "view_modifier:other")),  # SCT as SRT
        (("R-102D1", "SNM3", "Axillary Tail"), (False, "view_modifier:other"), (False, "view_modifier:other")),
    ],
)
def test_a_modifier_outside_cid_4015_says_nothing_unless_its_meaning_does(tmp_path, item, mag, spot):
    """A private coding scheme's modifier used to count as 'not magnified' (meta_mag False on a true mag view);
    an SCT concept ID under the SRT designator was not recognized."""
    row = row_of(tmp_path, modifiers=[code_item(*item)])
    assert (row["meta_mag"], row["meta_mag_rule"]) == mag and (row["meta_spot"], row["meta_spot_rule"]) == spot


def test_the_srt_to_sct_table_agrees_with_pydicom_and_covers_cid_4014_and_4015():
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from mammo_pipeline.dicom.headers import CID_4015, SRT_TO_SCT

    for srt, sct in SRT_TO_SCT.items():
        assert Code(srt, "SRT", "") == Code(sct, "SCT", ""), srt
    standard = {c.value for cid in (codes.cid4014, codes.cid4015) for c in cid.concepts.values()}
    assert set(SRT_TO_SCT.values()) == standard
    assert {f"SCT:{c.value}" for c in codes.cid4015.concepts.values()} == CID_4015


@pytest.mark.parametrize(
    ("tags", "mag", "rule"),
    [
        ({"SeriesDescription": "L CC MAG"}, True, "series_description:MAG"),
        ({"SeriesDescription": "Magnification RCC"}, True, "series_description:MAG"),
        ({"SeriesDescription": "L_CC_MAG1.8"}, True, "series_description:MAG"),
        ({"EstimatedRadiographicMagnificationFactor": 1.8}, True, "magnification_factor>=1.3"),
        ({"EstimatedRadiographicMagnificationFactor": 1.0}, None, "silent"),  # Hologic Lorad writes 1.0 on mag
        ({"Grid": "NONE", "FocalSpots": 0.1}, None, "silent"),  # Siemens PRIME: no grid on every view
        ({"SeriesDescription": "L CC", "ProtocolName": "Data anonymised"}, None, "silent"),
        ({"SeriesDescription": "IMAGE"}, None, "silent"),  # the word must stand alone
    ],
)
def test_read_header_row_mag_metadata_variants(tmp_path, tags, mag, rule):
    row = row_of(tmp_path, **tags)
    assert (row["meta_mag"], row["meta_mag_rule"]) == (mag, rule)


@pytest.mark.parametrize(
    ("tags", "rule"),
    [({"SeriesDescription": "R MLO SPOT"}, "series_description:SPOT"), ({"PaddleDescription": "SPOT 7.5"}, None)],
)
def test_read_header_row_spot_from_text(tmp_path, tags, rule):
    row = row_of(tmp_path, **tags)
    assert row["meta_spot"] is True
    assert row["meta_spot_rule"] == (rule or "paddle_description:SPOT")


def test_read_header_row_silent_file_has_no_opinion(tmp_path):
    row = row_of(tmp_path)
    assert row["view_modifier_codes"] == []
    assert meta_flags(row) == (None, "silent", None, "silent")


def test_read_header_row_display_columns(tmp_path):
    voi = Dataset()
    voi.LUTDescriptor = [4, 0, 16]
    voi.add_new("LUTData", "US", [0, 100, 200, 300])
    row = row_of(
        tmp_path,
        WindowCenter=[2047, 1500, 2500],
        WindowWidth=[4096, 3000, 1000],
        VOILUTFunction="SIGMOID",
        VOILUTSequence=Sequence([voi]),
        RescaleSlope=1,
        RescaleIntercept=0,
        PixelSpacing=None,
        ImagerPixelSpacing=[0.1, 0.1],
    )
    assert row["window_centers"] == [2047.0, 1500.0, 2500.0]
    assert row["window_widths"] == [4096.0, 3000.0, 1000.0]
    assert row["voi_lut_function"] == "SIGMOID" and row["has_voi_lut_sequence"] is True
    assert (row["rescale_slope"], row["rescale_intercept"]) == (1.0, 0.0)
    assert row["pixel_spacing"] == pytest.approx(0.1)
    assert (row["rows"], row["columns"], row["bits_stored"], row["bits_allocated"]) == (48, 64, 12, 16)
    assert row["view_code"] == "SCT:399162004" and row["laterality"] == "L"
    assert row["rel_path"] == pseudonymize_path(SALT, "h1/d1/img.dcm") and row["for_processing"] is False
    assert row["pixel_data_bytes"] == 48 * 64 * 2


def test_read_header_row_for_processing(tmp_path):
    assert row_of(tmp_path, SOPClassUID=MG_FOR_PROCESSING)["for_processing"] is True


def test_read_header_row_holds_no_patient_text(tmp_path):
    row = row_of(tmp_path)
    assert row["patient_key"] == pseudonymize("PAT-0042", SALT)
    text = repr(row)
    for value in PATIENT.values():
        assert value not in text


@pytest.mark.parametrize(
    ("tags", "series", "paddle"),
    [
        (
            {"SeriesDescription": "L CC MAG Doe Jane PAT-0042", "PaddleDescription": "SPOT JaneDoe 03/02/1961"},
            "L CC MAG *** ***",
            "SPOT *** ***",
        ),
        (
            {"SeriesDescription": "R_MLO_doe_jane_acc777", "PaddleDescription": "spot 1961-02-03 pat0042"},
            "R_MLO_***_***",
            "spot *** ***",
        ),
        ({"SeriesDescription": "L CC", "PaddleDescription": "SPOT 10CM"}, "L CC", "SPOT 10CM"),  # nothing to scrub
    ],
)
def test_free_text_loses_the_files_own_identifiers_and_keeps_its_words(tmp_path, tags, series, paddle):
    """Operators type a patient's name, ID or birth date into (0008,103E) Series Description or (0018,11A4) Paddle
    Description: they are scrubbed from the row, the words that say MAG or SPOT are kept (and still count)."""
    row = row_of(tmp_path, **tags)
    assert (row["series_description"], row["paddle_description"]) == (series, paddle)
    assert row["meta_spot"] is True
    text = f"{row['series_description']} {row['paddle_description']}".casefold()  # (the UIDs are random digits)
    for value in ("doe", "jane", "pat-0042", "pat0042", "acc777", "acc-777", "1961"):
        assert value not in text


@pytest.mark.parametrize(
    ("name", "series", "scrubbed"),
    [
        ("王^芳", "L CC MAG 王芳", "L CC MAG ***"),  # a one-character family name, no separator
        ("王^小东", "MAG王小东", "MAG***"),
        ("李^娜", "R MLO MAG 李 娜", "R MLO MAG ***"),
        ("Doe^Jane", "L CC MAG DOB 02/03/1961", "L CC MAG DOB ***"),  # month first, as in the US
        ("Doe^Jane", "L CC MAG DOB 3/2/61", "L CC MAG DOB ***"),  # no leading zeros, two-digit year
        ("Doe^Jane", "L CC MAG 1.61 12/3/1961", "L CC MAG 1.61 12/3/1961"),  # not the birth date
        ("Núñez^Zoë", "L CC MAG NUNEZ ZOE", "L CC MAG ***"),  # stored with accents, typed without
        ("Nunez^Zoe", "L CC MAG Núñez", "L CC MAG ***"),  # and the reverse
        ("Müller^Jürgen", "R CC MAG MUELLER JUERGEN", "R CC MAG ***"),  # umlauts spelled out (DIN 5007-2)
        ("Müller^Jürgen", "R CC MAG MULLER", "R CC MAG ***"),
        ("김^철수", "L CC MAG 김철수", "L CC MAG ***"),  # Hangul decomposes under NFKD: still one unspaced name
    ],
)
def test_free_text_loses_names_of_every_script_and_birth_dates_in_every_order(tmp_path, name, series, scrubbed):
    row = row_of(tmp_path, PatientName=name, SpecificCharacterSet="ISO_IR 192", SeriesDescription=series)
    assert row["series_description"] == scrubbed and row["meta_mag"] is True


def test_pseudonymize_is_salted_and_short():
    key = pseudonymize("PAT-0042", b"a")
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == pseudonymize("PAT-0042", b"a")
    assert key != pseudonymize("PAT-0042", b"b") and key != pseudonymize("PAT-0043", b"a")


def test_normalize_code_keeps_unknown_srt_codes_under_one_scheme():
    assert normalize_code("R-40AB1", "SNM3") == normalize_code("R-40AB1", "SRT") == "SRT:R-40AB1"
    assert normalize_code("R-10226", "SNM3") == "SCT:399368009"


def test_read_header_row_rejects_non_dicom(tmp_path):
    path = tmp_path / "land" / "h1" / "d1" / "notes.dcm"
    path.parent.mkdir(parents=True)
    path.write_text("this is a text file, not a DICOM" * 10)
    with pytest.raises(NotDicom, match=rel_of("notes.dcm")) as info:
        read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert info.value.reason == "not_dicom"


def test_an_empty_file_is_quarantined_as_truncated_and_says_it_is_empty(tmp_path):
    """A 0-byte file in a drop is a copy that never ran (or is still running), not a foreign file: the reason
    tells the operator to copy it again (before: "not a DICOM file (no DICM prefix ...)")."""
    path = tmp_path / "land" / "h1" / "d1" / "IM000003.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    with pytest.raises(Truncated, match="empty \\(0 bytes\\)") as info:
        read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert info.value.reason == "truncated"


def test_read_header_row_rejects_truncated_pixel_data(tmp_path):
    path = write_mg(tmp_path / "land" / "h1" / "d1" / "cut.dcm")
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(Truncated, match=rel_of("cut.dcm")) as info:
        read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert info.value.reason == "truncated"


def test_read_header_row_checks_encapsulated_pixel_data(tmp_path):
    path = write_mg(tmp_path / "land" / "h1" / "d1" / "rle.dcm")
    ds = dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    row = read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert row["transfer_syntax"] == RLELossless and row["pixel_data_bytes"] > 0
    path.write_bytes(path.read_bytes()[:-40])  # cut inside the last fragment
    with pytest.raises(Truncated, match=rel_of("rle.dcm")):
        read_header_row(path, tmp_path / "land", "h1", "d1", SALT)


def test_read_header_row_rejects_missing_pixel_data(tmp_path):
    path = write_mg(tmp_path / "land" / "h1" / "d1" / "empty.dcm", pixels=False)
    with pytest.raises(NoPixelData, match=rel_of("empty.dcm")) as info:
        read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert info.value.reason == "no_pixel_data"
    path = write_mg(tmp_path / "land" / "h1" / "d1" / "empty.dcm", pixel_bytes=b"")
    with pytest.raises(NoPixelData, match="is empty"):
        read_header_row(path, tmp_path / "land", "h1", "d1", SALT)


def test_read_header_row_reports_every_cut_inside_the_header_as_truncated(tmp_path):
    """Issue 14: a file cut anywhere between its preamble and its Pixel Data is `truncated`; only a cut exactly
    between two elements (indistinguishable from a header whose Pixel Data never arrived) is `no_pixel_data`."""
    full = write_mg(tmp_path / "full.dcm")
    data = full.read_bytes()
    pixel_tag = data.index(b"\xe0\x7f\x10\x00")
    starts = []
    with full.open("rb") as fp:

        def element_start(tag, vr, length):
            starts.append(fp.tell() - (12 if vr in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR") else 8))
            return False

        read_partial(fp, element_start)
    path = tmp_path / "land" / "h1" / "d1" / "cut.dcm"
    path.parent.mkdir(parents=True)
    reasons = {}
    for cut in range(1, pixel_tag + 12):
        path.write_bytes(data[:cut])
        with pytest.raises(UnusableImage) as info:
            read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
        reasons[cut] = info.value.reason
    boundaries = set(starts[1:]) | {pixel_tag}  # a cut before the first element leaves an empty data set
    assert {cut for cut, r in reasons.items() if r != "truncated"} == boundaries
    assert {reasons[cut] for cut in boundaries} == {"no_pixel_data"}


@pytest.mark.parametrize("shift", [-30, -12, -4, 0, 4, 12, 30])
def test_read_header_row_reads_headers_longer_than_the_first_read(tmp_path, shift):
    """A header whose Pixel Data element starts near or past the first HEAD_BYTES (read into memory at once) gives
    the row a short header gives, and a cut file is still truncated."""
    uids = {"SOPInstanceUID": "1.2.3.4", "StudyInstanceUID": "1.2.3.5", "SeriesInstanceUID": "1.2.3.6"}
    short = row_of(tmp_path, **uids)
    pad = 8
    for _ in range(2):  # size the ICC Profile so that Pixel Data's tag lands at HEAD_BYTES + shift
        path = write_mg(tmp_path / "land" / "h1" / "d1" / "long.dcm", ICCProfile=b"\0" * pad, **uids)
        pad += HEAD_BYTES + shift - path.read_bytes().index(b"\xe0\x7f\x10\x00")
    data = path.read_bytes()
    assert data.index(b"\xe0\x7f\x10\x00") == HEAD_BYTES + shift
    row = read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    ignore = {"rel_path", "file_size", "file_mtime_ns", "indexed_at"}
    assert {k: v for k, v in row.items() if k not in ignore} == {k: v for k, v in short.items() if k not in ignore}
    for cut in (len(data) - 1, HEAD_BYTES + shift + 6, HEAD_BYTES - 1000):  # in the pixels, their header, the ICC
        path.write_bytes(data[:cut])
        with pytest.raises(UnusableImage) as info:
            read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
        assert info.value.reason == "truncated", cut


@pytest.mark.parametrize("encoding", ["defined", "undefined_length", "implicit_vr", "medium", "long"])
def test_read_header_row_reads_code_sequences_in_every_encoding(tmp_path, encoding, monkeypatch):
    """Code sequence items read straight from pydicom's element generator give the row that pydicom's own
    sequence conversion gives, for defined- and undefined-length sequences and items, implicit VR, and sequences
    too long for the short path."""
    modifiers = [code_item("R-102D6", "SRT", "Magnification"), code_item("399055006", "SCT", "Spot Compression")]
    if encoding in ("medium", "long"):  # 3 kB: parsed each time, not cached; over 16705 bytes: by pydicom
        modifiers += [code_item(f"9{i:08d}", "99LOCAL", "x" * 60) for i in range(30 if encoding == "medium" else 200)]
    path = write_mg(tmp_path / "land" / "h1" / "d1" / "a.dcm", modifiers=modifiers)
    if encoding not in ("defined", "medium"):
        ds = dcmread(path)
        if encoding == "undefined_length":
            for seq in (ds["ViewCodeSequence"], ds.ViewCodeSequence[0]["ViewModifierCodeSequence"]):
                seq.is_undefined_length = True
                for item in seq.value:
                    item.is_undefined_length_sequence_item = True
        if encoding == "implicit_vr":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    row = read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert row["view_code"] == "SCT:399162004" and row["view_code_meaning"] == "cranio-caudal"
    assert row["view_modifier_codes"][:2] == ["SCT:399163009", "SCT:399055006"]
    assert len(row["view_modifier_codes"]) == len(modifiers)
    monkeypatch.setattr(headers_module, "_raw_items", lambda elem, codec: None)  # pydicom converts every sequence
    slow = read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert {k: v for k, v in row.items() if k != "indexed_at"} == {k: v for k, v in slow.items() if k != "indexed_at"}


def test_read_header_row_rejects_other_modalities(tmp_path):
    path = write_mg(tmp_path / "land" / "h1" / "d1" / "ct.dcm", Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    with pytest.raises(NotMammography, match="'CT'") as info:
        read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert isinstance(info.value, UnusableImage) and info.value.reason == "not_mammography"


REALDATA = realdata_dir()  # $MAMMO_REALDATA or ../shared/realdata
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.mark.parametrize(
    ("tags", "kind", "rule"),
    [  # a radiograph of the breast under another modality is a mammogram by another name
        ({"Modality": "CR", "SOPClassUID": CR_IMAGE, "BodyPartExamined": "BREAST"}, "2d", "body_part"),
        ({"Modality": "DX", "SOPClassUID": DX_IMAGE, "BodyPartExamined": "Breast"}, "2d", "body_part"),
        ({"Modality": None, "SOPClassUID": CR_IMAGE, "BodyPartExamined": "BREAST"}, "2d", "body_part"),
        (  # NEMA WG04's MG1: a DDSM film stored as Secondary Capture, Modality RG
            {"Modality": "RG", "SOPClassUID": SC_IMAGE, "BodyPartExamined": "BREAST", "ConversionType": "DF"},
            "digitized_film",
            "conversion_type",
        ),
        ({"Modality": "OT", "SOPClassUID": SC_IMAGE, "BodyPartExamined": "BREAST"}, "secondary_capture", "sop_class"),
        ({"Modality": "MG", "SOPClassUID": CR_IMAGE}, "2d", "modality"),
    ],
)
def test_a_radiograph_of_the_breast_under_another_modality_is_indexed(tmp_path, tags, kind, rule):
    row = row_of(tmp_path, **tags)
    assert (row["image_kind"], row["image_kind_rule"]) == (kind, rule)


@pytest.mark.parametrize(
    "tags",
    [
        {"Modality": "CR", "SOPClassUID": CR_IMAGE, "BodyPartExamined": "CHEST"},
        {"Modality": "CR", "SOPClassUID": CR_IMAGE, "BodyPartExamined": None},
        {"Modality": "US", "SOPClassUID": SC_IMAGE, "BodyPartExamined": "BREAST"},  # an ultrasound screen capture
        {"Modality": "MR", "SOPClassUID": SC_IMAGE, "BodyPartExamined": "BREAST"},
        {"Modality": None, "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4", "BodyPartExamined": "BREAST"},  # MR image
    ],
)
def test_other_images_of_the_breast_and_radiographs_of_other_parts_are_not_mammograms(tmp_path, tags):
    with pytest.raises(NotMammography):
        row_of(tmp_path, **tags)


@pytest.mark.skipif(not (REALDATA / "dicom-wg04" / "MG1_J2KI.dcm").exists(), reason="shared realdata absent")
def test_the_real_wg04_digitized_film_is_indexed_as_a_digitized_film(tmp_path):
    """The one real DICOM mammogram at hand (Secondary Capture, Modality RG) was quarantined not_mammography."""
    path = tmp_path / "land" / "h1" / "d1" / "MG1.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes((REALDATA / "dicom-wg04" / "MG1_J2KI.dcm").read_bytes())
    row = read_header_row(path, tmp_path / "land", "h1", "d1", SALT)
    assert (row["image_kind"], row["laterality"], row["view_position"]) == ("digitized_film", "L", "MLO")


def test_read_header_row_decodes_text_in_its_character_set(tmp_path):
    row = row_of(tmp_path, SpecificCharacterSet="ISO_IR 100", SeriesDescription="Vergrößerung MAG")
    assert row["series_description"] == "Vergrößerung MAG" and row["meta_mag"] is True
    row = row_of(tmp_path, SpecificCharacterSet=["ISO 2022 IR 6", "ISO 2022 IR 100"], SeriesDescription="R CC")
    assert row["series_description"] == "R CC"


def test_read_header_row_on_every_vendor_profile_matches_the_truth(tmp_path):
    from mammo_pipeline.synth.drops import generate_drops, read_truth
    from mammo_pipeline.synth.profiles import PROFILES

    landing = tmp_path / "land"
    generate_drops(landing, hospitals=6, studies_per_hospital=2, seed=5, scale=0.05, workers=1)
    truth = read_truth(landing)
    assert truth["vendor_profile"].nunique() >= 5
    for t in truth[truth["corrupt_kind"].isna()].itertuples():
        hospital, drop = t.rel_path.split("/")[:2]
        row = read_header_row(landing / t.rel_path, landing, hospital, drop, SALT)
        assert row["sop_instance_uid"] == t.sop_instance_uid, t.rel_path
        film = PROFILES[t.vendor_profile].secondary_capture  # the digitized-film profile: Secondary Capture, MG
        assert row["image_kind"] == "digitized_film" if film else row["image_kind"] in ("2d", "for_processing")
        assert row["patient_key_source"] == "patient_id"
        assert row["no_file_meta"] is False and row["pixel_data_bytes"] > 0


def _header_reading(path: Path) -> object:
    """What `read_until_pixels` makes of a file: every wanted value, the code sequences, Pixel Data's length, the
    File Meta flag and the transfer syntax; or the error type and message."""
    from mammo_pipeline.dicom.headers import (
        _KEYWORDS,
        Header,
        _has_items,
        _view_code,
        read_until_pixels,
        view_modifiers,
    )

    try:
        header, pixel, no_file_meta, syntax = read_until_pixels(path, path.stat().st_size, "x")
    except Exception as exc:
        return type(exc).__name__, str(exc)
    h = Header(header)
    values = {k: h.strings(k) for k in _KEYWORDS if not k.endswith("Sequence")}
    sequences = (view_modifiers(h), _view_code(h), _has_items(h, "VOILUTSequence"))
    return values, sequences, pixel, no_file_meta, syntax


def test_plain_path_reads_every_file_as_read_partial_does(tmp_path, monkeypatch):
    """The plain path (pydicom's element generator run straight on the first HEAD_BYTES, without File Meta
    Dataset and FileDataset) gives every value, error and length that `read_partial` gives: on pydicom's shipped
    test files (every transfer syntax, big endian, deflated, no File Meta, broken files) and on crafted ones
    (implicit VR, undefined-length sequences, a Command Set group, a File Meta group length past the end)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from mammo_pipeline.dicom.headers import _read_plain
    from mammo_pipeline_tests.dicom.crafted import local_test_files

    land = tmp_path / "land" / "h1" / "d1"
    crafted = [write_mg(land / "plain.dcm"), write_mg(land / "nowin.dcm", WindowCenter=None, WindowWidth=None)]
    for name in ("implicit", "undefined", "deflated"):
        ds = dcmread(write_mg(land / f"{name}.dcm", modifiers=[code_item("R-102D6", "SRT", "Magnification")]))
        if name == "implicit":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        if name == "undefined":
            ds["ViewCodeSequence"].is_undefined_length = True
        if name == "deflated":
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(land / f"{name}.dcm", enforce_file_format=True)
        crafted.append(land / f"{name}.dcm")
    data = crafted[0].read_bytes()
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    command = struct.pack("<HHII", 0x0000, 0x0000, 4, 0)  # (0000,0000) Command Group Length, implicit VR
    (land / "command.dcm").write_bytes(data[:meta_end] + command + data[meta_end:])
    (land / "long_meta.dcm").write_bytes(data[:140] + len(data).to_bytes(4, "little") + data[144:])
    crafted += [land / "command.dcm", land / "long_meta.dcm"]  # the second: a File Meta group length past the end
    data = (land / "implicit.dcm").read_bytes()  # the data set in implicit VR, File Meta saying explicit
    at = data.index(b"\x02\x00\x10\x00UI")
    explicit = ExplicitVRLittleEndian.encode() + b"\x00"
    data = data[: at + 6] + struct.pack("<H", len(explicit)) + explicit + data[at + 8 + data[at + 6] :]
    meta_length = int.from_bytes(data[140:144], "little") + len(explicit) - len(ImplicitVRLittleEndian) - 1
    (land / "wrong_vr.dcm").write_bytes(data[:140] + meta_length.to_bytes(4, "little") + data[144:])
    crafted.append(land / "wrong_vr.dcm")

    files = crafted + local_test_files()
    plain = {p: _header_reading(p) for p in files}
    taken = {p for p in files if _read_plain(p.read_bytes()[:HEAD_BYTES], p.stat().st_size) is not None}
    monkeypatch.setattr(headers_module, "_read_plain", lambda head, size: None)
    partial = {p: _header_reading(p) for p in files}
    assert plain == partial
    assert set(crafted[:2]) | {land / "implicit.dcm", land / "undefined.dcm"} <= taken  # the common files
    unusual = {land / f"{name}.dcm" for name in ("deflated", "command", "long_meta", "wrong_vr")}
    assert not unusual & taken
    assert plain[land / "wrong_vr.dcm"][:4] == plain[land / "implicit.dcm"][:4]  # pydicom reads the VR form found
    assert plain[land / "long_meta.dcm"][0] == "Truncated" and plain[land / "deflated.dcm"][2] == -1
    assert len(taken) >= 100, len(taken)


def _other_ids(*ids: str) -> Sequence:
    items = []
    for value in ids:
        item = Dataset()
        item.PatientID, item.TypeOfPatientID = value, "TEXT"
        items.append(item)
    return Sequence(items)


@pytest.mark.parametrize(
    ("tags", "series", "scrubbed"),
    [
        ({"PatientID": "9434765919"}, "L CC MAG 943 476 5919", "L CC MAG ***"),  # an NHS number typed as printed
        ({"PatientID": "9434765919"}, "L CC MAG 943-476-5919", "L CC MAG ***"),
        ({"PatientID": "RSC-0012345"}, "L CC MAG RSC 00 12 345", "L CC MAG ***"),
        ({"OtherPatientIDsSequence": _other_ids("9434765919")}, "L CC MAG NHS 9434765919", "L CC MAG NHS ***"),
        ({"PatientName": "O'BRIEN^Mary-Kate"}, "L CC SPOT OBRIEN MARYKATE", "L CC SPOT ***"),
        ({"PatientName": "O'BRIEN^Mary-Kate"}, "L CC SPOT O BRIEN MARY KATE", "L CC SPOT ***"),
        ({"PatientName": "O'BRIEN^Mary-Kate"}, "L CC SPOT O'Brien", "L CC SPOT ***"),
        ({"PatientName": "Doe^Jane", "OtherPatientNames": "Smith^Jane"}, "L CC SPOT SMITH", "L CC SPOT ***"),
        ({"PatientName": "Doe^Jane", "PatientBirthName": "Okafor^Jane"}, "L CC SPOT OKAFOR", "L CC SPOT ***"),
        ({"PatientName": "", "OtherPatientNames": "Smith^Jane"}, "L CC SPOT JANE SMITH", "L CC SPOT ***"),
    ],
)
def test_free_text_loses_ids_typed_with_other_separators_joined_names_and_the_patients_other_names(
    tmp_path, tags, series, scrubbed
):
    """An NHS number stored 9434765919 and typed as printed, "943 476 5919"; one held only in (0010,1002) Other
    Patient IDs Sequence; O'Brien typed OBRIEN; a maiden or earlier name ((0010,1005) Patient's Birth Name,
    (0010,1001) Other Patient Names). Each was kept as typed before."""
    row = row_of(tmp_path, SeriesDescription=series, **tags)
    assert row["series_description"] == scrubbed and row["meta_spot"] == ("SPOT" in series or None)


def test_a_short_id_is_not_matched_across_separators_in_ordinary_words(tmp_path):
    """Only an ID run of MIN_ID_RUN characters or more is matched with separators inside it: an accession number
    "AB12" does not eat "AB 12 CM"-like text that merely holds its characters."""
    row = row_of(tmp_path, AccessionNumber="AB12", SeriesDescription="L CC MAG A B 1 2")
    assert row["series_description"] == "L CC MAG A B 1 2"
