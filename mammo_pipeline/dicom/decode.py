"""Frame 0 of the Pixel Data as stored values, decoded no larger than the display needs.

The display pipeline (`normalize.py`) only ever shows a few-hundred-pixel rendition, so decoding a 4096x3328
mammogram at full resolution is mostly wasted work:

- JPEG 2000 (.90/.91): the codestream holds the image at every power-of-two resolution; Pillow's OpenJPEG
  decodes only the level closest above the target (``im.reduce = k``), about 20x faster than a full decode.
- JPEG lossless (.57/.70) and baseline/extended JPEG: pylibjpeg-libjpeg directly on the frame's bytes; a
  sequential DCT stream whose scan header has zeros where Se = 63 belongs is read as IJG libjpeg reads it
  (`repair_sequential_scans`).
- Everything else (native, RLE, JPEG-LS, full-size J2K): pydicom's own decoders, frame 0 only.

Values come back as the header defines them: (0028,0101) Bits Stored wide, signed when (0028,0103) Pixel
Representation is 1. Signedness is never taken from one source alone: where a codec reports its own sign
(a J2K SIZ marker, a signed output dtype) that disagrees with the header, the header wins by reinterpretation
(value mod 2**BitsStored, or two's complement), as pydicom's APPLY_J2K_CORRECTIONS does at full size.
Native data has its unused high bits masked off (they may hold overlays or garbage); decoded codestreams
are clipped to the Bits Stored range. Failures raise `UnusableImage` subclasses.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from mammo_pipeline.dicom.errors import NoPixelData, Truncated, Undecodable, Unsupported

J2K_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})
LIBJPEG_SYNTAXES = frozenset({JPEGLossless, JPEGLosslessSV1, JPEGBaseline8Bit, JPEGExtended12Bit})
# ISO 10918-1 and ISO 14495-1 codestreams end with an EOI marker (FFD9). A copy cut short loses it, and the lenient
# decoders (libjpeg, pylibjpeg) then return the image's first part over grey or garbage rather than fail.
EOI_SYNTAXES = LIBJPEG_SYNTAXES | {JPEGLSLossless, JPEGLSNearLossless}
EOI = b"\xff\xd9"
# Byte runs put after a JPEG stream that lacks its EOI, before an EOI appended, to tell a whole stream from one cut
# short (`_decode_without_eoi`): nothing, zero bits (what libjpeg stuffs when it meets a marker mid-scan) and two
# alternating patterns. A decoder that needs bytes past the end reads these as data, and they decode differently.
EOI_PROBE_FILLERS = (b"", b"\x00" * 64, b"\x55" * 64, b"\xaa" * 64)
# ITU-T T.81 B.2.3: in a sequential DCT frame (SOF0 baseline, SOF1 extended, Huffman coded) every scan has Ss = 0,
# Se = 63, Ah = Al = 0. Some writers leave other values there (NEMA WG04's MG1_JPLY.dcm: Se = 0 under SOF1).
# pylibjpeg-libjpeg refuses such a scan; IJG libjpeg, behind most DICOM viewers, warns and decodes it as
# sequential (jdhuff.c, JWRN_NOT_SEQUENTIAL: "there are some baseline files out there with all zeroes in these
# bytes").
SEQUENTIAL_DCT_SOF = frozenset({0xC0, 0xC1})
SEQUENTIAL_SCAN_TAIL = bytes((0, 63, 0))  # Ss, Se, Ah << 4 | Al
REPAIRED_DECODER = "libjpeg (sequential scan header Ss/Se/Ah/Al repaired, as IJG libjpeg reads it)"
# Three-sample Photometric Interpretations a scanned film or an export may be stored in (PS3.3 C.7.6.3.1.2):
# pydicom's decoders return them as RGB, and the display shows their luma (`color_to_gray`)
COLOR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"})
# ITU-R BT.601 luma weights, the Y of PS3.3 C.7.6.3.1.2's YBR_FULL
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Frame:
    """Stored pixel values of frame 0; `reduction` is 1, or 2**k for a J2K resolution-level-k decode; `padding`,
    the cells whose padding value lies outside the Bits Stored range (`padding_beyond_bits`), else None; `note`,
    what fitting the values to Bits Stored found amiss in the header (`fit_bits_stored`)."""

    pixels: np.ndarray
    reduction: int
    decoder: str
    padding: np.ndarray | None = None
    note: str | None = None

    @property
    def beyond_bits(self) -> bool:
        """Whether the values were kept beyond the Bits Stored range: the header misstates them, so its window is
        not trusted."""
        return self.note is not None and self.note.startswith(BEYOND_BITS)


def fitted_frame(arr: np.ndarray, ds: Dataset, *, native: bool, reduction: int, decoder: str) -> Frame:
    """The Frame of decoded cells `arr`: their values fitted to Bits Stored (`fit_bits_stored`), and the padding
    that fitting would fold into image values found first (`padding_beyond_bits`)."""
    values, note = fit_bits_stored(arr, ds, native=native)
    return Frame(values, reduction, decoder, padding_beyond_bits(arr, ds), note)


def padding_beyond_bits(arr: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """bool mask of `arr` (cells as decoded, before `fit_bits_stored`) holding padding whose value lies outside the
    Bits Stored range; None when the header declares no such padding or no cell holds it.

    (0028,0120) Pixel Padding Value, or every value from it to (0028,0121) Pixel Padding Range Limit (either order,
    PS3.3 C.7.5.1.1.2), is compared with the cells. A value the Bits Stored range cannot hold (0xFFFF in a 12-bit
    image, -32768 in a signed 12-bit one) does not survive fitting: it becomes an image value (4095 or 0), and the
    padding would show as metal-white or mid-gray. Padding inside the range is found after fitting, by
    `normalize.padding_mask`."""
    padding = padding_outside_bits(ds)
    if padding is None:
        return None
    lo, hi = padding
    mask = (arr == lo) if lo == hi else (arr >= lo) & (arr <= hi)
    return mask if mask.any() else None


def padding_outside_bits(ds: Dataset) -> tuple[float, float] | None:
    """(lowest, highest) padding value when (0028,0120) Pixel Padding Value (to (0028,0121) Pixel Padding Range
    Limit) reaches outside the range Bits Stored and Pixel Representation allow; None otherwise."""
    padding = padding_range(ds)
    if padding is None:
        return None
    lo, hi = padding
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    first, last = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return None if first <= lo and hi <= last else (lo, hi)


def padding_range(ds: Dataset) -> tuple[float, float] | None:
    """(lowest, highest) stored value that is padding: (0028,0120) Pixel Padding Value, or it to (0028,0121) Pixel
    Padding Range Limit in either order (PS3.3 C.7.5.1.1.2); None when the header declares none."""
    values = float_values(ds, "PixelPaddingValue")
    if not values:
        return None
    limits = float_values(ds, "PixelPaddingRangeLimit")
    lo, hi = sorted((values[0], limits[0] if limits else values[0]))
    return lo, hi


def float_values(ds: Dataset, keyword: str) -> list[float]:
    """A DS element's values as floats, skipping empty or unparsable ones (padded, 'a\\\\b\\\\' strings)."""
    if keyword not in ds:
        return []
    try:
        value = ds[keyword].value
    except Exception:
        value = ds.get_item(keyword).value
    if isinstance(value, bytes | bytearray):
        value = value.decode("ascii", "replace").split("\\")
    items = value if isinstance(value, list | MultiValue | tuple) else [value]
    out = []
    for item in items:
        try:
            number = float(str(item).strip())
        except ValueError:
            continue
        if math.isfinite(number):
            out.append(number)
    return out


