"""Clips are near-saturated and sharp; look-alike distractors stay below clip level."""

import numpy as np
import pytest

from mammo_pipeline.synth import markers


@pytest.mark.parametrize("shape", markers.CLIP_SHAPES)
def test_each_clip_shape_is_near_saturated_with_a_sharp_edge(shape):
    img = np.full((80, 80), 0.4, dtype=np.float32)
    segments = markers._shape_segments(shape, np.random.default_rng(0)) * 30 + 40
    patch, origin = markers.render_segments(segments, thickness=4)
    share = markers.stamp(img, patch, origin, markers.metal_value(np.random.default_rng(0)))
    metal = img >= markers.CLIP_MIN
    assert share == 1.0 and 20 < metal.sum() < 900
    rim = (img > 0.41) & ~metal  # antialiased rim: at most one pixel around the stroke
    assert rim.sum() <= metal.sum()


def test_inside_share_counts_what_the_frame_keeps():
    patch, origin = markers.clip_stroke(np.random.default_rng(1), (50, 0), 20, 3)
    share = markers.inside_share((100, 100), patch, origin)
    assert 0.2 < share < 0.8  # centred on the left edge: about half is cut off
    far = markers.inside_share((100, 100), patch, (origin[0], origin[1] - 500))
    assert far == 0.0


def test_skin_marker_stays_below_clip_level():
    img = np.full((60, 60), 0.3, dtype=np.float32)
    for seed in range(6):
        markers.draw_skin_marker(img, np.random.default_rng(seed), (30, 30), radius=6)
    assert 0.9 <= img.max() <= markers.DISTRACTOR_MAX < markers.CLIP_MIN


def test_unknown_clip_shape_is_rejected():
    with pytest.raises(ValueError, match="unknown clip shape 'star'"):
        markers._shape_segments("star", np.random.default_rng(0))
