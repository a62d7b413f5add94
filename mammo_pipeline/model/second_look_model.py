"""The second look as part of a model version: fitted in `train_model`, saved, exported to ONNX, run by inference.

A model version holds two networks. The global ResNet18 (model.pth / model.onnx) sees the whole breast at
`input_size` and answers the magnification flag; the second look (`second_look.py`'s patch network over
`candidates.py`'s crops of the 1024-px display PNG) answers the biopsy-marker flag, because at the global
network's size a clip, a skin marker and a calcification are the same few pixels. The image's p_biopsy is the
second look's image probability (max over its candidates), so the operating point, the review band and every
metric of the biopsy flag are the second look's; the global network's own biopsy ROC-AUC is recorded beside
it for comparison.

Files in `models/<version>/`: `second_look.pth` (state dict), `second_look.onnx` (input `crops` [N, k, C, P, P],
`second_look.network_input`'s channels, outputs `probs` [N] and `patch_probs` [N, k], fp32: the network is small
and candidates dominate the cost). `ModelRef.extra["second_look"]` records the file names, the ONNX sha256, the
version (`version()`: the kept crops' SECOND_LOOK_VERSION and the network's INPUT_VERSION) and the display size
the crops were cut from; inference refuses a model whose version or display size differs from this code's.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammo_pipeline.atomic import atomic_path, scratch_dir, write_bytes
from mammo_pipeline.dicom.normalize import REFERENCE_FIELD_MM
from mammo_pipeline.model import candidate_store
from mammo_pipeline.model import candidates as cand
from mammo_pipeline.model.preprocess import _as_gray_uint8
from mammo_pipeline.model.second_look import (
    CONTRAST_MIN,
    CONTRAST_SHARE,
    INPUT_VERSION,
    network_input,
    patch_network,
    predict_patch_mil,
    train_patch_mil,
)

WEIGHTS_FILE = "second_look.pth"
ONNX_FILE = "second_look.onnx"


class SecondLookMismatch(ValueError):
    """A saved second look was made for other crops or another input than this code's (version or display size)."""


def version() -> str:
    """What the patch network reads: the kept crops' meaning (candidates.SECOND_LOOK_VERSION) and the input made
    from them (second_look.INPUT_VERSION), as "<crops>.<input>"; a model made for another is refused. The cache
    keeps crops by SECOND_LOOK_VERSION alone, so a new input version retrains without cutting again."""
    return f"{cand.SECOND_LOOK_VERSION}.{INPUT_VERSION}"


def describe(display_size: int) -> dict:
    """What the second look sees, for the model's metadata and ref.extra."""
    return {
        "version": version(),
        "source": (
            f"display PNG (cache): {REFERENCE_FIELD_MM / display_size:.4f} mm per px from the pixel spacing "
            f"(normalize.AtPitch({display_size})), else long side {display_size}"
        ),
        "display_size": display_size,
        "k": cand.K,
        "crop": cand.CROP,
        "candidates": (cand.__doc__ or "").strip().splitlines()[0],
        "weights": WEIGHTS_FILE,
        "contrast_jitter": {"min_factor": CONTRAST_MIN, "share": CONTRAST_SHARE},
    }


@dataclass(frozen=True)
class Candidates:
    """Candidates of N images: crops [N, k, ...] float32, centres [N, k, 2] (row, col) in display pixels, scores
    [N, k], and each display PNG's (height, width)."""

    crops: np.ndarray
    centres: np.ndarray
    scores: np.ndarray
    shapes: np.ndarray  # [N, 2]

    @staticmethod
    def joined(parts: list[Candidates]) -> Candidates:
        """The candidates of several groups of images, in order (no group: the candidates of no image)."""
        if not parts:
            return candidates_of([])
        return Candidates(*(np.concatenate([getattr(p, name) for p in parts]) for name in _FIELDS))


_FIELDS = ("crops", "centres", "scores", "shapes")


def _one(png: Path | str | np.ndarray, long_side: int | None) -> candidate_store.Found:
    if isinstance(png, np.ndarray):
        return candidate_store.cut(_as_gray_uint8(png), long_side)
    return candidate_store.candidates_of_png(Path(png), long_side)


def candidates_of(pngs: list[Path] | list[np.ndarray], threads: int = 1, long_side: int | None = None) -> Candidates:
    """`candidates.candidates` of each display PNG (or uint8 array), `threads` at a time (NumPy, SciPy and PIL
    release the GIL); a PNG's candidates come from `candidate_store` when it has them. `long_side`: the display
    size the PNGs were rendered for (`settings.display_size`; None: each image's own long side).

    Raises FileNotFoundError for a missing PNG: a model trained or evaluated without some images' crops would
    report figures about other images than it names.
    """
    if not pngs:
        empty = np.zeros((0, cand.K), dtype=np.float32)
        crops = np.zeros((0, cand.K, cand.CHANNELS, cand.CROP, cand.CROP), np.float32)
        return Candidates(crops, np.zeros((0, cand.K, 2), np.int64), empty, np.zeros((0, 2), np.int64))
    missing = [p for p in pngs if not isinstance(p, np.ndarray) and not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} display PNGs missing, e.g. {missing[0]}; re-materialize image_cache")
    if threads > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="candidates") as pool:
            found = list(pool.map(lambda png: _one(png, long_side), pngs))
    else:
        found = [_one(p, long_side) for p in pngs]
    return Candidates(
        np.stack([f[0] for f in found]).astype(np.float32),
        np.stack([f[1] for f in found]),
        np.stack([f[2] for f in found]),
        np.asarray([f[3] for f in found], dtype=np.int64),
    )


