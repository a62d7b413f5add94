"""Where the network saw each flag: Guided Grad-CAM heat maps, computed on demand from the PyTorch weights.

Grad-CAM (Selvaraju et al., ICCV 2017) on the last convolutional block (ResNet18 `layer4`) says *which
region* raised a flag's logit, but at the input sizes we train at its cells are 16-32 input pixels wide.
Multiplying the upsampled Grad-CAM by a pixel-level map (the "guided" part of Guided Grad-CAM) sharpens it to
the object itself, so a clip's heat map peaks on the clip and not merely in its quadrant. The pixel-level map
is the gradient's magnitude summed over the input channels (the saliency map of Simonyan, Vedaldi & Zisserman,
ICLR 2014 workshop), box-smoothed over 3 px: where changing the input would move the flag's logit most.
Gradient x input on the object channel was used before stop 28; on a 2-core machine of 2026-12 a small network
trained on one-clip images put its positive part on the breast's centre in 3 of 5 test images, while the
gradient's magnitude (and occlusion, checked alongside) peaked within a pixel of every clip.
When no Grad-CAM cell is positive (layer4 is a 2 x 2 grid at 64 px, and all four can weigh against a flag
whose probability is still raised by one small object), Grad-CAM localizes nothing and the map is the
saliency alone, instead of an empty map.

The biopsy flag's map of the global network is an *object occlusion* instead (`object_occlusion`; occlusion
sensitivity, Zeiler & Fergus, ECCV 2014, asked of objects rather than of a sliding square): each of the
OCCLUSION_OBJECTS strongest small bright objects of the model PNG (local maxima of its white top-hat, the
preprocessing's TOPHAT_SIZE) is removed in turn (its square replaced by the image's grey opening, which is the
image without objects that small), and the map is a bump on each object, as high as the drop of the biopsy logit
its removal causes. It asks the question the flag answers, "which object made the network say clip", and it is
faithful where the gradient was not: on a 2-core machine of 2026-12 a network trained on one-clip images put
its saliency 11-16 px off the clip in 3 of 5 test images, while removing the clip was the largest drop within a
pixel of every clip (stop 37). A few dozen forward passes, so still on demand. When no removal lowers the logit
the Grad-CAM map stays.

For a model with a second look (model/second_look_model.py) the biopsy flag's map is the second look's own
explanation instead: a bump on each candidate it examined, as high as that candidate's patch probability, so
the peak is the object that decided p_biopsy.

Every map is in the stored image's pixels. The networks read the image with its chest wall at column 0
(`air.canonical`, in `preprocess` and `candidates`), so the Grad-CAM maps are mirrored back when the image was
mirrored for them; the second look's candidates leave with stored positions, and the occlusion removes objects
of the stored image (each copy read as `preprocess` reads it).

Pure functions (no Dagster): `heatmaps` for a network and one preprocessed image, `image_heatmaps` for a
model PNG, `overlay_png` to draw them, and `heatmap_png(settings, hospital, sop_instance_uid) -> bytes`
for the CLI (`mammo explain`) and the labeling app's model hint.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mammo_pipeline.model.air import canonical
from mammo_pipeline.model.preprocess import TOPHAT_SIZE, _as_gray_uint8, preprocess, white_tophat
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.settings import Settings

FLAG_NAMES = ("biopsy marker", "magnification view")
# How many of a model PNG's small bright objects the biopsy map removes in turn (`object_occlusion`): more than the
# clips, markers and calcifications an image holds; one batched forward pass of this many + 1 images.
OCCLUSION_OBJECTS = 24


@dataclass(frozen=True)
class Explanation:
    """Probabilities [2] and heat maps [2, H, W] (0..1, in the model PNG's pixel grid) of one image."""

    probs: np.ndarray
    maps: np.ndarray
    gray: np.ndarray  # the model PNG [H, W] uint8


def heatmaps(net, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probs [2], maps [2, S, S] in 0..1) for one preprocessed image x [3, S, S]; `net` is fastai's body+head."""
    import torch
    import torch.nn.functional as F

    net.eval()
    inp = torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32)).requires_grad_(True)
    feats = net[0](inp)
    logits = net[1](feats)
    size = x.shape[-1]
    maps = []
    for k in range(logits.shape[1]):
        g_feats, g_inp = torch.autograd.grad(logits[0, k], [feats, inp], retain_graph=True)
        weights = g_feats.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * feats).sum(dim=1, keepdim=True))
        if float(cam.detach().max()) <= 0:  # no cell of layer4's coarse grid (2 x 2 at 64 px) speaks for the class:
            cam = torch.ones_like(cam)  # Grad-CAM cannot localize, so the saliency alone draws the map
        cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)
        saliency = F.avg_pool2d(g_inp.abs().sum(dim=1, keepdim=True), 3, stride=1, padding=1)
        heat = (cam * saliency)[0, 0].detach().numpy()
        peak = float(heat.max())
        maps.append(heat / peak if peak > 0 else heat)
    probs = torch.sigmoid(logits[0]).detach().numpy()
    return probs.astype(np.float32), np.stack(maps).astype(np.float32)


