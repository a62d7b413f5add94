"""The display pipeline: agreement with pydicom on real files, and the edge cases of research note §8."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless

from mammo_pipeline.dicom.decode import decode_frame
from mammo_pipeline.dicom.headers import MG_FOR_PROCESSING
from mammo_pipeline.dicom.normalize import (
    AtPitch,
    Window,
    apply_rescale,
    apply_voi,
    apply_voi_lut_sequence,
    apply_window,
    check_window,
    constant_edge,
    is_inverted,
    percentile_window,
    pixel_pitch,
    read_window,
    render,
    render_pixels,
    rendition_current,
    resize_area,
    squeezed,
    target_shape,
    to_display,
    window_linear,
)
from mammo_pipeline_tests.dicom.crafted import breast, local_test_files, make_ds


def pydicom_reference(ds: Dataset) -> np.ndarray | None:
    """pydicom's modality LUT + VOI, mapped linearly from its output range onto [0, 1], inverted for MONOCHROME1."""
    arr = ds.pixel_array
    arr = arr[0] if arr.ndim == 3 else arr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modality = apply_modality_lut(arr, ds)
        voi = apply_voi_lut(modality, ds)
    if voi is modality:
        return None
    if ds.get("VOILUTSequence"):
        lo, hi = 0.0, float(voi.max())
    else:
        bits = int(ds.BitsStored)
        if ds.get("ModalityLUTSequence"):
            lo, hi = 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
        elif ds.PixelRepresentation == 0:
            lo, hi = 0.0, 2.0**bits - 1
        else:
            lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            lo, hi = lo * ds.RescaleSlope + ds.RescaleIntercept, hi * ds.RescaleSlope + ds.RescaleIntercept
    out = (voi.astype(np.float64) - lo) / (hi - lo)
    return 1 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def area(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize(shape[::-1], Image.Resampling.BOX))


def gray(arr01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(arr01 * 255), 0, 255)


def _agreement_cases() -> list:
    cases = []
    for path in local_test_files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        grayscale = str(ds.get("PhotometricInterpretation", "")) in ("MONOCHROME1", "MONOCHROME2")
        if "Rows" in ds and grayscale and ("WindowCenter" in ds or "VOILUTSequence" in ds):
            cases.append(pytest.param(path, id=path.name))
    return cases


@pytest.mark.parametrize("path", _agreement_cases())
def test_render_agrees_with_pydicom(path):
    """Native size: within 1 gray level of pydicom; half size: within a few (VOI after averaging)."""
    ds = pydicom.dcmread(path)
    try:
        reference = pydicom_reference(ds)
    except Exception as exc:  # pydicom itself cannot decode a few deliberately broken files
        pytest.skip(f"pydicom cannot render it: {type(exc).__name__}")
    assert reference is not None
    rendition = render(path, (max(reference.shape),))
    if rendition.content_box is not None:  # a frame of black lines (examples_overlay.dcm's first column) is cut
        top, left, bottom, right = rendition.content_box
        reference = reference[top:bottom, left:right]
    long_side = max(reference.shape)
    rendition = render(path, (long_side, max(1, long_side // 2)))
    if rendition.voi_method in ("percentile", "range"):  # our degenerate-window check fired: a real problem
        window, _ = read_window(ds)
        assert window is not None and rendition.fallback_reason
        assert check_window(window, apply_rescale(decode_frame(ds).pixels, ds), int(ds.BitsStored)) is not None
        return
    full = rendition.images[long_side].astype(float)
    assert np.abs(full - gray(reference)).max() <= 1
    half = rendition.images[max(1, long_side // 2)].astype(float)
    diff = np.abs(half - gray(area(reference, half.shape)))
    assert diff.mean() <= 1.0
    assert np.percentile(diff, 99) <= 4


def test_render_sizes_and_metadata():
    ds = make_ds(breast(400, 300), WindowCenter=2047, WindowWidth=4096)
    rendition = render(ds, (256, 64))
    assert rendition.images[256].shape == (256, 192) and rendition.images[64].shape == (64, 48)
    assert rendition.images[256].dtype == np.uint8
    assert (rendition.voi_method, rendition.fallback_reason, rendition.inverted) == ("window:LINEAR", None, False)
    assert rendition.source_shape == (400, 300)
    assert np.array_equal(to_display(ds, 64), render(ds, (64,)).images[64])
    assert np.abs(to_display(ds, 64).astype(float) - rendition.images[64]).mean() < 1  # 64 from 256 vs direct


# --- §8.1 MONOCHROME1 and Presentation LUT Shape -----------------------------------------------------------


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", False),
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),
        ("MONOCHROME1", "IDENTITY", True),
    ],
)
def test_render_inversion_policy(photometric, shape, inverted):
    arr = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (32, 1))
    tags = {"PhotometricInterpretation": photometric, "WindowCenter": 2048, "WindowWidth": 4096}
    if shape:
        tags["PresentationLUTShape"] = shape
    ds = make_ds(arr, **tags)
    rendition = render(ds, (64,))
    assert rendition.inverted is inverted and is_inverted(ds) is inverted
    left, right = rendition.images[64][:, 0].mean(), rendition.images[64][:, -1].mean()
    assert (left > right) if inverted else (left < right)


# --- §8.2 VOI LUT Function variants ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "LINEAR"),
        ("", "LINEAR"),
        ("linear", "LINEAR"),
        (" SIGMOID ", "SIGMOID"),
        ("LINEAR_EXACT", "LINEAR_EXACT"),
    ],
)
def test_read_window_function_variants(value, expected):
    ds = make_ds(np.zeros((2, 2), np.uint16), WindowCenter=100, WindowWidth=50)
    if value is not None:
        ds.VOILUTFunction = value
    window, note = read_window(ds)
    assert window == Window(100.0, 50.0, expected) and note is None


