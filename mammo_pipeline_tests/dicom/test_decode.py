"""Fast decoders: J2K reduced resolution, libjpeg, pydicom fallback, Bits Stored handling."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.encaps import get_frame
from pydicom.uid import JPEG2000Lossless

from mammo_pipeline.dicom import decode
from mammo_pipeline.dicom.decode import (
    BEYOND_BITS,
    J2KHeader,
    decode_frame,
    fit_bits_stored,
    j2k_header,
    j2k_reduce_level,
    j2k_values,
)
from mammo_pipeline.dicom.errors import Undecodable, Unsupported
from mammo_pipeline.dicom.normalize import render, render_pixels
from mammo_pipeline_tests.dicom.crafted import breast, local_file, make_ds


def _local(name):
    try:
        return local_file(name)
    except KeyError:
        pytest.skip(f"{name} is not shipped locally")


@pytest.fixture(scope="module")
def j2k_ds():
    arr = breast(512, 416, seed=2)
    ds = make_ds(arr, WindowCenter=2047, WindowWidth=4096)
    ds.compress(JPEG2000Lossless, arr)
    return ds, arr


def test_j2k_header_reads_siz_and_cod(j2k_ds):
    ds, _ = j2k_ds
    header = j2k_header(get_frame(ds.PixelData, 0, number_of_frames=1))
    assert (header.rows, header.columns, header.components) == (512, 416, 1)
    assert (header.precision, header.signed) == (12, False) and header.levels >= 3


def test_j2k_reduce_level_picks_closest_level_above_target():
    header = J2KHeader(4096, 3328, 1, 12, False, 5, (0, 0))
    assert j2k_reduce_level(header, 1024) == 2
    assert j2k_reduce_level(header, 1000) == 2
    assert j2k_reduce_level(header, 1025) == 1
    assert j2k_reduce_level(header, 8000) == 0
    assert j2k_reduce_level(J2KHeader(4096, 3328, 1, 12, False, 1, (0, 0)), 256) == 1  # only 1 level coded


def test_j2k_reduce_level_skips_levels_where_pillow_and_openjpeg_disagree():
    # 1841 columns at k=2: Pillow rounds to 460, OpenJPEG makes 461 -> Pillow fails; k=1 is safe
    assert j2k_reduce_level(J2KHeader(1955, 1841, 1, 15, False, 5, (0, 0)), 400) == 1


def test_decode_frame_j2k_reduced_is_close_to_block_mean(j2k_ds):
    ds, arr = j2k_ds
    frame = decode_frame(ds, 128)
    assert (frame.reduction, frame.decoder, frame.pixels.shape) == (4, "pillow-j2k", (128, 104))
    block = arr.astype(float).reshape(128, 4, 104, 4).mean(axis=(1, 3))
    assert np.abs(frame.pixels - block).mean() < 40  # 12-bit units (~2 gray levels at WW 4096): 5/3 LL band != box
    full = decode_frame(ds)
    assert full.reduction == 1 and np.array_equal(full.pixels, arr)


def test_j2k_values_undo_pillow_scaling_and_sign():
    unsigned = J2KHeader(1, 2, 1, 12, False, 0, (0, 0))
    ds = make_ds(np.zeros((1, 2), np.uint16))
    assert j2k_values(np.array([[0, 4095 << 4]], np.uint16), unsigned, ds).tolist() == [[0, 4095]]
    signed = J2KHeader(1, 2, 1, 14, True, 0, (0, 0))
    raw = (np.array([[-5, 100]]) + 8192) << 2
    ds_signed14 = make_ds(np.zeros((1, 2), np.int16), bits_stored=14, signed=True)
    assert j2k_values(raw.astype(np.uint16), signed, ds_signed14).tolist() == [[-5, 100]]
    # header unsigned (12 bits), codestream signed: value mod 2**BitsStored, as pydicom corrects (issue 17)
    assert j2k_values(raw.astype(np.uint16), signed, ds).tolist() == [[4091, 100]]
    # header signed, codestream unsigned: p-bit two's complement (J2K_pixelrep_mismatch.dcm)
    ds_signed = make_ds(np.zeros((1, 2), np.int16), bits_stored=13, signed=True)
    mismatch = J2KHeader(1, 2, 1, 13, False, 0, (0, 0))
    raw = np.array([[8191 << 3, 5 << 3]], np.uint16)
    assert j2k_values(raw, mismatch, ds_signed).tolist() == [[-1, 5]]


def test_j2k_pixelrep_mismatch_file_matches_pydicom():
    ds = pydicom.dcmread(_local("J2K_pixelrep_mismatch.dcm"))
    # codestream and header disagree on the sign: a reduced level would average across the wrap, so the reduced
    # request is decoded at full size, where pydicom reinterprets every value exactly
    reduced = decode_frame(ds, 128)
    assert reduced.reduction == 1 and np.array_equal(reduced.pixels, ds.pixel_array)
    assert np.array_equal(decode_frame(ds).pixels, ds.pixel_array)


def test_fit_bits_stored_masks_native_and_clips_decoded():
    ds = make_ds(np.zeros((1, 3), np.uint16), bits_stored=12)
    arr = np.array([[0x0FFF, 0xF001, 5000]], np.uint16)
    values, note = fit_bits_stored(arr, ds, native=True)
    assert values.tolist() == [[4095, 1, 5000 & 0xFFF]] and "66.7% of the cells have bits above" in note
    overshoot = np.array([[0x0FFF, 4200, 5000]], np.uint16)  # a lossy codec a little past 4095: clipped
    values, note = fit_bits_stored(overshoot, ds, native=False)
    assert values.tolist() == [[4095, 4095, 4095]] and note is None
    signed = make_ds(np.zeros((1, 2), np.int16), bits_stored=12, signed=True)
    raw = np.array([[0x0FFF, 0x7005]], np.uint16).view(np.int16)  # 12-bit -1 without sign extension; garbage
    assert fit_bits_stored(raw, signed, native=True)[0].tolist() == [[-1, 5]]


def test_a_codestream_with_more_bits_than_the_header_keeps_its_values_and_drops_the_headers_window():
    """A 16-bit JPEG 2000 stream under a Bits Stored 12 header: clipping made 83 % of such an image white with no
    word said. pydicom keeps the codestream's values; so does this, and the header's window, which its values
    contradict, gives way to the image's own range."""
    wide = (breast(128, 96).astype(np.uint32) * 16).astype(np.uint16)  # 16-bit values
    ds = make_ds(wide, bits_stored=12, WindowCenter=2047, WindowWidth=4096)
    values, note = fit_bits_stored(wide, ds, native=False)
    assert np.array_equal(values, wide) and note.startswith(BEYOND_BITS)
    rendition = render_pixels(ds, values, (64,), note=note, header_voi=False)
    assert rendition.voi_method == "range" and rendition.fallback_reason.startswith(BEYOND_BITS)
    assert (rendition.images[64] == 255).mean() < 0.05  # a picture, not white