def to_image_grid(square_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A [S, S] map over the padded square back onto the [H, W] image (undo pad_square and the resize)."""
    h, w = shape
    side = max(h, w)
    full = np.asarray(Image.fromarray(square_map.astype(np.float32), mode="F").resize((side, side), Image.BILINEAR))
    top, left = (side - h) // 2, (side - w) // 2
    return full[top : top + h, left : left + w]


def object_occlusion(net, gray: np.ndarray, size: int, objects: int = OCCLUSION_OBJECTS) -> np.ndarray | None:
    """[H, W] map in 0..1 of the biopsy logit's drop when each of the `objects` strongest small bright objects of a
    model PNG (uint8 [H, W]) is removed (module docstring), on the PNG's grid; None when no removal lowers it."""
    import torch
    from scipy import ndimage

    from mammo_pipeline.model.second_look_model import heat_map

    net.eval()
    detail = white_tophat(gray)  # the network's own top-hat channel, before its scaling
    opened = gray - detail  # the image without objects narrower than TOPHAT_SIZE
    tophat = detail.astype(np.float32)
    peaks = tophat * (tophat >= ndimage.maximum_filter(tophat, size=TOPHAT_SIZE)) * (tophat > 0)
    half = TOPHAT_SIZE // 2 + 1  # the object and its rim: the opening's square, one pixel wider
    # one centre per object: a saturated object is a plateau of many equal maxima, so the strongest maxima are taken
    # in turn, each at least a removal window away from those taken before
    centres: list[tuple[int, int]] = []
    for i in np.argsort(-peaks.ravel(), kind="stable"):
        if len(centres) == objects or peaks.flat[i] <= 0:
            break
        r, c = divmod(int(i), gray.shape[1])
        if all(max(abs(r - a), abs(c - b)) > 2 * half for a, b in centres):
            centres.append((r, c))
    if not centres:
        return None
    batch = [preprocess(gray, size)]
    for r, c in centres:
        removed = gray.copy()
        window = (slice(max(0, r - half), r + half + 1), slice(max(0, c - half), c + half + 1))
        removed[window] = opened[window]
        batch.append(preprocess(removed, size))
    with torch.no_grad():
        logits = net(torch.from_numpy(np.stack(batch)))[:, 0].numpy()
    drops = logits[0] - logits[1:]
    if not (drops > 0).any():
        return None
    return heat_map(np.asarray(centres), np.maximum(drops, 0), gray.shape, gray.shape, sigma=half / 2)


def image_heatmaps(net, png: Path | str | np.ndarray, size: int, occlude: bool = True) -> Explanation:
    """Probabilities (as predictions read them, `train.flip_reading`) and heat maps of one model PNG (path or
    uint8 array), maps on the PNG's own grid: the biopsy flag's by `object_occlusion` (Grad-CAM with `occlude`
    False: a caller that draws the second look's candidates instead spares the forward passes), the magnification
    flag's by Guided Grad-CAM (module docstring). The maps explain the plain reading of the network."""
    import torch

    from mammo_pipeline.model.train import flip_reading

    gray = _as_gray_uint8(png)
    x = preprocess(gray, size)  # the image with its chest wall at column 0 (`air.canonical`) ...
    _, maps = heatmaps(net, x)
    maps = [to_image_grid(m, gray.shape) for m in maps]
    if canonical(gray)[1]:  # ... and its maps in the stored image's pixels
        maps = [m[:, ::-1] for m in maps]
    occluded = object_occlusion(net, gray, size) if occlude else None
    if occluded is not None:
        maps[0] = occluded
    with torch.no_grad():
        probs = torch.sigmoid(flip_reading(net.eval())(torch.from_numpy(x[None])))[0].numpy()
    return Explanation(probs.astype(np.float32), np.stack(maps).astype(np.float32), gray)


def overlay_png(
    explanation: Explanation, title: str = "", thresholds: tuple[float, float] | None = None, dpi: int = 100
) -> bytes:
    """PNG bytes: the image twice, each flag's heat map drawn over it (jet, transparent where cold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = explanation.gray.shape
    fig, axes = plt.subplots(1, 2, figsize=(2 * 3.2 * w / max(h, w) + 0.4, 3.6), squeeze=False)
    for k, ax in enumerate(axes[0]):
        ax.imshow(explanation.gray, cmap="gray", vmin=0, vmax=255)
        heat = np.ma.masked_less(explanation.maps[k], 0.15)
        ax.imshow(heat, cmap="jet", alpha=0.55, vmin=0, vmax=1)
        y, x = np.unravel_index(int(np.argmax(explanation.maps[k])), explanation.maps[k].shape)
        ax.plot([x], [y], marker="+", color="white", markersize=10, mew=1.2)
        flag = FLAG_NAMES[k]
        cut = f" (threshold {thresholds[k]:.2f})" if thresholds else ""
        ax.set_title(f"{flag}\np = {explanation.probs[k]:.3f}{cut}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


class NotCached(KeyError):
    """The image is not in its hospital's image cache. A KeyError whose text is its message: str() of a plain
    KeyError is the repr of its message, quotes and escapes included."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def find_renditions(
    settings: Settings, hospital: str, sop_instance_uid: str, columns: tuple[str, ...] = ("model_png",)
) -> list[Path]:
    """The cached renditions (`model_png`, `display_png`) of one image, in the order of `columns`, from one read
    of the hospital's image_cache manifest (`NotCached`, a KeyError, if not cached)."""
    manifest = settings.table_dir("image_cache", hospital) / "manifest.parquet"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: hospital {hospital!r} has no image cache; materialize image_cache")
    rows = pd.read_parquet(manifest, columns=["sop_instance_uid", *columns])
    hit = rows.loc[rows["sop_instance_uid"] == sop_instance_uid, list(columns)]
    if hit.empty or not all(isinstance(v, str) and v for v in hit.iloc[0]):
        raise NotCached(f"image {sop_instance_uid} is not in the image cache of hospital {hospital!r}")
    return [settings.cache / v for v in hit.iloc[0]]


