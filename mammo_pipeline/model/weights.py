"""ImageNet ResNet18 weights from a local file, never downloaded, and the network built around them.

torchvision publishes `resnet18-f37072fd.pth`; the 8 hex digits in the name are the first 8 of the file's
sha256, which is what torchvision itself checks. We look in MAMMO_PRETRAINED_WEIGHTS, then in torchvision's
cache ($TORCH_HOME/hub/checkpoints), verify the hash, and load the state dict ourselves into a network built
with weights=None, so neither torchvision nor fastai ever reaches for the network.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from mammo_pipeline.atomic import atomic_path
from mammo_pipeline.settings import Settings

WEIGHTS_FILE = "resnet18-f37072fd.pth"
WEIGHTS_SHA256_PREFIX = "f37072fd"
N_OUT = 2  # has_biopsy_marker, is_mag_view


class PretrainedWeightsError(RuntimeError):
    """The ImageNet weights are missing or are not the published file."""


@dataclass(frozen=True)
class Candidate:
    path: Path
    origin: str  # "MAMMO_PRETRAINED_WEIGHTS" or "torch cache"
    status: str  # "ok", "missing", "wrong hash <prefix>"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def torch_cache_file() -> Path:
    """Where torchvision would keep the file: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/...)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path) -> str:
    """'ok', 'missing' or 'wrong hash <first 8 hex>' for one candidate file."""
    if not path.is_file():
        return "missing"
    prefix = sha256_file(path)[: len(WEIGHTS_SHA256_PREFIX)]
    return "ok" if prefix == WEIGHTS_SHA256_PREFIX else f"wrong hash {prefix} (expected {WEIGHTS_SHA256_PREFIX})"


def candidates(settings: Settings) -> list[Candidate]:
    """Every place we look, in order, with what we found there."""
    places: list[tuple[Path, str]] = []
    if settings.pretrained_weights:
        places.append((Path(settings.pretrained_weights).expanduser(), "MAMMO_PRETRAINED_WEIGHTS"))
    places.append((torch_cache_file(), "torch cache"))
    return [Candidate(path, origin, check_file(path)) for path, origin in places]


def how_to_fix() -> str:
    return (
        f"ImageNet ResNet18 weights not found. Get torchvision's {WEIGHTS_FILE} (sha256 starting "
        f"{WEIGHTS_SHA256_PREFIX}) and either set MAMMO_PRETRAINED_WEIGHTS=/path/to/{WEIGHTS_FILE} or run "
        f"`mammo weights import /path/to/{WEIGHTS_FILE}` (installs it in {torch_cache_file().parent}). "
        "To train from scratch instead, set MAMMO_PRETRAINED=none."
    )


def find_weights(settings: Settings) -> Path:
    """The first verified weights file, or PretrainedWeightsError saying exactly how to fix it."""
    found = candidates(settings)
    for cand in found:
        if cand.ok:
            return cand.path
    seen = "; ".join(f"{c.origin} {c.path}: {c.status}" for c in found)
    raise PretrainedWeightsError(f"{how_to_fix()} Looked in: {seen}.")


def import_weights(source: Path) -> Path:
    """Verify `source` and copy it into torchvision's cache (atomically); return the installed path."""
    status = check_file(source)
    if status != "ok":
        raise PretrainedWeightsError(f"{source}: {status}; expected torchvision's {WEIGHTS_FILE}")
    target = torch_cache_file()
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def load_imagenet_state(settings: Settings) -> tuple[dict | None, str]:
    """(torchvision resnet18 state dict, source path) or (None, 'none') when settings.pretrained == 'none'."""
    if settings.pretrained == "none":
        return None, "none"
    import torch

    path = find_weights(settings)
    return torch.load(path, map_location="cpu", weights_only=True), str(path)


def load_body(net, imagenet_state: dict) -> None:
    """Load a torchvision resnet18 state dict into the body (net[0]) of a fastai ResNet18 model."""
    import torch.nn as nn
    from torchvision.models import resnet18

    backbone = resnet18(weights=None)
    backbone.load_state_dict(imagenet_state)  # strict: a file for another architecture fails here
    body = nn.Sequential(*list(backbone.children())[:-2])  # fastai's cut for resnet18
    net[0].load_state_dict(body.state_dict())


def build_network(imagenet_state: dict | None = None, n_out: int = N_OUT):
    """fastai's ResNet18 body + head (random init, weights=None); the ImageNet state dict loaded into the body."""
    from fastai.vision.learner import create_vision_model
    from torchvision.models import resnet18

    net = create_vision_model(resnet18, n_out=n_out, pretrained=False)
    if imagenet_state is not None:
        load_body(net, imagenet_state)
    return net


class UnreadableWeights(OSError):
    """A saved network's weights file that torch cannot read as tensors (damaged, or not such a file)."""


def read_weights(path: Path) -> dict:
    """The state dict in `path`, read as tensors only (`weights_only`: no code runs); UnreadableWeights naming the
    file when it is no such file. torch's own error ends by suggesting `weights_only=False`, which would run
    whatever the file holds: never the way out for a damaged file."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise UnreadableWeights(
            f"{path}: not readable as a saved network ({type(exc).__name__}); the file is damaged: restore it from a "
            "backup, or train the model again"
        ) from None
