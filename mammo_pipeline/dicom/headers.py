"""One `dicom_index` row per DICOM file, read from the header alone, plus what the metadata says about mag/spot.

Headers are read with pydicom, the one DICOM reader of the project, with `specific_tags`, stopping at (7FE0,0010)
Pixel Data; pixels are never loaded. For speed, pydicom parses the file's first `HEAD_BYTES` from memory (the file
itself when its header runs longer). A well-formed Part 10 file (preamble, File Meta, a little-endian
non-deflated syntax, the VR form the syntax says) is read by pydicom's element generator straight into a tag ->
raw element dict (`_read_plain`): the File Meta Dataset, FileDataset and their validation that `read_partial` adds
cost as much as the elements themselves. Every other file goes to `read_partial`, whose errors name what is wrong;
a test holds both paths to the same values on pydicom's own test files. The wanted raw values are decoded once in
one pass (a value seen in an earlier file is not decoded again), and short code sequences are read item by item
with pydicom's element generator, once per distinct encoding, instead of a Dataset per item. Pixel Data's presence
and declared length come from the stopping point, which also reveals files cut short. No patient text (name, birth
date, raw IDs, accession, institution, folder names) enters the row: the patient is a salted hash and `rel_path` is
pseudonymized (`source_paths.py`).

Routing (`image_kind`, `classify`; first rule that fires wins, the rule is recorded in `image_kind_rule`):

  tomosynthesis   SOP class Breast Tomosynthesis Image (…13.1.3); or NumberOfFrames > 1 (a slice or projection
                  stack: multi-frame Secondary Capture, Breast Projection, "as CT"); or ImageType holds
                  TOMOSYNTHESIS / TOMO and no synthesized-2D evidence; or a CT SOP class on a breast image; or a
                  SeriesDescription naming TOMO / DBT. Quarantined (reason `tomosynthesis`): a stack is not a 2D view.
  synthesized_2d  ImageType holds GENERATED_2D (or a vendor's synthesized-2D term), or SeriesDescription names one
                  (C-View, Intelligent 2D, V-Preview, S-View, Insight 2D, "synthesized"/"synthetic"). Kept, flagged.
  digitized_film  (0008,0064) Conversion Type DF, or ImageType / SeriesDescription saying DIGITIZED FILM. Kept.
  for_processing  For Processing SOP classes (MG, DX, Breast Projection) or Presentation Intent FOR PROCESSING.
                  Kept in the index, never rendered by the cache.
  secondary_capture  any other Secondary Capture mammogram. Kept, flagged.
  2d              everything else with Modality MG or a mammography SOP class, or a CR / DX / RG / OT radiograph
                  whose Body Part Examined is BREAST (rule `body_part`: CR mammography; `is_mammography`).

Laterality comes from (0020,0062) ImageLaterality, else (0020,0060) Laterality, else (0020,9072) Frame Laterality of
an enhanced object's Frame Anatomy macro (a side in any wins over "U"); the view from (0018,5101) ViewPosition, else
(0054,0220) ViewCodeSequence (CID 4014 code -> ACR abbreviation), else a (0020,0020) PatientOrientation that holds a
view abbreviation (digitized-film archives write "CC" / "MLO" there). The source used lands in `laterality_source` /
`view_source`.

Patient key (`patient_key`, `patient_key_source`): the first 16 hex digits of sha256(salt + the raw bytes of
(0010,0020) Patient ID as stored, only the trailing padding (spaces, NULs) removed), so the key comes from the
ID exactly as stored, never from a decoded or split form, and two different IDs never share a key. A file with no
or an empty Patient ID is keyed by its study instead (sha256(salt + 0x1f "study" 0x1f + StudyInstanceUID),
source `study_instance_uid`), so it never shares a key with another patient's images.

UIDs (`check_uid`): (0008,0018), (0020,000D), (0020,000E) must be digits and dots, 1..64 characters, with no empty
component (PS3.5 9.1); otherwise the file is quarantined `invalid_uid`. Leading zeros in a component, which PS3.5
forbids, are accepted: they occur in real archives and make no file name or path unsafe.

Metadata rules of `meta_flags` (first rule that fires wins; every rule is recorded in `meta_*_rule`):

mag
  1. `view_modifier:399163009`   a Magnification code in ViewModifierCodeSequence (SCT, or SNM3/SRT R-102D6).
  2. `series_description:MAG`    SeriesDescription holds the word MAG / MAGNIFICATION / MAGNIFIED.
  3. `magnification_factor>=1.3` (0018,1114) Estimated Radiographic Magnification Factor of 1.3 or more.
  4. `view_modifier_meaning:MAG` a modifier's Code Meaning says so (a private coding scheme's "MAGNIFICATION").
  5. `view_modifier:other`       -> False: the device coded modifiers, every one of PS3.16 CID 4015, and
                                 Magnification is not among them.
  6. `view_modifier:unknown`     -> None: a modifier outside CID 4015 (a private scheme) says nothing (stop 55;
                                 before, it counted as False).
  7. `silent`                    -> None.
spot
  1. `view_modifier:399055006`   a Spot Compression code (SCT, or SNM3/SRT R-102D7).
  2. `series_description:SPOT`   SeriesDescription holds the word SPOT.
  3. `paddle_description:SPOT`   (0018,11A4) Paddle Description names a spot paddle.
  4-7. as for mag (`view_modifier_meaning:SPOT`, `view_modifier:other`, `view_modifier:unknown`, `silent`).
An SCT concept ID written under the SRT or SNM3 designator (digits only) is read as SCT (`normalize_code`).

Not evidence, on purpose: a factor below 1.3 (Hologic Lorad writes 1.0 on true mag views), Grid NONE
(Siemens PRIME has no grid on every view), focal spot 0.1 mm (also used for some contact views), and a
SeriesDescription without the words (most vendors never write them).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import math
import os
import re
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator, read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import VR

from mammo_pipeline.dicom.errors import (
    InvalidUID,
    NoPixelData,
    NotDicom,
    NotMammography,
    Tomosynthesis,
    Truncated,
    Unsupported,
    UnusableImage,
)
from mammo_pipeline.dicom.functional_groups import frame_attributes
from mammo_pipeline.dicom.names import fold, fold_with_origin, unspaced
from mammo_pipeline.dicom.source_paths import pseudonymize_path

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
BREAST_PROJECTION_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.13.1.4"
BREAST_PROJECTION_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.13.1.5"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
# (0008,0060) Modality defined terms of projection radiography (PS3.3 C.7.3.1.1.1). A radiograph whose (0018,0015)
# Body Part Examined is BREAST is a mammogram by another name: computed radiography (CR plates, in screening before
# full-field detectors), digital radiography, a digitized film (RG: NEMA WG04's MG1, a DDSM film stored as Secondary
# Capture) or Other; a breast ultrasound, MR or CT capture is not.
RADIOGRAPHY_MODALITIES = frozenset({"CR", "DX", "RG", "OT"})
RADIOGRAPHY_SOP_CLASSES = frozenset({CR_IMAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING, SECONDARY_CAPTURE})
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: the index of a CD/DVD import, never an image
MULTIFRAME_SECONDARY_CAPTURE = frozenset(f"1.2.840.10008.5.1.4.1.1.7.{i}" for i in range(1, 5))
CT_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"})
MAMMO_SOP_CLASSES = {  # uid -> for_processing
    MG_FOR_PRESENTATION: False,
    MG_FOR_PROCESSING: True,
    BREAST_TOMOSYNTHESIS: False,
    BREAST_PROJECTION_FOR_PRESENTATION: False,
    BREAST_PROJECTION_FOR_PROCESSING: True,
}
FOR_PROCESSING_SOP_CLASSES = frozenset({MG_FOR_PROCESSING, DX_FOR_PROCESSING, BREAST_PROJECTION_FOR_PROCESSING})
IMAGE_KINDS = ("2d", "synthesized_2d", "digitized_film", "for_processing", "secondary_capture", "tomosynthesis")
QUARANTINED_KINDS = frozenset({"tomosynthesis"})
MAX_FRAMES = 2**31 - 1  # IS range (PS3.5 6.2)
HEAD_BYTES = 65536  # read at once: holds a typical header (1.5-35 kB in vendor files); longer ones are re-read

# SNOMED-RT / SNM3 code -> SCT concept of every PS3.16 CID 4014 view and CID 4015 view modifier (the pairs of
# pydicom's SNOMED mapping, checked against pydicom.sr.coding.Code in the tests).
_SRT_VIEWS: dict[str, str] = {  # CID 4014
    "R-10244": "399196006",  # caudo-cranial
    "R-10242": "399162004",  # cranio-caudal
    "R-1024A": "399192008",  # cranio-caudal exaggerated laterally
    "R-1024B": "399101009",  # cranio-caudal exaggerated medially
    "R-40AAA": "441555000",  # inferomedial to superolateral oblique
    "R-10228": "399352003",  # latero-medial
    "R-10230": "399099002",  # latero-medial oblique
    "R-10226": "399368009",  # medio-lateral oblique
    "R-10224": "399260004",  # medio-lateral
    "R-102D0": "399188001",  # superolateral to inferomedial oblique
    "G-8310": "127457009",  # tissue specimen from breast
}
_SRT_MODIFIERS: dict[str, str] = {  # CID 4015
    "P2-00161": "441752004",  # Anterior compression
    "R-102D1": "399011000",  # Axillary Tail
    "R-40AB2": "442580003",  # Axillary tissue
    "R-102D2": "399161006",  # Cleavage
    "R-102D5": "399209000",  # Implant Displaced
    "R-40ABE": "442593008",  # Infra-mammary fold
    "R-102D6": "399163009",  # Magnification
    "R-40AB3": "442581004",  # Nipple in profile
    "R-102CA": "414493004",  # Rolled Inferior
    "R-102D3": "399197002",  # Rolled Lateral
    "R-102D4": "399226006",  # Rolled Medial
    "R-102C9": "415670009",  # Rolled Superior
    "R-102D7": "399055006",  # Spot Compression
    "R-102C2": "399110001",  # tangential
}
SRT_TO_SCT: dict[str, str] = {**_SRT_VIEWS, **_SRT_MODIFIERS}
# CID 4015 View Modifier for Mammography, as SCT: a device that codes only these says what the view is, so a view
# without Magnification (Spot Compression) among them is not one; a code outside it (a private scheme) says nothing.
CID_4015 = frozenset(f"SCT:{v}" for v in _SRT_MODIFIERS.values())
# SCT view code (CID 4014) -> the ACR/DICOM view abbreviation ViewPosition would hold.
SCT_VIEW_ABBREVIATION: dict[str, str] = {
    "SCT:399162004": "CC",
    "SCT:399368009": "MLO",
    "SCT:399260004": "ML",
    "SCT:399352003": "LM",
    "SCT:399099002": "LMO",
    "SCT:399196006": "FB",
    "SCT:399188001": "SIO",
    "SCT:399192008": "XCCL",
    "SCT:399101009": "XCCM",
    "SCT:441555000": "ISO",
}
# View abbreviations recognized in a misused (0020,0020) PatientOrientation. None of them can be an orientation
# value: those use only the letters A P R L H F.
VIEW_ABBREVIATIONS = frozenset({"CC", "MLO", "ML", "LM", "LMO", "FB", "SIO", "ISO", "XCCL", "XCCM", "XCC", "RCC"})
SCT_MAGNIFICATION = "SCT:399163009"
SCT_SPOT_COMPRESSION = "SCT:399055006"
MAG_FACTOR_THRESHOLD = 1.3

# Whole words, where '_', digits and punctuation also separate words ("L_CC_MAG", "MAG1.8x"), but "IMAGE" does not.
_MAG_WORDS = re.compile(r"(?<![a-z])(mag|magn|magnification|magnified|magnify)(?![a-z])", re.IGNORECASE)
_SPOT_WORDS = re.compile(r"(?<![a-z])spot(?![a-z])", re.IGNORECASE)
# The vendor names start a word: "CC View" and "MLOS View" name no synthesized view ("C View" inside "CC View").
_SYNTH_TEXT = re.compile(
    r"(?<![a-z])(c[-_ ]?view|intelligent[-_ ]?2d|v[-_ ]?preview|s[-_ ]?view|insight[-_ ]?2d|synthe(sized|sised|tic)"
    r"|2d[-_ ]?synth)",
    re.IGNORECASE,
)
_SYNTH_IMAGE_TYPES = frozenset({"GENERATED_2D", "SYNTHESIZED", "SYNTHETIC", "C-VIEW", "CVIEW", "TOMO_2D", "V-PREVIEW"})
_TOMO_TEXT = re.compile(r"(?<![a-z])(tomo|tomosynthesis|dbt)(?![a-z])", re.IGNORECASE)
_TOMO_IMAGE_TYPES = frozenset({"TOMOSYNTHESIS", "TOMO", "VOLUME", "PROJECTION_SET"})
_FILM_TEXT = re.compile(r"digiti[sz]ed[-_ ]?film|film[-_ ]?scan", re.IGNORECASE)
_ASCII_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}  # never charset-dependent
_TEXT_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}  # depend on (0008,0005) Specific Character Set
_BINARY = {"US": ("H", 2), "UL": ("I", 4), "SS": ("h", 2), "SL": ("i", 4), "FL": ("f", 4), "FD": ("d", 8)}
# (0008,0005) Specific Character Set (single-valued) -> Python codec for direct decoding; others go to pydicom.
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
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_PIXEL_TAGS = {0x7FE00010, 0x7FE00009, 0x7FE00008}  # Pixel Data, Double Float / Float Pixel Data
_LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ", "UC", "UR", "UT"}  # explicit VRs with a 4-byte length
_UNDEFINED = 0xFFFFFFFF
_VALID_VRS = frozenset(vr.value for vr in VR)
# read_partial reads these differently from Explicit VR Little Endian (or re-maps them): never on the plain path
_NOT_PLAIN_SYNTAXES = frozenset({DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian})
_ITEM = 0xFFFEE000  # (FFFE,E000) Item
_RAW_SQ_LIMIT = 0x4141  # below it, no item length's low bytes read as an explicit VR (two letters A-Z)
_PATIENT_ID = 0x00100020
_SHARED_GROUPS, _PER_FRAME_GROUPS = 0x52009229, 0x52009230  # Shared / Per-frame Functional Groups Sequence
_KEYWORDS = (  # noqa: SIM905 (a word list reads better than 50 lines of quotes)
    "SpecificCharacterSet ImageType SOPClassUID SOPInstanceUID StudyInstanceUID SeriesInstanceUID PatientID "
    "Modality ConversionType Manufacturer ManufacturerModelName PresentationIntentType ViewPosition "
    "ImageLaterality Laterality PatientOrientation ViewCodeSequence ViewModifierCodeSequence Rows Columns "
    "NumberOfFrames PixelSpacing ImagerPixelSpacing BitsStored BitsAllocated PhotometricInterpretation "
    "PresentationLUTShape PixelIntensityRelationship WindowCenter WindowWidth VOILUTFunction VOILUTSequence "
    "RescaleSlope RescaleIntercept SeriesDescription EstimatedRadiographicMagnificationFactor FocalSpots Grid "
    "PartialView PaddleDescription CompressionForce BodyPartThickness BodyPartExamined "
    "SharedFunctionalGroupsSequence PerFrameFunctionalGroupsSequence "
    "PatientName OtherPatientNames PatientBirthName OtherPatientIDs OtherPatientIDsSequence AccessionNumber "
    "PatientBirthDate"  # read to be scrubbed from free text, never kept
).split()
_TAG_OF: dict[str, int] = {keyword: tag_for_keyword(keyword) for keyword in _KEYWORDS}  # type: ignore[misc]
SPECIFIC_TAGS: list[int] = sorted(set(_TAG_OF.values()))
# Elements a Header decodes eagerly: the wanted top-level ones and those of code sequence items.
_KEYWORD_OF: dict[int, str] = {
    tag_for_keyword(keyword): keyword  # type: ignore[misc]
    for keyword in (*_KEYWORDS, "CodeValue", "CodingSchemeDesignator", "CodeMeaning")
}
_VR_OF: dict[int, str] = {tag: dictionary_VR(tag) for tag in _KEYWORD_OF}


def pseudonymize(value: str | bytes, salt: bytes) -> str:
    """The patient key: first 16 hex digits of sha256(salt + value); text is hashed as its UTF-8 bytes."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return hashlib.sha256(salt + raw).hexdigest()[:16]