@dataclass(frozen=True)
class J2KHeader:
    """What a JPEG 2000 codestream's SIZ and COD markers say (ISO 15444-1 A.5.1, A.6.1)."""

    rows: int
    columns: int
    components: int
    precision: int
    signed: bool
    levels: int
    offset: tuple[int, int]


def transfer_syntax(ds: Dataset, path: str) -> UID:
    """The (0002,0010) Transfer Syntax UID, or Unsupported when the file meta has none."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if not uid:
        raise Unsupported(f"{path}: no (0002,0010) Transfer Syntax UID in the file meta")
    return UID(str(uid))


def check_image(ds: Dataset, path: str) -> None:
    """Raise unless `ds` holds an integer image this pipeline can render: one grayscale sample, or three of a
    color model (`COLOR`) shown by their luma.

    Checks (7FE0,0010) Pixel Data, (0028,0002) Samples per Pixel, (0028,0004) Photometric Interpretation,
    (0028,0010/0011) Rows/Columns and (0028,0100/0101) Bits Allocated/Stored. A grayscale Photometric
    Interpretation written in lower case or padded ("Monochrome2 ") is put in its defined form on `ds` (in memory;
    a CS value is upper case, PS3.5 6.2): pydicom's decoders match it exactly and refused the image as undecodable.
    """
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise Unsupported(f"{path}: float pixel data (7FE0,0008/0009) is not supported")
    if "PixelData" not in ds:
        raise NoPixelData(f"{path}: no (7FE0,0010) Pixel Data element")
    if not ds.PixelData:
        raise NoPixelData(f"{path}: (7FE0,0010) Pixel Data is empty")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", *COLOR):
        raise Unsupported(
            f"{path}: (0028,0004) Photometric Interpretation {photometric or '(none)'!r} is neither grayscale nor "
            f"a color model shown by its luma ({', '.join(sorted(COLOR))})"
        )
    if ds.PhotometricInterpretation != photometric:
        ds.PhotometricInterpretation = photometric
    values = {}
    for keyword, tag in _IMAGE_TAGS:
        try:
            values[keyword] = int(ds.get(keyword) or 0)
        except (TypeError, ValueError) as exc:
            raise Unsupported(f"{path}: {tag} {keyword} is not an integer ({exc})") from exc
    samples = (3,) if photometric in COLOR else (0, 1)
    if values["SamplesPerPixel"] not in samples:
        raise Unsupported(
            f"{path}: (0028,0002) Samples per Pixel {values['SamplesPerPixel']} is not {samples[-1]} for {photometric}"
        )
    for keyword, tag in _IMAGE_TAGS[1:4]:
        if not values[keyword]:
            raise Unsupported(f"{path}: {tag} {keyword} is missing or zero")
    bits_stored = values["BitsStored"] or values["BitsAllocated"]
    if not 1 <= bits_stored <= min(values["BitsAllocated"], 32):
        raise Unsupported(
            f"{path}: (0028,0101) Bits Stored {bits_stored} does not fit Bits Allocated {values['BitsAllocated']}"
        )


_IMAGE_TAGS = (
    ("SamplesPerPixel", "(0028,0002)"),
    ("Rows", "(0028,0010)"),
    ("Columns", "(0028,0011)"),
    ("BitsAllocated", "(0028,0100)"),
    ("BitsStored", "(0028,0101)"),
    ("PixelRepresentation", "(0028,0103)"),
    ("NumberOfFrames", "(0028,0008)"),
)


def decode_frame(ds: Dataset, min_long_side: int | None = None, *, path: str = "<dataset>") -> Frame:
    """Decode frame 0 of `ds`, at reduced resolution when the codec allows it and `min_long_side` is given.

    Parameters
    ----------
    ds : Dataset
        A dataset read with its Pixel Data; checked with `check_image` first.
    min_long_side : int, optional
        The largest long side the caller will produce; a J2K image is decoded at the smallest resolution
        level whose long side is still >= this. ``None`` decodes at full size.
    path : str
        Named in error messages.

    Returns
    -------
    Frame
        HxW integer array of stored values, masked (native) or clipped (compressed) to (0028,0101) Bits Stored.
    """
    check_image(ds, path)
    ts = transfer_syntax(ds, path)
    if not ts.is_transfer_syntax:
        raise Unsupported(f"{path}: (0002,0010) Transfer Syntax UID {ts} is not a known transfer syntax")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.PhotometricInterpretation in COLOR:
        if not ts.is_encapsulated:
            _check_native_length(ds, n_frames, path)
        rgb, plugin = _decode_pydicom(ds, ts, path)
        return color_to_gray(rgb, ds, plugin)
    tried: list[str] = []
    if ts.is_encapsulated:
        if n_frames == 1:
            _check_one_codestream(ds.PixelData, ts, path)
        codestream = _frame_bytes(ds, n_frames, path)
        if ts in EOI_SYNTAXES and not _ends_with_eoi(codestream):
            return _decode_without_eoi(ds, codestream, ts, path)
        if ts in J2K_SYNTAXES and min_long_side:
            frame = _decode_j2k_reduced(ds, codestream, min_long_side, path)
            if frame is not None:
                return frame
        if ts in LIBJPEG_SYNTAXES:
            tried.append("libjpeg (direct)")
            frame = _decode_libjpeg(ds, codestream)
            if frame is not None:
                return frame
            repaired = repair_sequential_scans(codestream)
            if repaired is not None:
                tried.append(REPAIRED_DECODER)
                frame = _decode_libjpeg(ds, repaired, REPAIRED_DECODER)
                if frame is not None:
                    return frame
    else:
        _check_native_length(ds, n_frames, path)
    pixels, plugin = _decode_pydicom(ds, ts, path, tried)
    return fitted_frame(pixels, ds, native=holds_pixel_cells(ts), reduction=1, decoder=plugin)


def color_to_gray(rgb: np.ndarray, ds: Dataset, decoder: str) -> Frame:
    """The luma (`LUMA`, rounded, in the stored dtype) of a decoded RGB frame (HxWx3) as a one-sample frame.

    A mammogram stored in color (a scanned film saved as an RGB Secondary Capture, R = G = B) was quarantined as
    unsupported (stop 64's probe of real images re-encoded). `ds` is set to what the frame now is (MONOCHROME2,
    one sample, in memory only), so every later display step reads it as grayscale; `note` says so.
    """
    was = str(ds.PhotometricInterpretation)
    gray = np.rint(rgb.astype(np.float32) @ np.asarray(LUMA, dtype=np.float32))
    info = np.iinfo(rgb.dtype) if np.issubdtype(rgb.dtype, np.integer) else None
    pixels = np.clip(gray, info.min, info.max).astype(rgb.dtype) if info else gray
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    if "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    note = f"(0028,0004) Photometric Interpretation {was}: shown as its luma (ITU-R BT.601)"
    return Frame(pixels, 1, decoder, note=note)


BEYOND_BITS = "decoded values beyond (0028,0101) Bits Stored"


def fit_bits_stored(arr: np.ndarray, ds: Dataset, *, native: bool) -> tuple[np.ndarray, str | None]:
    """Force values into the (0028,0101) Bits Stored range of the (0028,0103) Pixel Representation; (values, note
    on what in the cells contradicts the header, else None).

    Native data: bits above Bits Stored are not part of the value (PS3.5 8.1.1), so they are masked off
    (unsigned) or replaced by the sign bit (signed), and a value in the high bits (`value_high_bit`) is shifted down
    first. Two header slips are told from the cells (unsigned data): a High Bit that puts the value in the high
    bits while every cell's bits above Bits Stored are 0 and its low bits are not (the value is in the low bits: it
    is read there, instead of shifted to black), and cells with bits above Bits Stored set (masked as the standard
    requires, the share noted: a Bits Stored that understates the data shows as wrapped contours).
    Decoded codestreams: values are clipped to the range (a lossy codec overshoots it a little), except values
    that need more bits than Bits Stored + 1 (a 16-bit codestream under a 12-bit header): the codestream's own
    precision wins, as pydicom's does; they are kept and the note starts with BEYOND_BITS.
    """
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if arr.dtype == bool:
        return arr.astype(np.uint8), None
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    width = arr.dtype.itemsize * 8
    if arr.dtype.kind in "ui" and width > bits:
        if native:  # the value is bits [high - bits + 1, high]; above and below them: not part of it
            high = value_high_bit(ds)
            high = high if high < width else bits - 1
            if signed:
                signed_view = arr.view(arr.dtype.str.replace("u", "i"))
                return (signed_view << (width - 1 - high)) >> (width - bits), None
            note = None
            if high + 1 > bits and not (arr >> bits).any() and (arr & ((1 << (high + 1 - bits)) - 1)).any():
                note = (
                    f"(0028,0102) High Bit {high} puts the value in bits {high + 1 - bits}-{high}, but no cell has a "
                    f"bit above {bits - 1} set and the low bits are used: read from bits 0-{bits - 1}"
                )
                high = bits - 1
            elif high + 1 == bits and (share := float((arr > hi).mean())) > 0:
                note = (
                    f"{share:.1%} of the cells have bits above (0028,0101) Bits Stored {bits} set; masked off "
                    "(PS3.5 8.1.1), which shows as wrapped contours if Bits Stored understates the data"
                )
            return (arr >> (high + 1 - bits) if high + 1 > bits else arr) & np.asarray(hi, dtype=arr.dtype), note
        first, last = int(arr.min()), int(arr.max())
        if first < 2 * lo or last > 2 * hi + 1:
            return arr, f"{BEYOND_BITS} {bits} ({first}..{last}): kept as decoded, the codestream's own precision"
        if first < lo or last > hi:
            return np.clip(arr, lo, hi), None
    return arr, None


def value_high_bit(ds: Dataset) -> int:
    """The bit a native value's top lies in: (0028,0102) High Bit when it lies between Bits Stored - 1 and Bits
    Allocated - 1 (above Bits Stored - 1 the value sits in the high bits, a layout allowed until PS3.5 2013 and
    written by some old modalities: 12 bits in 15..4), Bits Stored - 1 otherwise (absent, or a value that cannot
    hold the value). Raises TypeError or ValueError for a High Bit that is no single integer."""
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    high = ds.get("HighBit")
    if high is None:
        return bits - 1
    return int(high) if bits - 1 <= int(high) < int(ds.BitsAllocated) else bits - 1


def holds_pixel_cells(ts: UID) -> bool:
    """The pixel data carries the native pixel cells, unused bits included: native data, or RLE Lossless (PS3.5 G,
    the same cells byte plane by byte plane). Their unused bits are masked or shifted (`fit_bits_stored`); a
    codec's output is clipped instead."""
    return not ts.is_encapsulated or ts == RLELossless


