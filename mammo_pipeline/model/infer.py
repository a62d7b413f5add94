"""Batched CPU inference with ONNX Runtime over the model-size PNG renditions.

PNG decoding and preprocessing run in a small thread pool (PIL and NumPy release the GIL) a few batches
ahead of the ONNX Runtime session, so the network never waits for the disk and the CPU stays busy.
Only `prefetch` batches are ever in flight, so memory is flat however many images a partition holds.
A model with a second look (model/second_look_model.py) also cuts candidates from each display PNG in the
same pool and takes p_biopsy from `second_look.onnx`; the global network still answers p_mag.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mammo_pipeline.atomic import atomic_path, remove_stale_temps
from mammo_pipeline.labels.codes import label_of
from mammo_pipeline.model import second_look_model as second_look
from mammo_pipeline.model.evaluate import DEFAULT_POINT, FLAGS, needs_review
from mammo_pipeline.model.preprocess import PREPROCESS_VERSION, preprocess
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.progress import ProgressFn
from mammo_pipeline.settings import Settings

THRESHOLD = 0.5  # a flag's threshold for a model made before operating points (models record their own)
KEYS = ("sop_instance_uid", "study_instance_uid", "patient_key", "hospital")
COLUMNS = (
    *KEYS,
    "p_biopsy",
    "p_mag",
    "has_biopsy_marker",
    "is_mag_view",
    "needs_review",
    "predicted_class",
    "model_version",
    "onnx_sha256",
    "label_snapshot_id",
    "dagster_run_id",
    "predicted_at",
)


class ModelMismatch(ValueError):
    """The ONNX file on disk is not the model current.json names."""


@dataclass(frozen=True)
class LoadedModel:
    """An ONNX Runtime session plus the facts every prediction row carries."""

    session: ort.InferenceSession
    path: Path
    sha256: str
    model_version: str
    label_snapshot_id: str
    input_size: int
    operating_points: dict = field(default_factory=dict)  # {'biopsy'|'mag': {threshold, review_low, review_high}}
    second_look: ort.InferenceSession | None = None  # answers p_biopsy when the model has one

    def point(self, flag: str) -> dict:
        """The operating point of one flag (threshold 0.5, no review band for a model made before them)."""
        legacy = {**DEFAULT_POINT, "threshold": THRESHOLD, "review_low": THRESHOLD, "review_high": THRESHOLD}
        return self.operating_points.get(flag) or legacy


@dataclass
class InferenceStats:
    """What a run did, for metadata and the benchmark."""

    n_images: int = 0  # predicted by this run
    n_missing: int = 0
    unreadable: list[str] = field(default_factory=list)  # SOP Instance UIDs whose PNGs exist but could not be read
    seconds: float = 0.0
    n_kept: int = 0  # rows of the same ONNX file kept from the slice as they were (`write_predictions`)

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else 0.0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_file(settings: Settings, ref: ModelRef) -> Path:
    """The ONNX file inference uses: `inference_file` (fp32 or int8), else `onnx_file`."""
    name = ref.inference_file or ref.onnx_file
    if not name:
        raise FileNotFoundError(f"{settings.models / 'current.json'}: no ONNX file yet; materialize onnx_model first")
    path = ref.path(settings.models, name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: ONNX file named by current.json is missing; re-materialize onnx_model")
    return path


def _options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.n_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT threads yield instead of spinning, leaving the cores to the PNG decoders between batches
    # (measured 15-30% more images/s on a shared 2-core machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _second_look_session(settings: Settings, ref: ModelRef) -> ort.InferenceSession | None:
    """The second look's ONNX session after checking its file, version and display size; None without one."""
    info = ref.extra.get("second_look") or {}
    if not info:
        return None
    try:
        second_look.check(info, settings.display_size)
    except second_look.SecondLookMismatch as err:
        raise ModelMismatch(str(err)) from err
    if not info.get("onnx_file"):
        raise FileNotFoundError(f"model {ref.model_version} has no second_look.onnx yet; materialize onnx_model")
    path = ref.path(settings.models, info["onnx_file"])
    if not path.exists():
        raise FileNotFoundError(f"{path}: the second look's ONNX file is missing; re-materialize onnx_model")
    check_file(path, info.get("onnx_sha256"), ref)
    return ort.InferenceSession(str(path), _options(settings), providers=["CPUExecutionProvider"])