SCRUBBED = "***"  # what stands in free text where the file's own patient identifier stood
_IDENTIFIER_IDS = ("PatientID", "OtherPatientIDs", "AccessionNumber")
# (0010,0010) Patient's Name, (0010,1001) Other Patient Names (earlier names, aliases), (0010,1005) Patient's Birth
# Name (a maiden name): a description may hold any of them
_IDENTIFIER_NAMES = ("PatientName", "OtherPatientNames", "PatientBirthName")


def _names(ds: Dataset | Header) -> list[str]:
    """Every name of the patient the header holds (`_IDENTIFIER_NAMES`)."""
    return [name for keyword in _IDENTIFIER_NAMES for name in _strings(ds, keyword)]


def _ids(ds: Dataset | Header) -> list[str]:
    """Every ID of the patient and the exam the header holds: `_IDENTIFIER_IDS` and the Patient ID of each item of
    (0010,1002) Other Patient IDs Sequence (an NHS number beside a hospital number)."""
    items = _header(ds).items("OtherPatientIDsSequence")
    return [v for keyword in _IDENTIFIER_IDS for v in _strings(ds, keyword)] + [
        v for item in items for v in item.strings("PatientID")
    ]


MIN_NAME_PART, MIN_ID_RUN = 2, 6  # shortest name part scrubbed as a word; shortest ID run scrubbed anywhere


