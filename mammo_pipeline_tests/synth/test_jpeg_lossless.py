"""The NumPy lossless-JPEG encoder round-trips bit-exactly through pydicom + pylibjpeg-libjpeg."""

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLossless, JPEGLosslessSV1

from mammo_pipeline.synth.jpeg_lossless import encode_lossless_jpeg


def _decode(code: bytes, shape: tuple[int, int], bits: int, syntax: str) -> np.ndarray:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.Rows, ds.Columns = shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = encapsulate([code])
    return ds.pixel_array


@pytest.mark.parametrize("predictor", [1, 4, 6, 7])
@pytest.mark.parametrize(("shape", "bits"), [((61, 47), 12), ((32, 40), 16), ((20, 33), 10), ((1, 9), 14)])
def test_encode_lossless_jpeg_round_trips_bit_exact(predictor, shape, bits):
    rng = np.random.default_rng(bits * 100 + predictor)
    top = (1 << bits) - 1
    smooth = np.cumsum(rng.integers(-40, 41, size=shape), axis=1) + top // 2
    img = np.clip(smooth, 0, top).astype(np.uint16)
    img.flat[0], img.flat[-1] = 0, top  # extremes force the largest difference categories
    if img.size > 4:
        img.flat[2] = top
    syntax = JPEGLosslessSV1 if predictor == 1 else JPEGLossless
    assert np.array_equal(_decode(encode_lossless_jpeg(img, bits, predictor), shape, bits, syntax), img)


def test_encode_lossless_jpeg_white_noise_16_bit():
    img = np.random.default_rng(0).integers(0, 65536, size=(24, 24), dtype=np.uint16)
    assert np.array_equal(_decode(encode_lossless_jpeg(img, 16), img.shape, 16, JPEGLosslessSV1), img)


def test_encode_lossless_jpeg_rejects_values_above_precision():
    with pytest.raises(ValueError, match="does not fit in 12 bits"):
        encode_lossless_jpeg(np.full((4, 4), 4096, dtype=np.uint16), 12)