def test_read_window_unknown_function_is_linear_with_note():
    ds = make_ds(np.zeros((2, 2), np.uint16), WindowCenter=100, WindowWidth=50, VOILUTFunction="LOG")
    window, note = read_window(ds)
    assert window.function == "LINEAR" and "LOG" in note


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom(function):
    arr = np.arange(0, 4096, 7, dtype=np.uint16).reshape(1, -1)
    ds = make_ds(arr, WindowCenter=1500, WindowWidth=900, VOILUTFunction=function)
    expected = pydicom_reference(ds)
    got = apply_window(arr, Window(1500, 900, function))
    assert np.abs(got - expected).max() < 1e-5


def test_sigmoid_never_reaches_the_ends():
    out = apply_window(np.array([0.0, 4095.0]), Window(2047, 4096, "SIGMOID"))
    assert 0 < out[0] < 0.15 and 0.85 < out[1] < 1


# --- §8.3 multi-valued windows -----------------------------------------------------------------------------


def test_multivalued_windows_use_first_pair_and_tolerate_vm_mismatch():
    ds = make_ds(np.zeros((2, 2), np.uint16), WindowCenter=[2047, 1000, 3000], WindowWidth=[4096])
    ds.WindowCenterWidthExplanation = ["NORMAL"]  # VM 1 explanation for VM 3 centers: ignored
    assert read_window(ds)[0] == Window(2047.0, 4096.0, "LINEAR")
    dup = make_ds(np.zeros((2, 2), np.uint16), WindowCenter=[500, 500], WindowWidth=[100, 100])
    assert read_window(dup)[0] == Window(500.0, 100.0, "LINEAR")
    assert read_window(ds, index=5)[0] == Window(3000.0, 4096.0, "LINEAR")  # clamped, no IndexError


# --- §8.4 VOI LUT Sequence ---------------------------------------------------------------------------------


def voi_lut_item(lut: np.ndarray, first_map: int = 0, bits: int = 16, entries: int | None = None, ow=False):
    item = Dataset()
    item.LUTDescriptor = [len(lut) if entries is None else entries, first_map, bits]
    if ow:
        item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())
    else:
        item.add_new(0x00283006, "US", [int(v) for v in lut])
    return item


def test_voi_lut_sequence_wins_over_window_and_uses_the_real_maximum():
    arr = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    lut = (4095 - np.arange(4096)).astype(np.uint16)  # declared 16 bits, holds 0..4095, inverted ramp
    ds = make_ds(arr, WindowCenter=2047, WindowWidth=4096, VOILUTSequence=Sequence([voi_lut_item(lut)]))
    out, method, reason = apply_voi(arr.astype(np.float32), ds)
    assert method == "voi_lut" and reason is None
    assert out[0, 0] == 1.0 and out[-1, -1] == 0.0  # scaled by 4095, not 65535


