"""One `dicom_index` row per DICOM file, read from the header alone, plus what the metadata says about mag/spot.

Pixel data is never loaded: the parser stops at (7FE0,0010) Pixel Data, and its presence and declared length
come from that stopping point, which also reveals files cut short inside the pixel data. No patient text
(name, birth date, raw IDs, accession, institution) enters the row: the patient is a salted hash.

Metadata rules of `meta_flags` (first rule that fires wins; every rule is recorded in `meta_*_rule`):

mag
  1. `view_modifier:399163009`   a Magnification code in ViewModifierCodeSequence (SCT, or SNM3/SRT R-102D6).
  2. `series_description:MAG`    SeriesDescription holds the word MAG / MAGNIFICATION / MAGNIFIED.
  3. `magnification_factor>=1.3` (0018,1114) Estimated Radiographic Magnification Factor of 1.3 or more.
  4. `view_modifier:other`       -> False: the device coded modifiers, and Magnification is not among them.
  5. `silent`                    -> None.
spot
  1. `view_modifier:399055006`   a Spot Compression code (SCT, or SNM3/SRT R-102D7).
  2. `series_description:SPOT`   SeriesDescription holds the word SPOT.
  3. `paddle_description:SPOT`   (0018,11A4) Paddle Description names a spot paddle.
  4. `view_modifier:other`       -> False, as for mag.
  5. `silent`                    -> None.

Not evidence, on purpose: a factor below 1.3 (Hologic Lorad writes 1.0 on true mag views), Grid NONE
(Siemens PRIME has no grid on every view), focal spot 0.1 mm (also used for some contact views), and a
SeriesDescription without the words (most vendors never write them).
"""

from __future__ import annotations

import hashlib
import re
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from mammo_pipeline.dicom.errors import NoPixelData, NotDicom, NotMammography, Truncated, Unsupported, UnusableImage

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
MAMMO_SOP_CLASSES = {MG_FOR_PRESENTATION: False, MG_FOR_PROCESSING: True}  # uid -> for_processing

# SNOMED-RT / SNM3 code -> SCT concept (PS3.16 CID 4014 views, CID 4015 view modifiers).
SRT_TO_SCT: dict[str, str] = {
    "R-102D6": "399163009",  # Magnification
    "R-102D7": "399055006",  # Spot Compression
    "R-102D5": "399209000",  # Implant Displaced
    "R-10242": "399162004",  # cranio-caudal
    "R-10226": "399368009",  # medio-lateral oblique
    "R-10224": "399260004",  # medio-lateral
    "R-10228": "399352003",  # latero-medial
    "G-8310": "127457009",  # tissue specimen
}
SCT_MAGNIFICATION = "SCT:399163009"
SCT_SPOT_COMPRESSION = "SCT:399055006"
MAG_FACTOR_THRESHOLD = 1.3

# Whole words, where '_', digits and punctuation also separate words ("L_CC_MAG", "MAG1.8x"), but "IMAGE" does not.
_MAG_WORDS = re.compile(r"(?<![a-z])(mag|magn|magnification|magnified|magnify)(?![a-z])", re.IGNORECASE)
_SPOT_WORDS = re.compile(r"(?<![a-z])spot(?![a-z])", re.IGNORECASE)
_PIXEL_TAGS = {0x7FE00010, 0x7FE00009, 0x7FE00008}  # Pixel Data, Double Float / Float Pixel Data
_LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ", "UC", "UR", "UT"}  # explicit VRs with a 4-byte length
_UNDEFINED = 0xFFFFFFFF
_ASCII_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}  # never charset-dependent
_TEXT_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}  # depend on (0008,0005) Specific Character Set
_BINARY = {"US": ("H", 2), "UL": ("I", 4), "SS": ("h", 2), "SL": ("i", 4), "FL": ("f", 4), "FD": ("d", 8)}
_KEYWORDS = (  # noqa: SIM905 (a word list reads better than 45 lines of quotes)
    "SpecificCharacterSet SOPClassUID SOPInstanceUID StudyInstanceUID SeriesInstanceUID PatientID Modality "
    "Manufacturer ManufacturerModelName ImageType PresentationIntentType ViewPosition ImageLaterality "
    "Laterality ViewCodeSequence ViewModifierCodeSequence Rows Columns NumberOfFrames PixelSpacing "
    "ImagerPixelSpacing BitsStored BitsAllocated PhotometricInterpretation PresentationLUTShape "
    "PixelIntensityRelationship WindowCenter WindowWidth VOILUTFunction VOILUTSequence RescaleSlope "
    "RescaleIntercept SeriesDescription EstimatedRadiographicMagnificationFactor FocalSpots Grid PartialView "
    "PaddleDescription CompressionForce BodyPartThickness CodeValue CodingSchemeDesignator CodeMeaning "
).split()
_TAGS: dict[str, int] = {keyword: tag_for_keyword(keyword) for keyword in _KEYWORDS}  # type: ignore[misc]
_WANTED = frozenset(_TAGS.values())
_LONG_VRS_BYTES = frozenset(vr.encode() for vr in _LONG_VRS)
# (0008,0005) Specific Character Set (single-valued) -> Python codec for the fast text path; others go to pydicom.
_CODECS = {
    "": "utf-8",
    "ISO_IR 6": "utf-8",
    "ISO 2022 IR 6": "utf-8",
    "ISO_IR 192": "utf-8",
    "ISO_IR 100": "latin-1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6",
    "ISO_IR 126": "iso8859_7",
    "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9",
    "ISO_IR 203": "iso8859_15",
    "GB18030": "gb18030",
    "GBK": "gbk",
}
_NOT_FAST = {ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}