def j2k_header(codestream: bytes) -> J2KHeader:
    """Parse the SIZ and COD markers at the start of a raw J2K codestream (ValueError if there are none)."""
    if codestream[:4] != b"\xff\x4f\xff\x51":
        raise ValueError("not a raw JPEG 2000 codestream (no SOC + SIZ markers)")
    (_, _, xsiz, ysiz, xo, yo, _, _, _, _, csiz) = struct.unpack_from(">HHIIIIIIIIH", codestream, 4)
    ssiz = codestream[4 + 38]
    pos, levels = 4 + struct.unpack_from(">H", codestream, 4)[0], None
    while pos + 4 <= len(codestream) and levels is None:
        marker, length = struct.unpack_from(">HH", codestream, pos)
        if marker == 0xFF52:  # COD: Scod(1) SGcod(4) then SPcod, whose first byte is the decomposition count
            levels = codestream[pos + 4 + 5]
        elif marker == 0xFF90:  # first tile-part: no COD in the main header
            break
        pos += 2 + length
    if levels is None:
        raise ValueError("JPEG 2000 codestream has no COD marker in its main header")
    return J2KHeader(ysiz - yo, xsiz - xo, csiz, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), levels, (yo, xo))


def j2k_reduce_level(header: J2KHeader, min_long_side: int) -> int:
    """The largest resolution reduction k whose long side is still >= `min_long_side`.

    Only levels where Pillow's reduced size (rounded) equals OpenJPEG's (ceiling) are used; elsewhere
    Pillow reports "broken data stream" (e.g. 1841 columns at k=2: 460 vs 461).
    """
    if header.offset != (0, 0):
        return 0
    best = 0
    for k in range(1, header.levels + 1):
        power = 1 << k
        sizes = (header.rows, header.columns)
        if math.ceil(max(sizes) / power) < min_long_side:
            break
        if all(int((n + (power >> 1)) / power) == math.ceil(n / power) for n in sizes):
            best = k
    return best


