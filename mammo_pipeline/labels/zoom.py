"""Full-resolution zoom: a native-resolution crop of the DICOM around a point, for telling a clip from a
calcification. Rendered with the display pipeline the cache uses (dicom/normalize.py: modality LUT, VOI,
MONOCHROME1 inversion) at the source's own size, so the crop shows the stored pixels one to one.

The full-size rendition of the last few images stays in memory (LRU) and every crop is written once under
`<cache>/_zoom/<image id>/` and served from there afterwards. Crops leave the server only as PNG.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mammo_pipeline.atomic import atomic_path

DEFAULT_SIZE = 512
MIN_SIZE, MAX_SIZE = 64, 1024
GRID = 16  # crop centres snap to this many source pixels, so nearby pointer positions share a cached crop
KEEP_RENDERED = 4  # full-size renditions kept in memory (a 4,000 x 3,000 mammogram is 12 MB as uint8)


class BadCrop(ValueError):
    """The crop request is malformed (coordinates not numbers, outside [0, 1], size out of range)."""


class NoSource(LookupError):
    """The image has no readable DICOM file under the landing folder."""


def _fraction(name: str, raw: object) -> float:
    try:
        value = float(str(raw).strip())
    except (TypeError, ValueError):
        raise BadCrop(f"{name} must be a number in [0, 1], not {raw!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise BadCrop(f"{name} must be in [0, 1], not {raw!r}")
    return value


def _size(raw: object) -> int:
    if raw in (None, ""):
        return DEFAULT_SIZE
    text = str(raw).strip()
    if not text.isascii() or not text.isdigit() or not MIN_SIZE <= int(text) <= MAX_SIZE:
        raise BadCrop(f"size must be a whole number of pixels in [{MIN_SIZE}, {MAX_SIZE}], not {raw!r}")
    return int(text)


def crop_box(shape: tuple[int, int], x: float, y: float, size: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a size x size window (smaller when the image is) centred near
    (x * width, y * height), snapped to GRID and shifted to lie wholly inside an image of `shape` (rows, cols)."""
    rows, cols = shape
    h, w = min(size, rows), min(size, cols)
    cy = round(y * (rows - 1) / GRID) * GRID
    cx = round(x * (cols - 1) / GRID) * GRID
    top = min(max(cy - h // 2, 0), rows - h)
    left = min(max(cx - w // 2, 0), cols - w)
    return top, left, top + h, left + w


# Beside the hospitals' folders of the cache: a name no hospital can take (folders starting with `_` are never
# hospitals), so a hospital slugged "zoom" cannot share it.
ZOOM_FOLDER = "_zoom"


class ZoomCache:
    """Crops of DICOM files under `landing`, cached as PNG files under `folder`."""

    def __init__(self, landing: Path, folder: Path, resolve: Callable[[str], Path] | None = None) -> None:
        """`resolve` turns a pseudonymized `rel_path` into the real file (`dicom.source_paths.resolve`); a path
        it does not know (KeyError) is taken as relative to `landing`."""
        self.landing = Path(landing).resolve()
        self.resolve = resolve
        self.folder = Path(folder)
        self._rendered: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._shapes: dict[Path, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def _source(self, rel: str | None) -> Path:
        if not rel:
            raise NoSource("no DICOM file is known for this image (re-run image_cache, then restart the app)")
        path = self.landing / rel
        if self.resolve is not None:
            with contextlib.suppress(KeyError):
                path = self.resolve(rel)
        path = path.resolve()
        if not path.is_relative_to(self.landing) or not path.is_file():
            raise NoSource("the image's DICOM file is not under the landing folder")
        return path

    def shape(self, path: Path, image_id: int) -> tuple[int, int]:
        """(rows, columns) the display shows of the DICOM file at its native size: its Rows and Columns less a
        frame of padding the display pipeline cuts away (`normalize.content_box`), so the app's fractions land
        on the pixels the app shows. Only a rendition knows that frame: the shape of the first one is kept in
        memory and in `<folder>/<image_id>/shape.txt` with the file's mtime, so crops cached on disk are served
        without rendering after a restart."""
        with self._lock:
            if path in self._shapes:
                return self._shapes[path]
        record = self.folder / str(int(image_id)) / "shape.txt"
        mtime = path.stat().st_mtime_ns
        try:
            rows, cols, seen = (int(v) for v in record.read_text().split())
            shape = (rows, cols) if seen == mtime and rows > 0 and cols > 0 else None
        except (OSError, ValueError):
            shape = None
        if shape is None:
            rows, cols = self.full(path).shape[:2]
            shape = (int(rows), int(cols))
            with atomic_path(record) as tmp:
                tmp.write_text(f"{shape[0]} {shape[1]} {mtime}")
        with self._lock:
            self._shapes[path] = shape
        return shape

    def full(self, path: Path) -> np.ndarray:
        """The uint8 display image of `path` at its native size (rows x cols, less a frame of padding cut
        away: `shape`), through normalize.render."""
        from mammo_pipeline.dicom.errors import UnusableImage
        from mammo_pipeline.dicom.normalize import NATIVE, read_dataset, render
        from mammo_pipeline.dicom.source_paths import redact

        with self._lock:
            if path in self._rendered:
                self._rendered.move_to_end(path)
                return self._rendered[path]
        try:
            ds, _ = read_dataset(path)
            pixels = render(ds, (NATIVE,)).images[NATIVE]
        except UnusableImage as e:
            reason = redact(str(e), path, "the file", self.landing)  # the real path names the patient's folder
            raise NoSource(f"the image's DICOM file cannot be rendered: {reason}") from e
        with self._lock:
            self._rendered[path] = pixels
            while len(self._rendered) > KEEP_RENDERED:
                self._rendered.popitem(last=False)
        return pixels

    def crop_png(self, image_id: int, rel: str | None, x: object, y: object, size: object = None) -> bytes:
        """PNG bytes of the crop around fractions (x, y) of image `image_id`; BadCrop or NoSource otherwise."""
        fx, fy, side = _fraction("x", x), _fraction("y", y), _size(size)
        path = self._source(rel)
        top, left, bottom, right = crop_box(self.shape(path, image_id), fx, fy, side)
        cached = self.folder / str(int(image_id)) / f"{top}_{left}_{bottom}_{right}.png"
        if cached.is_file() and cached.stat().st_mtime_ns >= path.stat().st_mtime_ns:
            return cached.read_bytes()
        pixels = self.full(path)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels[top:bottom, left:right])).save(buf, format="PNG")
        data = buf.getvalue()
        with atomic_path(cached) as tmp:
            tmp.write_bytes(data)
        return data