def fit(found: Candidates, flags: np.ndarray, seed: int, notes: list[str] | None = None):
    """The patch network trained on the candidates of the train images and their biopsy flags [N] (bool); a
    rollback of its training is appended to `notes` (`second_look.train_patch_mil`)."""
    return train_patch_mil(found.crops, np.asarray(flags, dtype=bool), seed=seed, notes=notes)


def torch_probs(net, found: Candidates) -> tuple[np.ndarray, np.ndarray]:
    """(image probabilities [N], patch probabilities [N, k]) from the PyTorch network."""
    if len(found.crops) == 0:
        return np.zeros(0, np.float32), np.zeros((0, cand.K), np.float32)
    return predict_patch_mil(net, found.crops)


def save(net, folder: Path) -> Path:
    """Write the state dict to `folder/second_look.pth` (atomically)."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
    return write_bytes(folder / WEIGHTS_FILE, buf.getvalue())


def check(info: dict, display_size: int) -> None:
    """Refuse a saved second look made for other crops, another input or another display size
    (SecondLookMismatch says what to do)."""
    if str(info.get("version")) != version():
        raise SecondLookMismatch(
            f"the model's second look was made for version {info.get('version')}, this code's is version "
            f"{version()} (crops.input); retrain (materialize trained_model and onnx_model)"
        )
    if int(info.get("display_size", display_size)) != display_size:
        raise SecondLookMismatch(
            f"the model's second look was trained on {info.get('display_size')}-px display PNGs, the cache makes "
            f"{display_size}-px ones (MAMMO_DISPLAY_SIZE); retrain or set MAMMO_DISPLAY_SIZE back"
        )


def load(folder: Path):
    """The patch network saved in `folder` (eval mode, CPU); UnreadableWeights for a damaged weights file."""
    from mammo_pipeline.model.weights import read_weights

    net = patch_network()
    net.load_state_dict(read_weights(folder / WEIGHTS_FILE))
    return net.eval()


def export(net, path: Path, example_crops: np.ndarray, metadata: dict[str, str]) -> str:
    """Write `net` as ONNX (input `crops` [N, k, C, P, P], outputs `probs` [N], `patch_probs` [N, k]); sha256."""
    import onnx
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor):
            patch = torch.sigmoid(self.inner.read_logits(x))
            return patch.max(dim=1).values, patch

    example = torch.from_numpy(network_input(example_crops[:2] if len(example_crops) >= 2 else example_crops))
    with scratch_dir(path.parent, "export") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = tmp / "raw.onnx"
        torch.onnx.export(
            Probabilities(net).eval(),  # eval on the wrapper: export restores its mode, and with it net's
            (example,),
            str(raw),
            input_names=["crops"],
            output_names=["probs", "patch_probs"],
            dynamic_axes={"crops": {0: "batch"}, "probs": {0: "batch"}, "patch_probs": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        model = onnx.load(str(raw))
        onnx.helper.set_model_props(model, metadata)
        with atomic_path(path) as out:
            onnx.save_model(model, str(out))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def onnx_probs(session, found: Candidates, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(image probabilities [N], patch probabilities [N, k]) from an ONNX Runtime session of `export`'s file."""
    if len(found.crops) == 0:
        return np.zeros(0, np.float32), np.zeros((0, cand.K), np.float32)
    outs = [
        session.run(["probs", "patch_probs"], {"crops": network_input(found.crops[i : i + batch_size])})
        for i in range(0, len(found.crops), batch_size)
    ]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def heat_map(
    centres: np.ndarray,
    patch_probs: np.ndarray,
    display_shape: tuple[int, int],
    shape: tuple[int, int],
    sigma: float | None = None,
):
    """[H, W] map in 0..1 on a grid of `shape` (the model PNG): a Gaussian bump on each candidate's centre,
    as high as its patch probability, `sigma` px of that grid wide (default a quarter of the crop: the clip sits in
    the crop's centre); scaled so the peak is 1, like the Grad-CAM maps. The peak is the candidate that decided the
    image's p_biopsy. `explain.object_occlusion` draws its removed objects with it too."""
    heat = np.zeros(shape, dtype=np.float32)
    sy, sx = shape[0] / display_shape[0], shape[1] / display_shape[1]
    rows, cols = np.arange(shape[0], dtype=np.float32)[:, None], np.arange(shape[1], dtype=np.float32)[None, :]
    sigma = max(cand.CROP / 4 * sy, 1.0) if sigma is None else sigma
    for (r, c), p in zip(centres.tolist(), patch_probs.tolist(), strict=True):
        if r < 0:
            continue
        y, x = (r + 0.5) * sy - 0.5, (c + 0.5) * sx - 0.5  # pixel centres, display -> model grid
        bump = np.exp(-((rows - y) ** 2 + (cols - x) ** 2) / (2 * sigma**2))
        np.maximum(heat, np.float32(p) * bump, out=heat)
    peak = float(heat.max())
    return heat / peak if peak > 0 else heat