def pseudonymize(value: str, salt: bytes) -> str:
    """The patient key: first 16 hex digits of sha256(salt + value)."""
    return hashlib.sha256(salt + value.encode("utf-8")).hexdigest()[:16]


def read_header_row(
    path: Path, landing: Path, hospital: str, drop: str, salt: bytes, *, fast: bool = True
) -> dict[str, Any]:
    """Read one file's header (never its pixels) and return its `dicom_index` row.

    The common case (explicit VR little endian, one-byte or UTF-8 charset) is parsed straight from the bytes,
    several times faster than pydicom; anything else, and `fast=False`, goes through pydicom's parser.

    Raises
    ------
    NotDicom, Truncated, NoPixelData, NotMammography, Unsupported
        With a message naming the file; the caller quarantines it.
    """
    stat = path.stat()
    fields: _Fields | None = None
    if fast:
        try:
            fields, transfer_syntax, pixel = _read_fast(path, stat.st_size)
        except _Fallback:
            fields = None
    if fields is None:
        ds, pixel = _read_until_pixels(path, stat.st_size)
        if pixel is None:
            raise NoPixelData(f"{path}: no (7FE0,0010) Pixel Data element")
        fields, transfer_syntax = _DatasetFields(ds), str(ds.file_meta.get("TransferSyntaxUID", ""))
    sop_class = _text(fields, "SOPClassUID") or ""
    modality = (_text(fields, "Modality") or "").upper()
    if sop_class not in MAMMO_SOP_CLASSES and modality != "MG":
        raise NotMammography(f"{path}: modality {modality or '(none)'!r}, SOP class {sop_class or '(none)'!r}")
    sop_uid = _text(fields, "SOPInstanceUID") or ""
    study_uid = _text(fields, "StudyInstanceUID") or ""
    if not sop_uid or not study_uid:
        raise Unsupported(f"{path}: (0008,0018) SOP Instance UID or (0020,000D) Study Instance UID is missing")

    codes, meanings = _modifiers(fields)
    view_code, view_meaning = _view_code(fields)
    row: dict[str, Any] = {
        "hospital": hospital,
        "drop": drop,
        "rel_path": path.relative_to(landing).as_posix(),
        "file_size": stat.st_size,
        "file_mtime_ns": stat.st_mtime_ns,
        "sop_instance_uid": sop_uid,
        "study_instance_uid": study_uid,
        "series_instance_uid": _text(fields, "SeriesInstanceUID"),
        "patient_key": pseudonymize(_text(fields, "PatientID") or "", salt),
        "modality": modality or None,
        "manufacturer": _text(fields, "Manufacturer"),
        "model_name": _text(fields, "ManufacturerModelName"),
        "sop_class_uid": sop_class or None,
        "for_processing": _for_processing(fields, sop_class),
        "image_type": "\\".join(_strings(fields, "ImageType")) or None,
        "view_position": _text(fields, "ViewPosition"),
        "laterality": _text(fields, "ImageLaterality") or _text(fields, "Laterality"),
        "view_code": view_code,
        "view_code_meaning": view_meaning,
        "rows": _int(fields, "Rows"),
        "columns": _int(fields, "Columns"),
        "number_of_frames": _int(fields, "NumberOfFrames"),
        "pixel_spacing": _first_float(fields, "PixelSpacing") or _first_float(fields, "ImagerPixelSpacing"),
        "bits_stored": _int(fields, "BitsStored"),
        "bits_allocated": _int(fields, "BitsAllocated"),
        "photometric": _text(fields, "PhotometricInterpretation"),
        "presentation_lut_shape": _text(fields, "PresentationLUTShape"),
        "pixel_intensity_relationship": _text(fields, "PixelIntensityRelationship"),
        "transfer_syntax": transfer_syntax or None,
        "window_centers": _floats(fields, "WindowCenter"),
        "window_widths": _floats(fields, "WindowWidth"),
        "voi_lut_function": _text(fields, "VOILUTFunction"),
        "has_voi_lut_sequence": _has_items(fields, "VOILUTSequence"),
        "rescale_slope": _first_float(fields, "RescaleSlope"),
        "rescale_intercept": _first_float(fields, "RescaleIntercept"),
        "view_modifier_codes": codes,
        "view_modifier_meanings": meanings,
        "series_description": _text(fields, "SeriesDescription"),
        "magnification_factor": _first_float(fields, "EstimatedRadiographicMagnificationFactor"),
        "focal_spot": _first_float(fields, "FocalSpots"),
        "grid": "\\".join(_strings(fields, "Grid")) or None,
        "partial_view": _text(fields, "PartialView"),
        "paddle_description": _text(fields, "PaddleDescription"),
        "compression_force": _first_float(fields, "CompressionForce"),
        "body_part_thickness": _first_float(fields, "BodyPartThickness"),
        "pixel_data_bytes": pixel,
    }
    row["meta_mag"], row["meta_mag_rule"], row["meta_spot"], row["meta_spot_rule"] = meta_flags(row)
    row["indexed_at"] = datetime.now(UTC)
    return row


