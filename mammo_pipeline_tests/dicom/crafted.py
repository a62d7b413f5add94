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