def _decode_j2k_reduced(ds: Dataset, codestream: bytes, min_long_side: int, path: str) -> Frame | None:
    try:
        header = j2k_header(codestream)
    except (ValueError, struct.error, IndexError):
        return None  # JP2 wrapper or odd stream: let pydicom decode it at full size
    if header.components != 1:
        raise Unsupported(f"{path}: JPEG 2000 codestream has {header.components} components; expected 1")
    if (header.rows, header.columns) != (int(ds.Rows), int(ds.Columns)):
        raise Undecodable(
            f"{path}: J2K codestream is {header.rows}x{header.columns}, (0028,0010/0011) say {ds.Rows}x{ds.Columns}"
        )
    level = j2k_reduce_level(header, min_long_side)
    if level == 0 or header.precision > 16:
        return None
    if header.signed != (int(ds.get("PixelRepresentation", 0) or 0) == 1):
        # Codestream and header disagree on the sign: a reduced level averages in the codestream's domain, across
        # the wrap at 2**(BitsStored-1), which no per-pixel correction undoes. Decode full size (pydicom's
        # APPLY_J2K_CORRECTIONS reinterprets each value exactly) and let the caller average.
        return None
    try:
        with Image.open(io.BytesIO(codestream)) as im:
            im.reduce = level
            im.load()
            raw = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise Undecodable(f"{path}: JPEG 2000 decode at reduction {level} failed ({exc})") from exc
    return fitted_frame(j2k_values(raw, header, ds), ds, native=False, reduction=1 << level, decoder="pillow-j2k")