def meta_flags(row: dict[str, Any]) -> tuple[bool | None, str, bool | None, str]:
    """(meta_mag, meta_mag_rule, meta_spot, meta_spot_rule) from a header row; see the module docstring."""
    codes = list(row.get("view_modifier_codes") or [])
    description = row.get("series_description") or ""
    factor = row.get("magnification_factor")
    paddle = row.get("paddle_description") or ""

    if SCT_MAGNIFICATION in codes:
        mag, mag_rule = True, "view_modifier:399163009"
    elif mentions_mag(description):
        mag, mag_rule = True, "series_description:MAG"
    elif factor is not None and factor >= MAG_FACTOR_THRESHOLD:
        mag, mag_rule = True, f"magnification_factor>={MAG_FACTOR_THRESHOLD}"
    elif codes:
        mag, mag_rule = False, "view_modifier:other"
    else:
        mag, mag_rule = None, "silent"

    if SCT_SPOT_COMPRESSION in codes:
        spot, spot_rule = True, "view_modifier:399055006"
    elif mentions_spot(description):
        spot, spot_rule = True, "series_description:SPOT"
    elif mentions_spot(paddle):
        spot, spot_rule = True, "paddle_description:SPOT"
    elif codes:
        spot, spot_rule = False, "view_modifier:other"
    else:
        spot, spot_rule = None, "silent"
    return mag, mag_rule, spot, spot_rule


def mentions_mag(text: str | None) -> bool:
    """True when free text (SeriesDescription) holds the word MAG / MAGNIFICATION / MAGNIFIED."""
    return isinstance(text, str) and _MAG_WORDS.search(text) is not None


def mentions_spot(text: str | None) -> bool:
    """True when free text (SeriesDescription, PaddleDescription) holds the word SPOT."""
    return isinstance(text, str) and _SPOT_WORDS.search(text) is not None


def normalize_code(value: str, scheme: str) -> str:
    """'SCHEME:value' with SNM3/SRT codes mapped to SCT where the concept is known (SNM3 == SRT otherwise)."""
    value, scheme = value.strip(), scheme.strip().upper()
    if scheme in ("SRT", "SNM3") and value in SRT_TO_SCT:
        return f"SCT:{SRT_TO_SCT[value]}"
    if scheme == "SNM3":
        scheme = "SRT"
    return f"{scheme}:{value}"


def view_modifiers(ds: Dataset) -> tuple[list[str], list[str]]:
    """Codes and meanings of (0054,0222) View Modifier Code Sequence, nested in (0054,0220) and top level."""
    return _modifiers(_DatasetFields(ds))