def check_file(path: Path, expected: str | None, ref: ModelRef) -> str:
    """The sha256 of `path`, one of model `ref`'s files; raises ModelMismatch when it is not the `expected` one
    recorded at export (in `models/<version>/ref.json`, and `current.json` while the model is the newest)."""
    sha = sha256_file(path)
    if expected and expected != sha:
        raise ModelMismatch(
            f"{path}: sha256 {sha[:12]} is not the {expected[:12]} model {ref.model_version} recorded when it was "
            "exported (models/<version>/ref.json): the file changed since; restore it from a backup, or promote "
            "another model"
        )
    return sha


def _inference_sha256(ref: ModelRef) -> str | None:
    """The sha256 recorded for the file `model_file` opens."""
    return ref.inference_sha256 if ref.inference_file else ref.onnx_sha256


def check_files(settings: Settings, ref: ModelRef) -> None:
    """Every ONNX file of `ref` that exists is the one exported (`check_file`): the inference file, the fp32 ONNX
    file and the second look's, each hashed once. Raises ModelMismatch naming the first that is not,
    FileNotFoundError for a missing inference file."""
    look = ref.extra.get("second_look") or {}
    inference = model_file(settings, ref)
    check_file(inference, _inference_sha256(ref), ref)
    for name, sha in ((ref.onnx_file, ref.onnx_sha256), (look.get("onnx_file"), look.get("onnx_sha256"))):
        path = ref.path(settings.models, name) if name else None
        if path is not None and path != inference and path.exists():
            check_file(path, sha, ref)