def j2k_values(raw: np.ndarray, header: J2KHeader, ds: Dataset) -> np.ndarray:
    """Undo Pillow's scaling of a decoded J2K component, then read the values as the DICOM header says.

    Pillow left-shifts a p-bit component to fill 8 (mode L) or 16 (I;16) bits and adds 2**(p-1) to signed
    data, so the codestream's own values are recovered first (signed when its SIZ says so). The header's
    (0028,0103) Pixel Representation then decides, as pydicom's APPLY_J2K_CORRECTIONS does, whatever the
    codestream says: header unsigned, codestream signed -> value mod 2**BitsStored (a signed 12-bit -1 is 4095,
    never clipped to 0); header signed, codestream unsigned -> BitsStored-bit two's complement
    (J2K_pixelrep_mismatch.dcm). Both sources agree -> the values as decoded.
    """
    container = 8 if raw.dtype == np.uint8 else 16
    values = (raw >> (container - header.precision)).astype(np.int32)
    if header.signed:
        values -= 1 << (header.precision - 1)
    bits = int(ds.get("BitsStored") or header.precision)
    header_signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if header.signed and not header_signed:
        values = np.mod(values, 1 << bits)
    elif header_signed and not header.signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values


def _libjpeg():
    """The pylibjpeg-libjpeg module, or None when it is not installed (an optional decoder: each caller says what
    its absence means)."""
    try:
        import libjpeg
    except ImportError:
        return None
    return libjpeg