def scrub_identifiers(text: str | None, ds: Dataset | Header) -> str | None:
    """`text`, free text an operator typed ((0008,103E) Series Description, (0018,11A4) Paddle Description: "L CC
    MAG DOE JANE"), with each of the file's own patient identifiers replaced by `SCRUBBED`.

    Scrubbed, case and accents aside (a name stored "Núñez^Zoë" and typed "NUNEZ ZOE", or the reverse; an umlaut
    spelled out, "MUELLER" for Müller): a (0010,0010) Patient Name component of at least MIN_NAME_PART characters as
    a word ('_', digits and punctuation separate words), the name's parts joined in any order with or without
    separators ("JaneDoe", "Doe, Jane"), and a name in a script written without spaces (Chinese, Japanese, Korean:
    `names.py`) joined from all its parts, one-character family names included, anywhere ("MAG王芳" for 王^芳);
    (0010,0020) Patient ID, (0010,1000) Other Patient IDs and (0008,0050) Accession Number whole, and their
    letter-and-digit runs of at least MIN_ID_RUN characters anywhere; (0010,0030) Patient's Birth Date as YYYYMMDD,
    YYYY-MM-DD, DD/MM/YYYY and MM/DD/YYYY (any of / . - as separator, day and month with or without a leading zero,
    the year with four digits or two). A name part that is also a word of the description's vocabulary (a patient
    called Spot) is scrubbed too: the header's meta flags then miss it.
    """
    if not text or not _may_hold_identifiers(text, ds):
        return text
    folded, origin = fold_with_origin(text)
    spans = []
    for pattern in _identifier_patterns(ds):  # longest first; a match is blanked so no shorter one re-matches it
        for m in pattern.finditer(folded):
            spans.append((origin[m.start()], origin[m.end() - 1] + 1))
        folded = pattern.sub(lambda m: "\0" * len(m.group()), folded)
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + SCRUBBED + text[end:]
    return text


# German and Scandinavian spellings of letters that a keyboard without them replaces by two (DIN 5007-2): "Müller"
# typed "MUELLER"
_SPELLED_OUT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "å": "aa", "ø": "oe", "æ": "ae"})


def _spellings(part: str) -> set[str]:
    """The folded forms a name part may be typed in: without accents, and with umlauts spelled out."""
    return {fold(part), fold(part.casefold().translate(_SPELLED_OUT))}


def _may_hold_identifiers(text: str, ds: Dataset | Header) -> bool:
    """False when no name part, ID run or birth year of the file is a substring of `text`, case aside: then no
    pattern of `_identifier_patterns` can match, and the regular expressions (a millisecond a file) are not built.
    Most descriptions ("L CC", "R MLO MAG") hold none."""
    folded = fold(text)
    needles = [form for name in _names(ds) for part in re.split(r"[\W_]+", name) for form in _spellings(part)]
    ids = _ids(ds)
    needles += [run for value in ids for run in re.split(r"[\W_]+", value)]
    needles.append((_text(ds, "PatientBirthDate") or "")[2:4])  # the year's last two digits: in every form
    if any(fold(needle) in folded for needle in needles if needle):
        return True
    compact = re.sub(r"[\W_]+", "", folded)  # an ID typed with other separators: "943 476 5919" for 9434765919
    return any(len(key) >= MIN_ID_RUN and key in compact for key in (re.sub(r"[\W_]+", "", fold(v)) for v in ids))


def _identifier_patterns(ds: Dataset | Header) -> list[re.Pattern[str]]:
    """The scrub patterns of `scrub_identifiers`, longest first (a whole name before its parts), on folded text
    (`names.fold_with_origin`): a name part matches in each of its `_spellings`."""

    def _either(part: str) -> str:
        forms = sorted(_spellings(part), key=len, reverse=True)
        return re.escape(forms[0]) if len(forms) == 1 else "(?:" + "|".join(map(re.escape, forms)) + ")"

    alone = r"(?<![^\W_]){}(?![^\W_])"  # not inside a longer run of letters or digits
    gap = r"[\W_]*"  # what may stand between the parts of a name or an ID: nothing, spaces, punctuation
    found: dict[str, bool] = {}  # regular expression -> needs `alone`
    for name in _names(ds):
        for group in name.split("="):  # alphabetic, ideographic, phonetic
            words = [p for p in re.split(r"[\W_]+", group) if p]
            found.update({_either(p): not unspaced(p) for p in words if len(p) >= MIN_NAME_PART})
            # a component's words, with or without what joins them: O'Brien as OBRIEN or O BRIEN, Mary-Kate as MARYKATE
            tokens = [[w for w in re.split(r"[\W_]+", t) if w] for t in re.split(r"[\s^,]+", group)]
            tokens = [t for t in tokens if t and (unspaced(group) or len("".join(t)) >= MIN_NAME_PART)]
            found.update({gap.join(map(_either, t)): not unspaced(group) for t in tokens if len(t) > 1})
            # 王^芳: in a script without spaces a one-character family name joins its given name
            joinable = [gap.join(map(_either, t)) for t in tokens]
            for order in (o for r in (2, 3) for o in itertools.permutations(joinable[:3], r)):
                found[gap.join(order)] = not unspaced(group)  # no word boundaries in "MAG王芳"
    for value in _ids(ds):
        runs = [run for run in re.split(r"[\W_]+", value) if run]
        for k in range(len(runs)):  # the whole ID, and without its leading runs ("RSC-", "NHS ") if long enough
            length = sum(map(len, runs[k:]))
            if k == 0 or length >= MIN_ID_RUN:
                # a long one with any separators between its characters (9434765919 typed "943 476 5919"), a short
                # one between its runs only
                pieces = "".join(runs[k:]) if length >= MIN_ID_RUN else runs[k:]
                found[gap.join(map(re.escape, pieces))] = length < MIN_ID_RUN
    birth = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", _text(ds, "PatientBirthDate") or "")
    if birth:
        y, m, d = birth.groups()
        day, month, year = f"0?{int(d)}", f"0?{int(m)}", f"(?:{y}|{y[2:]})"  # 3/2/61 as well as 03/02/1961
        for form in (
            f"{y}{m}{d}",
            rf"{y}[-/.]{m}[-/.]{d}",
            rf"{day}[-/.]{month}[-/.]{year}",
            rf"{month}[-/.]{day}[-/.]{year}",
        ):
            found[form] = True
    ordered = sorted(found.items(), key=lambda item: len(item[0]), reverse=True)
    return [re.compile(alone.format(rx) if bounded else rx, re.IGNORECASE) for rx, bounded in ordered]


