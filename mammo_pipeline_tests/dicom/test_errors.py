"""Every UnusableImage subclass: its reason code, and render raising it (never a bare pydicom error)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from mammo_pipeline.dicom.errors import (
    REASONS,
    NoPixelData,
    NotDicom,
    NotMammography,
    Truncated,
    Undecodable,
    Unsupported,
    UnusableImage,
)
from mammo_pipeline.dicom.normalize import render
from mammo_pipeline_tests.dicom.crafted import breast, local_file, local_test_files, make_ds


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (NotDicom, "not_dicom"),
        (Truncated, "truncated"),
        (NoPixelData, "no_pixel_data"),
        (NotMammography, "not_mammography"),
        (Undecodable, "undecodable"),
        (Unsupported, "unsupported"),
    ],
)
def test_reason_codes(cls, reason):
    exc = cls("a.dcm: (0008,0060) Modality 'CT'")
    assert isinstance(exc, UnusableImage) and exc.reason == reason and "a.dcm" in str(exc)
    assert reason in REASONS


def test_render_not_dicom(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image at all\n" * 20)
    with pytest.raises(NotDicom, match=r"notes\.txt"):
        render(path)


def test_render_truncated_pixel_data(tmp_path):
    path = tmp_path / "cut.dcm"
    make_ds(breast(64, 64), WindowCenter=2047, WindowWidth=4096).save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(Truncated, match=r"cut.dcm.*\(7FE0,0010\)"):
        render(path)


def test_render_no_pixel_data():
    ds = make_ds(np.zeros((4, 4), np.uint16))
    del ds.PixelData
    with pytest.raises(NoPixelData, match=r"\(7FE0,0010\)"):
        render(ds)


def test_render_palette_colour_and_rgb_of_one_sample_are_unsupported():
    ds = make_ds(np.zeros((4, 4), np.uint16), PhotometricInterpretation="PALETTE COLOR")
    with pytest.raises(Unsupported, match=r"\(0028,0004\).*PALETTE COLOR"):
        render(ds)
    ds = make_ds(np.zeros((4, 4), np.uint16), PhotometricInterpretation="RGB")  # Samples per Pixel 1
    with pytest.raises(Unsupported, match=r"\(0028,0002\).*not 3 for RGB"):
        render(ds)


def test_render_corrupt_j2k_is_undecodable():
    ds = make_ds(np.zeros((64, 64), np.uint16))
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 4])
    with pytest.raises(Undecodable, match="JPEG 2000"):
        render(ds, (32,))


def test_render_missing_rows_is_unsupported():
    ds = make_ds(np.zeros((4, 4), np.uint16))
    del ds.Rows
    with pytest.raises(Unsupported, match=r"\(0028,0010\)"):
        render(ds)


def test_render_file_cut_before_pixel_data_is_truncated(tmp_path):
    path = tmp_path / "cut.dcm"
    make_ds(breast(64, 64), WindowCenter=2047, WindowWidth=4096).save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xe0\x7f\x10\x00") - 10])  # cut inside the element before Pixel Data
    with pytest.raises(Truncated, match=r"ends before \(7FE0,0010\)"):
        render(path)


def test_render_non_integer_header_value_is_unsupported():
    try:
        path = local_file("badVR.dcm")  # pydicom's file with (0028,0008) Number of Frames '1A'
    except KeyError:
        pytest.skip("badVR.dcm is not shipped locally")
    with pytest.raises(Unsupported, match=r"\(0028,0008\)"):
        render(path)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in local_test_files()])
def test_every_local_test_file_renders_or_raises_unusable_image(path):
    try:
        rendition = render(path, (64,))
    except UnusableImage as exc:
        assert exc.reason in REASONS and str(exc).startswith(str(path))
    else:
        assert max(rendition.images[64].shape) == 64
