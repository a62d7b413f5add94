"""Pruning the image cache: delete the renditions and second-look candidates that nothing names any more.

The cache never deletes on an upgrade: a new NORM_VERSION renders into its own folder, and an image whose
rendition the new version would not change keeps its PNG in the earlier version's folder, named by its manifest
row (`normalize.rendition_current`). So a folder is not old because of its name; a file goes only when nothing
names it (paths relative to `cache/`):

- the hospital's `image_cache` manifest, and any journal a run has not folded into it yet (`cache.named_pngs`);
- the label store's images in use (`LabelStore.pngs_in_use`: the labeling app serves what the store names until
  its next sync; a withdrawn image is served to no one);
- the labels the next `trained_model` reads (`warehouse/labels/current.parquet`), and the newest model's
  `audit_predictions.parquet` and `oof.parquet` (its ONNX export and parity check read their PNGs).

What goes, per hospital, by kind (`KINDS`): PNGs no one names in another NORM_VERSION's folder (`old_version_png`)
or in the current one's (`orphan_png`: a run killed before it journaled them, a display size no longer
configured, an image quarantined since); the second-look candidates (`model/candidate_store.py`) of another
SECOND_LOOK_VERSION (`candidates-v<N>/`) or of a PNG gone or pruned (`stale_candidates`); and the folders these
leave empty. Only `cache/<hospital>/<version>/<size>/` and its `candidates-v<N>/` folders are walked: never the
labeling app's `cache/_zoom/` (`store.forget_zoom_crops` sweeps it), a hidden file (a live run's temp file,
`.<name>.<owner>.tmp`), a symlink, an unknown file or folder, or a warehouse table.

The walk and the deletions happen under the hospital's run lock (`cache.RUN_LOCK`), so no cache run writes or
names a file meanwhile (one that starts waits for the prune). A prune does not wait for a run: a hospital a cache
run holds is skipped and reported busy (prune it again after the run), as is a hospital without a manifest, where
nothing tells what is in use (never cached, or a warehouse that is not where MAMMO_WAREHOUSE says).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from mammo_pipeline import cache
from mammo_pipeline.atomic import ensure_under
from mammo_pipeline.labels.store import open_existing
from mammo_pipeline.model import candidates
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.progress import ProgressFn
from mammo_pipeline.settings import Settings, check_hospital_key

KINDS = {  # what a pruned file was -> how a report names it
    "old_version_png": "old-version PNGs",
    "orphan_png": "orphan PNGs",
    "stale_candidates": "stale candidates",
}
CANDIDATES = "candidates-v"  # + SECOND_LOOK_VERSION: the folder of the candidates kept beside display PNGs
MODEL_TABLES = ("audit_predictions.parquet", "oof.parquet")  # of the newest model: its export reads their PNGs
BUSY = "a cache run holds it; prune it again once the run is done"
UNITS = ("B", "kB", "MB", "GB", "TB", "PB")  # of `human_bytes`, decimal
NO_MANIFEST = "no image_cache manifest tells which of its files are in use (never cached, or check MAMMO_WAREHOUSE)"


class UnknownHospital(LookupError):
    """No folder of that name under `cache/`."""


class LabelStoreOutOfReach(RuntimeError):
    """The label store can be read only as it is on disk (this user may not write its folder), without what a
    running app still holds in its -wal file: the PNGs it names are not known in full, so nothing is pruned."""


@dataclass
class HospitalPrune:
    """What a prune of one hospital's cache folder deleted (or, in a dry run, would delete)."""

    hospital: str
    files: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in KINDS})  # kind -> paths
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # kind -> bytes on disk
    folders: list[str] = field(default_factory=list)  # left empty by the deletions, deepest first
    skipped: str = ""  # why nothing was looked at or deleted (BUSY, NO_MANIFEST); "" when pruned

    @property
    def n_files(self) -> int:
        return sum(len(paths) for paths in self.files.values())

    @property
    def n_bytes(self) -> int:
        return sum(self.bytes.values())

    def report(self, dry_run: bool = False) -> str:
        """One line: '<hospital>: deleted 5 file(s), 1.2 MB: old-version PNGs 3 (0.9 MB), orphan PNGs 1 (...), stale
        candidates 1 (...); 2 empty folder(s)' ('would delete' in a dry run), '<hospital>: nothing to delete', or why
        it was skipped."""
        if self.skipped:
            return f"{self.hospital}: skipped: {self.skipped}"
        if not self.n_files and not self.folders:
            return f"{self.hospital}: nothing to delete"
        kinds = ", ".join(f"{name} {len(self.files[k])} ({human_bytes(self.bytes[k])})" for k, name in KINDS.items())
        verb = "would delete" if dry_run else "deleted"
        return (
            f"{self.hospital}: {verb} {self.n_files} file(s), {human_bytes(self.n_bytes)}: {kinds}; "
            f"{len(self.folders)} empty folder(s)"
        )

    def counts(self) -> dict[str, object]:
        """Files and bytes per kind and the empty folders, or {'skipped': why}: for a run's metadata."""
        if self.skipped:
            return {"skipped": self.skipped}
        kinds = {kind: {"files": len(self.files[kind]), "bytes": self.bytes[kind]} for kind in KINDS}
        return {**kinds, "empty_folders": len(self.folders)}


