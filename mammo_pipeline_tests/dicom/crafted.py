"""Datasets built in code for the normalize/decode/convert tests, and the locally shipped pydicom test files."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
from pydicom.data import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def make_ds(arr: np.ndarray, bits_stored: int = 12, signed: bool = False, **tags) -> Dataset:
    """A minimal MG dataset holding `arr` uncompressed (Explicit VR Little Endian) plus `tags`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def breast(rows: int = 512, cols: int = 416, seed: int = 0, noise: float = 20.0) -> np.ndarray:
    """A smooth 12-bit breast-like image: dark background, bright half-ellipse of tissue, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    r = np.sqrt(((y - rows / 2) / (rows * 0.45)) ** 2 + (x / (cols * 0.8)) ** 2)
    tissue = np.clip(1 - r, 0, 1) ** 0.5
    img = 200 + 3000 * tissue + 300 * np.sin(x / 9) * np.cos(y / 13) * (tissue > 0)
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def local_test_files() -> list[Path]:
    """pydicom's shipped test files and pydicom-data's files, found on disk (never downloads)."""
    dirs = [Path(DATA_ROOT) / "test_files"]
    try:
        import data_store  # the pydicom-data package

        dirs.append(Path(os.path.dirname(data_store.__file__)) / "data")
    except ImportError:
        pass
    files = []
    for folder in dirs:
        files += [Path(p) for p in sorted(glob.glob(f"{folder}/**/*", recursive=True)) if os.path.isfile(p)]
    return files


def local_file(name: str) -> Path:
    """One local test file by name (pytest.skip-able KeyError when it is not shipped)."""
    for path in local_test_files():
        if path.name == name:
            return path
    raise KeyError(name)


# --- Issue 17: the real-DICOM long tail, one builder per failing input ------------------------------------

BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
BREAST_PROJECTION = "1.2.840.10008.5.1.4.1.1.13.1.4"
MULTIFRAME_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def tissue_image(rows: int = 64, cols: int = 80, padding_fraction: float = 0.0, seed: int = 0) -> np.ndarray:
    """Background 0 (the left `padding_fraction` of the columns, below the first row), tissue 1000..3000 elsewhere
    (uint16). The first row is tissue across, so the background is padding but no frame (`normalize.content_box`
    would cut a frame away)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(1000, 3001, size=(rows, cols)).astype(np.uint16)
    arr[1:, : round(cols * padding_fraction)] = 0
    return arr


def functional_group_window_ds(center: float = 1800, width: float = 1200) -> Dataset:
    """Breast Projection X-Ray For Presentation (…13.1.4), one 64x80 frame, background 0 on the left quarter,
    tissue 1000..3000, whose only window is LINEAR center/width in Shared Functional Groups > Frame VOI LUT."""
    ds = make_ds(tissue_image(padding_fraction=0.25), SOPClassUID=BREAST_PROJECTION, NumberOfFrames=1)
    ds.file_meta.MediaStorageSOPClassUID = BREAST_PROJECTION
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = center, width, "LINEAR"
    shared = Dataset()
    shared.FrameVOILUTSequence = [voi]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [Dataset()]
    return ds


def signed_j2k_unsigned_header_ds(arr: np.ndarray) -> Dataset:
    """`arr` (uint16, 12-bit) as lossless J2K whose codestream says signed 12-bit while the header says
    Pixel Representation 0: the codestream holds value - 4096 for every value >= 2048."""
    from pydicom.uid import JPEG2000Lossless

    signed = np.where(arr >= 2048, arr.astype(np.int32) - 4096, arr).astype(np.int16)
    ds = make_ds(signed, bits_stored=12, signed=True)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.PixelRepresentation = 0
    return ds


def write_bare(ds: Dataset, path: Path) -> Path:
    """`ds` written as a bare Implicit VR Little Endian data set: no preamble, no 'DICM', no File Meta."""
    from pydicom.filewriter import write_dataset

    ds = Dataset(ds)  # a plain copy without file_meta
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fp:
        from pydicom.filebase import DicomFileLike

        out = DicomFileLike(fp)
        out.is_little_endian, out.is_implicit_VR = True, True
        write_dataset(out, ds)
    return path
