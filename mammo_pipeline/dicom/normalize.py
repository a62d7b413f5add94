"""The display pipeline: stored pixels -> modality LUT -> VOI -> inversion -> area resize -> uint8.

One public function per step, each usable alone; `render` chains them after one decode.

Steps (PS3.3 C.11 and C.8.11.3). Enhanced objects (Breast Projection, …) keep window and rescale in
functional groups: `frame_attributes` brings Frame VOI LUT, Pixel Value Transformation and Pixel Measures
(Shared, then Per-frame, PS3.3 C.7.6.16.2.1, 9-10) to the top level before step 1.

0. **Padding** (`padding_mask`): stored values equal to (0028,0120) Pixel Padding Value, or between it and
   (0028,0121) Pixel Padding Range Limit, are not image (a value outside the Bits Stored range, 0xFFFF in a
   12-bit image, is matched on the cells before they are fitted to it: `decode.padding_beyond_bits`). They are
   left out of the area averages (an output pixel is the mean of its image pixels only), out of the percentile
   window and the window sanity checks, and are shown black.
   **A frame of padding is cut away** (`content_box`, version 5): when the lines along the edges that hold only
   padding, or only the stored value that displays black (a border written without a declaration), leave a
   rectangle that is image (CONTENT_FILL of it), every step runs on that rectangle. A black border is no part of
   the image, yet it was the darkest large flat region, which the second look takes for the air (a film's gray
   air and the lead letters in it became breast), and it shrank the breast on the display. Where such values
   surround the breast itself (air stored at the darkest value, as the NYU images' is) the rest is the breast,
   not a rectangle, and nothing is cut. `Rendition.content_box` says what was kept.

1. **Modality LUT** (`apply_rescale`): (0028,3000) Modality LUT Sequence if present, else (0028,1053) Rescale
   Slope and (0028,1052) Rescale Intercept. A Rescale Slope of 0 (which would map every pixel to the intercept,
   one gray level) is a header error: the rescale is skipped, as DCMTK does, and `Rendition.fallback_reason`
   says so (`rescale_problem`).
2. **VOI** (`apply_voi`), output in [0, 1]:
   a. (0028,3010) VOI LUT Sequence item 0 when present (`apply_voi_lut_sequence`), scaled by the largest value
      the LUT really holds, not by 2**bits (LUTs that declare 16 bits and hold 0..4095 exist);
   b. else (0028,1050/1051) Window Center/Width index 0 with (0028,1056) VOI LUT Function LINEAR,
      LINEAR_EXACT or SIGMOID (`window_linear`, `window_linear_exact`, `window_sigmoid`; PS3.3 C.11.2.1.2-3).
      A missing, empty, lower-case or padded function is LINEAR; an unknown one is LINEAR and said so;
      multi-valued centers and widths are indexed independently (VM mismatch is tolerated);
      when item 0 or the first pair is unusable (below), the next usable item or pair is applied (version 4;
      each one skipped is named in `Rendition.fallback_reason`);
   c. else, or when every window is degenerate (`check_window`: width < 1 for LINEAR, <= 0 otherwise, a window
      wholly outside the data, an 8-bit window on deeper data, a deeper window on 8-bit data) or maps the image
      to one gray level, a linear map of the image's own range: min..max for a For Presentation image, values
      beyond four times its 1st-99th percentile span left out (`range_window`: its values are the vendor's
      display values already, so its brightest tissue stays below its metal; the 0.5-99.5th percentile
      window of versions 1-2 made the top half percent of such an image white, dense-tissue junctions as white
      as a clip), the 0.5th to 99.5th percentile for a For Processing one (`percentile_window`: raw detector
      values, whose extremes are dead pixels and direct exposure). The reason lands in
      `Rendition.fallback_reason`. A constant image renders black, without dividing by zero.
3. **Inversion** (`is_inverted`, `invert`). Policy: the display is inverted exactly when (0028,0004)
   Photometric Interpretation is MONOCHROME1. (2050,0020) Presentation LUT Shape is not applied on top:
   the DX Image Module that MG images use (PS3.3 C.8.11.3) requires INVERSE *with* MONOCHROME1 and
   IDENTITY with MONOCHROME2, so INVERSE is the same inversion stated twice, never a second one. Hence
   MONOCHROME1+INVERSE, MONOCHROME1+IDENTITY and MONOCHROME1 alone are inverted once; MONOCHROME2+INVERSE
   contradicts the module (mislabelled shapes exist, dcm4chee-arc#3155) and is not inverted: bright stays
   dense tissue. The index keeps the shape (column ``presentation_lut_shape``) so such files can be found.
4. **Area resize** (`resize_area`) to each requested long side (of the content box), aspect ratio kept, no flips:
   the image stays as stored (PatientOrientation and FieldOfViewHorizontalFlip are not applied).
   **At a fixed pitch** (`AtPitch`, version 6): a size asked as `AtPitch(n)` is the long side that shows the
   image at REFERENCE_FIELD_MM / n mm per pixel, from its own pixel pitch (`pixel_pitch`: Imager Pixel Spacing,
   else Pixel Spacing, else Nominal Scanned Pixel Spacing), so a clip is as many display pixels wide on a
   24 x 30 cm detector as on an 18 x 24 cm one, and a larger matrix or a border round the breast leaves it its
   size. Without a usable pitch it is n px, as a plain size, and no pitch is recorded. Pixels that are not square
   are not resampled: the pitch is the stored long side's (`field_mm`).

For speed (see decode.py) the raw values are area-averaged down to the largest requested size *before* the
VOI step, and JPEG 2000 is decoded at a reduced resolution level. Rescale is linear so that commutes; a
window or LUT applied after averaging differs from one applied before only at the window's clip points,
a gray level or two on average (tested against pydicom in mammo_pipeline_tests/dicom/test_normalize.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from mammo_pipeline.dicom.decode import check_image, decode_frame, padding_range
from mammo_pipeline.dicom.decode import float_values as _floats
from mammo_pipeline.dicom.errors import NotDicom, Truncated, Unsupported, UnusableImage
from mammo_pipeline.dicom.functional_groups import frame_attributes
from mammo_pipeline.dicom.headers import is_for_processing

# 2: functional-group windows, padding kept out of percentiles and averages, signed J2K fix; 3: a For Presentation
# image without a usable window shows its own min..max (`range_window`), no longer the 0.5-99.5th percentiles;
# 4: when the first window pair or VOI LUT item is unusable, the next usable one is applied before the image's range;
# 5: a frame of padding (declared, or black without a declaration) is cut away (`content_box`); 6: a size asked
# `AtPitch` shows every image at one pitch in mm per pixel, from its pixel spacing; 7: a window centred above every
# value Bits Stored holds and over four times as wide as the data it covers is refused (`check_window`: an 8-bit
# export keeping its 12-bit window showed black), the image's own range leaves out values beyond four times its
# 1st-99th percentile span (`range_window`: one dead pixel or a burned-in label at the top of Bits Stored made the
# breast black), the pitch follows the stored long side (non-square pixels) and is not recorded when it was refused
# (`pitch_long_side`); 8: an enhanced object's pixel spacing is read from its Pixel Measures functional group (it was
# shown at no pitch), a VOI LUT's white is the top of its output depth (`lut_output_top`, not its largest entry), and
# a declared frame of padding round a breast whose air is stored at the darkest value is cut (`content_box`)
NORM_VERSION = "8"

_APPLIED = frozenset({"voi_lut", "window:LINEAR", "window:LINEAR_EXACT", "window:SIGMOID"})
_ANY = _APPLIED | {"range", "percentile"}
# (earlier version, later version) -> the VOI methods whose renditions the later version left as they were
UNCHANGED_SINCE = {
    ("2", "3"): _APPLIED,
    ("3", "4"): _APPLIED,
    ("2", "4"): _APPLIED,
    ("4", "5"): _ANY,
    ("3", "5"): _APPLIED,
    ("2", "5"): _APPLIED,
    ("6", "7"): _ANY,
    ("7", "8"): _ANY - {"voi_lut"},
}
# From this version on a frame of padding is cut away: an earlier rendition stands only where its display has no
# edge line of one gray level (`constant_edge`), since a frame at least a display pixel deep leaves one
FRAME_CUT_SINCE = 5
# From this version on a window too wide for its data and a range stretched by outliers are refused: an earlier
# rendition stands only where its display is not squeezed into a quarter of the gray scale (`squeezed`), which is
# what either fault left
SQUEEZE_REFUSED_SINCE = 7
# From this version on a declared frame of padding is cut where the air is stored at the darkest value, and an
# enhanced object's Pixel Measures give its pitch: an earlier rendition stands only where its display has no edge
# line of one gray level (`constant_edge`) and it was drawn at a pitch (`pitched`)
DECLARED_FRAME_CUT_SINCE = 8


def rendition_current(
    norm_version: str | None,
    voi_method: str | None,
    current: str = NORM_VERSION,
    display: Callable[[], np.ndarray] | None = None,
    pitched: bool = True,
) -> bool:
    """Whether a PNG rendered by `norm_version` (its VOI step `voi_method`) is what version `current` renders, so
    a cache need not render it again: `current`'s own renditions, and an earlier version's whose VOI method the
    later one left alone (`UNCHANGED_SINCE`: version 3 changed only the fallback window, so version 2's windowed
    and LUT renditions stand). Across FRAME_CUT_SINCE the earlier display (`display` reads it; None: not known,
    so not current) must also have no edge line of one gray level (`constant_edge`): a frame of padding a display
    pixel deep or more leaves one, so only those images are rendered again. A thinner frame is kept, less than a
    display pixel off what version 5 renders. Across SQUEEZE_REFUSED_SINCE the earlier display must not be
    squeezed into a quarter of the gray scale (`squeezed`): only those images can have changed. (Version 7's
    pitch changes touch only non-square or implausible pixel spacings; their earlier renditions are kept.) Across
    DECLARED_FRAME_CUT_SINCE the display must have no constant edge either, and `pitched` (the rendition was drawn
    at a pitch): an enhanced object drawn without one may now have it."""
    if norm_version == current:
        return True
    if voi_method not in UNCHANGED_SINCE.get((norm_version or "", current), frozenset()):
        return False
    if not pitched and _version(norm_version) < DECLARED_FRAME_CUT_SINCE <= _version(current):
        return False
    faults = [
        fault
        for since, fault in (
            (FRAME_CUT_SINCE, constant_edge),
            (SQUEEZE_REFUSED_SINCE, squeezed),
            (DECLARED_FRAME_CUT_SINCE, constant_edge),
        )
        if _version(norm_version) < since <= _version(current)
    ]
    if not faults:
        return True
    if display is None:
        return False
    image = display()
    return not any(fault(image) for fault in faults)


def _version(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
# `range_window` leaves out values farther from the 1st-99th percentile span than this many spans: the factor of
# `check_window`'s 8-bit rule, set before measuring (a mammogram's metal is within 2x its densest tissue's value)
OUTLIER_REACH = 4.0
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


# The field whose long side a display of `AtPitch(n)` shows in n px: the smaller standard mammography detector,
# 18 x 24 cm. With 1024 px that is 0.234 mm per pixel, so no field of 24 cm or more is shown at fewer pixels
# than the fixed 1024-px long side gave it (a 24 x 30 cm detector: 1280 px). A physical size, not fitted to data.
REFERENCE_FIELD_MM = 240.0
# Where a pixel's pitch is read, in this order (PS3.3 C.8.11.4 DX Detector, Type 1 in the mammography IODs: the
# detector plane, which is what the display shows; C.7.6.2 Image Plane; C.8.6.1 SC Equipment, a scanned film)
PITCH_ATTRIBUTES = ("ImagerPixelSpacing", "PixelSpacing", "NominalScannedPixelSpacing")
# AtPitch(n) keeps its pitch only for a long side from n / 4 to 2 n (a 6 to 48 cm field: every mammogram, and
# a spot view stored on its cone's matrix); beyond it the spacing is taken for an error and the size is n
PITCH_RANGE = (0.25, 2.0)


@dataclass(frozen=True)
class AtPitch:
    """A display size asked at one pitch: REFERENCE_FIELD_MM / long_side mm per display pixel, for an image whose
    pixel pitch is known (`pixel_pitch`); `long_side` px otherwise (or when the pitch gives a long side outside
    PITCH_RANGE times `long_side`)."""

    long_side: int


def pixel_pitch(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing of the stored pixels in mm, from the first of PITCH_ATTRIBUTES holding two positive
    finite numbers; None when none does."""
    for keyword in PITCH_ATTRIBUTES:
        values = _floats(ds, keyword)
        if len(values) >= 2 and all(math.isfinite(v) and v > 0 for v in values[:2]):
            return float(values[0]), float(values[1])
    return None