def with_candidates(
    explanation: Explanation, p_biopsy: float, centres: np.ndarray, patch: np.ndarray, display_shape: tuple[int, int]
) -> Explanation:
    """`explanation` with the biopsy flag's probability and map taken from a second look's verdict on one image:
    its candidates' centres [k, 2] and patch probabilities [k] in a display PNG of `display_shape`."""
    from mammo_pipeline.model import second_look_model as second_look

    maps = explanation.maps.copy()
    maps[0] = second_look.heat_map(centres, patch, display_shape, explanation.gray.shape)
    return Explanation(np.array([p_biopsy, explanation.probs[1]], dtype=np.float32), maps, explanation.gray)


def with_second_look(
    explanation: Explanation, look, display_png: Path | str | np.ndarray, display_size: int | None = None
) -> Explanation:
    """`explanation` with the biopsy flag's probability and map taken from the second look `look` (a patch
    network) on the candidates of the image's display PNG, rendered for `display_size` (settings.display_size;
    None: its own long side)."""
    from mammo_pipeline.model import second_look_model as second_look

    found = second_look.candidates_of([display_png], long_side=display_size)
    probs, patch = second_look.torch_probs(look, found)
    return with_candidates(explanation, float(probs[0]), found.centres[0], patch[0], tuple(found.shapes[0]))


def heatmap_png(settings: Settings, hospital: str, sop_instance_uid: str, ref: ModelRef | None = None) -> bytes:
    """PNG bytes of the heat maps of one cached image by `ref`, by default the model that predicts its hospital
    (`promotions.model_for_hospital`: the promoted one), for the CLI and the labeling app's hint.

    Raises FileNotFoundError when there is no model or no cache, `NotCached` (a KeyError) when the image is
    not cached.
    """
    from mammo_pipeline import promotions
    from mammo_pipeline.model.train import load_network, load_second_look

    find_renditions(settings, hospital, sop_instance_uid)  # an unknown image is told before a model is loaded
    ref = ref or promotions.model_for_hospital(settings, hospital)
    net = load_network(settings, ref)
    look = load_second_look(settings, ref)
    columns = ("model_png", "display_png") if look is not None else ("model_png",)
    pngs = find_renditions(settings, hospital, sop_instance_uid, columns)
    explanation = image_heatmaps(net, pngs[0], ref.input_size, occlude=look is None)
    how = "Grad-CAM (layer4) x saliency (|gradient|)"
    if look is not None:
        explanation = with_second_look(explanation, look, pngs[1], settings.display_size)
        how = f"biopsy: second look's candidates; mag: {how}"
    else:
        how = f"biopsy: object occlusion; mag: {how}"
    title = f"{hospital} · model {ref.model_version} · {how}"
    return overlay_png(explanation, title=title, thresholds=ref.thresholds())