def _modifiers(fields: _Fields) -> tuple[list[str], list[str]]:
    items = list(fields.items("ViewModifierCodeSequence"))
    for view in fields.items("ViewCodeSequence"):
        items.extend(view.items("ViewModifierCodeSequence"))
    codes: list[str] = []
    meanings: list[str] = []
    for item in items:
        value = _text(item, "CodeValue")
        if not value:
            continue
        code = normalize_code(value, _text(item, "CodingSchemeDesignator") or "")
        if code not in codes:
            codes.append(code)
            meanings.append(_text(item, "CodeMeaning") or "")
    return codes, meanings


def _view_code(fields: _Fields) -> tuple[str | None, str | None]:
    for view in fields.items("ViewCodeSequence"):
        value = _text(view, "CodeValue")
        if value:
            code = normalize_code(value, _text(view, "CodingSchemeDesignator") or "")
            return code, _text(view, "CodeMeaning")
    return None, None


def _read_until_pixels(path: Path, size: int) -> tuple[Dataset, int | None]:
    """The header, and the byte count of its Pixel Data (None when absent); raises Truncated when cut short.

    Native Pixel Data has a declared length, checked against the file size. Encapsulated (compressed)
    Pixel Data has an undefined length: its fragment item headers are walked (seeks, no pixel reads) up to
    the Sequence Delimitation Item, so a file cut inside its codestream is caught here, not at decode time.
    """
    seen: list[tuple[str | None, int]] = []

    def stop_at_pixels(tag: int, vr: str | None, length: int) -> bool:
        if tag in _PIXEL_TAGS:
            seen.append((vr, length))
            return True
        return False

    try:
        with path.open("rb") as fp:
            ds = read_partial(fp, stop_at_pixels, specific_tags=list(_TAGS.values()))
            if "TransferSyntaxUID" not in ds.file_meta:
                raise NotDicom(f"{path}: no (0002,0010) Transfer Syntax UID in the file meta")
            if not seen or ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
                return ds, None if not seen else -1  # inside a zlib stream: the length cannot be checked
            vr, length = seen[0]
            header = 12 if vr in _LONG_VRS else 8
            value_start = fp.tell() + header
            if length == _UNDEFINED:
                return ds, _walk_fragments(fp, value_start, size, path)
    except InvalidDicomError as exc:
        raise NotDicom(f"{path}: not a DICOM file ({exc})") from exc
    except (EOFError, struct.error) as exc:
        raise Truncated(f"{path}: header ends early ({exc})") from exc
    except UnusableImage:
        raise
    except Exception as exc:  # pydicom raises many kinds on garbage; all mean "cannot parse"
        raise NotDicom(f"{path}: unreadable header ({type(exc).__name__}: {exc})") from exc
    if value_start + length > size:
        raise Truncated(f"{path}: Pixel Data declares {length} bytes, the file holds {max(size - value_start, 0)}")
    if length == 0:
        raise NoPixelData(f"{path}: (7FE0,0010) Pixel Data is empty")
    return ds, length


