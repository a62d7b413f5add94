"""Broken files a real hospital drop contains, so indexing and quarantine are exercised.

Kinds match the quarantine reasons: truncated, not_dicom, no_pixel_data, not_mammography.
"""

from __future__ import annotations

import io

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

from mammo_pipeline.synth.dicom_writer import IMPLEMENTATION_UID

CORRUPT_KINDS: tuple[str, ...] = ("truncated", "not_dicom", "no_pixel_data", "not_mammography")


def truncated(valid_file: bytes, rng: np.random.Generator) -> bytes:
    """A valid file cut off part-way through its pixel data (an interrupted transfer)."""
    return valid_file[: int(len(valid_file) * rng.uniform(0.3, 0.8))]


def not_dicom(rng: np.random.Generator) -> bytes:
    """A text export log saved with a .dcm name."""
    lines = [f"PACS export job {int(rng.integers(10**5, 10**6))}: status=PARTIAL", "images queued: 0"]
    return ("\n".join(lines) + "\n").encode() + rng.integers(
        0, 256, int(rng.integers(64, 512)), dtype=np.uint8
    ).tobytes()


def _save(ds: Dataset, transfer_syntax: str = uid.ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def no_pixel_data(header: Dataset) -> bytes:
    """A mammography header whose Pixel Data never arrived."""
    ds = Dataset()
    ds.update({k: v for k, v in header.items() if k not in (0x7FE00010,)})
    return _save(ds)


def not_mammography(header: Dataset, rng: np.random.Generator) -> bytes:
    """A small CT slice (with a HU rescale) that was routed to the mammography export by mistake."""
    ds = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstitutionName",
        "SeriesInstanceUID",
    ):
        setattr(ds, keyword, header.get(keyword, ""))
    ds.SOPClassUID, ds.SOPInstanceUID = uid.CTImageStorage, header.SOPInstanceUID
    ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "SIEMENS", "CHEST"
    ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "Thorax 1.0 Br40", 901, 1
    size = 128
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 / (0.35 * size) ** 2 + (xx - size / 2) ** 2 / (0.45 * size) ** 2) < 1
    hu = np.where(body, 40, -1000) + rng.normal(0, 12, (size, size))
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.PixelSpacing = ["0.7", "0.7"]
    ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
    return _save(ds)