def test_jpeg_lossless_uses_libjpeg_and_matches_pydicom():
    ds = pydicom.dcmread(_local("JPEG-LL.dcm"))
    frame = decode_frame(ds, 256)
    assert frame.decoder == "libjpeg"
    assert np.array_equal(frame.pixels, ds.pixel_array)


def test_missing_decoder_plugin_is_undecodable(monkeypatch):
    ds = pydicom.dcmread(_local("JPEG-LL.dcm"))

    class NoPlugin:
        is_available = False
        missing_dependencies = ("pylibjpeg-libjpeg",)

    monkeypatch.setattr(decode, "_decode_libjpeg", lambda ds, codestream: None)
    monkeypatch.setattr(decode, "get_decoder", lambda uid: NoPlugin())
    with pytest.raises(Undecodable, match=r"no installed decoder.*pylibjpeg-libjpeg"):
        decode_frame(ds, path="x.dcm")


def test_unknown_transfer_syntax_is_unsupported():
    ds = make_ds(np.zeros((4, 4), np.uint16))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    with pytest.raises(Unsupported, match=r"\(0002,0010\)"):
        decode_frame(ds, path="x.dcm")


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGExtended.dcm"])
def test_a_whole_jpeg_stream_without_its_eoi_marker_is_rendered_and_one_byte_short_is_truncated(name):
    """Some writers forget the EOI of a whole stream; its pixels are all there and match the stream with its EOI.
    One byte less and the last pixels come from beyond the end: Truncated, whatever the decoder would draw."""
    from pydicom.encaps import encapsulate

    from mammo_pipeline.dicom.errors import Truncated

    ds = pydicom.dcmread(_local(name))
    expected = decode_frame(ds).pixels
    whole = get_frame(ds.PixelData, 0, number_of_frames=1).rstrip(b"\x00\xff")
    assert whole.endswith(b"\xff\xd9")
    body = whole[:-2]
    ds.PixelData = encapsulate([body + b"\x00" * (len(body) % 2)])
    frame = decode_frame(ds, path="x.dcm")
    assert "no EOI" in frame.decoder
    assert np.array_equal(frame.pixels, expected)
    for cut in (1, 7, len(body) // 3):
        ds.PixelData = encapsulate([body[:-cut] + b"\x00" * ((len(body) - cut) % 2)])
        with pytest.raises(Truncated, match="EOI"):
            decode_frame(ds, path="x.dcm")


@pytest.mark.parametrize("scan_tail", [bytes((0, 0, 0)), bytes((1, 5, 0x21))])
def test_a_sequential_jpeg_whose_scan_header_lacks_se_63_decodes_as_ijg_libjpeg_reads_it(scan_tail):
    """T.81 B.2.3 wants Ss = 0, Se = 63, Ah = Al = 0 in a sequential DCT scan; some writers leave zeros there
    (WG04's MG1_JPLY.dcm). pylibjpeg refuses such a scan; IJG libjpeg warns and decodes it as sequential, and so
    does the repair: the same pixels as the stream written right."""
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(_local("JPGExtended.dcm"))
    expected = decode_frame(ds).pixels
    whole = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    assert decode.repair_sequential_scans(bytes(whole)) is None  # nothing to repair in a stream written right
    sos = whole.index(b"\xff\xda")
    end = sos + 2 + int.from_bytes(whole[sos + 2 : sos + 4], "big")
    assert whole[end - 3 : end] == bytes((0, 63, 0))
    whole[end - 3 : end] = scan_tail
    ds.PixelData = encapsulate([bytes(whole)])
    frame = decode_frame(ds, path="x.dcm")
    assert frame.decoder == decode.REPAIRED_DECODER
    assert np.array_equal(frame.pixels, expected)


def test_only_sequential_dct_scans_are_repaired():
    """A lossless (SOF3) scan's Ss is its predictor and Se is 0 by design: such a stream is never touched."""
    whole = get_frame(pydicom.dcmread(_local("JPEG-LL.dcm")).PixelData, 0, number_of_frames=1)
    assert b"\xff\xc3" in whole and decode.repair_sequential_scans(whole) is None
    assert decode.repair_sequential_scans(b"not a jpeg") is None


@pytest.mark.parametrize("name", ["jpeg-lossless", "jpeg-ls"])
def test_a_jpeg_codestream_cut_short_is_truncated_not_rendered(name):
    """libjpeg and pylibjpeg decode a JPEG or JPEG-LS stream that lost its tail (an interrupted copy) without
    complaint, the missing rows grey or garbage; without its EOI marker the frame is Truncated."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    from mammo_pipeline.dicom.errors import Truncated

    if name == "jpeg-lossless":
        ds = pydicom.dcmread(_local("JPEG-LL.dcm"))
    else:
        arr = breast(96, 80)
        ds = make_ds(arr, WindowCenter=2047, WindowWidth=4096)
        ds.compress(JPEGLSLossless, arr)
    whole = get_frame(ds.PixelData, 0, number_of_frames=1)
    assert decode_frame(ds).pixels.shape == (ds.Rows, ds.Columns)  # the whole stream decodes
    ds.PixelData = encapsulate([whole + b"\x00\x00"])  # padding after the EOI is fine
    assert decode_frame(ds).pixels.shape == (ds.Rows, ds.Columns)
    ds.PixelData = encapsulate([whole[: len(whole) * 2 // 3] + b"\x00"])
    with pytest.raises(Truncated, match="EOI"):
        decode_frame(ds, path="x.dcm")


def test_a_value_stored_in_the_high_bits_is_shifted_down():
    """High Bit 15 with Bits Stored 12 (a layout PS3.5 once allowed): the value is bits 15..4, not 11..0."""
    value = np.array([[0, 1, 2047, 4095]], np.uint16)
    ds = make_ds(np.zeros((1, 4), np.uint16), bits_stored=12)
    ds.HighBit = 15
    assert fit_bits_stored((value << 4) | 0x000F, ds, native=True)[0].tolist() == value.tolist()
    signed = make_ds(np.zeros((1, 3), np.int16), bits_stored=12, signed=True)
    signed.HighBit = 15
    raw = (np.array([[-1, 5, -2048]], np.int16).astype(np.int32) << 4).astype(np.int16)
    assert fit_bits_stored(raw, signed, native=True)[0].tolist() == [[-1, 5, -2048]]


def test_a_high_bit_that_the_cells_contradict_reads_the_value_from_the_low_bits():
    """High Bit 15 with Bits Stored 12, but the cells hold 12-bit values in bits 11..0 (bits 15..12 zero in every
    cell, the low bits in use): shifted down, the image was near black under its own window with no word said."""
    arr = breast(128, 96)  # 12-bit values in the low bits
    ds = make_ds(arr, bits_stored=12, WindowCenter=2047, WindowWidth=4096)
    ds.HighBit = 15
    values, note = fit_bits_stored(arr, ds, native=True)
    assert np.array_equal(values, arr) and "High Bit 15" in note
    rendition = render(ds, (64,))
    assert rendition.images[64].mean() > 40 and "High Bit 15" in rendition.fallback_reason
    high = make_ds(arr << 4, bits_stored=12)  # truly high-aligned cells: shifted as before, nothing to say
    high.HighBit = 15
    assert fit_bits_stored(arr << 4, high, native=True)[0].tolist() == arr.tolist()
    assert fit_bits_stored(arr << 4, high, native=True)[1] is None


def test_native_pixels_of_several_frames_without_number_of_frames_are_unsupported():
    """Three frames of pixel data and no (0028,0008): a mislabelled multi-frame object (a tomosynthesis stack),
    not a 2-D mammogram whose first frame could be shown."""
    arr = breast(32, 24)
    ds = make_ds(arr)
    ds.PixelData = arr.tobytes() * 3
    with pytest.raises(Unsupported, match="3 frames' worth"):
        decode_frame(ds, path="x.dcm")
    ds.PixelData = arr.tobytes() + b"\x00\x00"  # padding is not a frame
    assert decode_frame(ds).pixels.shape == (32, 24)


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "JPEGLSLossless", "RLELossless"])
def test_a_compressed_stack_without_number_of_frames_is_unsupported_and_one_frame_in_many_fragments_is_not(syntax):
    """The compressed twin of the native rule: three codestreams (RLE: three fragments, one per frame) under a
    Number of Frames absent or 1 are a mislabelled stack, not a mammogram to show as its first slice; one frame
    split over several fragments is one frame."""
    from pydicom import uid
    from pydicom.encaps import encapsulate

    frames = [breast(48, 40, seed=k) for k in range(3)]
    ds = make_ds(frames[0])
    ds.NumberOfFrames, ds.PixelData = 3, np.stack(frames).tobytes()
    ds.compress(getattr(uid, syntax))
    streams = [get_frame(ds.PixelData, k, number_of_frames=3) for k in range(3)]
    for frames_tag in (None, 1):
        if frames_tag is None:
            del ds.NumberOfFrames
        else:
            ds.NumberOfFrames = frames_tag
        with pytest.raises(Unsupported, match=r"holds 3 .* frames but \(0028,0008\) Number of Frames is absent or 1"):
            decode_frame(ds, path="x.dcm")
    if syntax != "RLELossless":  # RLE allows one fragment per frame only (PS3.5 G.1)
        one = streams[0]
        ds.PixelData = encapsulate([one], fragments_per_frame=4)
        assert np.array_equal(decode_frame(ds).pixels, frames[0])


def test_rle_with_the_value_in_the_high_bits_decodes_as_native_data():
    """RLE Lossless holds the native pixel cells byte plane by byte plane, so High Bit 15 with Bits Stored 12
    means the same there as in native data."""
    from pydicom.uid import RLELossless

    value = breast(32, 24) & np.uint16(0x0FFF)
    ds = make_ds(value << 4, bits_stored=16)
    ds.compress(RLELossless, value << 4)
    ds.BitsStored, ds.HighBit = 12, 15
    assert np.array_equal(decode_frame(ds).pixels, value)


@pytest.mark.parametrize("pad", [0, 1, 7, 4095, 4096, 4097, 12288])
@pytest.mark.parametrize("fill", [b"\x00", b"\xff"])
def test_the_eoi_is_found_behind_any_length_of_padding_and_a_missing_one_is_not(pad, fill):
    body = bytes(range(256)) * 40 + b"\x10"  # ends in no FF
    assert decode._ends_with_eoi(body + decode.EOI + fill * pad)
    assert not decode._ends_with_eoi(body + fill * pad)
    assert not decode._ends_with_eoi(body + b"\xd9" + fill * pad)  # the marker's second byte alone
    assert not decode._ends_with_eoi(decode.EOI[:1] + fill * pad)