def field_mm(shape: tuple[int, int], pitch: tuple[float, float]) -> float:
    """The length in mm of the long side, in pixels, of `shape` (rows, cols) source px of `pitch` (row, column)
    mm: the side a display's long side follows (`target_shape`), rows on a tie. Pixels that are not square (a
    rare scanner) are not resampled, so the pitch of a display is its long side's."""
    axis = 0 if shape[0] >= shape[1] else 1
    return shape[axis] * pitch[axis]


def pitch_long_side(size: AtPitch, shape: tuple[int, int], pitch: tuple[float, float] | None) -> int | None:
    """The long side in px at which `shape` (rows, cols of source px of `pitch` mm) shows `size`'s pitch; None
    without a pitch or outside PITCH_RANGE (the spacing is taken for an error: `size`'s own long side is shown)."""
    if pitch is None:
        return None
    n = round(field_mm(shape, pitch) / REFERENCE_FIELD_MM * size.long_side)
    low, high = PITCH_RANGE
    return n if low * size.long_side <= n <= high * size.long_side else None


@dataclass
class Rendition:
    """The display images of one DICOM file and how they were made."""

    images: dict[int | AtPitch, np.ndarray]  # size asked (long side, or AtPitch) -> uint8 HxW display image
    voi_method: str  # "voi_lut", "window:LINEAR", "window:LINEAR_EXACT", "window:SIGMOID" or "percentile"
    fallback_reason: str | None  # why a VOI LUT or window was not used
    inverted: bool
    source_shape: tuple[int, int]  # (Rows, Columns) as stored
    content_box: tuple[int, int, int, int] | None = None  # (top, left, bottom, right) kept, source px; None: all
    pitch_mm: tuple[float, float] | None = None  # (row, column) pitch of the source px used by AtPitch; None: none

    @property
    def content_shape(self) -> tuple[int, int]:
        """(rows, columns) in source px of what the images show: the stored frame less a cut frame of padding."""
        if self.content_box is None:
            return self.source_shape
        top, left, bottom, right = self.content_box
        return bottom - top, right - left

    def mm_per_px(self, size: int | AtPitch) -> float | None:
        """The millimetres one pixel of `images[size]` spans (the long side's), from the source's pixel pitch;
        None when the pitch is not known."""
        if self.pitch_mm is None:
            return None
        return field_mm(self.content_shape, self.pitch_mm) / max(self.images[size].shape)

    @property
    def trimmed(self) -> str | None:
        """The frame of padding cut away, in source px per side ("top 410, left 0, bottom 410, right 320 px of
        padding cut"), or None."""
        if self.content_box is None:
            return None
        top, left, bottom, right = self.content_box
        rows, cols = self.source_shape
        return f"top {top}, left {left}, bottom {rows - bottom}, right {cols - right} px of padding cut"