def patient_key(ds: Dataset | Header, salt: bytes) -> tuple[str, str]:
    """(patient_key, patient_key_source) of a header; see the module docstring for the rule."""
    raw = _raw_bytes(ds, _PATIENT_ID).rstrip(b" \x00")
    if raw:
        return pseudonymize(raw, salt), "patient_id"
    study = _text(ds, "StudyInstanceUID") or ""
    return pseudonymize(b"\x1fstudy\x1f" + study.encode("ascii", "replace"), salt), "study_instance_uid"


def check_uid(value: str | None, tag: str, name: str) -> None:
    """Raise InvalidUID unless `value` is digits and dots, 1..64 characters, no empty component (PS3.5 9.1).

    The message says what is wrong, never the value: an invalid UID is often an accession number or a Patient ID
    written where the UID belongs."""
    if value is None or len(value) > 64 or not _UID.fullmatch(value):
        if not value:
            fault = "is missing or empty"
        elif len(value) > 64:
            fault = f"has {len(value)} characters"
        elif set(value) - set("0123456789."):
            fault = f"({len(value)} characters) holds characters other than digits and dots"
        else:
            fault = f"({len(value)} characters) has an empty component"
        raise InvalidUID(f"{name}: {tag} {fault}: not a valid DICOM UID (digits and dots, at most 64 characters)")


def classify(ds: Dataset | Header) -> tuple[str, str]:
    """(image_kind, rule) of a header by SOP class, NumberOfFrames, ImageType and SeriesDescription together.

    See the module docstring for the kinds and their order. Raises Unsupported for a NumberOfFrames that is not
    an integer in 1..2**31-1 (a garbage count must neither route nor overflow a column).
    """
    sop_class = _text(ds, "SOPClassUID") or ""
    image_type = {v.upper() for v in _strings(ds, "ImageType")}
    description = _text(ds, "SeriesDescription") or ""
    frames = number_of_frames(ds)
    synthesized = bool(image_type & _SYNTH_IMAGE_TYPES) or _SYNTH_TEXT.search(description) is not None
    if sop_class == BREAST_TOMOSYNTHESIS:
        return "tomosynthesis", "sop_class"
    if frames > 1:
        return "tomosynthesis", "number_of_frames"
    if image_type & _TOMO_IMAGE_TYPES and not synthesized:
        return "tomosynthesis", "image_type"
    if sop_class in CT_SOP_CLASSES:
        return "tomosynthesis", "sop_class"
    if image_type & _SYNTH_IMAGE_TYPES:
        return "synthesized_2d", "image_type"
    if synthesized:
        return "synthesized_2d", "series_description"
    if _TOMO_TEXT.search(description):
        return "tomosynthesis", "series_description"
    if (_text(ds, "ConversionType") or "").upper() == "DF":
        return "digitized_film", "conversion_type"
    if any(_FILM_TEXT.search(v) for v in (" ".join(image_type), description)):
        return "digitized_film", "image_type" if _FILM_TEXT.search(" ".join(image_type)) else "series_description"
    if is_for_processing(ds):
        return "for_processing", "sop_class" if sop_class in FOR_PROCESSING_SOP_CLASSES else "presentation_intent"
    if sop_class == SECONDARY_CAPTURE or sop_class in MULTIFRAME_SECONDARY_CAPTURE:
        return "secondary_capture", "sop_class"
    if sop_class in MAMMO_SOP_CLASSES:
        return "2d", "sop_class"
    return "2d", "modality" if (_text(ds, "Modality") or "").upper() == "MG" else "body_part"


def number_of_frames(ds: Dataset | Header) -> int:
    """(0028,0008) Number of Frames, 1 when absent; Unsupported unless an integer in 1..2**31-1."""
    values = _strings(ds, "NumberOfFrames")
    if not values or not values[0]:
        return 1
    try:
        number = float(values[0])
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number == int(number) and 1 <= number <= MAX_FRAMES):
        shown = values[0][:40]
        raise Unsupported(f"(0028,0008) Number of Frames {shown!r} is not a frame count (an integer 1..2**31-1)")
    return int(number)


def is_for_processing(ds: Dataset | Header) -> bool:
    """A For Processing image: its SOP class says so, or (0008,0068) Presentation Intent Type does."""
    sop_class = _text(ds, "SOPClassUID") or ""
    if sop_class in FOR_PROCESSING_SOP_CLASSES:
        return True
    return (_text(ds, "PresentationIntentType") or "").upper() == "FOR PROCESSING"


def is_mammography(ds: Dataset | Header) -> bool:
    """Modality MG or a mammography SOP class; a projection radiograph of the breast under another name (CR, DX,
    RG, OT, or a CR / DX / Secondary Capture object without a modality: RADIOGRAPHY_MODALITIES) whose Body Part
    Examined says BREAST; or a CT / multi-frame Secondary Capture object whose header says breast or tomosynthesis
    (routed to `tomosynthesis` by `classify`)."""
    sop_class = _text(ds, "SOPClassUID") or ""
    modality = (_text(ds, "Modality") or "").upper()
    if sop_class in MAMMO_SOP_CLASSES or modality == "MG":
        return True
    breast = (_text(ds, "BodyPartExamined") or "").upper() == "BREAST"
    if breast and (modality in RADIOGRAPHY_MODALITIES or (not modality and sop_class in RADIOGRAPHY_SOP_CLASSES)):
        return True
    image_type = {v.upper() for v in _strings(ds, "ImageType")}
    return (sop_class in CT_SOP_CLASSES or sop_class in MULTIFRAME_SECONDARY_CAPTURE) and (
        breast or bool(image_type & _TOMO_IMAGE_TYPES)
    )


SIDES = frozenset({"L", "R", "B"})  # (0020,0062) Image Laterality / (0020,0060) Laterality: left, right, both


def laterality(ds: Dataset | Header) -> tuple[str | None, str | None]:
    """(laterality, source): ImageLaterality, else Laterality, else FrameLaterality (an enhanced object's Frame
    Anatomy macro, brought to the top level by `functional_groups.frame_attributes`); a side (L, R, B) in any wins
    over "U" (unpaired) or another value in the first, which is kept only when none names a side."""
    keywords = ("ImageLaterality", "Laterality", "FrameLaterality")
    found = [(value.upper(), keyword) for keyword in keywords if (value := _text(ds, keyword))]
    return next((hit for hit in found if hit[0] in SIDES), found[0] if found else (None, None))


def view(ds: Dataset | Header, view_code: str | None) -> tuple[str | None, str | None]:
    """(view, source): ViewPosition, else the ViewCodeSequence code's abbreviation, else PatientOrientation."""
    value = _text(ds, "ViewPosition")
    if value:
        return value.upper(), "ViewPosition"
    if view_code in SCT_VIEW_ABBREVIATION:
        return SCT_VIEW_ABBREVIATION[view_code], "ViewCodeSequence"
    for token in re.split(r"[\\\s/_-]+", "\\".join(_strings(ds, "PatientOrientation")).upper()):
        if token in VIEW_ABBREVIATIONS:
            return token, "PatientOrientation"
    return None, None