def load_model(settings: Settings, ref: ModelRef) -> LoadedModel:
    """Open the inference file (and the second look's) on CPU with `settings.n_threads` intra-op threads, after
    checking they are `ref`'s."""
    path = model_file(settings, ref)
    sha = check_file(path, _inference_sha256(ref), ref)
    session = ort.InferenceSession(str(path), _options(settings), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("model_version", ref.model_version) != ref.model_version:
        raise ModelMismatch(f"{path}: metadata model_version {meta['model_version']} != {ref.model_version}")
    if meta.get("preprocess_version", PREPROCESS_VERSION) != PREPROCESS_VERSION:
        raise ModelMismatch(
            f"{path}: trained on preprocessing version {meta['preprocess_version']}, this code makes version "
            f"{PREPROCESS_VERSION}; retrain (materialize trained_model and onnx_model)"
        )
    size = int(meta.get("input_size", ref.input_size))
    points = ref.extra.get("operating_points") or {}
    look = _second_look_session(settings, ref)
    return LoadedModel(session, path, sha, ref.model_version, ref.label_snapshot_id, size, points, look)


def _load_batch(
    paths: list[Path], size: int, displays: list[Path] | None = None, display_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, second_look.Candidates | None, list[int]]:
    """Preprocessed images of one batch, a mask of the ones it holds, (with `displays`) the second look's
    candidates of their display PNGs (rendered for `display_size`), and the positions of those left out although
    their PNGs exist.

    An image is left out when a PNG is missing, or when reading it raises (a PNG cut short on disk, a picture
    one crop thin): one image never stops the batch; its positions are returned for the caller to report."""
    ok = np.zeros(len(paths), dtype=bool)
    inputs: list[np.ndarray] = []
    found: list[second_look.Candidates] = []
    failed: list[int] = []
    for i, path in enumerate(paths):
        display = None if displays is None else displays[i]
        if not path.is_file() or (display is not None and not display.is_file()):
            continue
        try:
            image = preprocess(path, size)
            candidates = None if display is None else second_look.candidates_of([display], long_side=display_size)
        except Exception:  # reported by the caller, retried on the next run
            failed.append(i)
            continue
        ok[i] = True
        inputs.append(image)
        if candidates is not None:
            found.append(candidates)
    batch = np.stack(inputs).astype(np.float32, copy=False) if inputs else np.empty((0, 3, size, size), np.float32)
    return batch, ok, None if displays is None else second_look.Candidates.joined(found), failed


def predict_images(
    settings: Settings,
    manifest: pd.DataFrame,
    model: LoadedModel | ModelRef,
    batch_size: int = 64,
    stats: InferenceStats | None = None,
    progress: ProgressFn | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield one prediction frame per batch of `manifest` rows (image_cache columns; `model_png` under cache/).

    Rows whose PNG is missing are skipped and counted in `stats.n_missing`; rows whose PNGs exist but cannot be
    read are skipped and listed in `stats.unreadable` (each is tried again on the next run). Frames carry every
    image_predictions column except `dagster_run_id`, which the caller adds. Pass a LoadedModel to reuse
    one session across calls; a ModelRef is loaded here.
    """
    model = load_model(settings, model) if isinstance(model, ModelRef) else model
    stats = stats if stats is not None else InferenceStats()
    missing = {*KEYS, "model_png", *(["display_png"] if model.second_look else [])} - set(manifest.columns)
    if len(manifest) and missing:
        raise ValueError(f"image_cache manifest lacks columns {sorted(missing)}; re-materialize image_cache")
    total = len(manifest)
    if total == 0:
        return
    rows = manifest.reset_index(drop=True)
    paths = [settings.cache / str(p) for p in rows["model_png"].fillna("")]
    displays = [settings.cache / str(p) for p in rows["display_png"].fillna("")] if model.second_look else None
    starts = range(0, total, batch_size)
    prefetch = max(2, settings.n_threads)
    started = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(max(1, settings.n_threads), thread_name_prefix="preprocess") as pool:

        def submit(start: int) -> Future[tuple[np.ndarray, np.ndarray, second_look.Candidates | None]]:
            stop = start + batch_size
            batch_displays = None if displays is None else displays[start:stop]
            return pool.submit(_load_batch, paths[start:stop], model.input_size, batch_displays, settings.display_size)

        upcoming = iter(starts)
        pending = deque(submit(start) for start in itertools.islice(upcoming, prefetch))
        for start in starts:
            batch, ok, found, failed = pending.popleft().result()
            nxt = next(upcoming, None)
            if nxt is not None:
                pending.append(submit(nxt))
            part = rows.iloc[start : start + batch_size][ok]
            if len(part):
                probs = model.session.run(["probs"], {"image": batch})[0]
                if model.second_look is not None and found is not None:
                    probs[:, 0] = second_look.onnx_probs(model.second_look, found)[0]
                yield _frame(part, probs, model)
            stats.n_images += len(part)
            stats.n_missing += int((~ok).sum()) - len(failed)
            stats.unreadable += [str(rows.at[start + i, "sop_instance_uid"]) for i in failed]
            done += len(ok)
            stats.seconds = time.perf_counter() - started
            if progress:
                progress(done, total)


def _frame(part: pd.DataFrame, probs: np.ndarray, model: LoadedModel) -> pd.DataFrame:
    """One batch's image_predictions rows: flags at the model's thresholds, needs_review inside a review band."""
    points = {flag: model.point(flag) for flag in FLAGS}
    # compared in float64, as the audit (evaluate.needs_review, the same call) and the study SQL (DOUBLE) compare:
    # against a float32 array NumPy rounds a bound to float32, and a bound one float64 step above an audit score
    # (nextafter) then equals it (an image at p = 1.0 left out of review while its study needed it)
    p = np.asarray(probs, dtype=np.float64)
    biopsy = p[:, 0] >= points["biopsy"]["threshold"]
    mag = p[:, 1] >= points["mag"]["threshold"]
    review = needs_review(p, points)
    return pd.DataFrame(
        {
            **{key: part[key].to_numpy() for key in KEYS},
            "p_biopsy": probs[:, 0].astype(np.float32),
            "p_mag": probs[:, 1].astype(np.float32),
            "has_biopsy_marker": biopsy,
            "is_mag_view": mag,
            "needs_review": review,
            "predicted_class": [label_of(b, m) for b, m in zip(biopsy, mag, strict=True)],
            "model_version": model.model_version,
            "onnx_sha256": model.sha256,
            "label_snapshot_id": model.label_snapshot_id,
            "predicted_at": pd.Timestamp(datetime.now(UTC)),
        }
    )


_SCHEMA = pa.schema(
    [
        *((key, pa.string()) for key in KEYS),
        ("p_biopsy", pa.float32()),
        ("p_mag", pa.float32()),
        ("has_biopsy_marker", pa.bool_()),
        ("is_mag_view", pa.bool_()),
        ("needs_review", pa.bool_()),
        ("predicted_class", pa.string()),
        ("model_version", pa.string()),
        ("onnx_sha256", pa.string()),
        ("label_snapshot_id", pa.string()),
        ("dagster_run_id", pa.string()),
        ("predicted_at", pa.timestamp("us", tz="UTC")),
    ]
)


def write_predictions(
    settings: Settings,
    manifest: pd.DataFrame,
    model: LoadedModel | ModelRef,
    path: Path,
    run_id: str = "",
    batch_size: int = 64,
    progress: ProgressFn | None = None,
) -> InferenceStats:
    """Predict the manifest's images and stream the rows into one Parquet file, replaced atomically at the end.

    Rows of the same ONNX file already in `path` are kept as they are, lineage included (`predicted_at`,
    `dagster_run_id`), for the images still in the manifest and not cached again since they were predicted
    (`_kept_rows`): a new drop adds its images without re-dating the hospital's others, so what `mammo lineage
    --as-of` answered about a past time stays the answer. Only new and re-cached images are predicted.
    """
    model = load_model(settings, model) if isinstance(model, ModelRef) else model
    kept = _kept_rows(path, manifest, model.sha256)
    todo = manifest[~manifest["sop_instance_uid"].isin(set(kept["sop_instance_uid"]))] if len(kept) else manifest
    stats = InferenceStats(n_kept=len(kept))
    if path.parent.is_dir():
        remove_stale_temps(path.parent)  # a killed prediction run's half-written slice
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, _SCHEMA) as writer:
        if len(kept):
            writer.write_table(pa.Table.from_pandas(kept[list(COLUMNS)], schema=_SCHEMA, preserve_index=False))
        for frame in predict_images(settings, todo, model, batch_size, stats, progress):
            frame["dagster_run_id"] = run_id
            writer.write_table(pa.Table.from_pandas(frame[list(COLUMNS)], schema=_SCHEMA, preserve_index=False))
    return stats


def slice_is_current(path: Path, manifest: pd.DataFrame, sha256: str) -> bool:
    """Whether the prediction slice `path` would come out of `write_predictions` as it is: every image of
    `manifest` keeps its row (`_kept_rows`) and the slice holds no other. Then a nightly re-run keeps the file and
    its lineage. Judged per image, so a slice stays current after an incremental drop, whose new images were
    cached after the older images were predicted (until stop 63 the oldest prediction was compared with the
    newest rendition, and after the first new drop every nightly run rewrote the slice)."""
    if not path.exists() or not len(manifest):
        return False
    kept = _kept_rows(path, manifest, sha256)
    return len(kept) == manifest["sop_instance_uid"].nunique() == pq.read_metadata(path).num_rows


def _kept_rows(path: Path, manifest: pd.DataFrame, sha256: str) -> pd.DataFrame:
    """The rows of `path` predicted by the ONNX file `sha256` for images of `manifest` whose rendition is not newer
    than the prediction (`cached_at` <= `predicted_at`; a manifest without `cached_at` counts as not re-cached).
    Empty when `path` does not exist."""
    if not path.exists() or not len(manifest):
        return pd.DataFrame(columns=list(COLUMNS))
    rows = pq.read_table(path).to_pandas()
    rows = rows[rows["onnx_sha256"] == sha256].drop_duplicates("sop_instance_uid", keep="last")
    cached = manifest.drop_duplicates("sop_instance_uid", keep="last").set_index("sop_instance_uid")
    rows = rows[rows["sop_instance_uid"].isin(cached.index)]
    if "cached_at" in cached and len(rows):
        when = pd.to_datetime(cached.loc[rows["sop_instance_uid"], "cached_at"], utc=True).to_numpy()
        rows = rows[pd.isna(when) | (pd.to_datetime(rows["predicted_at"], utc=True).to_numpy() >= when)]
    return rows.reset_index(drop=True)
