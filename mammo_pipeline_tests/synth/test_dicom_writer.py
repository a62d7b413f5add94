"""The writer and the display pipeline keep a drawn unsaturated clip brighter than the tissue right around it."""

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from mammo_pipeline.dicom.normalize import render
from mammo_pipeline.synth import markers
from mammo_pipeline.synth.anatomy import TISSUE_MAX, draw_breast
from mammo_pipeline.synth.dicom_writer import build_dataset, encode, to_stored
from mammo_pipeline.synth.profiles import PROFILES
from mammo_pipeline_tests.synth.test_profiles import _header

SCALE = 0.25  # the demo's scale
N_CLIPS = 6


def _stroke_and_ring(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The clip's stroke (lifted by at least half its largest lift) and the tissue 1-3 px around what it covers."""
    lift = after - before
    covered = lift > 1e-6
    stroke = lift > 0.5 * lift.max()
    ring = ndimage.binary_dilation(covered, iterations=3) & ~ndimage.binary_dilation(covered, iterations=1)
    return stroke, ring


@pytest.mark.parametrize("profile_key", sorted(PROFILES))
def test_unsaturated_clip_stays_brighter_than_the_tissue_around_it_through_writer_and_display(tmp_path, profile_key):
    """Draw unsaturated clips on a drawn breast of each vendor, write the file, render it with the pipeline: the
    stroke's median stays above the 90th percentile of the tissue 1-3 px around it, in the drawn image and in the
    display (the bug: a 0.12-0.3 lift over dark tissue stayed below the brighter tissue next to it)."""
    profile = PROFILES[profile_key]
    rows, cols = round(profile.rows * SCALE), round(profile.columns * SCALE)
    spacing = profile.pixel_spacing / SCALE
    rng = np.random.default_rng(7)
    breast = draw_breast(
        rng, rows, cols, spacing, "CC", vendor=profile_key.split("-")[0], film=profile.secondary_capture
    )
    img = breast.image
    np.clip(img, 0.0, TISSUE_MAX, out=img)  # as draw_image does before any metal
    inside = np.argwhere(ndimage.binary_erosion(breast.mask, iterations=40))
    strokes = []
    for k, i in enumerate(rng.choice(len(inside), N_CLIPS, replace=False)):
        before = img.copy()
        _, box, saturated = markers.draw_clip(
            img, rng, tuple(float(v) for v in inside[i]), 3.0 / spacing, 0.5 / spacing, 0.12 + 0.03 * k
        )
        if saturated or box is None:  # no room below saturation there: drawn as metal, not this test's concern
            img[:] = before
            continue
        strokes.append(_stroke_and_ring(before, img))
    assert len(strokes) >= N_CLIPS - 2, "most clips must be drawn below saturation"
    display = img[:, ::-1].copy()  # a right breast, as draw_image mirrors it
    strokes = [(s[:, ::-1], r[:, ::-1]) for s, r in strokes]
    stored = to_stored(display, profile, for_processing=False)
    ds = build_dataset(stored, _header(station=profile_key, laterality="R", pixel_spacing=spacing), profile)
    path = tmp_path / "image.dcm"
    path.write_bytes(encode(ds, stored, profile.transfer_syntax, profile.jpeg_predictor))
    shown = render(path, sizes=(max(rows, cols),)).images[max(rows, cols)].astype(np.float64)
    assert shown.shape == display.shape
    assert np.array_equal(pydicom.dcmread(path).pixel_array, stored)  # lossless
    for n, (stroke, ring) in enumerate(strokes):
        for name, values, margin in (("drawn", display, 0.05), ("display PNG", shown, 8.0)):
            lo, hi = np.median(values[stroke]), np.percentile(values[ring], 90)
            assert lo > hi + margin, f"{profile_key} clip {n} ({name}): stroke median {lo:.3f} <= ring p90 {hi:.3f}"
