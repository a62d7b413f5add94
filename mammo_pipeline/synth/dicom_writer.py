"""Turn a drawn image into the bytes of a Digital Mammography X-Ray Image file, the way a vendor writes it.

The profile decides the stored representation (bits, MONOCHROME1, windows, VOI LUT, rescale), the transfer
syntax and how (in)consistently a mag view is declared. No attribute ever marks a biopsy marker.
Everything is derived from the arguments, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from mammo_pipeline.synth.jpeg_lossless import encode_lossless_jpeg
from mammo_pipeline.synth.profiles import MAG_CODES, SPOT_CODES, VIEW_CODES, VendorProfile

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1456.1"  # fixed so files do not change with the pydicom version


@dataclass(frozen=True)
class Patient:
    """Synthetic but realistic identifying fields (so de-identification downstream is exercised)."""

    patient_id: str
    name: str
    birth_date: str


@dataclass(frozen=True)
class ImageHeader:
    """Per-image header values chosen by the study planner."""

    patient: Patient
    institution: str
    station: str
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    study_time: str
    accession: str
    study_description: str
    series_number: int
    instance_number: int
    view: str  # CC | MLO | ML
    laterality: str
    pixel_spacing: float
    mag: bool = False
    spot: bool = False  # spot compression paddle (with `mag`: spot magnification)
    mag_factor: float = 1.0
    for_processing: bool = False
    source_sop_uid: str | None = None
    # per-image metadata coin flips (drawn by the planner from the profile's fractions)
    flags: dict[str, bool] = field(default_factory=dict)


def to_stored(display: np.ndarray, profile: VendorProfile, for_processing: bool) -> np.ndarray:
    """Display values [0,1] -> stored integers of the profile's bit depth (MONOCHROME1 inverted)."""
    top = (1 << profile.bits_stored) - 1
    if for_processing:  # unprocessed: linear in exposure, dense tissue = few counts, little contrast
        v = 0.85 - 0.7 * display
    elif profile.photometric == "MONOCHROME1":
        v = 1.0 - display
    else:
        v = display
    return np.rint(np.clip(v, 0, 1) * top).astype(np.uint16)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _view_code_sequence(h: ImageHeader, profile: VendorProfile) -> Sequence:
    scheme = profile.mag_modifier_scheme or "SNM3"
    code, meaning = VIEW_CODES[scheme]["CC" if h.view == "CC" else "MLO"]
    if h.view == "ML":
        code, meaning = ("R-10224", "medio-lateral") if scheme != "SCT" else ("399260004", "medio-lateral")
    view = _code(code, scheme, meaning)
    modifiers = []
    if h.mag and h.flags.get("mag_modifier"):
        modifiers.append(_code(MAG_CODES[scheme][0], scheme, MAG_CODES[scheme][1]))
    if (h.mag or h.spot) and h.flags.get("spot_modifier"):
        modifiers.append(_code(SPOT_CODES[scheme][0], scheme, SPOT_CODES[scheme][1]))
    if modifiers or profile.key == "H-LOR":  # Lorad sends the sequence with zero items
        view.ViewModifierCodeSequence = Sequence(modifiers)
    return Sequence([view])


def _voi_lut_item(bits_in: int, declared_bits: int, top_out: int) -> Dataset:
    """A VOI LUT whose data max is `top_out`, whatever the descriptor claims (a known vendor quirk)."""
    n = 1 << bits_in
    x = np.arange(n, dtype=np.float64) / (n - 1)
    lut = np.rint(top_out * x**0.85).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [n if n < 65536 else 0, 0, declared_bits])  # LUTDescriptor
    item.LUTExplanation = "DEFAULT"
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUTData
    return item