def human_bytes(n: int) -> str:
    """`n` bytes in decimal units, as the README gives sizes: '0 B', '812 B', '86.0 kB', '1.2 GB'."""
    power = 0
    while power < len(UNITS) - 1 and n >= 1000 ** (power + 1):
        power += 1
    return f"{n} B" if power == 0 else f"{n / 1000**power:.1f} {UNITS[power]}"


def hospitals(settings: Settings) -> list[str]:
    """The hospitals with a folder under `cache/`, sorted (`_`- and `.`-prefixed folders such as `_zoom` are none)."""
    root = settings.cache
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(("_", ".")) and p.is_dir())


def prune_plan(settings: Settings, hospital: str) -> HospitalPrune:
    """What `prune` would delete from one hospital's cache folder, deleting nothing (a dry run); see `prune`."""
    return prune(settings, hospital, dry_run=True)


def prune(
    settings: Settings, hospital: str, dry_run: bool = False, progress: ProgressFn | None = None
) -> HospitalPrune:
    """Delete the files of `cache/<hospital>/` that nothing names, and the folders they leave empty (module
    docstring); return what was deleted (with `dry_run`, what would be, and nothing is). `progress(done, total)`
    is called as files are deleted.

    A hospital a cache run holds, or without a manifest, is returned `skipped` with nothing deleted. Raises
    UnknownHospital when `cache/` has no folder `hospital`, ValueError for a name that is no hospital (`_zoom`,
    a path), NoLabelStore when the label store's file is not one, and LabelStoreOutOfReach when its latest
    writes cannot be read: nothing is deleted that it may name.
    """
    root = _hospital_folder(settings, hospital)
    if not cache.manifest_path(settings, hospital).exists():
        return HospitalPrune(hospital, skipped=NO_MANIFEST)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(cache.run_lock_now(settings, hospital))
        except cache.CacheBusy:
            return HospitalPrune(hospital, skipped=BUSY)
        if not cache.manifest_path(settings, hospital).exists():  # removed since the look above
            return HospitalPrune(hospital, skipped=NO_MANIFEST)
        plan = _plan(hospital, root, named_files(settings, hospital))
        if not dry_run:
            _delete(plan, progress)
        return plan


def named_files(settings: Settings, hospital: str) -> set[str]:
    """Every file under `cache/<hospital>/` (relative to `cache/`) that something reads: see the module docstring.

    Raises NoLabelStore and LabelStoreOutOfReach as `prune` does.
    """
    prefix = f"{hospital}/"
    named = cache.named_pngs(settings, hospital)
    if settings.labels_db.exists():
        store = open_existing(settings.labels_db, seed=settings.seed)
        named |= store.pngs_in_use(prefix)
        if store.disk_only:
            raise LabelStoreOutOfReach(
                f"{settings.labels_db} can be read only as it is on disk (this user may not write its folder), "
                "without what a running labeling app still holds: prune as a user who may"
            )
    tables = [settings.table_dir("labels") / "current.parquet"]
    if ModelRef.exists(settings.models):
        ref = ModelRef.load(settings.models)
        tables += [ref.path(settings.models, name) for name in MODEL_TABLES]
    for table in tables:
        named |= _named_in(table, prefix)
    return named