@dataclass(frozen=True)
class Window:
    """One (0028,1050) Window Center / (0028,1051) Window Width pair and its (0028,1056) VOI LUT Function."""

    center: float
    width: float
    function: str = "LINEAR"


# --- 1. Modality LUT ---------------------------------------------------------------------------------------


def apply_rescale(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the Modality LUT: (0028,3000) Modality LUT Sequence, else Rescale Slope/Intercept.

    Parameters
    ----------
    arr : numpy.ndarray
        Stored values (or their area averages).
    ds : Dataset
        Holds (0028,3000) Modality LUT Sequence, or (0028,1053) Rescale Slope and (0028,1052) Rescale
        Intercept; a missing slope is 1, a missing intercept 0. A slope of 0 is ignored with its intercept
        (see `rescale_problem`).

    Returns
    -------
    numpy.ndarray
        float32 modality values. Without any Modality LUT tags, `arr` as float32.
    """
    if ds.get("ModalityLUTSequence"):
        first_map, lut = lut_table(ds.ModalityLUTSequence[0], ds)
        return _lookup(arr, first_map, lut)
    out = np.asarray(arr, dtype=np.float32)
    slope, intercept = _first_float(ds, "RescaleSlope", 1.0), _first_float(ds, "RescaleIntercept", 0.0)
    if slope == 0.0:  # see rescale_problem
        return out
    if slope != 1.0:
        out = out * np.float32(slope)
    if intercept != 0.0:
        out = out + np.float32(intercept)
    return out


def rescale_problem(ds: Dataset) -> str | None:
    """Why `apply_rescale` skipped the rescale of `ds`, or None: a (0028,1053) Rescale Slope of 0."""
    if not ds.get("ModalityLUTSequence") and _first_float(ds, "RescaleSlope", 1.0) == 0.0:
        return "(0028,1053) Rescale Slope 0 ignored (would map every pixel to the intercept)"
    return None


def lut_table(item: Dataset, ds: Dataset) -> tuple[int, np.ndarray]:
    """(first mapped value, entries as float32) of a Modality or VOI LUT item (PS3.3 C.11.1.1, C.11.2.1.1).

    (0028,3002) LUT Descriptor: entries (0 means 65536), first mapped value (read as signed when the
    image is), bits per entry. (0028,3006) LUT Data may be US (a list) or OW (bytes in the dataset's
    byte order); bits above the declared depth are masked off.
    """
    n_entries, first_map, bits = (int(v) for v in list(item.LUTDescriptor)[:3])
    n_entries = n_entries or 65536
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and first_map >= 32768:
        first_map -= 65536
    value = item["LUTData"].value
    if isinstance(value, bytes | bytearray):
        big_endian = _is_big_endian(ds)
        dtype = np.uint8 if len(value) == n_entries and bits <= 8 else np.dtype(">u2" if big_endian else "<u2")
        data = np.frombuffer(value, dtype=dtype)
    else:
        data = np.asarray(value if isinstance(value, list | MultiValue | tuple) else [value], dtype=np.int64)
    data = data[:n_entries].astype(np.int64)
    if 8 <= bits < 16:
        data &= (1 << bits) - 1
    return first_map, data.astype(np.float32)


# --- 2. VOI ------------------------------------------------------------------------------------------------


def read_window(ds: Dataset, index: int = 0) -> tuple[Window | None, str | None]:
    """The window at `index` of (0028,1050) Window Center / (0028,1051) Window Width, and a note.

    Centers and widths are indexed independently and clamped to their last value, so VM 3 centers with
    VM 1 width use that one width. Padded or backslash-trailed DS strings are tolerated. The function
    comes from (0028,1056) VOI LUT Function, upper-cased and stripped; missing or empty is LINEAR, an
    unknown value is LINEAR with a note. Returns (None, note) when no usable pair exists.
    """
    centers, widths = _floats(ds, "WindowCenter"), _floats(ds, "WindowWidth")
    if not centers and not widths:
        present = [tag for keyword, tag in _WINDOW_TAGS if _has_text(ds, keyword)]
        return None, (f"{' and '.join(present)} present but unreadable" if present else None)
    if not centers or not widths:
        missing = "(0028,1050) Window Center" if not centers else "(0028,1051) Window Width"
        return None, f"{missing} missing or unreadable"
    raw = ds.get("VOILUTFunction", "")
    raw = raw[0] if isinstance(raw, MultiValue) and len(raw) else raw
    function = str(raw or "").strip().upper().replace(" ", "_").replace("-", "_") or "LINEAR"
    note = None
    if function not in WINDOW_FUNCTIONS:
        note = f"unknown (0028,1056) VOI LUT Function {raw!r}, used LINEAR"
        function = "LINEAR"
    window = Window(centers[min(index, len(centers) - 1)], widths[min(index, len(widths) - 1)], function)
    return window, note


def window_count(ds: Dataset) -> int:
    """How many (0028,1050) Window Center / (0028,1051) Window Width pairs `ds` holds: the larger of the two
    value multiplicities (`read_window` clamps the shorter one), 0 when either is missing or unreadable."""
    centers, widths = _floats(ds, "WindowCenter"), _floats(ds, "WindowWidth")
    return max(len(centers), len(widths)) if centers and widths else 0


def window_linear(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """LINEAR window (PS3.3 C.11.2.1.2.1) onto [0, 1]: 0 for x <= c-0.5-(w-1)/2, 1 for x > c-0.5+(w-1)/2.

    Requires (0028,1051) Window Width >= 1; width exactly 1 is a step at c - 0.5.
    """
    c, w = center - 0.5, width - 1.0
    x = np.asarray(arr, dtype=np.float32)
    if w <= 0:
        return (x > c).astype(np.float32)
    return np.clip((x - np.float32(c)) / np.float32(w) + np.float32(0.5), 0.0, 1.0)


def window_linear_exact(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """LINEAR_EXACT window (PS3.3 C.11.2.1.3.2) onto [0, 1]: (x - c) / w + 0.5, clipped. Requires w > 0."""
    x = np.asarray(arr, dtype=np.float32)
    return np.clip((x - np.float32(center)) / np.float32(width) + np.float32(0.5), 0.0, 1.0)


def window_sigmoid(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """SIGMOID window (PS3.3 C.11.2.1.3.1) onto (0, 1): 1 / (1 + exp(-4 (x - c) / w)). Requires w > 0."""
    x = np.asarray(arr, dtype=np.float32)
    z = np.clip(np.float32(-4.0 / width) * (x - np.float32(center)), -80.0, 80.0)
    return (1.0 / (1.0 + np.exp(z))).astype(np.float32)


def apply_window(arr: np.ndarray, window: Window) -> np.ndarray:
    """Apply `window` with its VOI LUT Function; output float32 in [0, 1]."""
    function = {"LINEAR": window_linear, "LINEAR_EXACT": window_linear_exact, "SIGMOID": window_sigmoid}
    return function[window.function](arr, window.center, window.width)


def check_window(window: Window, arr: np.ndarray, bits_stored: int) -> str | None:
    """Why `window` is unusable on the modality values `arr`, or None when it is fine.

    Degenerate: (0028,1051) Window Width < 1 (LINEAR) or <= 0 (LINEAR_EXACT, SIGMOID); a window wholly
    outside the data range; an 8-bit window (top <= 256) on non-negative data whose maximum is over four
    times the window top, with more than a quarter of the pixels above it, when (0028,0101) Bits Stored > 8;
    and its mirror, a window centred above every value Bits Stored can hold, above the data's maximum, and over
    four times as wide as the part of it the data cover (an 8-bit export that kept its 12-bit window: the image
    showed black). The factor four is the 8-bit rule's, set before measuring, not fitted to any data set; a
    low-contrast image under a wide window of its own depth keeps it (pydicom's test files hold such).
    """
    if window.function == "LINEAR" and window.width < 1:
        return f"(0028,1051) Window Width {window.width:g} < 1 for LINEAR"
    if window.width <= 0:
        return f"(0028,1051) Window Width {window.width:g} <= 0 for {window.function}"
    lo, hi = window.center - window.width / 2, window.center + window.width / 2
    data_min, data_max = float(arr.min()), float(arr.max())
    if data_max > data_min and (hi < data_min or lo > data_max):
        return f"window [{lo:g}, {hi:g}] lies outside the data range [{data_min:g}, {data_max:g}]"
    if bits_stored > 8 and hi <= 256 and data_min >= 0 and data_max > 4 * hi and float((arr > hi).mean()) > 0.25:
        return f"window [{lo:g}, {hi:g}] looks 8-bit on {bits_stored}-bit data (max {data_max:g})"
    deeper = window.center >= 2**bits_stored and data_max < window.center
    if deeper and window.width > 4 * (min(hi, data_max) - max(lo, data_min)):
        return (
            f"window [{lo:g}, {hi:g}] is centred above every {bits_stored}-bit value and over four times as wide "
            f"as the data it covers ([{data_min:g}, {data_max:g}]): made for deeper pixels"
        )
    return None


def apply_voi_lut_sequence(arr: np.ndarray, ds: Dataset, index: int = 0) -> np.ndarray | None:
    """Map `arr` through item `index` of (0028,3010) VOI LUT Sequence onto [0, 1].

    Values below the first mapped value take entry 0, values past the end the last entry (PS3.3
    C.11.2.1.1); non-integer inputs (area averages) are linearly interpolated between entries. The output is
    divided by the top of the LUT's output range (`lut_output_top`). Returns None without a usable sequence or
    when the LUT holds no positive value.
    """
    seq = ds.get("VOILUTSequence")
    if not seq or index >= len(seq) or "LUTDescriptor" not in seq[index] or "LUTData" not in seq[index]:
        return None
    first_map, lut = lut_table(seq[index], ds)
    if not lut.size or lut.max() <= 0:
        return None
    return _lookup(arr, first_map, lut) / np.float32(lut_output_top(lut))


def lut_output_top(lut: np.ndarray) -> int:
    """The white of a VOI LUT's output: 2**k - 1 for the smallest depth k (8 to 16 bits) that holds its largest
    entry. The LUT Descriptor's bits per entry is often 16 for a LUT of 12-bit values, so the declared depth would
    show such an image dark; the largest entry itself (used until stop 64) showed a LUT that stops short of its
    white (a 16-bit LUT topping out at 60000) brighter than PS3.3 C.11.2.1.1 says, tissue as white as metal."""
    return 2 ** max(8, min(16, int(lut.max()).bit_length())) - 1


def percentile_window(
    arr: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE, mask: np.ndarray | None = None
) -> tuple[np.ndarray, str | None]:
    """Linear map of the `low`..`high` percentile range onto [0, 1], clipped; (image, note).

    Falls back to min..max when the percentiles coincide; a constant image gives zeros and a note.
    Percentiles come from at most ~250k evenly strided pixels, only those where `mask` (HxW bool, True = image,
    False = padding) is True when given.
    """
    x = np.asarray(arr, dtype=np.float32)
    step = max(1, int(math.sqrt(x.size / 250_000)))
    sample = x[::step, ::step] if mask is None else x[::step, ::step][mask[::step, ::step]]
    if sample.size == 0:
        sample = x[mask] if mask is not None and mask.any() else x.ravel()
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        return np.zeros_like(x), f"constant image (every value {lo:g})"
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0), None


def range_window(arr: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, str | None]:
    """Linear map of the image's own min..max (pixels where `mask` is True, padding left out) onto [0, 1]; (image,
    note). A constant image gives zeros and a note.

    Values beyond OUTLIER_REACH times the span of the 1st-99th percentiles from it (above the 1st, below the 99th)
    are left out of the range, shown white or black, and the note counts them: a dead pixel or a burned-in label
    at the top of Bits Stored would otherwise set the range alone and squeeze the breast into a few gray levels.
    A clip stays in it: the vendor's display values put metal within a small multiple of the densest tissue."""
    x = np.asarray(arr, dtype=np.float32)
    values = x[mask] if mask is not None and mask.any() else x.ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(x), f"constant image (every value {lo:g})"
    step = max(1, values.size // 250_000)
    p1, p99 = (float(v) for v in np.percentile(values[::step], [1, 99]))
    reach = OUTLIER_REACH * (p99 - p1)
    note = None
    if p99 > p1 and (hi > p1 + reach or lo < p99 - reach):
        inside = values[(values >= p99 - reach) & (values <= p1 + reach)]
        lo, hi = float(inside.min()), float(inside.max())
        note = (
            f"{values.size - inside.size} pixel(s) beyond {OUTLIER_REACH:g} times the 1st-99th percentile span "
            f"[{p1:g}, {p99:g}] left out of the range (a dead pixel or a burned-in label)"
        )
    return np.clip((x - np.float32(lo)) / np.float32(max(hi - lo, 1e-6)), 0.0, 1.0), note


def apply_voi(
    arr: np.ndarray, ds: Dataset, mask: np.ndarray | None = None, header: bool = True
) -> tuple[np.ndarray, str, str | None]:
    """The VOI step: VOI LUT Sequence, else window index 0, else the image's own range (min..max, or the
    percentiles of a For Processing image); (image in [0,1], method 'voi_lut' | 'window:<function>' | 'range' |
    'percentile', reason). `mask` (HxW bool, True = image) keeps padding out of the window checks, the range
    and the percentiles; `header=False` goes straight to the image's own range."""
    reasons: list[str] = [] if header else ["the header's VOI LUT and windows not used: it misstates the pixel values"]
    data = arr if mask is None or not mask.any() else arr[mask]
    items = (ds.get("VOILUTSequence") or []) if header else []
    for index in range(len(items)):  # the first usable item (PS3.3 C.11.2: item 0 is the default)
        lut_out = apply_voi_lut_sequence(arr, ds, index)
        where = f"(0028,3010) VOI LUT Sequence item {index}" if len(items) > 1 else "(0028,3010) VOI LUT Sequence"
        if lut_out is None:
            reasons.append(f"{where} unusable (no descriptor/data or no positive entry)")
        elif _flat(lut_out if mask is None or not mask.any() else lut_out[mask]) and not _flat(data):
            reasons.append(f"{where} maps the image to one gray level")
        else:
            return lut_out, "voi_lut", "; ".join(reasons) or None
    count = window_count(ds) if header else 0
    if not count:  # no window pair: say why, unless a VOI LUT item's reason already stands
        note = read_window(ds)[1] if header else None
        if note or not reasons:
            reasons.append(note or "no VOI LUT Sequence or Window Center/Width")
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    for index in range(count):  # the first usable pair: index 0 is the default, the later ones alternatives
        window, note = read_window(ds, index)
        problem = check_window(window, data, bits)
        if problem is None:
            out = apply_window(arr, window)
            if not (_flat(out if mask is None or not mask.any() else out[mask]) and not _flat(data)):
                return out, f"window:{window.function}", "; ".join([*reasons, *([note] if note else [])]) or None
            problem = f"window {window.center:g}/{window.width:g} maps the image to one gray level"
        reasons.append(f"window {index + 1} of {count}: {problem}" if count > 1 else problem)
    image = mask if mask is not None and mask.any() else None
    if is_for_processing(ds):
        out, constant = percentile_window(arr, mask=image)
        return out, "percentile", "; ".join([*reasons, *([constant] if constant else [])])
    out, note = range_window(arr, mask=image)
    return out, "range", "; ".join([*reasons, *([note] if note else [])])


# --- 3. Inversion ------------------------------------------------------------------------------------------


def is_inverted(ds: Dataset) -> bool:
    """True when (0028,0004) Photometric Interpretation is MONOCHROME1 (see the module docstring's policy)."""
    return str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"


def invert(arr: np.ndarray) -> np.ndarray:
    """1 - arr for an image in [0, 1]."""
    return np.float32(1.0) - arr


# --- 4. Resize ---------------------------------------------------------------------------------------------


def target_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(rows, cols) with the longer side `long_side` and the aspect ratio of `shape`."""
    rows, cols = shape
    scale = long_side / max(rows, cols)
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def resize_area(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize `arr` to `shape` (rows, cols); float32 out.

    Down: an integer-factor block mean (strided sums, exact), then Pillow's BOX filter for the rest. Up: bilinear.
    The block mean drops the last `size % factor` rows/columns; the factor is lowered until that shifts the image
    by less than 0.1 output pixel. BOX is not an exact area mean: it gives each pixel whole to the output pixel
    whose area holds its centre, so for the factor below 2 left after the block mean an output pixel averages 1 or
    2 pixels per axis (stop 64's probe: 0.4-2.9 gray levels off an exact area mean on average over the real
    images' displays, up to 15 at sharp edges). Kept: every cached rendition and every trained model was made
    with it, and an exact mean would render every image again (README, Limitations).
    """
    if arr.shape == tuple(shape):
        return np.asarray(arr, dtype=np.float32)
    rows, cols = shape
    factor = min(arr.shape[0] // rows, arr.shape[1] // cols)
    # the block mean crops edge rows/cols; keep the resulting shift under 0.1 output pixel
    while factor >= 2 and any((n % factor) * m > 0.1 * n for n, m in zip(arr.shape, shape, strict=True)):
        factor -= 1
    if factor >= 2:
        arr = _block_mean(arr, factor)
        if arr.shape == tuple(shape):
            return arr
    down = rows <= arr.shape[0] and cols <= arr.shape[1]
    image = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    method = Image.Resampling.BOX if down else Image.Resampling.BILINEAR
    return np.asarray(image.resize((cols, rows), method), dtype=np.float32)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """[0, 1] float image to uint8 0..255, rounded."""
    return np.clip(np.rint(arr * np.float32(255.0)), 0, 255).astype(np.uint8)


# --- The pipeline ------------------------------------------------------------------------------------------


def render_pixels(
    ds: Dataset,
    pixels: np.ndarray,
    sizes: Sequence[int | AtPitch] = (1024,),
    padding: np.ndarray | None = None,
    note: str | None = None,
    header_voi: bool = True,
) -> Rendition:
    """Run steps 1-4 on already decoded stored values (full size or a reduced J2K level) of `ds`; `padding` (bool,
    the shape of `pixels`) adds the padding the decoder found before fitting the values to Bits Stored
    (`decode.padding_beyond_bits`); `note` (the decoder's, `decode.fit_bits_stored`) leads `fallback_reason`;
    `header_voi=False` skips the header's VOI LUT and windows (a header that misstates its values)."""
    asked = list(dict.fromkeys(sizes))
    if not asked or any(_long(s) < NATIVE or (isinstance(s, AtPitch) and s.long_side < 1) for s in asked):
        raise ValueError(f"sizes must be positive long sides (or NATIVE, 0, or AtPitch), got {list(sizes)}")
    source_shape = (int(ds.Rows), int(ds.Columns))
    found = padding_mask(ds, pixels)
    padding = padding if found is None else found if padding is None else found | padding
    box = content_box(pixels, padding, is_inverted(ds))
    kept = None if box is None else _in_source_px(box, pixels.shape, source_shape)
    if box is not None:  # every step runs on the image inside its frame of padding
        top, left, bottom, right = box
        pixels = np.ascontiguousarray(pixels[top:bottom, left:right])
        if padding is not None:
            padding = padding[top:bottom, left:right] if padding[top:bottom, left:right].any() else None
    content = source_shape if kept is None else (kept[2] - kept[0], kept[3] - kept[1])
    pitch = pixel_pitch(ds) if any(isinstance(size, AtPitch) for size in asked) else None
    at_pitch = {size: pitch_long_side(size, content, pitch) for size in asked if isinstance(size, AtPitch)}
    if all(n is None for n in at_pitch.values()):
        pitch = None  # refused: no mm per pixel is claimed for any size
    wanted = {  # NATIVE: the content's own long side
        size: (at_pitch[size] or size.long_side) if isinstance(size, AtPitch) else size or max(content)
        for size in asked
    }
    work_shape = target_shape(content, min(max(wanted.values()), max(content)))
    weight = None if padding is None else ~padding
    if ds.get("ModalityLUTSequence"):  # a LUT is not linear: apply it per pixel, then average
        values, inside = resize_masked(apply_rescale(pixels, ds), weight, work_shape)
    else:  # rescale is linear, so averaging first is exact and cheaper
        zero = (
            padding is not None
            and _floats(ds, "PixelPaddingValue")[:1] == [0.0]
            and not _floats(ds, "PixelPaddingRangeLimit")
        )
        values, inside = resize_masked(pixels, weight, work_shape, zero_outside=zero)
        values = apply_rescale(values, ds)
    mask = None if inside is None else inside > 0
    display, method, reason = apply_voi(values, ds, mask, header=header_voi)
    reason = "; ".join(r for r in (note, rescale_problem(ds), reason) if r) or None
    inverted = is_inverted(ds)
    if inverted:
        display = invert(display)
    if mask is not None:
        display = np.where(mask, display, np.float32(0.0))  # padding is no image: black
    images = {}
    for size, long_side in wanted.items():
        small, _ = resize_masked(display, mask, target_shape(content, long_side), zero_outside=True)
        images[size] = to_uint8(small)
    return Rendition(images, method, reason or None, inverted, source_shape, kept, pitch)


# The long side that asks `render` for the image at its stored size: the content's own, whatever frame is cut
NATIVE = 0
# A frame of padding leaves a rectangle of image: what is not padding fills at least this share of the box inside
# the frame's whole lines, but for the rim where a reduced-resolution decode mixes padding in (set before measuring,
# the value `model/air.py` asks of a collimated field, RECTANGLE_FILL). A breast whose air is stored at the darkest
# value fills about pi/4 of its box (the skin line curves): its air is not a frame.
CONTENT_FILL = 0.95


def content_box(pixels: np.ndarray, padding: np.ndarray | None, inverted: bool) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), in `pixels`' px, of the image inside a frame of padding; None when none.

    Blank is what `padding` (HxW bool) marks, or the stored value that displays black (the least, or the greatest
    when `inverted`: MONOCHROME1), since a border is often written without a Pixel Padding Value. The box drops
    the edge lines wholly blank and is kept only when what is not blank fills CONTENT_FILL of it: a frame. Air
    stored at that value around a breast is blank too, but leaves the breast, not a rectangle (module docstring),
    so the declared padding is tried alone first: a declared frame round a breast whose air is stored at the
    darkest value was not cut, the two together leaving the breast (stop 64's probe).
    """
    if pixels.ndim != 2 or pixels.size == 0:
        return None
    dark = pixels.max() if inverted else pixels.min()
    edges = (pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1])
    masks = (padding[0], padding[-1], padding[:, 0], padding[:, -1]) if padding is not None else (None,) * 4
    if not any((e == dark).all() or (m is not None and m.all()) for e, m in zip(edges, masks, strict=True)):
        return None  # the common case, four lines read
    blank = pixels == dark
    if padding is not None:
        box = _frame_box(padding)
        if box is not None:
            return box
        blank |= padding
    return _frame_box(blank)


def _frame_box(blank: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box inside the edge lines wholly `blank` (HxW bool) when what is not blank fills CONTENT_FILL of it."""
    rows, cols = np.flatnonzero(~blank.all(axis=1)), np.flatnonzero(~blank.all(axis=0))
    if not len(rows):
        return None  # all blank: nothing to keep
    box = int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
    top, left, bottom, right = box
    if box == (0, 0, *blank.shape) or float((~blank[top:bottom, left:right]).mean()) < CONTENT_FILL:
        return None
    return box


def _in_source_px(
    box: tuple[int, int, int, int], shape: tuple[int, ...], source: tuple[int, int]
) -> tuple[int, int, int, int]:
    """`box` in px of an array of `shape` (a reduced-resolution decode, or the stored size) in source px."""
    sy, sx = source[0] / shape[0], source[1] / shape[1]
    top, left, bottom, right = box
    return round(top * sy), round(left * sx), min(source[0], round(bottom * sy)), min(source[1], round(right * sx))


def squeezed(display: np.ndarray) -> bool:
    """Whether a display image (uint8 HxW) shows its central 98 % of pixels within a quarter of the gray scale:
    what a window made for deeper pixels or a range stretched by a dead pixel left (`rendition_current`). A
    mammogram's display spans the air's black to the tissue's gray. Every fourth pixel of every fourth line is
    enough for two percentiles (an upgrade reads a million of them)."""
    if display.size == 0:
        return False
    p1, p99 = np.percentile(display[::4, ::4], [1, 99])
    return float(p99 - p1) < 64


def constant_edge(display: np.ndarray) -> bool:
    """Whether a display image (uint8 HxW) has an edge line of one gray level: what a frame of padding at least a
    display pixel deep leaves (`rendition_current`). Noise and anatomy never fill a whole line with one value."""
    if display.ndim != 2 or display.size == 0:
        return False
    lines = (display[0], display[-1], display[:, 0], display[:, -1])
    return any(int(line.max()) == int(line.min()) for line in lines)


def padding_mask(ds: Dataset, pixels: np.ndarray) -> np.ndarray | None:
    """HxW bool, True where a stored value is padding; None when the header declares none or none occurs.

    Padding is (0028,0120) Pixel Padding Value, or every value between it and (0028,0121) Pixel Padding Range
    Limit inclusive (either order), in stored-value units (PS3.3 C.7.5.1.1.2). Where a reduced-resolution decode
    mixes padding with tissue at an edge, only values still inside that range count as padding.
    """
    padding = padding_range(ds)
    if padding is None:
        return None
    lo, hi = padding
    mask = pixels == lo if lo == hi else (pixels >= lo) & (pixels <= hi)
    return mask if mask.any() else None


def resize_masked(
    arr: np.ndarray, weight: np.ndarray | None, shape: tuple[int, int], *, zero_outside: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Area-resize `arr` averaging only where `weight` (HxW bool, True = image) is set; (values, output weight).

    Each output pixel is the mean of the image pixels it covers (0 where it covers none), and the output weight
    is the image share of its area (float32 in [0, 1]). Without `weight`, plain `resize_area` and None.
    `zero_outside` says `arr` is already 0 wherever `weight` is False (padding stored as 0), saving a copy.
    """
    if weight is None:
        return resize_area(arr, shape), None
    # mean(value * inside) / mean(inside) per output pixel; both means in the input's own integer dtype where it
    # has one (the block mean's fast integer path), never a full-size float copy
    covered = resize_area(weight.view(np.uint8) if weight.dtype == bool else weight, shape)
    zeroed = arr if zero_outside else np.where(weight, arr, np.zeros((), dtype=arr.dtype))
    summed = resize_area(zeroed, shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(covered > 0, summed / np.maximum(covered, np.float32(1e-12)), np.float32(0.0))
    return values.astype(np.float32), covered


def render(source: Dataset | Path, sizes: Sequence[int | AtPitch] = (1024,)) -> Rendition:
    """Decode `source` once and render it at each long side in `sizes`.

    Parameters
    ----------
    source : Dataset or Path
        A dataset with its Pixel Data, or a DICOM file (read once with ``dcmread``).
    sizes : sequence of int
        Long sides of the uint8 display images wanted (default 1024), of the image inside any frame of padding
        cut away (`content_box`). Smaller images are never upscaled before the VOI step; a size above the
        source is bilinearly upscaled at the end. NATIVE (0) asks for the image at its stored size, decoded in
        full (`images[NATIVE]`); `AtPitch(n)` for the long side that shows its pitch (`pitch_long_side`).

    Returns
    -------
    Rendition

    Raises
    ------
    UnusableImage
        NotDicom, Truncated, NoPixelData, Undecodable or Unsupported, naming the file and the tag.
        A missing file raises FileNotFoundError.
    """
    ds, path = read_dataset(source)
    try:
        ds = frame_attributes(ds)  # frame 0's window, rescale and pixel spacing, at the top level
        native = any(_long(s) == NATIVE for s in sizes)
        frame = decode_frame(ds, None if native else _decode_long_side(ds, sizes), path=path)
        return render_pixels(ds, frame.pixels, sizes, frame.padding, frame.note, header_voi=not frame.beyond_bits)
    except UnusableImage:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError) as exc:
        # odd header values (a LUT descriptor with 2 values, a DS that is text, ...) that the checks did not catch
        raise Unsupported(f"{path}: cannot render ({type(exc).__name__}: {exc})") from exc


def _read_bare(path: str, error: InvalidDicomError) -> Dataset:
    """A data set written without preamble and File Meta (PS3.10 not followed), read with `force=True`.

    Accepted only when the file starts with a group 0008 element and holds a SOP Class or Instance UID, as the
    index does; the transfer syntax is the one pydicom detects (Implicit VR Little Endian is PS3.5's default).
    Raises NotDicom otherwise.
    """
    with open(path, "rb") as fp:
        head = fp.read(8)
    group, element = int.from_bytes(head[:2], "little"), int.from_bytes(head[2:4], "little")
    if len(head) < 8 or group not in (0x0002, 0x0008) or element >= 0x100:
        raise NotDicom(f"{path}: not a DICOM file ({error})") from error
    ds = pydicom.dcmread(path, force=True)
    if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
        raise NotDicom(f"{path}: no File Meta and no SOP Class / Instance UID: not a DICOM data set") from error
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return ds  # File Meta without the preamble
    implicit, little = ds.original_encoding
    syntax = pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else syntax
    return ds


def _decode_long_side(ds: Dataset, sizes: Sequence[int | AtPitch]) -> int:
    """The largest long side of `sizes` on the stored matrix (before a frame is cut: an upper bound), for the
    decoder's resolution level; Rows and Columns not yet checked (`decode_frame` names them when missing)."""
    try:
        stored = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        stored = None
    pitch = pixel_pitch(ds) if stored else None
    return max(
        (pitch_long_side(s, stored or (0, 0), pitch) or s.long_side) if isinstance(s, AtPitch) else int(s)
        for s in sizes
    )


def _long(size: int | AtPitch) -> int:
    """The long side a size names (AtPitch: its reference long side)."""
    return size.long_side if isinstance(size, AtPitch) else int(size)


def to_display(source: Dataset | Path, long_side: int) -> np.ndarray:
    """The uint8 display image of `source` with long side `long_side`."""
    return render(source, (long_side,)).images[long_side]


def read_dataset(source: Dataset | Path | str) -> tuple[Dataset, str]:
    """(dataset, name for messages); a path is read once with pydicom, errors mapped to UnusableImage."""
    if isinstance(source, Dataset):
        return source, str(getattr(source, "filename", None) or "<dataset>")
    path = str(source)
    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError as exc:
            ds = _read_bare(path, exc)
    except (EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
            raise
        raise Truncated(f"{path}: file ends early ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # pydicom raises many types on garbage headers
        raise NotDicom(f"{path}: unreadable header ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds and "Rows" in ds and "FloatPixelData" not in ds:
        raise Truncated(f"{path}: the file ends before (7FE0,0010) Pixel Data that (0028,0010) Rows promises")
    check_image(ds, path)
    return ds, path


# --- helpers -----------------------------------------------------------------------------------------------


def _lookup(arr: np.ndarray, first_map: int, lut: np.ndarray) -> np.ndarray:
    x = np.asarray(arr, dtype=np.float32) - np.float32(first_map)
    if np.issubdtype(np.asarray(arr).dtype, np.integer):
        return lut[np.clip(x, 0, lut.size - 1).astype(np.int64)]
    return np.interp(x, np.arange(lut.size, dtype=np.float32), lut).astype(np.float32)


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each factor x factor block, by strided row then column sums (much faster than reshape+mean)."""
    rows, cols = arr.shape[0] // factor * factor, arr.shape[1] // factor * factor
    arr = arr[:rows, :cols]
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        acc = np.uint32
    elif arr.dtype.kind in "iub":
        acc = np.int64
    else:
        acc = np.float64
    summed = arr[0::factor].astype(acc)
    for i in range(1, factor):
        summed += arr[i::factor]
    out = summed[:, 0::factor].copy()
    for i in range(1, factor):
        out += summed[:, i::factor]
    return (out / np.float32(factor * factor)).astype(np.float32)


def _flat(arr: np.ndarray) -> bool:
    return float(arr.max()) - float(arr.min()) < 1.0 / 255.0


_WINDOW_TAGS = (("WindowCenter", "(0028,1050) Window Center"), ("WindowWidth", "(0028,1051) Window Width"))


def _has_text(ds: Dataset, keyword: str) -> bool:
    """Whether the element is present with a value other than blanks and backslashes (a window written "2047,5")."""
    if keyword not in ds:
        return False
    raw = ds.get_item(keyword).value
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes | bytearray) else str(raw if raw is not None else "")
    return bool(text.replace("\\", "").strip(" \x00[]',"))


def _first_float(ds: Dataset, keyword: str, default: float) -> float:
    values = _floats(ds, keyword)
    return values[0] if values else default


def _is_big_endian(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is not None:
        return str(uid) == "1.2.840.10008.1.2.2"
    return getattr(ds, "original_encoding", (None, True))[1] is False