def test_voi_lut_ow_and_us_agree_and_zero_means_65536_entries():
    lut = (np.arange(65536) // 16).astype(np.uint16)
    arr = np.array([[0, 1000, 40000, 65535]], dtype=np.uint16)
    us = make_ds(arr, bits_stored=16, VOILUTSequence=Sequence([voi_lut_item(lut, entries=0)]))
    ow = make_ds(arr, bits_stored=16, VOILUTSequence=Sequence([voi_lut_item(lut, entries=0, ow=True)]))
    a, b = apply_voi_lut_sequence(arr, us), apply_voi_lut_sequence(arr, ow)
    assert np.array_equal(a, b)
    assert a[0, 3] == 1.0 and a[0, 2] == pytest.approx(2500 / 4095)


def test_voi_lut_first_map_and_clamping():
    lut = np.array([10, 20, 30, 40], dtype=np.uint16)
    ds = make_ds(np.zeros((1, 1), np.uint16), VOILUTSequence=Sequence([voi_lut_item(lut, first_map=100)]))
    out = apply_voi_lut_sequence(np.array([[0, 100, 101.5, 103, 5000]], dtype=np.float32), ds)
    np.testing.assert_allclose(out * 255, [[10, 10, 25, 40, 40]], rtol=1e-6)  # an 8-bit LUT's white is 255


@pytest.mark.parametrize("top, white", [(60000, 65535), (65535, 65535), (4095, 4095), (3500, 4095), (255, 255)])
def test_a_voi_lut_shows_its_white_at_the_top_of_its_output_depth(top, white):
    """PS3.3 C.11.2.1.1: a LUT's output spans its depth. Dividing by the largest entry (until stop 64) showed a
    16-bit LUT that tops out at 60000 about 9 % brighter than PS3.3 says, tissue as white as metal (a probe of real
    images re-encoded); a LUT of 12-bit values declared 16 bits wide (common) still shows white at 4095."""
    lut = np.linspace(0, top, 4096).round().astype(np.uint16)
    ds = make_ds(np.zeros((1, 1), np.uint16), VOILUTSequence=Sequence([voi_lut_item(lut, bits=16)]))
    out = apply_voi_lut_sequence(np.array([[0, 4095]], dtype=np.float32), ds)
    np.testing.assert_allclose(out, [[0.0, top / white]], rtol=1e-6)


# --- §8.5 rescale -----------------------------------------------------------------------------------------


def test_rescale_with_intercept_matches_pydicom():
    arr = np.arange(0, 4096, 3, dtype=np.uint16).reshape(1, -1)
    ds = make_ds(arr, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    out, method, _ = apply_voi(apply_rescale(arr, ds), ds)
    assert method == "window:LINEAR"
    assert np.abs(gray(out) - gray(pydicom_reference(ds))).max() <= 1


def test_modality_lut_sequence_is_applied():
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.add_new(0x00283006, "US", [0, 100, 200, 300])
    ds = make_ds(np.array([[0, 1, 2, 3, 9]], np.uint16), ModalityLUTSequence=Sequence([item]))
    assert apply_rescale(np.array([[0, 1, 2, 3, 9]], np.uint16), ds).tolist() == [[0, 100, 200, 300, 300]]


# --- §8.6 no VOI, constant images --------------------------------------------------------------------------


def test_no_voi_shows_a_for_presentation_image_in_its_own_range_and_says_so():
    rendition = render(make_ds(breast(128, 96)), (64,))
    assert rendition.voi_method == "range" and "no VOI" in rendition.fallback_reason
    assert rendition.images[64].min() == 0 and rendition.images[64].max() == 255


def test_no_voi_never_turns_the_brightest_tissue_into_metal_white():
    """A For Presentation image holds display values already: without a window its brightest tissue must stay
    below a metal clip's gray, as its vendor drew it. A 0.5-99.5th percentile window (version 2) made the top
    half percent of the image white, dense-tissue junctions as white as the clip."""
    arr = breast(256, 200)
    tissue_top = int(np.percentile(arr, 99.9))
    arr[100:106, 80:86] = 4095  # a saturated clip
    shown = render(make_ds(arr), (256,)).images[256].astype(int)
    clip = np.zeros(arr.shape, bool)
    clip[100:106, 80:86] = True
    assert (shown[clip] == 255).all()
    assert (shown[~clip] == 255).mean() < 1e-4  # only the clip is white
    assert np.percentile(shown[~clip], 99.9) <= round(255 * tissue_top / 4095) + 1
    raw = make_ds(arr, SOPClassUID=MG_FOR_PROCESSING)  # raw detector values: the percentile window still
    raw.file_meta.MediaStorageSOPClassUID = MG_FOR_PROCESSING
    assert render(raw, (256,)).voi_method == "percentile"


@pytest.mark.parametrize("outlier", ["dead pixel", "label"])
def test_a_dead_pixel_or_a_burned_in_label_far_above_the_image_does_not_set_its_range(outlier):
    """Without a window, one dead pixel at the top of Bits Stored 16 (or a small burned-in label at the top of 14)
    set min..max alone and squeezed the breast into a few gray levels (version 6). Values beyond four times the
    1st-99th percentile span are left out and said so; the breast shows as without them, the outlier white."""
    arr = breast(256, 200)
    clean = render(make_ds(arr, bits_stored=16), (256,)).images[256].astype(int)
    spoilt = arr.copy()
    where = (slice(5, 6), slice(150, 151)) if outlier == "dead pixel" else (slice(4, 12), slice(120, 160))
    spoilt[where] = 65535 if outlier == "dead pixel" else 16383
    rendition = render(make_ds(spoilt, bits_stored=16 if outlier == "dead pixel" else 14), (256,))
    shown = rendition.images[256].astype(int)
    assert rendition.voi_method == "range" and "left out of the range" in rendition.fallback_reason
    assert (shown[where] == 255).all()
    rest = np.ones(arr.shape, bool)
    rest[where] = False
    assert np.abs(shown[rest] - clean[rest]).mean() < 1 and shown[rest].mean() > 60


def test_a_clip_brighter_than_the_tissue_stays_in_the_range_and_below_it_the_tissue_keeps_its_grays():
    """The outlier rule must not take a For Presentation image's metal for a dead pixel: a clip at the top of a
    12-bit image is within four spans of its tissue, so min..max stands and nothing is said."""
    arr = breast(256, 200)
    arr[100:104, 80:84] = 4095
    rendition = render(make_ds(arr), (256,))
    assert rendition.voi_method == "range" and "left out" not in rendition.fallback_reason


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_an_8bit_export_that_kept_its_12bit_window_shows_its_range_not_black(photometric):
    """A 12-bit mammogram exported to 8 bits (a Secondary Capture, JPEG baseline) that kept its Window 1900/3600:
    every value lies in the window's bottom few percent, so it showed black (white for MONOCHROME1). A window
    centred above every value Bits Stored holds and over four times as wide as the data it covers is refused."""
    arr = (breast(256, 200) >> 4).astype(np.uint8)
    ds = make_ds(arr, bits_stored=8, WindowCenter=1900, WindowWidth=3600, PhotometricInterpretation=photometric)
    rendition = render(ds, (128,))
    assert rendition.voi_method == "range" and "made for deeper pixels" in rendition.fallback_reason
    tissue = breast(256, 200)[::2, ::2] > 1500
    shown = rendition.images[128].astype(float)
    shown = 255 - shown if photometric == "MONOCHROME1" else shown
    assert shown[tissue].mean() > 120 and shown[~tissue].mean() < 60


def test_a_low_contrast_image_under_a_wide_window_of_its_own_depth_keeps_it():
    """The mirror rule is for windows made for deeper pixels only: a 12-bit image whose values span a fifth of its
    own window 1600/2800 (pydicom's test files hold such) is shown through it, as its header says."""
    arr = (1500 + breast(128, 96) // 8).astype(np.uint16)
    rendition = render(make_ds(arr, WindowCenter=1600, WindowWidth=2800), (64,))
    assert rendition.voi_method == "window:LINEAR" and rendition.fallback_reason is None


@pytest.mark.parametrize("photometric", ["Monochrome2", "monochrome1 ", "MONOCHROME2 "])
def test_a_photometric_interpretation_in_lower_case_or_padded_is_read_as_its_defined_term(photometric):
    """pydicom's decoders match (0028,0004) exactly and refused "Monochrome2" as undecodable, an image lost; the
    check puts it in its defined form first, and MONOCHROME1 still inverts."""
    arr = breast(128, 96)
    expected = render(make_ds(arr, PhotometricInterpretation=photometric.strip().upper()), (64,)).images[64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on the invalid CS value as it is read
        ds = make_ds(arr, PhotometricInterpretation=photometric)
    rendition = render(ds, (64,))
    assert np.array_equal(rendition.images[64], expected)
    assert rendition.inverted == (photometric.strip().upper() == "MONOCHROME1")


@pytest.mark.parametrize("window", [{}, {"WindowCenter": 2047, "WindowWidth": 4096}])
def test_constant_image_does_not_divide_by_zero(window):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from a division by zero
        rendition = render(make_ds(np.zeros((32, 32), np.uint16), **window), (16,))
    assert rendition.images[16].std() == 0
    if not window:
        assert "constant" in rendition.fallback_reason


def test_percentile_window_ignores_outliers():
    arr = np.concatenate([np.linspace(1000, 2000, 9990), np.full(10, 60000.0)]).reshape(100, 100)
    out, note = percentile_window(arr)
    assert note is None and out[0, 0] == 0 and out[50, 50] == pytest.approx(0.5, abs=0.02)


# --- §8.7 high bits and out-of-range values -----------------------------------------------------------------


def test_garbage_high_bits_are_masked():
    clean = breast(64, 48)
    dirty = clean | np.uint16(0xF000)
    tags = {"WindowCenter": 2047, "WindowWidth": 4096}
    assert np.array_equal(to_display(make_ds(dirty, **tags), 64), to_display(make_ds(clean, **tags), 64))


def test_a_value_in_the_high_bits_renders_as_the_same_value_in_the_low_bits():
    """(0028,0102) High Bit 15 with Bits Stored 12 (PS3.5 allowed it until 2013): the value is bits 15..4; the
    low 12 bits read as the value gave a garbage picture."""
    clean = breast(64, 48)
    tags = {"WindowCenter": 2047, "WindowWidth": 4096}
    high = make_ds((clean << 4) | np.uint16(0x0005), **tags)
    high.HighBit = 15
    assert np.array_equal(to_display(high, 64), to_display(make_ds(clean, **tags), 64))


def test_uint16_above_32767_is_not_read_as_negative():
    arr = np.array([[0, 30000, 40000, 65535], [65535, 40000, 30000, 0]], dtype=np.uint16)  # no line all black
    ds = make_ds(arr, bits_stored=16, WindowCenter=32768, WindowWidth=65536)
    assert to_display(ds, 4).tolist() == [[0, 117, 156, 255], [255, 156, 117, 0]]


# --- §8.8 transfer syntaxes ---------------------------------------------------------------------------------


def _same_image_in(syntax: str) -> Dataset:
    from pydicom.uid import (
        ExplicitVRBigEndian,
        ImplicitVRLittleEndian,
        JPEGLSLossless,
        RLELossless,
    )

    arr = breast(96, 80)
    ds = make_ds(arr, WindowCenter=2047, WindowWidth=4096)
    uid = {"implicit": ImplicitVRLittleEndian, "j2k": JPEG2000Lossless, "jpegls": JPEGLSLossless}.get(syntax)
    uid = uid or {"rle": RLELossless, "big": ExplicitVRBigEndian}.get(syntax)
    if syntax in ("j2k", "jpegls", "rle"):
        ds.compress(uid, arr)
    elif syntax == "implicit":
        ds.file_meta.TransferSyntaxUID = uid
    elif syntax == "big":
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = arr.astype(">u2").tobytes()
    return ds


@pytest.mark.parametrize("syntax", ["implicit", "big", "rle", "jpegls", "j2k"])
def test_transfer_syntaxes_render_the_same(syntax, tmp_path):
    ds = _same_image_in(syntax)
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert np.array_equal(to_display(path, 96), to_display(_same_image_in("explicit"), 96))


def test_odd_length_8bit_data_renders():
    arr = np.arange(15, dtype=np.uint8).reshape(3, 5)
    ds = make_ds(arr, bits_stored=8, WindowCenter=7.5, WindowWidth=16)
    ds.PixelData = arr.tobytes() + b"\0"  # padded to even length, as written on disk
    assert to_display(ds, 5).shape == (3, 5)


# --- §8.9 degenerate windows --------------------------------------------------------------------------------


def test_a_window_present_but_unreadable_is_reported_as_such_not_as_missing():
    """A decimal comma ("2047,5") is no DS value: the image falls back to its own range, and the reason says the
    window is there and unreadable, so such files can be found (a missing window reads "no VOI ...")."""
    ds = make_ds(breast(128, 96))
    ds.add_new("WindowCenter", "DS", None)
    ds.add_new("WindowWidth", "DS", None)
    ds["WindowCenter"]._value, ds["WindowWidth"]._value = "2047,5", "4095,0"
    rendition = render(ds, (64,))
    assert rendition.voi_method == "range"
    assert "(0028,1050) Window Center and (0028,1051) Window Width present but unreadable" in rendition.fallback_reason


@pytest.mark.parametrize(
    ("tags", "needle"),
    [
        ({"WindowCenter": 2047, "WindowWidth": 0.5}, "< 1"),
        ({"WindowCenter": 2047, "WindowWidth": 0, "VOILUTFunction": "SIGMOID"}, "<= 0"),
        ({"WindowCenter": 60000, "WindowWidth": 100}, "outside"),
        ({"WindowCenter": 127, "WindowWidth": 256}, "8-bit"),
    ],
)
def test_degenerate_windows_fall_back_to_the_images_own_range(tags, needle):
    rendition = render(make_ds(breast(128, 96), **tags), (64,))
    assert rendition.voi_method == "range" and needle in rendition.fallback_reason
    assert rendition.images[64].std() > 20  # a real picture, not a saturated one


@pytest.mark.parametrize(
    ("first", "needle"),
    [((2047, 0.5), "< 1"), ((60000, 100), "outside"), ((127, 256), "8-bit")],
)
def test_a_degenerate_first_window_gives_way_to_the_next_usable_pair(first, needle):
    """Vendors list alternative windows (PS3.3 C.11.2.1.2: index 0 is the default); when it is unusable, the next
    usable pair is the header's own display, nearer the vendor's intent than the image's raw range."""
    arr = breast(128, 96)
    ds = make_ds(arr, WindowCenter=[first[0], 1800, 2500], WindowWidth=[first[1], 1200, 900])
    rendition = render(ds, (64,))
    expected = render(make_ds(arr, WindowCenter=1800, WindowWidth=1200), (64,))
    assert rendition.voi_method == "window:LINEAR" and expected.fallback_reason is None
    assert np.array_equal(rendition.images[64], expected.images[64])  # the second pair, not the third
    assert rendition.fallback_reason.startswith("window 1 of 3: ") and needle in rendition.fallback_reason
    assert "window 2" not in rendition.fallback_reason


def test_every_window_degenerate_names_each_and_falls_back_to_the_range():
    rendition = render(make_ds(breast(128, 96), WindowCenter=[2047, 60000], WindowWidth=[0.5, 100]), (64,))
    assert rendition.voi_method == "range"
    assert "window 1 of 2:" in rendition.fallback_reason and "window 2 of 2:" in rendition.fallback_reason


def test_an_unusable_first_voi_lut_item_gives_way_to_the_next():
    arr = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    empty = voi_lut_item(np.zeros(4096, np.uint16))  # no positive entry
    ramp = voi_lut_item((4095 - np.arange(4096)).astype(np.uint16))
    ds = make_ds(arr, WindowCenter=2047, WindowWidth=4096, VOILUTSequence=Sequence([empty, ramp]))
    out, method, reason = apply_voi(arr.astype(np.float32), ds)
    assert method == "voi_lut" and "VOI LUT Sequence item 0 unusable" in reason
    assert out[0, 0] == 1.0 and out[-1, -1] == 0.0  # item 1's inverted ramp, not the window


# --- §8.10 geometry and precision ---------------------------------------------------------------------------


def test_landscape_stays_landscape_and_is_not_flipped():
    arr = (np.arange(60 * 200) % 7).astype(np.uint16).reshape(60, 200)  # dark, no line all black (not a frame)
    arr[:, :50] = 4000  # bright block on the left of a right breast
    ds = make_ds(arr, WindowCenter=2047, WindowWidth=4096, ImageLaterality="R", PatientOrientation=["A", "L"])
    ds.FieldOfViewHorizontalFlip = "YES"
    out = to_display(ds, 100)
    assert out.shape == (30, 100) and out[:, :20].mean() > 200 and out[:, -20:].mean() < 20


def test_padded_and_backslash_ds_values_parse():
    ds = make_ds(np.zeros((2, 2), np.uint16))
    ds.add_new(0x00281050, "DS", " 2047.5 ")
    ds.add_new(0x00281051, "DS", "4096\\")
    window, _ = read_window(ds)
    assert window == Window(2047.5, 4096.0, "LINEAR")


def test_window_parameters_keep_full_precision():
    # 2047.3 in float16 is 2048: the window edge must stay where the header puts it
    out = window_linear(np.array([2047.0, 2048.0]), 2047.8, 1.0 + 1e-9)
    assert out.tolist() == [0.0, 1.0]


def test_multiframe_renders_frame_zero():
    frames = np.stack([breast(64, 48, seed=1), np.zeros((64, 48), np.uint16)])
    ds = make_ds(frames, WindowCenter=2047, WindowWidth=4096)
    single = make_ds(frames[0], WindowCenter=2047, WindowWidth=4096)
    assert np.array_equal(to_display(ds, 64), to_display(single, 64))


# --- fast paths vs the reference order ----------------------------------------------------------------------


def test_j2k_reduced_resolution_matches_full_decode():
    arr = breast(1024, 832, seed=3)
    ds = make_ds(arr, WindowCenter=2047, WindowWidth=3000, VOILUTFunction="SIGMOID")
    ds.compress(JPEG2000Lossless, arr)
    reduced = decode_frame(ds, 256)
    assert reduced.reduction == 4 and reduced.pixels.shape == (256, 208)
    fast = render_pixels(ds, reduced.pixels, (256,)).images[256].astype(float)
    full = render_pixels(ds, decode_frame(ds).pixels, (256,)).images[256].astype(float)
    diff = np.abs(fast - full)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 6


def test_voi_after_averaging_stays_close_to_voi_before():
    arr = breast(1024, 832, seed=4, noise=60)
    ds = make_ds(arr, WindowCenter=1800, WindowWidth=1500, VOILUTFunction="SIGMOID")
    fast = render(ds, (256,)).images[256].astype(float)
    reference = gray(area(pydicom_reference(ds), fast.shape))
    diff = np.abs(fast - reference)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4


def test_resize_area_is_an_exact_mean_at_integer_factors():
    arr = np.arange(36, dtype=np.uint16).reshape(6, 6)
    assert resize_area(arr, (3, 3))[0, 0] == pytest.approx(np.mean([0, 1, 6, 7]))
    assert resize_area(arr, (2, 2))[1, 1] == pytest.approx(arr[3:, 3:].mean())
    assert resize_area(np.ones((5, 7)), (10, 14)).shape == (10, 14)
    assert target_shape((4096, 3328), 1024) == (1024, 832)


def _framed(arr: np.ndarray, top: int, left: int, bottom: int, right: int, value: int) -> np.ndarray:
    """`arr` inside a frame of `value`, the given number of lines deep on each side."""
    out = np.full((arr.shape[0] + top + bottom, arr.shape[1] + left + right), value, dtype=arr.dtype)
    out[top : top + arr.shape[0], left : left + arr.shape[1]] = arr
    return out


@pytest.mark.parametrize(
    "declared, photometric", [(False, "MONOCHROME2"), (True, "MONOCHROME2"), (True, "MONOCHROME1")]
)
def test_a_frame_of_padding_is_cut_away_so_the_display_is_the_image_without_it(declared, photometric):
    """A black border (declared as Pixel Padding Value or not; stored white under MONOCHROME1) is no image: it took
    the second look's air vote and shrank the breast. The display is the framed image's own, pixel for pixel."""
    inner = np.clip(breast(300, 240, seed=3).astype(np.int32) + 300, 0, 4000).astype(np.uint16)  # gray air
    value = 4095 if photometric == "MONOCHROME1" else 0
    tags = {"PhotometricInterpretation": photometric}
    framed = make_ds(
        _framed(inner, 60, 30, 90, 50, value), **tags, **({"PixelPaddingValue": value} if declared else {})
    )
    plain, cut = render(make_ds(inner, **tags), (256, 64)), render(framed, (256, 64))
    assert cut.content_box == (60, 30, 360, 270) and cut.content_shape == (300, 240)
    assert cut.trimmed == "top 60, left 30, bottom 90, right 50 px of padding cut"
    assert plain.content_box is None and plain.trimmed is None
    for size in (256, 64):
        np.testing.assert_array_equal(cut.images[size], plain.images[size])


def test_air_stored_at_the_darkest_value_around_a_breast_is_not_a_frame():
    """Air stored at the darkest value (as the NYU images' is) fills whole lines above, below and beyond a breast,
    but leaves the breast, not a rectangle: nothing is cut, the image keeps its stored shape."""
    img = breast(300, 240, seed=4)
    img[img < 600] = 0  # the air (and the faint skin rim) at the darkest value
    img = _framed(img, 40, 0, 40, 60, 0)
    rend = render(make_ds(img), (256,))
    assert rend.content_box is None and rend.images[256].shape == target_shape(img.shape, 256)


def test_a_frame_is_found_on_a_reduced_resolution_decode_and_reported_in_stored_pixels():
    """The box found on a reduced-resolution decode is given in the stored image's pixels."""
    inner = np.clip(breast(256, 192, seed=5).astype(np.int32) + 300, 0, 4000).astype(np.uint16)
    ds = make_ds(_framed(inner, 64, 32, 64, 32, 0))
    half = np.ascontiguousarray(ds.pixel_array[::2, ::2])
    rend = render_pixels(ds, half, (128,))
    assert rend.content_box == (64, 32, 320, 224) and rend.images[128].shape == (128, 96)


def test_an_upgrade_across_the_frame_cut_keeps_renditions_whose_display_shows_no_frame():
    """Version 5 cuts frames of padding: an earlier rendition stands unless its display has an edge line of one
    gray level (a frame a display pixel deep or more leaves one), so an upgrade renders few images again."""
    noisy = np.random.default_rng(0).integers(0, 256, (64, 48), dtype=np.uint8)
    framed = noisy.copy()
    framed[:, -3:] = 0
    assert not constant_edge(noisy) and constant_edge(framed)
    assert rendition_current("4", "range", "5", lambda: noisy)
    assert not rendition_current("4", "range", "5", lambda: framed)
    assert not rendition_current("4", "range", "5")  # the display cannot be read: rendered again
    assert rendition_current("3", "window:LINEAR", "5", lambda: noisy)
    assert not rendition_current("3", "range", "5", lambda: noisy)  # version 4 changed that one already
    assert rendition_current("5", "range", "5")
    assert rendition_current("2", "window:LINEAR", "4")  # the upgrades before need no display


def test_the_upgrade_to_one_pitch_renders_every_image_again():
    """Version 6 renders the display at one pitch (`AtPitch`): every earlier display is another size."""
    noisy = np.random.default_rng(0).integers(0, 256, (64, 48), dtype=np.uint8)
    for old, method in (("5", "window:LINEAR"), ("5", "range"), ("4", "voi_lut"), ("2", "window:LINEAR")):
        assert not rendition_current(old, method, "6", lambda: noisy)
    assert rendition_current("6", "range", "6")


def test_the_upgrade_that_refuses_squeezed_displays_renders_only_those_again():
    """Version 7 refuses windows made for deeper pixels and ranges set by a dead pixel: only a version-6 display
    squeezed into a quarter of the gray scale (what either fault left) is rendered again."""
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 256, (64, 48), dtype=np.uint8)
    dark = rng.integers(0, 12, (64, 48), dtype=np.uint8)
    white = 255 - dark
    assert not squeezed(fine) and squeezed(dark) and squeezed(white)
    for method in ("window:LINEAR", "range", "voi_lut"):
        assert rendition_current("6", method, "7", lambda: fine)
        assert not rendition_current("6", method, "7", lambda: dark)
    assert not rendition_current("6", "range", "7")  # the display cannot be read: rendered again
    assert not rendition_current("5", "window:LINEAR", "7", lambda: fine)  # version 6 changed every size


def test_the_upgrade_to_version_8_renders_again_only_what_it_can_change():
    """Version 8 changes a VOI LUT's white, an enhanced object's pitch (from its Pixel Measures) and a declared
    frame round air stored at the darkest value: a version-7 rendition stands unless it came through a VOI LUT,
    was drawn at no pitch, or shows a constant edge line (the uncut frame)."""
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 256, (64, 48), dtype=np.uint8)
    framed = fine.copy()
    framed[:4] = 0
    for method in ("window:LINEAR", "window:SIGMOID", "range", "percentile"):
        assert rendition_current("7", method, "8", lambda: fine)
        assert not rendition_current("7", method, "8", lambda: framed)
        assert not rendition_current("7", method, "8", lambda: fine, pitched=False)
    assert not rendition_current("7", "voi_lut", "8", lambda: fine)
    assert rendition_current("8", "voi_lut", "8", pitched=False)


def test_a_declared_frame_of_padding_round_air_stored_at_the_darkest_value_is_cut():
    """A frame declared as Pixel Padding Value (stored white, 65535) round a breast whose air is stored at 0: the
    darkest value and the padding together left the breast, not a rectangle, so the frame stayed and shrank the
    breast on the display (stop 64's probe of real images re-encoded). The declared padding alone is a frame."""
    img = _air_at_zero(240, 192)
    framed = make_ds(_framed(img, 24, 20, 24, 0, 65535), bits_stored=16, PixelPaddingValue=65535)
    cut, plain = render(framed, (120,)), render(make_ds(img, bits_stored=16), (120,))
    assert cut.content_box == (24, 20, 264, 212)
    assert np.abs(cut.images[120].astype(int) - plain.images[120].astype(int)).mean() < 1.0


def test_an_enhanced_objects_pitch_comes_from_its_pixel_measures():
    """Breast Projection X-Ray objects carry Pixel Spacing in the Pixel Measures functional group (PS3.3
    C.7.6.16.2.1), not at the top level: such a view was shown at no pitch, its breast another size."""
    from mammo_pipeline_tests.dicom.crafted import functional_group_window_ds

    ds = functional_group_window_ds(1800, 1200)
    measures = Dataset()
    measures.PixelSpacing = ["2", "2"]
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence = [measures]
    size = AtPitch(120)  # 240 mm over 120 px: 2 mm per px, the stored pitch
    rendition = render(ds, (size,))
    assert rendition.images[size].shape == (64, 80) and rendition.mm_per_px(size) == 2.0


def _air_at_zero(rows: int, cols: int) -> np.ndarray:
    """`breast` with its air stored at 0, the darkest value, as the NYU images' is (a border cannot be cut)."""
    img = breast(rows, cols)
    img[img < 300] = 0
    return img


def test_at_one_pitch_a_breast_keeps_its_size_on_a_larger_matrix_and_inside_a_black_border():
    """`AtPitch`: one breast on an 18 x 24 cm matrix and, against the same chest wall, on a 1.23x larger one (a
    24 x 29.6 cm detector, or a black border round air stored at the same value: nothing tells it from air) shows
    at one pitch, the same pixels; a plain long side shrinks it by the matrix's ratio (stop 57's fault)."""
    img = _air_at_zero(240, 192)  # 1 mm per px: a 240-mm field
    big = np.zeros((296, 236), img.dtype)
    big[28:268, :192] = img
    size = AtPitch(120)
    small_r = render(make_ds(img, ImagerPixelSpacing=["1", "1"]), (size, 120))
    big_r = render(make_ds(big, ImagerPixelSpacing=["1", "1"]), (size, 120))
    assert big_r.content_box is None  # the border is air to the frame cut
    assert small_r.images[size].shape == small_r.images[120].shape == (120, 96)
    assert big_r.images[size].shape == (148, 118) and big_r.images[120].shape == (120, 96)
    same = big_r.images[size][14:134, :96].astype(int) - small_r.images[size].astype(int)
    assert np.abs(same).mean() < 1.0  # the same breast, pixel for pixel (the windows' range alike)
    assert small_r.mm_per_px(size) == big_r.mm_per_px(size) == 2.0
    assert big_r.mm_per_px(120) == pytest.approx(296 / 120)


def test_the_pitch_is_read_from_the_detector_plane_first_and_an_implausible_one_is_ignored():
    """Imager Pixel Spacing (the detector plane) before Pixel Spacing (which a vendor may calibrate to the
    breast) before Nominal Scanned Pixel Spacing (a film); no spacing, a zero or a text, or a field outside
    PITCH_RANGE of the reference leave the plain long side."""
    img = _air_at_zero(240, 192)
    size = AtPitch(120)

    def long_side(**tags) -> int:
        return max(render(make_ds(img, **tags), (size,)).images[size].shape)

    assert long_side(ImagerPixelSpacing=["0.5", "0.5"], PixelSpacing=["2", "2"]) == 60
    assert long_side(PixelSpacing=["2", "2"]) == 240
    assert long_side(NominalScannedPixelSpacing=["1.5", "1.5"]) == 180
    assert pixel_pitch(make_ds(img, PixelSpacing=["0.1", "0.2"])) == (0.1, 0.2)
    for tags in ({}, {"ImagerPixelSpacing": ["0", "0"]}, {"PixelSpacing": ["0.01", "0.01"]}, {"PixelSpacing": "5"}):
        assert long_side(**tags) == 120, tags
        assert render(make_ds(img, **tags), (size, 120)).mm_per_px(120) is None, tags  # refused: no mm claimed


def test_pixels_that_are_not_square_take_the_pitch_of_the_stored_long_side():
    """The display keeps the stored matrix's aspect (no resampling), so its long side follows the stored long
    side, and so must the pitch: 240 rows of 1 mm and 192 columns of 2 mm show at AtPitch(120) as 120 rows of
    2 mm (before: the 384-mm physical width set 192 rows, and the manifest claimed 2 mm per px of 1.25)."""
    img = _air_at_zero(240, 192)
    size = AtPitch(120)
    rendition = render(make_ds(img, ImagerPixelSpacing=["1", "2"]), (size,))
    assert rendition.images[size].shape == (120, 96) and rendition.mm_per_px(size) == 2.0


@pytest.mark.parametrize("planar, rle", [(0, False), (1, False), (0, True)])
def test_a_mammogram_stored_in_rgb_is_shown_as_its_gray(planar, rle):
    """A scanned film saved as an RGB Secondary Capture (R = G = B) was quarantined as unsupported (stop 64's probe
    of real images re-encoded): it now renders as the same 8-bit image stored in gray, and says so."""
    gray8 = (breast(240, 192, seed=6) >> 4).astype(np.uint8)
    rgb = np.repeat(gray8[:, :, None], 3, axis=2)
    cells = rgb if planar == 0 else np.moveaxis(rgb, 2, 0)
    color = make_ds(
        gray8, bits_stored=8, PhotometricInterpretation="RGB", SamplesPerPixel=3, PlanarConfiguration=planar
    )
    color.PixelData = np.ascontiguousarray(cells).tobytes()
    if rle:
        from pydicom.uid import RLELossless

        color.compress(RLELossless, rgb, encoding_plugin="pydicom")
    plain = render(make_ds(gray8, bits_stored=8), (120,))
    shown = render(color, (120,))
    np.testing.assert_array_equal(shown.images[120], plain.images[120])
    assert "Photometric Interpretation RGB: shown as its luma" in shown.fallback_reason


def test_a_colour_image_is_shown_by_its_luma():
    """Where the channels differ (a colour annotation), each pixel shows its ITU-R BT.601 luma."""
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[0, 0] = (255, 255, 255)
    ds = make_ds(rgb[..., 0], bits_stored=8, PhotometricInterpretation="RGB", SamplesPerPixel=3)
    ds.PlanarConfiguration = 0
    ds.PixelData = rgb.tobytes()
    frame = decode_frame(ds)
    assert frame.pixels.shape == (4, 6) and frame.pixels.dtype == np.uint8
    assert frame.pixels[1, 1] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50) and frame.pixels[0, 0] == 255
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