def read_header_row(
    path: str | Path,
    landing: Path | None,
    hospital: str,
    drop: str,
    salt: bytes,
    *,
    rel_path: str | None = None,
    stat: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Read one file's header (never its pixels) and return its `dicom_index` row.

    `rel_path` is the file's pseudonymized path (computed from the salt and `path` relative to `landing` when not
    given); messages name the file by it, never by its real path. `stat` is (size, mtime_ns) when the caller
    already has them.

    Raises
    ------
    NotDicom, Truncated, NoPixelData, NotMammography, InvalidUID, Tomosynthesis, Unsupported
        With a message naming the file's pseudonymized path; the caller quarantines it.
    """
    if stat is None:
        info = os.stat(path)
        stat = (info.st_size, info.st_mtime_ns)
    size, mtime_ns = stat
    name = rel_path or pseudonymize_path(salt, Path(path).relative_to(landing or "").as_posix())
    dataset, pixel, no_file_meta, transfer_syntax = read_until_pixels(path, size, name)
    ds = Header(dataset)
    if not is_mammography(ds):
        sop_class, modality = _text(ds, "SOPClassUID"), _text(ds, "Modality")
        raise NotMammography(f"{name}: modality {modality or '(none)'!r}, SOP class {sop_class or '(none)'!r}")
    sop_uid, study_uid, series_uid = (_text(ds, k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))
    if not sop_uid or not study_uid:
        raise Unsupported(f"{name}: (0008,0018) SOP Instance UID or (0020,000D) Study Instance UID is missing")
    check_uid(sop_uid, "(0008,0018) SOP Instance UID", name)
    check_uid(study_uid, "(0020,000D) Study Instance UID", name)
    if series_uid is not None:
        check_uid(series_uid, "(0020,000E) Series Instance UID", name)
    try:
        kind, kind_rule = classify(ds)
    except Unsupported as exc:
        raise Unsupported(f"{name}: {exc}") from exc
    if kind in QUARANTINED_KINDS:
        raise Tomosynthesis(
            f"{name}: a tomosynthesis object ({kind_rule}: SOP class {_text(ds, 'SOPClassUID')}, "
            f"{number_of_frames(ds)} frame(s), ImageType {'/'.join(_strings(ds, 'ImageType')) or '(none)'}), "
            "not a 2D view"
        )
    frame = ds
    if _element(dataset, _SHARED_GROUPS) is not None or _element(dataset, _PER_FRAME_GROUPS) is not None:
        full = dataset.dataset() if isinstance(dataset, _Elements) else dataset
        frame_ds = frame_attributes(full)  # window, rescale, side from Shared, then Per-frame, Functional Groups
        frame = ds if frame_ds is full else Header(frame_ds)
    codes, meanings = view_modifiers(ds)
    view_code, view_meaning = _view_code(ds)
    view_position, view_source = view(ds, view_code)
    side, side_source = laterality(frame)  # an enhanced object's side is in its Frame Anatomy macro
    key, key_source = patient_key(ds, salt)
    row: dict[str, Any] = {
        "hospital": hospital,
        "drop": drop,
        "rel_path": name,
        "file_size": size,
        "file_mtime_ns": mtime_ns,
        "sop_instance_uid": sop_uid,
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "patient_key": key,
        "patient_key_source": key_source,
        "modality": (_text(ds, "Modality") or "").upper() or None,
        "manufacturer": scrub_identifiers(_text(ds, "Manufacturer"), ds),  # text a person typed may hold a name
        "model_name": scrub_identifiers(_text(ds, "ManufacturerModelName"), ds),
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "image_kind": kind,
        "image_kind_rule": kind_rule,
        "for_processing": is_for_processing(ds),
        "no_file_meta": no_file_meta,
        "image_type": scrub_identifiers("\\".join(_strings(ds, "ImageType")), ds) or None,
        "view_position": view_position,
        "view_source": view_source,
        "laterality": side,
        "laterality_source": side_source,
        "view_code": view_code,
        "view_code_meaning": scrub_identifiers(view_meaning, ds),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "number_of_frames": _int(ds, "NumberOfFrames"),
        "pixel_spacing": _first_float(ds, "PixelSpacing") or _first_float(ds, "ImagerPixelSpacing"),
        "bits_stored": _int(ds, "BitsStored"),
        "bits_allocated": _int(ds, "BitsAllocated"),
        "photometric": _text(ds, "PhotometricInterpretation"),
        "presentation_lut_shape": _text(ds, "PresentationLUTShape"),
        "pixel_intensity_relationship": _text(ds, "PixelIntensityRelationship"),
        "transfer_syntax": transfer_syntax or None,
        "window_centers": _floats(frame, "WindowCenter"),
        "window_widths": _floats(frame, "WindowWidth"),
        "voi_lut_function": _text(frame, "VOILUTFunction"),
        "has_voi_lut_sequence": _has_items(frame, "VOILUTSequence"),
        "rescale_slope": _first_float(frame, "RescaleSlope"),
        "rescale_intercept": _first_float(frame, "RescaleIntercept"),
        "view_modifier_codes": codes,
        "view_modifier_meanings": [scrub_identifiers(m, ds) or "" for m in meanings],
        "series_description": scrub_identifiers(_text(ds, "SeriesDescription"), ds),
        "magnification_factor": _first_float(ds, "EstimatedRadiographicMagnificationFactor"),
        "focal_spot": _first_float(ds, "FocalSpots"),
        "grid": "\\".join(_strings(ds, "Grid")) or None,
        "partial_view": _text(ds, "PartialView"),
        "paddle_description": scrub_identifiers(_text(ds, "PaddleDescription"), ds),
        "compression_force": _first_float(ds, "CompressionForce"),
        "body_part_thickness": _first_float(ds, "BodyPartThickness"),
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

    meanings = " ".join(m or "" for m in row.get("view_modifier_meanings") or [])
    standard = bool(codes) and set(codes) <= CID_4015  # every code one of CID 4015's: the device said what it is

    if SCT_MAGNIFICATION in codes:
        mag, mag_rule = True, "view_modifier:399163009"
    elif mentions_mag(description):
        mag, mag_rule = True, "series_description:MAG"
    elif factor is not None and factor >= MAG_FACTOR_THRESHOLD:
        mag, mag_rule = True, f"magnification_factor>={MAG_FACTOR_THRESHOLD}"
    elif mentions_mag(meanings):
        mag, mag_rule = True, "view_modifier_meaning:MAG"
    elif standard:
        mag, mag_rule = False, "view_modifier:other"
    else:
        mag, mag_rule = None, "view_modifier:unknown" if codes else "silent"

    if SCT_SPOT_COMPRESSION in codes:
        spot, spot_rule = True, "view_modifier:399055006"
    elif mentions_spot(description):
        spot, spot_rule = True, "series_description:SPOT"
    elif mentions_spot(paddle):
        spot, spot_rule = True, "paddle_description:SPOT"
    elif mentions_spot(meanings):
        spot, spot_rule = True, "view_modifier_meaning:SPOT"
    elif standard:
        spot, spot_rule = False, "view_modifier:other"
    else:
        spot, spot_rule = None, "view_modifier:unknown" if codes else "silent"
    return mag, mag_rule, spot, spot_rule


def mentions_mag(text: str | None) -> bool:
    """True when free text (SeriesDescription) holds the word MAG / MAGNIFICATION / MAGNIFIED."""
    return isinstance(text, str) and _MAG_WORDS.search(text) is not None


def mentions_spot(text: str | None) -> bool:
    """True when free text (SeriesDescription, PaddleDescription) holds the word SPOT."""
    return isinstance(text, str) and _SPOT_WORDS.search(text) is not None


def normalize_code(value: str, scheme: str) -> str:
    """'SCHEME:value' with SNM3/SRT codes mapped to SCT where the concept is known (SNM3 == SRT otherwise), and an
    SCT concept ID (digits only: SNOMED RT codes start with a letter) written under SRT or SNM3 read as SCT."""
    value, scheme = value.strip(), scheme.strip().upper()
    if scheme in ("SRT", "SNM3") and value in SRT_TO_SCT:
        return f"SCT:{SRT_TO_SCT[value]}"
    if scheme in ("SRT", "SNM3", "SNOMED") and value.isdigit():
        return f"SCT:{value}"
    if scheme == "SNM3":
        scheme = "SRT"
    return f"{scheme}:{value}"


def view_modifiers(ds: Dataset | Header) -> tuple[list[str], list[str]]:
    """Codes and meanings of (0054,0222) View Modifier Code Sequence, nested in (0054,0220) and top level."""
    items = list(_items(ds, "ViewModifierCodeSequence"))
    for view_item in _items(ds, "ViewCodeSequence"):
        items.extend(_items(view_item, "ViewModifierCodeSequence"))
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


def _view_code(ds: Dataset | Header) -> tuple[str | None, str | None]:
    for item in _items(ds, "ViewCodeSequence"):
        value = _text(item, "CodeValue")
        if value:
            return normalize_code(value, _text(item, "CodingSchemeDesignator") or ""), _text(item, "CodeMeaning")
    return None, None


def read_until_pixels(path: str | Path, size: int, name: str) -> tuple[Dataset | _Elements, int, bool, str]:
    """(header, Pixel Data bytes, no_file_meta, transfer syntax UID) of a file, read with pydicom up to its pixels.

    The header is a pydicom Dataset, or, on the plain path (`_read_plain`), the raw elements pydicom's element
    generator yielded (`_Elements`, whose `dataset()` is the Dataset). A file without preamble and File Meta (a
    bare data set, PS3.10 7.1 not followed) is read with `force=True` when it starts with a group 0008 element and
    holds a SOP Class or SOP Instance UID; its transfer syntax is the one pydicom detects (Implicit VR Little
    Endian, the PS3.5 default, or Explicit VR Little Endian). Native Pixel Data has a declared length, checked
    against the file size. Encapsulated Pixel Data is walked item by item (seeks, no pixel reads) to its Sequence
    Delimitation Item, so a cut codestream is caught here.

    Raises NotDicom, Truncated (also a file cut anywhere inside its preamble, File Meta or header elements, a
    sequence's items included), NoPixelData (no Pixel Data element, or an empty one), NotMammography (a DICOMDIR).
    A file cut exactly between two header elements cannot be told from a header whose Pixel Data never arrived: it
    is `no_pixel_data`.
    """
    with open(path, "rb") as real:
        head = real.read(HEAD_BYTES)
        whole = len(head) >= size
        if whole or len(head) == HEAD_BYTES:
            plain = _read_plain(head, size)
            if plain is not None:
                elements, (vr, length), value_start, syntax = plain
                return elements, _pixel_bytes(real, vr, length, value_start, size, name), False, syntax
            # the header and Pixel Data's own header lie in the first HEAD_BYTES (or the whole file does), so
            # pydicom parses from memory instead of issuing a read and a tell per element
            with contextlib.suppress(_Retry):
                return _read_until_pixels(io.BytesIO(head), real, path, size, name, trial=not whole)
        real.seek(0)
        return _read_until_pixels(real, real, path, size, name, trial=False)


def _read_plain(head: bytes, size: int) -> tuple[_Elements, tuple[str | None, int], int, str] | None:
    """The plain path of `read_until_pixels`: (elements, (Pixel Data VR, declared length), offset of its value,
    transfer syntax) of a well-formed Part 10 file whose header up to Pixel Data lies in `head`; None for anything
    else, which `read_partial` then reads and judges (its errors name what is wrong).

    Well-formed: preamble and DICM prefix, File Meta elements with valid explicit VRs whose group length fits the
    file, a single Transfer Syntax UID that is little endian and not deflated, no Command Set (0000) group, a data
    set whose first element is encoded in the VR form the syntax says, and Pixel Data's element header inside
    `head`. Then pydicom's element generator gives the same elements `read_partial` gives, without the File Meta
    Dataset, the FileDataset and their validation (which cost as much as the elements themselves).
    """
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    fp = io.BytesIO(head)
    fp.seek(132)
    seen, stop_at_pixels = _pixel_stop()

    try:
        meta = {e.tag.real: e for e in data_element_generator(fp, False, True, _not_file_meta)}
        if not all(e.VR in _VALID_VRS and type(e.value) is bytes for e in meta.values()):
            return None
        group_length = meta.get(0x00020000)
        if group_length is not None:
            if group_length.VR != "UL" or len(group_length.value) != 4:
                return None
            if 144 + struct.unpack("<I", group_length.value)[0] > size:
                return None
        syntax_elem = meta.get(0x00020010)
        if syntax_elem is None:
            return None
        syntax = syntax_elem.value.decode("latin-1").rstrip("\x00 ")
        if syntax in _NOT_PLAIN_SYNTAXES or syntax in PrivateTransferSyntaxes or not _UID.fullmatch(syntax):
            return None
        implicit = syntax == ImplicitVRLittleEndian
        start = fp.tell()
        first = head[start : start + 6]
        if len(first) < 6 or first[:2] == b"\x00\x00":  # nothing after File Meta, or a Command Set group
            return None
        if implicit == (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B):  # VR form differs from the syntax
            return None
        elements = {
            e.tag.real: e
            for e in data_element_generator(fp, implicit, True, stop_at_pixels, None, "iso8859", SPECIFIC_TAGS)
        }
    except Exception:
        return None
    if not seen:  # the header runs past `head`, or has no Pixel Data: read_partial tells which
        return None
    vr, length = seen[0]
    value_start = fp.tell() + (12 if vr in _LONG_VRS else 8)  # implicit VR (vr None): tag + 4-byte length
    return _Elements(elements), (vr, length), value_start, syntax


def _pixel_stop() -> tuple[list[tuple[str | None, int]], Callable[[int, str | None, int], bool]]:
    """(seen, stop): a pydicom stop-when callback that stops at Pixel Data and records its (VR, length) in seen."""
    seen: list[tuple[str | None, int]] = []

    def stop(tag: int, vr: str | None, length: int) -> bool:
        if tag in _PIXEL_TAGS:
            seen.append((vr, length))
            return True
        return False

    return seen, stop


def _not_file_meta(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _pixel_bytes(real: BinaryIO, vr: str | None, length: int, value_start: int, size: int, name: str) -> int:
    """The bytes Pixel Data holds: its declared length, or the encapsulated items' total; Truncated when the file
    ends first, NoPixelData when it is empty."""
    if length == _UNDEFINED:
        return walk_fragments(real, value_start, size, name)
    if value_start + length > size:
        raise Truncated(f"{name}: Pixel Data declares {length} bytes, the file holds {max(size - value_start, 0)}")
    if length == 0:
        raise NoPixelData(f"{name}: (7FE0,0010) Pixel Data is empty")
    return length


class _Retry(Exception):
    """The first HEAD_BYTES of a file do not hold its header up to Pixel Data: read the file itself."""


def _read_until_pixels(
    fp: BinaryIO, real: BinaryIO, path: str | Path, size: int, name: str, *, trial: bool
) -> tuple[Dataset, int, bool, str]:
    """`read_until_pixels` on `fp`, either the open file or an in-memory copy of its first bytes (`trial`: any
    failure or a header running past the copy raises _Retry); `real` is the open file, for the fragment walk."""
    seen, stop_at_pixels = _pixel_stop()

    no_file_meta = False
    try:
        try:
            ds = read_partial(fp, stop_at_pixels, specific_tags=SPECIFIC_TAGS)
        except InvalidDicomError as exc:
            fp.seek(0)
            head = fp.read(132)
            if not _bare_dataset(head):
                if size == 0:  # a copy that never ran, or one still running: copy it again
                    raise Truncated(f"{name}: the file is empty (0 bytes)") from exc
                if 0 < size < 144 and b"DICM".startswith(head[128:132]) and not head[:128].strip(b"\x00"):
                    raise Truncated(f"{name}: the file ends ({size} bytes) before its File Meta group") from exc
                raise NotDicom(f"{name}: not a DICOM file (no DICM prefix, no data set at byte 0)") from exc
            fp.seek(0)
            seen.clear()
            ds = read_partial(fp, stop_at_pixels, force=True, specific_tags=SPECIFIC_TAGS)
            no_file_meta = "TransferSyntaxUID" not in ds.file_meta  # a File Meta group without preamble is fine
        meta = ds.file_meta
        if str(meta.get("MediaStorageSOPClassUID", "")).strip("\x00 ") == MEDIA_STORAGE_DIRECTORY:
            raise NotMammography(
                f"{name}: a DICOMDIR (Media Storage Directory, {MEDIA_STORAGE_DIRECTORY}), not an image"
            )
        meta_length = meta.get("FileMetaInformationGroupLength")
        if isinstance(meta_length, int) and 144 + meta_length > size:
            raise Truncated(f"{name}: the file ends ({size} bytes) inside its (0002) File Meta group")
        if not no_file_meta and "TransferSyntaxUID" not in meta and (len(meta) > 0 or fp.tell() >= size):
            raise Truncated(f"{name}: the file ends ({size} bytes) inside its (0002) File Meta group")
        if "TransferSyntaxUID" not in meta:
            no_file_meta = True
            if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
                raise NotDicom(f"{name}: no File Meta and no SOP Class / Instance UID: not a DICOM data set")
            implicit, little = ds.original_encoding
            syntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            syntax = ImplicitVRLittleEndian if implicit else syntax
        else:
            syntax = str(meta.TransferSyntaxUID)
        if trial and not seen:  # the copy ended first (pydicom saw Pixel Data's element header, so it is inside)
            raise _Retry
        if not seen:
            end = max(_last_element_end(path, no_file_meta), 144 + meta_length if isinstance(meta_length, int) else 0)
            if end > size or 0 < size - end < 8 or len(ds) == 0:
                raise Truncated(f"{name}: the file ends ({size} bytes) inside a header element, before Pixel Data")
            raise NoPixelData(f"{name}: no (7FE0,0010) Pixel Data element")
        if syntax == DeflatedExplicitVRLittleEndian:
            return ds, -1, no_file_meta, syntax  # inside a zlib stream: the length cannot be checked
        vr, length = seen[0]
        header = 12 if vr in _LONG_VRS else 8  # implicit VR (vr None): tag + 4-byte length
        value_start = fp.tell() + header
        if length == _UNDEFINED:
            return ds, walk_fragments(real, value_start, size, name), no_file_meta, syntax
    except _Retry:
        raise
    except Exception as exc:
        if trial:
            raise _Retry from exc
        if isinstance(exc, UnusableImage):
            raise
        if isinstance(exc, InvalidDicomError):
            raise NotDicom(f"{name}: not a DICOM file ({exc})") from exc
        # pydicom's read_sequence_item raises a bare OSError (no errno) when the file ends where an item tag should be
        if isinstance(exc, EOFError | struct.error) or (type(exc) is OSError and exc.errno is None):
            raise Truncated(f"{name}: the header ends early ({_scrub(exc, path, name)})") from exc
        # pydicom raises many kinds on garbage; all mean "cannot parse"
        if size < 144:
            raise Truncated(f"{name}: the file ends ({size} bytes) inside its File Meta group") from exc
        raise NotDicom(f"{name}: unreadable header ({type(exc).__name__}: {_scrub(exc, path, name)})") from exc
    return ds, _pixel_bytes(real, vr, length, value_start, size, name), no_file_meta, syntax


def _last_element_end(path: str | Path, force: bool) -> int:
    """Byte offset where the last top-level element whose header could be read ends (its declared length), by a
    second pydicom pass; only run for files without Pixel Data, so the common path tracks nothing."""
    last = [0]
    with open(path, "rb") as fp:

        def track(tag: int, vr: str | None, length: int) -> bool:
            last[0] = fp.tell() + (0 if length == _UNDEFINED else length)
            return tag in _PIXEL_TAGS

        with contextlib.suppress(Exception):  # the first pass already judged the file readable up to here
            read_partial(fp, track, force=force, specific_tags=[0x00080016])
    return last[0]


def walk_fragments(fp: BinaryIO, position: int, size: int, name: str) -> int:
    """Total bytes of the encapsulated items (offset table + fragments) up to the delimiter."""
    total = 0
    while True:
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8:
            raise Truncated(f"{name}: encapsulated Pixel Data ends without its (FFFE,E0DD) delimiter")
        group, element, length = struct.unpack("<HHI", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            if total == 0:
                raise NoPixelData(f"{name}: encapsulated (7FE0,0010) Pixel Data holds no fragments")
            return total
        if (group, element) != (0xFFFE, 0xE000):
            raise Truncated(f"{name}: encapsulated Pixel Data broken at byte {position} ({group:04X},{element:04X})")
        position += 8 + length
        total += length
        if position > size:
            raise Truncated(f"{name}: a Pixel Data fragment runs {position - size} bytes past the end of the file")


def _bare_dataset(head: bytes) -> bool:
    """True when a file starts with a group 0008 element (a data set written without preamble or File Meta) or a
    group 0002 one (File Meta without the preamble)."""
    if len(head) < 8:
        return False
    group, element = struct.unpack_from("<HH", head)
    return group in (0x0002, 0x0008) and element < 0x0100


def _scrub(exc: BaseException, path: str | Path, name: str) -> str:
    return str(exc).replace(str(path), name)


def _raw_bytes(ds: Dataset | Header, tag: int) -> bytes:
    """The stored bytes of a text element (not decoded, not split at backslashes); b"" when absent."""
    elem = _header(ds).ds.get_item(tag)
    if elem is None:
        return b""
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if value is None:
        return b""
    # an element pydicom already decoded (datasets built in code): its text as UTF-8
    return str(value).encode("utf-8")


class Header:
    """Memoized string access to a header pydicom read: each wanted element is decoded once.

    Plain-text (AE AS CS DA DS DT IS TM UI, and LO SH PN ST LT UT UC in a one-byte or UTF-8 character set) and
    binary-number (US UL SS SL FL FD) values of pydicom's raw elements are decoded straight from their bytes,
    several times faster than pydicom's converters; everything else (multi-valued character sets, ambiguous VRs)
    goes through pydicom. Element boundaries, VRs, sequences and character sets always come from pydicom.
    """

    def __init__(self, ds: Dataset | _Elements, codec: str | None = None, *, top: bool = True) -> None:
        self.ds = ds
        self.memo: dict[str, list[str]] = {}
        self.sequences: dict[str, list[Header]] = {}
        self.codec = _codec(self) if top else codec
        self._decode_present()

    def _decode_present(self) -> None:
        """Decode every wanted raw element the data set holds in one pass over its elements (a header read with
        `specific_tags` holds little else), instead of one keyword-to-element lookup per access."""
        store = getattr(self.ds, "_dict", None)
        if not isinstance(store, dict):
            return
        memo, codec = self.memo, self.codec
        for tag, elem in store.items():
            keyword = _KEYWORD_OF.get(tag.real)  # a plain int: BaseTag compares equal in Python, 4x slower
            if keyword is None or type(elem) is not RawDataElement or not elem.is_little_endian:
                continue
            value = elem.value
            if type(value) is not bytes:
                continue
            vr = elem.VR or _VR_OF[tag.real]
            if vr in _TEXT_VRS:
                if codec is None:
                    continue
                key = (vr, value, codec)
            else:
                key = (vr, value, "latin-1")
            decoded = _DECODED.get(key, _MISSING)
            if decoded is _MISSING:
                decoded = _decode_raw(*key)
                if len(value) <= _DECODED_VALUE_MAX:
                    if len(_DECODED) >= _DECODED_MAX:
                        _DECODED.clear()
                    _DECODED[key] = decoded
            if decoded is not None:
                memo[keyword] = decoded

    def strings(self, keyword: str) -> list[str]:
        hit = self.memo.get(keyword)
        if hit is None:
            hit = self.memo[keyword] = self._decode(keyword)
        return hit

    def items(self, keyword: str) -> list[Header]:
        hit = self.sequences.get(keyword)
        if hit is None:
            hit = self.sequences[keyword] = self._items(keyword)
        return hit

    def _items(self, keyword: str) -> list[Header]:
        tag = _TAG_OF.get(keyword) or tag_for_keyword(keyword)
        try:
            elem = _element(self.ds, tag)
            if elem is None:
                return []
            if isinstance(elem, RawDataElement):
                items = _raw_items(elem, self.codec)
                if items is not None:
                    return items
            value = self.ds[tag].value if isinstance(elem, RawDataElement) else elem.value
            return [Header(item, self.codec, top=False) for item in value or []]
        except Exception:  # an unparsable sequence counts as absent
            return []

    def _decode(self, keyword: str) -> list[str]:
        tag = _TAG_OF.get(keyword) or tag_for_keyword(keyword)
        elem = _element(self.ds, tag)
        if elem is None:
            return []
        if isinstance(elem, RawDataElement) and elem.is_little_endian and isinstance(elem.value, bytes):
            vr = elem.VR or _dictionary_vr(tag)
            codec = self.codec if vr in _TEXT_VRS else "latin-1"
            decoded = _decode_raw(vr, elem.value, codec) if codec else None
            if decoded is not None:
                return decoded
        return _dataset_strings(self.ds, keyword)


def _raw_items(elem: RawDataElement, codec: str | None) -> list[Header] | None:
    """The items of a short, defined-length sequence that pydicom kept raw, each read by pydicom's element
    generator into a plain tag -> raw element dict instead of a Dataset per item (item and Dataset set-up cost
    more than the code items hold). None, so that pydicom converts the sequence itself, when the character set
    needs pydicom, the sequence is long (an item length of 16705 bytes or more could read as an explicit VR), or
    anything is not a defined-length item.

    The items are parsed once per distinct encoded sequence (`_parse_items`): code sequences (View Code, View
    Modifier Code) repeat byte for byte across a drop's files, as they hold codes of a small context group."""
    value = elem.value
    if codec is None or not elem.is_little_endian or type(value) is not bytes or len(value) >= _RAW_SQ_LIMIT:
        return None
    if elem.VR not in (None, "SQ"):
        return None
    parse = _parse_items if len(value) <= _CACHED_SQ_MAX else _parse_items.__wrapped__
    items = parse(value, bool(elem.is_implicit_VR), codec)
    return None if items is None else list(items)


_CACHED_SQ_MAX = 2048  # bytes: code sequences are a few hundred; longer ones are parsed each time, not kept


@functools.lru_cache(maxsize=4096)
def _parse_items(value: bytes, implicit: bool, codec: str) -> tuple[Header, ...] | None:
    """The items of an encoded sequence value (see `_raw_items`); the Headers are shared by every file whose
    sequence holds the same bytes, which is safe as a Header only ever memoizes what its own bytes say."""
    items = []
    try:
        for item in data_element_generator(io.BytesIO(value), implicit, True):
            if item.tag != _ITEM or type(item) is not RawDataElement or item.length == _UNDEFINED:
                return None
            elements = {e.tag.real: e for e in data_element_generator(io.BytesIO(item.value or b""), implicit, True)}
            items.append(Header(_Elements(elements), codec, top=False))
    except Exception:
        return None
    return tuple(items)


class _Elements:
    """The elements of a header or of one sequence item as pydicom's element generator yielded them (plain int
    tag -> raw element: a BaseTag key would run its Python __eq__ on every lookup); a pydicom Dataset of them is
    built only for the rare lookups that need pydicom's converters."""

    __slots__ = ("_dataset", "_dict")

    def __init__(self, elements: dict[int, Any]) -> None:
        self._dict = elements
        self._dataset: Dataset | None = None

    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = Dataset({BaseTag(tag): elem for tag, elem in self._dict.items()})
        return self._dataset

    def get(self, key: Any, default: Any = None) -> Any:
        return self.dataset().get(key, default)

    def get_item(self, tag: int) -> Any:
        return self._dict.get(tag)

    def __getitem__(self, tag: int) -> Any:
        return self.dataset()[tag]


def _element(ds: Dataset, tag: int | None) -> Any:
    """The element at `tag` as stored in the data set (raw or converted), without pydicom's per-call Tag()
    conversion (Dataset.get_item's cost dominated header reading)."""
    if tag is None:
        return None
    store = getattr(ds, "_dict", None)
    return store.get(tag) if isinstance(store, dict) else ds.get_item(tag)


# (VR, raw value, codec) -> decoded strings, shared by every header of this process: most values (Modality,
# Manufacturer, ImageType, Rows, SOP Class UID, windows, ...) repeat across a drop's files. Callers never mutate
# the lists. Cleared when full, so unique values (instance UIDs) cannot grow it.
_DECODED: dict[tuple[str, bytes, str], list[str] | None] = {}
_DECODED_MAX = 8192
_DECODED_VALUE_MAX = 256  # bytes; longer values (malformed files) are decoded each time, not kept
_MISSING = object()


def _decode_raw(vr: str, raw: bytes, codec: str) -> list[str] | None:
    """Plain-text and binary-number values as strings (text VRs in `codec`); None for VRs left to pydicom."""
    if vr in _BINARY:
        code, size = _BINARY[vr]
        count = len(raw) // size
        return [str(v) for v in struct.unpack(f"<{count}{code}", raw[: count * size])]
    if vr in _ASCII_VRS or vr in _TEXT_VRS:
        text = raw.decode(codec, "replace").rstrip("\x00 ")
        values = text.split("\\") if vr not in ("LT", "ST", "UT") else [text]
        return [v.strip(" \x00") for v in values] if text else []
    return None


def _codec(header: Header) -> str | None:
    """The Python codec of the data set's single-valued character set; None when pydicom must decode text."""
    elem = _element(header.ds, 0x00080005)
    if elem is None:
        return _CODECS[""]
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
        charset = [v.strip(" \x00") for v in elem.value.decode("latin-1").strip(" \x00").split("\\")]
    else:
        charset = _dataset_strings(header.ds, "SpecificCharacterSet")
    return _CODECS.get(charset[0].upper() if charset else "") if len(charset) <= 1 else None


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _header(ds: Dataset | Header) -> Header:
    return ds if isinstance(ds, Header) else Header(ds)


def _items(ds: Dataset | Header, keyword: str) -> list[Header]:
    return _header(ds).items(keyword)


def _strings(ds: Dataset | Header, keyword: str) -> list[str]:
    if type(ds) is Header:  # the common case, a memoized value: no further calls (a row makes ~50 lookups)
        hit = ds.memo.get(keyword)
        return hit if hit is not None else ds.strings(keyword)
    return _header(ds).strings(keyword)


def _dataset_strings(ds: Dataset, keyword: str) -> list[str]:
    """Values as stripped strings through pydicom; a malformed value (say DS 'abc') counts as absent."""
    try:
        value = ds.get(keyword)
    except Exception:
        return []
    if value is None or value == "":
        return []
    if isinstance(value, bytes | bytearray):
        value = value.decode("latin-1").split("\\")
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(v).strip(" \x00") for v in values if v is not None]