def _walk_fragments(fp: BinaryIO, position: int, size: int, path: Path) -> int:
    """Total bytes of the encapsulated items (offset table + fragments) up to the delimiter."""
    total = 0
    while True:
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8:
            raise Truncated(f"{path}: encapsulated Pixel Data ends without its (FFFE,E0DD) delimiter")
        group, element, length = struct.unpack("<HHI", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            if total == 0:
                raise NoPixelData(f"{path}: encapsulated (7FE0,0010) Pixel Data holds no fragments")
            return total
        if (group, element) != (0xFFFE, 0xE000):
            raise Truncated(f"{path}: encapsulated Pixel Data broken at byte {position} ({group:04X},{element:04X})")
        position += 8 + length
        total += length
        if position > size:
            raise Truncated(f"{path}: a Pixel Data fragment runs {position - size} bytes past the end of the file")


def _for_processing(fields: _Fields, sop_class: str) -> bool:
    if sop_class in MAMMO_SOP_CLASSES:
        return MAMMO_SOP_CLASSES[sop_class]
    return (_text(fields, "PresentationIntentType") or "").upper() == "FOR PROCESSING"


class _Fields:
    """Read access to the elements a row needs, over pydicom's Dataset or the fast reader's raw elements."""

    def strings(self, keyword: str) -> list[str]:
        raise NotImplementedError

    def items(self, keyword: str) -> list[_Fields]:
        raise NotImplementedError


class _DatasetFields(_Fields):
    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def strings(self, keyword: str) -> list[str]:
        """Values as stripped strings; plain text and numbers decoded from the raw bytes, the rest by pydicom."""
        tag = _TAGS[keyword]
        elem = self.ds.get_item(tag)
        if elem is None:
            return []
        if isinstance(elem, RawDataElement) and elem.is_little_endian:
            vr = elem.VR or _dictionary_vr(tag)
            codec = _codec(self) if vr in _TEXT_VRS else "latin-1"
            decoded = _decode(vr, elem.value or b"", codec) if codec else None
            if decoded is not None:
                return decoded
        try:
            value = self.ds[tag].value
        except Exception:  # a malformed value (say DS 'abc') counts as absent, not as a broken file
            return []
        if value is None or value == "":
            return []
        values = value if isinstance(value, MultiValue | list | tuple) else [value]
        return [str(v).strip() for v in values]

    def items(self, keyword: str) -> list[_Fields]:
        try:
            return [_DatasetFields(item) for item in self.ds.get(keyword) or []]
        except Exception:  # an unparsable sequence counts as absent
            return []


class _RawFields(_Fields):
    """Elements parsed by `_read_fast`: tag -> (VR, bytes) or ('SQ', [items])."""

    def __init__(self, elements: dict[int, tuple[str, Any]], codec: str = "utf-8") -> None:
        self.elements, self.codec = elements, codec

    def strings(self, keyword: str) -> list[str]:
        vr, value = self.elements.get(_TAGS[keyword], ("", b""))
        return (_decode(vr, value, self.codec) or []) if vr != "SQ" else []

    def items(self, keyword: str) -> list[_Fields]:
        vr, value = self.elements.get(_TAGS[keyword], ("", []))
        return [_RawFields(item, self.codec) for item in value] if vr == "SQ" else []


def _decode(vr: str, raw: bytes, codec: str = "utf-8") -> list[str] | None:
    """Plain-text and binary-number values as strings (text VRs in `codec`); None for VRs left to pydicom."""
    if vr in _BINARY:
        code, size = _BINARY[vr]
        count = len(raw) // size
        return [str(v) for v in struct.unpack(f"<{count}{code}", raw[: count * size])]
    if vr in _ASCII_VRS or vr in _TEXT_VRS:
        text = raw.decode("latin-1" if vr in _ASCII_VRS else codec, "replace").rstrip("\x00 ")
        return [v.strip(" \x00") for v in text.split("\\")] if text else []
    return None


def _has_items(fields: _Fields, keyword: str) -> bool:
    return bool(fields.items(keyword))


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _codec(fields: _Fields) -> str | None:
    """The Python codec of the dataset's single-valued character set; None when pydicom must decode."""
    charset = fields.strings("SpecificCharacterSet")
    return _CODECS.get(charset[0] if charset else "") if len(charset) <= 1 else None


def _text(fields: _Fields, keyword: str) -> str | None:
    values = fields.strings(keyword)
    return values[0] if values and values[0] else None


def _strings(fields: _Fields, keyword: str) -> list[str]:
    return fields.strings(keyword)


def _floats(fields: _Fields, keyword: str) -> list[float]:
    out = []
    for text in fields.strings(keyword):
        try:
            out.append(float(text))
        except ValueError:
            continue
    return out


def _first_float(fields: _Fields, keyword: str) -> float | None:
    values = _floats(fields, keyword)
    return values[0] if values else None


def _int(fields: _Fields, keyword: str) -> int | None:
    values = fields.strings(keyword)
    try:
        return int(float(values[0])) if values and values[0] else None
    except ValueError:
        return None


# --- the fast reader: explicit VR little endian, straight from the bytes -----------------------------------


class _Fallback(Exception):
    """Something the fast reader leaves to pydicom (other syntaxes, charsets, anything malformed)."""


class _More(Exception):
    """The buffer ends inside the header: read more of the file."""


def _read_fast(path: Path, size: int) -> tuple[_Fields, str, int]:
    """(fields, transfer syntax, Pixel Data bytes) of an explicit-VR little-endian file; raises _Fallback else."""
    try:
        with path.open("rb") as fp:
            n = 1 << 16
            while True:
                fp.seek(0)
                buf = fp.read(n)
                try:
                    return _parse_file(buf, size, fp, path)
                except _More:
                    if len(buf) >= size:
                        raise _Fallback from None  # the file ends inside its header: pydicom says why
                    n *= 8
    except (UnusableImage, _Fallback):
        raise
    except Exception as exc:  # struct.error, UnicodeDecodeError, ...: let pydicom judge the file
        raise _Fallback from exc


def _parse_file(buf: bytes, size: int, fp: BinaryIO, path: Path) -> tuple[_Fields, str, int]:
    if buf[128:132] != b"DICM":
        raise _Fallback
    meta, pos, _ = _elements(buf, 132, meta=True)
    syntax = meta.get(0x00020010, ("", b""))[1]
    transfer_syntax = (_decode("UI", syntax) or [""])[0]
    if not transfer_syntax or transfer_syntax in _NOT_FAST:
        raise _Fallback
    elements, pos, pixel = _elements(buf, pos, top=True)
    codec = _codec(_RawFields(elements))
    if codec is None:
        raise _Fallback
    fields = _RawFields(elements, codec)
    if pixel is None:
        if len(buf) < size:
            raise _More
        raise NoPixelData(f"{path}: no (7FE0,0010) Pixel Data element")
    length, value_start = pixel
    if length == _UNDEFINED:
        return fields, transfer_syntax, _walk_fragments(fp, value_start, size, path)
    if value_start + length > size:
        raise Truncated(f"{path}: Pixel Data declares {length} bytes, the file holds {max(size - value_start, 0)}")
    if length == 0:
        raise NoPixelData(f"{path}: (7FE0,0010) Pixel Data is empty")
    return fields, transfer_syntax, length


def _elements(
    buf: bytes, pos: int, end: int | None = None, *, meta: bool = False, top: bool = False
) -> tuple[dict[int, tuple[str, Any]], int, tuple[int, int] | None]:
    """Parse elements from `pos` to `end` (or an item delimiter, or Pixel Data when `top`)."""
    elements: dict[int, tuple[str, Any]] = {}
    keep_all = not top
    while end is None or pos < end:
        if pos + 8 > len(buf):
            if top and pos == len(buf):
                return elements, pos, None
            raise _More
        group, element = struct.unpack_from("<HH", buf, pos)
        if meta and group != 0x0002:
            return elements, pos, None
        tag = group << 16 | element
        if tag == 0xFFFEE00D:  # item delimitation: end of an undefined-length item
            return elements, pos + 8, None
        vr_bytes = buf[pos + 4 : pos + 6]
        if vr_bytes in _LONG_VRS_BYTES:
            if pos + 12 > len(buf):
                raise _More
            length, value_start = struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
        elif vr_bytes.isalpha() and vr_bytes.isupper():
            length, value_start = struct.unpack_from("<H", buf, pos + 6)[0], pos + 8
        else:
            raise _Fallback
        vr = vr_bytes.decode("ascii")
        if top and tag in _PIXEL_TAGS:
            return elements, pos, (length, value_start)
        if length == _UNDEFINED:
            if vr != "SQ":
                raise _Fallback
            items, pos = _items(buf, value_start, None)
            if keep_all or tag in _WANTED:
                elements[tag] = ("SQ", items)
            continue
        value_end = value_start + length
        if value_end > len(buf):
            raise _More
        if meta or keep_all or tag in _WANTED:
            value = _items(buf, value_start, value_end)[0] if vr == "SQ" else buf[value_start:value_end]
            elements[tag] = (vr, value)
        pos = value_end
    return elements, pos, None


def _items(buf: bytes, pos: int, end: int | None) -> tuple[list[dict[int, tuple[str, Any]]], int]:
    """The items of a sequence value, to `end` or to its sequence delimiter."""
    items = []
    while end is None or pos < end:
        if pos + 8 > len(buf):
            raise _More
        group, element, length = struct.unpack_from("<HHI", buf, pos)
        tag = group << 16 | element
        if tag == 0xFFFEE0DD:  # sequence delimitation
            return items, pos + 8
        if tag != 0xFFFEE000:
            raise _Fallback
        if length == _UNDEFINED:
            item, pos, _ = _elements(buf, pos + 8, None)
        else:
            if pos + 8 + length > len(buf):
                raise _More
            item = _elements(buf, pos + 8, pos + 8 + length)[0]
            pos += 8 + length
        items.append(item)
    return items, pos
