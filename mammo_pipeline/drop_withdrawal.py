"""Withdraw the images of a drop whose files were deleted from landing (`mammo drops withdraw`).

A drop folder with no file left (gone, or emptied) counts as cleaned out of landing: the index keeps its rows,
the record of what was ingested, and its images stay in use, since archiving a drop after ingest (`rsync
--remove-source-files`, a clean-up script) looks exactly like deleting every file of it. When the files were
deleted to withdraw the images (a patient's opt-out, a drop sent to the wrong site), this says so: the index
forgets the drop's rows (`index.forget_drop`), and the hospital is indexed and cached again as `dicom_index` and
`image_cache` do, so an image another file of the hospital still holds (a `duplicate` copy in another drop) comes
back from it, and the cache withdraws the rest: their PNGs and second-look candidates are deleted and the label
store marks them withdrawn (their labels kept for a file sent again), as for a file deleted from a drop still in
landing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq

from mammo_pipeline.cache import cache_hospital, other_copies
from mammo_pipeline.dicom.index import forget_drop, index_hospital, index_path
from mammo_pipeline.labels.store import LabelStore, forget_zoom_crops, withdraw_dropped
from mammo_pipeline.landing import iter_dicom_stats
from mammo_pipeline.settings import Settings, check_hospital_key


class NotWithdrawable(ValueError):
    """The drop cannot be withdrawn: the index holds no rows of it, or landing still holds files of it."""


@dataclass
class DropWithdrawal:
    """What `withdraw_drop` did (or, for a dry run, would do) to one drop."""

    hospital: str
    drop: str
    dry_run: bool
    images: int  # the drop's indexed images
    elsewhere: int  # of them, images another file of the hospital holds (a duplicate copy in another drop): they stay
    withdrawn: int = 0  # images the cache withdrew (renditions deleted)
    from_labels: int = 0  # images the label store marked withdrawn

    def report(self) -> str:
        """One line for the log or the terminal."""
        where = f"{self.hospital}/{self.drop}"
        kept = f"; {self.elsewhere} stay, another file of the hospital holds them" if self.elsewhere else ""
        if self.dry_run:
            return f"{where}: would withdraw {self.images - self.elsewhere} of its {self.images} image(s){kept}"
        return (
            f"{where}: its {self.images} index row(s) forgotten; {self.withdrawn} image(s) withdrawn from the cache "
            f"(renditions deleted), {self.from_labels} from the label store{kept}"
        )


def cleaned_out_drops(settings: Settings, hospital: str) -> list[str]:
    """The drops of `hospital` whose rows the index keeps while landing holds no file of them (gone or emptied),
    sorted: the drops `withdraw_drop` accepts."""
    folder = settings.table_dir("dicom_index", check_hospital_key(hospital))
    tables = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    indexed = [p.stem for p in tables if pq.read_metadata(p).num_rows]  # an emptied table: its rows moved
    return [drop for drop in indexed if not _holds_files(settings, hospital, drop)]


def withdraw_drop(settings: Settings, hospital: str, drop: str, dry_run: bool = False) -> DropWithdrawal:
    """Withdraw the images of a drop cleaned out of landing (module docstring). Raises NotWithdrawable when the
    index holds no rows of `drop` or landing still holds files of it (the index would read them again), and the
    label store's own errors (`NoLabelStore`, sqlite3.OperationalError when another writer holds it too long: the
    next label sync then withdraws the images, the cache has already done its part)."""
    check_hospital_key(hospital)
    path = index_path(settings, hospital, drop)
    if drop in ("", ".", "..") or "/" in drop or "\\" in drop or not path.is_file():
        known = cleaned_out_drops(settings, hospital)
        raise NotWithdrawable(
            f"{hospital}: the index holds no drop {drop!r}; drops cleaned out of landing with rows kept: "
            f"{', '.join(known) if known else 'none'}"
        )
    if _holds_files(settings, hospital, drop):
        raise NotWithdrawable(
            f"landing/{hospital}/{drop}/ still holds files (or a folder that cannot be listed): delete them first, "
            "or the next index run reads them again"
        )
    sops = set(pq.read_table(path, columns=["sop_instance_uid"]).column(0).to_pylist())
    elsewhere = len(sops & _copies_elsewhere(settings, hospital, drop))
    result = DropWithdrawal(hospital, drop, dry_run, images=len(sops), elsewhere=elsewhere)
    if dry_run:
        return result
    forget_drop(settings, hospital, drop)
    index_hospital(settings, hospital)  # a duplicate copy in another drop takes the image back into the index
    cache = cache_hospital(settings, hospital)
    result.withdrawn = cache.withdrawn
    if cache.withdrawn_sops and settings.labels_db.exists():
        store = LabelStore(settings.labels_db, seed=settings.seed)
        result.from_labels = withdraw_dropped(settings, store, hospital, cache.withdrawn_sops)
        forget_zoom_crops(settings, store)
    return result


def _holds_files(settings: Settings, hospital: str, drop: str) -> bool:
    """Whether landing/<hospital>/<drop>/ holds a file the index would read, or a folder it cannot list."""
    unlistable: set[str] = set()
    for _ in iter_dicom_stats(settings.landing, hospital, drops=[drop], unlistable=unlistable):
        return True
    return bool(unlistable)


def _copies_elsewhere(settings: Settings, hospital: str, drop: str) -> set[str]:
    """SOP Instance UIDs with a copy the index quarantined as `duplicate` in another drop of the hospital
    (`cache.other_copies`, the copies the cache falls back on): those images come back from that copy."""
    return {sop for sop, copies in other_copies(settings, hospital).items() if any(c["drop"] != drop for c in copies)}