def _decode_libjpeg(ds: Dataset, codestream: bytes, decoder: str = "libjpeg") -> Frame | None:
    libjpeg = _libjpeg()
    if libjpeg is None:
        return None  # pydicom's plugins try instead
    try:
        arr = libjpeg.decode(codestream)
    except (RuntimeError, ValueError):
        return None  # pydicom's plugins get the next try and the final word on the error
    return _libjpeg_frame(ds, arr, decoder)


def repair_sequential_scans(codestream: bytes) -> bytes | None:
    """`codestream` with every scan header (SOS) of a sequential DCT frame set to Ss = 0, Se = 63, Ah = Al = 0
    (SEQUENTIAL_DCT_SOF), or None when there is nothing to repair: another process (progressive, lossless,
    arithmetic), every scan already right, or no frame header before the first scan.

    The marker walk skips each scan's entropy-coded data to the next marker (0xFF not followed by a stuffed 0x00 or
    a restart marker) and stops at EOI or at a segment that runs past the end; a malformed stream is left to the
    decoder's own error. Raises nothing.
    """
    out = bytearray(codestream)
    pos, frame_type, patched = 2, None, False
    if out[:2] != b"\xff\xd8":
        return None
    while pos + 4 <= len(out):
        if out[pos] != 0xFF:
            return None
        marker = out[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:
            break
        length = struct.unpack_from(">H", out, pos + 2)[0]
        end = pos + 2 + length
        if length < 2 or end > len(out):
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame_type = marker
        elif marker == 0xDA:
            if frame_type not in SEQUENTIAL_DCT_SOF:
                return None
            if out[end - 3 : end] != SEQUENTIAL_SCAN_TAIL:
                out[end - 3 : end] = SEQUENTIAL_SCAN_TAIL
                patched = True
            end = _end_of_entropy_data(out, end)
        pos = end
    return bytes(out) if patched else None


def _end_of_entropy_data(data: bytes | bytearray, pos: int) -> int:
    """The offset of the first marker at or after `pos` in entropy-coded data (T.81 B.1.1.5: 0xFF00 is a stuffed
    0xFF, 0xFFD0-0xFFD7 a restart marker inside the scan); len(data) when there is none."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
            pos += 2
        elif nxt == 0xFF:
            pos += 1
        else:
            return pos


def _libjpeg_frame(ds: Dataset, arr: np.ndarray, decoder: str = "libjpeg") -> Frame | None:
    """libjpeg's output as stored values of the header's sign and Bits Stored; None when it is not Rows x Columns."""
    if arr.ndim != 2 or arr.shape != (int(ds.Rows), int(ds.Columns)):
        return None
    # The header's (0028,0103) Pixel Representation decides, whatever dtype the codec returned (as for J2K).
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    header_signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if header_signed and arr.dtype.kind == "u":
        arr = arr.astype(np.int32)
        arr = np.where(arr >= 1 << (bits - 1), arr - (1 << bits), arr)
    elif not header_signed and arr.dtype.kind == "i":
        arr = np.mod(arr.astype(np.int64), 1 << bits)
    return fitted_frame(arr, ds, native=False, reduction=1, decoder=decoder)


def _frame_bytes(ds: Dataset, n_frames: int, path: str) -> bytes:
    try:
        return get_frame(ds.PixelData, 0, number_of_frames=n_frames)
    except (ValueError, EOFError, struct.error, IndexError) as exc:
        raise Truncated(f"{path}: encapsulated (7FE0,0010) Pixel Data has no complete first frame ({exc})") from exc


def _ends_with_eoi(codestream: bytes) -> bool:
    """A JPEG or JPEG-LS frame ends with its EOI marker (FFD9), after the fragment's padding (PS3.5 A.4: an
    odd-length stream gets one trailing 0x00; some writers pad with more, or with 0xFF fill). The strip copies the
    codestream: about 1 ms for 10 MB, next to a decode of hundreds."""
    return codestream.rstrip(b"\x00\xff").endswith(EOI)


def _decode_without_eoi(ds: Dataset, codestream: bytes, ts: UID, path: str) -> Frame:
    """Frame 0 of a JPEG frame that ends without its EOI marker, when its own bytes make the whole image; raise
    Truncated otherwise.

    A copy cut short loses the EOI, but so does a whole stream from a writer that forgets it (decoders accept
    such images "in the wild": intel/libyami#801). The lenient decoder cannot say which: it renders both. So the
    stream is decoded with an EOI appended after each of EOI_PROBE_FILLERS: when every pixel is the same under
    all of them, no pixel came from beyond the stream's end, and the image is whole. A stream cut short reads
    the fillers as entropy-coded data, and its last rows differ. JPEG-LS is not probed (CharLS refuses any byte
    between the data and the EOI, so there is nothing to vary) and stays Truncated, as does any frame when
    pylibjpeg-libjpeg is not installed.
    """
    cut_short = Truncated(
        f"{path}: the {ts.name} codestream of frame 1 ends without its EOI marker (FFD9) and its last pixels "
        f"depend on bytes past its end: the file was cut short or its pixel data is corrupt"
    )
    libjpeg = _libjpeg()
    if libjpeg is None or ts not in LIBJPEG_SYNTAXES:
        raise cut_short
    decoded = []
    for filler in EOI_PROBE_FILLERS:
        try:
            decoded.append(libjpeg.decode(codestream + filler + EOI))
        except (RuntimeError, ValueError):
            raise cut_short from None
    if any(not np.array_equal(arr, decoded[0]) for arr in decoded[1:]):
        raise cut_short
    frame = _libjpeg_frame(ds, decoded[0], "libjpeg (no EOI: whole, checked)")
    if frame is None:
        raise Undecodable(
            f"{path}: {ts.name} codestream without EOI decodes to {decoded[0].shape}, "
            f"(0028,0010/0011) say {ds.Rows}x{ds.Columns}"
        )
    return frame


# How a frame's codestream starts (its first fragment's first bytes): JPEG and JPEG-LS SOI then a marker (T.81 B.1.1.3,
# T.87); JPEG 2000 SOC then SIZ (T.800 A.4.1), or a JP2 signature box from writers that keep the file format. Neither
# occurs inside entropy-coded data, so a later fragment that starts so is another frame.
CODESTREAM_STARTS = (b"\xff\xd8\xff", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")
ITEM_TAG = 0xE000FFFE  # (FFFE,E000) Item, read as one little-endian 32-bit word


def _fragment_heads(pixel_data: bytes) -> list[bytes]:
    """The first 8 bytes of each fragment of encapsulated Pixel Data, the Basic Offset Table (always the first item,
    PS3.5 A.4) left out; the walk stops at the Sequence Delimiter or at an item that is not one. No copy of the
    fragments is made."""
    heads, pos, first = [], 0, True
    while pos + 8 <= len(pixel_data):
        tag, length = struct.unpack_from("<II", pixel_data, pos)
        if tag != ITEM_TAG:
            break
        if not first:
            heads.append(bytes(pixel_data[pos + 8 : pos + 16]))
        first = False
        pos += 8 + length
    return heads


def _check_one_codestream(pixel_data: bytes, ts: UID, path: str) -> None:
    """Raise Unsupported when the fragments of an object whose (0028,0008) Number of Frames is absent or 1 hold
    several frames: RLE puts each frame in exactly one fragment (PS3.5 G.1), the other codecs start each frame with
    its codestream's start marker (CODESTREAM_STARTS). The compressed twin of `_check_native_length`'s rule: a
    mislabelled stack (tomosynthesis?) is not rendered as its first frame."""
    heads = _fragment_heads(pixel_data)
    frames = len(heads) if ts == RLELossless else sum(head.startswith(CODESTREAM_STARTS) for head in heads)
    if frames > 1:
        raise Unsupported(
            f"{path}: the encapsulated (7FE0,0010) Pixel Data holds {frames} {ts.name} frames but (0028,0008) Number "
            f"of Frames is absent or 1: a multi-frame object (tomosynthesis?) labelled as one image, not rendered as "
            f"its first frame"
        )


def _check_native_length(ds: Dataset, n_frames: int, path: str) -> None:
    bits = int(ds.BitsAllocated) * int(ds.get("SamplesPerPixel", 1) or 1)
    needed = math.ceil(int(ds.Rows) * int(ds.Columns) * bits / 8)
    if len(ds.PixelData) < needed:
        raise Truncated(
            f"{path}: (7FE0,0010) Pixel Data holds {len(ds.PixelData)} bytes, frame 0 needs {needed}"
            f" ({n_frames} frame(s) declared)"
        )
    if n_frames == 1 and len(ds.PixelData) >= 2 * needed:  # not padding: whole further frames
        raise Unsupported(
            f"{path}: (7FE0,0010) Pixel Data holds {len(ds.PixelData) // needed} frames' worth of pixels "
            f"({len(ds.PixelData)} bytes) but (0028,0008) Number of Frames is absent or 1: a multi-frame object "
            f"(tomosynthesis?) labelled as one image, not rendered as its first frame"
        )


def _decode_pydicom(ds: Dataset, ts: UID, path: str, tried: list[str] | None = None) -> tuple[np.ndarray, str]:
    """Frame 0 through pydicom's decoder plugins; Undecodable names every decoder tried (`tried` + pydicom's)."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise Unsupported(f"{path}: (0002,0010) Transfer Syntax {ts} ({ts.name}) has no pixel decoder") from exc
    tried = [*(tried or []), *(f"pydicom:{p}" for p in getattr(decoder, "available_plugins", ()))]
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise Undecodable(f"{path}: no installed decoder for {ts.name} ({missing}); decoders tried: {', '.join(tried)}")
    try:
        # native cells whole (pydicom would mask them to Bits Stored): fit_bits_stored shifts a value in the high
        # bits, tells the header's slips from the cells and masks; padding outside Bits Stored is found before that
        options = {"bits_stored": int(ds.BitsAllocated)} if holds_pixel_cells(ts) else {}
        arr, _ = decoder.as_array(ds, index=0, **options)
    except Exception as exc:  # plugins raise anything from ValueError to RuntimeError to struct.error
        raise Undecodable(
            f"{path}: {ts.name} decode failed; decoders tried: {', '.join(tried)} ({type(exc).__name__}: {exc})"
        ) from exc
    expected = 3 if ds.PhotometricInterpretation in COLOR else 2
    if arr.ndim != expected or (arr.ndim == 3 and arr.shape[2] != 3):
        raise Unsupported(f"{path}: decoded frame has shape {arr.shape}; expected rows x columns (x 3 for color)")
    plugins = decoder.available_plugins
    return arr, "native" if not ts.is_encapsulated else f"pydicom:{plugins[0] if plugins else '?'}"