def _named_in(path: Path, prefix: str) -> set[str]:
    """The PNGs starting with `prefix` that a table of labels or predictions names in its `display_png` and
    `model_png` columns (those it has); none when the file does not exist."""
    if not path.exists():
        return set()
    columns = [c for c in ("display_png", "model_png") if c in pq.read_schema(path).names]
    table = pq.read_table(path, columns=columns)
    return {v for column in table.columns for v in column.to_pylist() if isinstance(v, str) and v.startswith(prefix)}


def _hospital_folder(settings: Settings, hospital: str) -> Path:
    """`cache/<hospital>`, resolved and checked to lie inside `cache/` (`atomic.ensure_under`)."""
    check_hospital_key(hospital)
    if hospital.startswith(("_", ".")):
        raise ValueError(f"{hospital!r} is not a hospital: `_`- and `.`-prefixed folders of the cache are not pruned")
    if not (settings.cache / hospital).is_dir():
        raise UnknownHospital(f"no cache folder for {hospital!r} under {settings.cache}")
    return ensure_under(settings.cache, hospital)


def _plan(hospital: str, root: Path, named: set[str]) -> HospitalPrune:
    """Walk `root` (= `cache/<hospital>`) and list what nothing in `named` holds. Folders are never followed
    through a symlink, so every path listed lies under `root`."""
    plan = HospitalPrune(hospital)
    for version in _entries(root):
        if version.name.startswith(".") or not version.is_dir(follow_symlinks=False):
            continue
        empties = True
        for size in _entries(version):
            if size.name.isdigit() and size.is_dir(follow_symlinks=False):
                kind = "orphan_png" if version.name == cache.NORM_VERSION else "old_version_png"
                rel = f"{hospital}/{version.name}/{size.name}"
                if _plan_size(plan, ensure_under(root, size.path), rel, kind, named):
                    plan.folders.append(size.path)
                    continue
            empties = False
        if empties:
            plan.folders.append(version.path)
    return plan


def _plan_size(plan: HospitalPrune, folder: Path, rel: str, kind: str, named: set[str]) -> bool:
    """Add to `plan` the PNGs of one size folder that nothing names (as `kind`) and the candidates not kept for a
    named PNG of this SECOND_LOOK_VERSION; whether the folder is left empty."""
    kept: set[str] = set()  # stems of the PNGs that stay
    stores = []
    empties = True
    for entry in _entries(folder):
        if entry.name.endswith(".png") and _plain_file(entry):
            if f"{rel}/{entry.name}" in named:
                kept.add(entry.name.removesuffix(".png"))
                empties = False
            else:
                _add(plan, kind, entry)
        elif entry.name.startswith(CANDIDATES) and entry.is_dir(follow_symlinks=False):
            stores.append(entry)
        else:
            empties = False  # a temp file, or something the cache did not write: left alone
    current = f"{CANDIDATES}{candidates.SECOND_LOOK_VERSION}"
    for store in stores:
        gone = True
        for entry in _entries(store):
            stale = store.name != current or entry.name.removesuffix(".npz") not in kept
            if entry.name.endswith(".npz") and _plain_file(entry) and stale:
                _add(plan, "stale_candidates", entry)
            else:
                gone = False
        if gone:
            plan.folders.append(store.path)
        empties = empties and gone
    return empties


def _entries(folder: Path | str) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda e: e.name)


def _plain_file(entry: os.DirEntry) -> bool:
    """A regular file the cache wrote: not hidden (a live run's temp file is `.<name>.<owner>.tmp`), no symlink."""
    return not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)


def _add(plan: HospitalPrune, kind: str, entry: os.DirEntry) -> None:
    plan.files[kind].append(entry.path)
    plan.bytes[kind] += entry.stat(follow_symlinks=False).st_size


def _delete(plan: HospitalPrune, progress: ProgressFn | None) -> None:
    """Delete the files of `plan`, then its folders, deepest first (one that is not empty is left: os.rmdir)."""
    files = [path for kind in KINDS for path in plan.files[kind]]
    for n, path in enumerate(files, start=1):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if progress:
            progress(n, len(files))
    for folder in plan.folders:
        with contextlib.suppress(OSError):
            os.rmdir(folder)