def build_dataset(stored: np.ndarray, h: ImageHeader, profile: VendorProfile) -> Dataset:
    """The full header for one image (pixels attached uncompressed; see encode)."""
    ds = Dataset()
    sop_class = (
        uid.DigitalMammographyXRayImageStorageForProcessing
        if h.for_processing
        else uid.DigitalMammographyXRayImageStorageForPresentation
    )
    film = profile.secondary_capture
    if film:  # a digitized film: PS3.3 A.8.1 Secondary Capture, SC Equipment Module (ConversionType DF)
        sop_class = uid.SecondaryCaptureImageStorage
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if h.for_processing else ["DERIVED", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, h.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = h.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = h.study_time
    ds.AccessionNumber = h.accession
    ds.Modality = "MG"
    if film:
        ds.ConversionType = "DF"
    else:
        ds.PresentationIntentType = "FOR PROCESSING" if h.for_processing else "FOR PRESENTATION"
    ds.Manufacturer = profile.manufacturer
    ds.InstitutionName = h.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = h.station
    ds.StudyDescription = h.study_description
    side = "R" if h.laterality == "R" else "L"
    series = f"{side} {h.view}"
    if h.mag and h.flags.get("mag_in_description"):
        series += " MAG"
    ds.SeriesDescription = series
    ds.ManufacturerModelName = profile.model_name
    ds.PatientName = h.patient.name
    ds.PatientID = h.patient.patient_id
    ds.PatientBirthDate = h.patient.birth_date
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.SoftwareVersions = profile.software_versions
    if profile.protocol_name:
        ds.ProtocolName = profile.protocol_name
    if film:
        return _film_rest(ds, stored, h, profile, series)
    ds.DistanceSourceToDetector = "660"
    ds.DistanceSourceToPatient = f"{660 / h.mag_factor:.0f}" if h.mag else "640"
    ds.EstimatedRadiographicMagnificationFactor = (
        f"{h.mag_factor:.2f}" if h.mag and h.flags.get("ermf_right") else "1.0"
    )
    ds.FocalSpots = "0.1" if h.mag else "0.3"
    grid = "NONE" if h.mag and profile.grid_contact else profile.grid_contact
    if grid:
        ds.Grid = grid
    if profile.compression_force:
        lo, hi = profile.compression_force
        force = lo + (hi - lo) * (0.2 if h.mag else 0.7)
        ds.CompressionForce = f"{force:.0f}"
        ds.BodyPartThickness = f"{40 if h.mag else 60:.0f}"
    if (h.mag or h.spot) and h.flags.get("spot_modifier"):
        ds.PaddleDescription = "SPOT MAG" if h.mag else "SPOT"
    ds.ViewPosition = h.view
    ds.StudyInstanceUID, ds.SeriesInstanceUID = h.study_uid, h.series_uid
    ds.StudyID = h.accession[-6:]
    ds.SeriesNumber, ds.InstanceNumber = h.series_number, h.instance_number
    chest_left = h.laterality == "L"
    ds.PatientOrientation = ["A", "R"] if chest_left else ["P", "L"]
    if h.view != "CC":
        ds.PatientOrientation = ["A", "FR"] if chest_left else ["P", "FL"]
    ds.ImageLaterality = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2" if h.for_processing else profile.photometric
    ds.Rows, ds.Columns = stored.shape
    spacing = f"{h.pixel_spacing:.6g}"
    ds.PixelSpacing = ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BitsAllocated, ds.BitsStored = 16, profile.bits_stored
    ds.HighBit, ds.PixelRepresentation = profile.bits_stored - 1, 0
    ds.BurnedInAnnotation = "NO"
    ds.PixelIntensityRelationship = "LIN" if h.for_processing else "LOG"
    ds.PixelIntensityRelationshipSign = 1 if h.for_processing else -1
    if not h.for_processing:
        _add_voi(ds, h, profile)
        if profile.presentation_lut_shape is not None:
            ds.PresentationLUTShape = profile.presentation_lut_shape
    if profile.rescale:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.LossyImageCompression = "00"
    ds.BreastImplantPresent = "NO"
    ds.ViewCodeSequence = _view_code_sequence(h, profile)
    if h.mag and profile.partial_view is not None:
        ds.PartialView = profile.partial_view
    if h.source_sop_uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID = uid.DigitalMammographyXRayImageStorageForProcessing
        ref.ReferencedSOPInstanceUID = h.source_sop_uid
        ds.SourceImageSequence = Sequence([ref])
    return ds


def _film_rest(ds: Dataset, stored: np.ndarray, h: ImageHeader, profile: VendorProfile, series: str) -> Dataset:
    """The rest of a digitized film's header: no detector, VOI window only, NominalScannedPixelSpacing."""
    ds.ViewPosition = h.view
    ds.StudyInstanceUID, ds.SeriesInstanceUID = h.study_uid, h.series_uid
    ds.StudyID = h.accession[-6:]
    ds.SeriesNumber, ds.InstanceNumber = h.series_number, h.instance_number
    ds.ImageLaterality = ds.Laterality = "R" if h.laterality == "R" else "L"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    spacing = f"{h.pixel_spacing:.6g}"
    ds.NominalScannedPixelSpacing = [spacing, spacing]
    ds.BitsAllocated, ds.BitsStored = 16, profile.bits_stored
    ds.HighBit, ds.PixelRepresentation = profile.bits_stored - 1, 0
    _add_voi(ds, h, profile)
    ds.LossyImageCompression = "00"
    return ds


def _add_voi(ds: Dataset, h: ImageHeader, profile: VendorProfile) -> None:
    top = (1 << profile.bits_stored) - 1
    if profile.windows:
        centers = [f"{c * top:.1f}" for c, _ in profile.windows]
        widths = [f"{w * top:.1f}" for _, w in profile.windows]
        ds.WindowCenter = centers if len(centers) > 1 else centers[0]
        ds.WindowWidth = widths if len(widths) > 1 else widths[0]
        if profile.window_explanations:
            ds.WindowCenterWidthExplanation = list(profile.window_explanations)
    if profile.voi_lut_function:
        ds.VOILUTFunction = profile.voi_lut_function
    if profile.voi_lut_only:
        ds.VOILUTSequence = Sequence([_voi_lut_item(profile.bits_stored, 16, 4095)])
    elif h.flags.get("voi_lut_sequence"):
        ds.VOILUTSequence = Sequence([_voi_lut_item(profile.bits_stored, profile.bits_stored, top)])


def encode(ds: Dataset, stored: np.ndarray, transfer_syntax: str, predictor: int = 1) -> bytes:
    """Attach the pixels in `transfer_syntax` and return the Part 10 file bytes."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "MAMMO_SYNTH_1"
    ts = uid.UID(transfer_syntax)
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    if ts in (uid.JPEGLosslessSV1, uid.JPEGLossless):
        frame = encode_lossless_jpeg(stored, ds.BitsStored, predictor if ts == uid.JPEGLossless else 1)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
    elif ts.is_compressed:
        ds.compress(ts, stored, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
