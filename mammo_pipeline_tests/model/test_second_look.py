from __future__ import annotations

import numpy as np

from mammo_pipeline.model.evaluate import roc_auc
from mammo_pipeline.model.second_look import predict_patch_mil, train_patch_mil

P, K = 32, 3


def _crops(rng: np.random.Generator, clip: bool) -> np.ndarray:
    """K tissue crops; each holds a round bead (a skin-marker look-alike), one holds a ribbon if `clip`."""
    crops = rng.normal(0.5, 0.15, (K, P, P)).astype(np.float32)
    yy, xx = np.mgrid[0:P, 0:P]
    for k in range(K):
        crops[k][(yy - 16) ** 2 + (xx - 16) ** 2 <= 9] = 2.0
    if clip:
        k = int(rng.integers(K))
        crops[k] = rng.normal(0.5, 0.15, (P, P))
        crops[k][14:17, 8:24] = 2.0  # a bar as bright as the beads: only the shape differs
        crops[k][10:21, 8:11] = 2.0
    return crops


def test_patch_classifier_tells_a_clip_from_equally_bright_beads_by_shape():
    rng = np.random.default_rng(0)
    flags = np.arange(96) % 2 == 1
    crops = np.stack([_crops(rng, f) for f in flags])
    net = train_patch_mil(crops, flags, epochs=8, seed=0)
    test_flags = np.arange(40) % 2 == 1
    probs, patch = predict_patch_mil(net, np.stack([_crops(rng, f) for f in test_flags]))
    assert patch.shape == (40, K) and np.allclose(probs, patch.max(axis=1))
    assert roc_auc(test_flags, probs) >= 0.95