def _text(ds: Dataset | Header, keyword: str) -> str | None:
    values = ds.memo.get(keyword) if type(ds) is Header else None
    if values is None:
        values = _strings(ds, keyword)
    return values[0] if values and values[0] else None


def _has_items(ds: Dataset | Header, keyword: str) -> bool:
    """True when the sequence holds at least one item. A raw little-endian sequence is checked for a leading
    (FFFE,E000) Item tag without being parsed: converting a VOI LUT Sequence would decode its LUT Data."""
    header = _header(ds)
    elem = _element(header.ds, _TAG_OF.get(keyword) or tag_for_keyword(keyword))
    if isinstance(elem, RawDataElement) and elem.is_little_endian and isinstance(elem.value, bytes):
        return elem.value[:4] == b"\xfe\xff\x00\xe0"
    return bool(header.items(keyword))


def _floats(ds: Dataset | Header, keyword: str) -> list[float]:
    out = []
    for text in _strings(ds, keyword):
        try:
            number = float(text)
        except ValueError:
            continue
        if math.isfinite(number):
            out.append(number)
    return out


def _first_float(ds: Dataset | Header, keyword: str) -> float | None:
    values = _floats(ds, keyword)
    return values[0] if values else None


def _int(ds: Dataset | Header, keyword: str) -> int | None:
    """An integer value, None when absent, unparsable or outside int64 (a column must never overflow)."""
    values = _strings(ds, keyword)
    try:
        number = float(values[0]) if values and values[0] else math.nan
    except ValueError:
        return None
    if not math.isfinite(number) or abs(number) >= 2**63:
        return None
    return int(number)
