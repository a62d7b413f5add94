"""The label store: one SQLite file (WAL) holding images, an append-only event log and current labels.

The app, the demo's simulated annotator and the `labels` asset all use this one API. Each call opens its
own connection (safe from any thread or process) and every write runs inside `BEGIN IMMEDIATE`, so two
annotators writing at once queue on the lock instead of failing with "database is locked".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import sqlite_utils

from mammo_pipeline import warehouse
from mammo_pipeline.atomic import atomic_path
from mammo_pipeline.labels import audit, queues
from mammo_pipeline.labels.codes import CODES, LABELS, flags_of
from mammo_pipeline.labels.zoom import ZOOM_FOLDER
from mammo_pipeline.settings import Settings

SOURCES = ("human", "import", "model")
_local = threading.local()  # per-thread connections (see LabelStore._db)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none: which file a connection opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    hospital TEXT NOT NULL,
    study_instance_uid TEXT,
    patient_key TEXT,
    display_png TEXT,
    model_png TEXT,
    split TEXT NOT NULL CHECK (split IN ('train', 'audit')),
    meta_mag INTEGER,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id),
    label INTEGER NOT NULL CHECK (label BETWEEN 1 AND 4),
    annotator TEXT NOT NULL,
    ts TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('human', 'import', 'model')),
    round INTEGER,
    undone INTEGER NOT NULL DEFAULT 0,
    seen_event INTEGER
);
CREATE INDEX IF NOT EXISTS events_annotator ON events (annotator, id);
CREATE INDEX IF NOT EXISTS events_image ON events (image_id, annotator, id);
CREATE TABLE IF NOT EXISTS current_labels (
    image_id INTEGER NOT NULL REFERENCES images(id),
    annotator TEXT NOT NULL,
    label INTEGER NOT NULL,
    event_id INTEGER NOT NULL REFERENCES events(id),
    ts TEXT NOT NULL,
    PRIMARY KEY (image_id, annotator)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    image_id INTEGER PRIMARY KEY REFERENCES images(id),
    p_biopsy REAL NOT NULL,
    p_mag REAL NOT NULL,
    model_version TEXT,
    out_of_sample INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
"""

# Columns the store maintains on `images` (kept equal to what current_labels and predictions say) and the
# generated columns and partial indexes the queues read (queues.py).
_MAINTAINED = {
    "dicom_path": "TEXT",  # the source DICOM, relative to MAMMO_LANDING (for full-resolution zoom)
    "rnd": "INTEGER NOT NULL DEFAULT 0",  # seeded random rank (queues.ranks)
    "label": "INTEGER",  # the latest decision over all annotators (code 1-4), NULL when unlabeled
    "label_ts": "TEXT",
    "event_id": "INTEGER NOT NULL DEFAULT 0",  # that decision's event (0 when unlabeled)
    "reader1": "TEXT",  # the first two blind reads ('read' role) in order of their first event
    "read1": "INTEGER",
    "reader2": "TEXT",
    "read2": "INTEGER",
    "adjudicated": "INTEGER",  # the latest adjudicating read (a third annotator, after a disagreement)
    "pb": "REAL",  # copy of the latest prediction
    "pm": "REAL",
    "p_oos": "INTEGER NOT NULL DEFAULT 0",
    "p_ts": "TEXT",
    "p_nr": "INTEGER NOT NULL DEFAULT 0",  # needs_review of the latest prediction (0 when the column is absent)
    # when the image left the image_cache manifest of its hospital (its file deleted from its drop: a patient's
    # opt-out), NULL while it is in use: no queue, count, label snapshot or audit figure holds it (`sync_images`,
    # `withdraw`)
    "withdrawn_at": "TEXT",
}
_OWN_STATE = ("withdrawn_at",)  # maintained columns that copy no other table: an older file gets them empty
_EXTRA_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_totals (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    image_id INTEGER NOT NULL REFERENCES images(id),
    annotator TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (image_id, annotator)
);
CREATE INDEX IF NOT EXISTS leases_until ON leases (until);
CREATE INDEX IF NOT EXISTS leases_annotator ON leases (annotator);
"""

# Recompute the label columns of the images matching {where} from current_labels.
_REFRESH_LABELS = """
UPDATE images SET
    label = (SELECT c.label FROM current_labels c WHERE c.image_id = images.id ORDER BY c.event_id DESC LIMIT 1),
    label_ts = (SELECT c.ts FROM current_labels c WHERE c.image_id = images.id ORDER BY c.event_id DESC LIMIT 1),
    event_id = COALESCE((SELECT MAX(c.event_id) FROM current_labels c WHERE c.image_id = images.id), 0),
    reader1 = (SELECT c.annotator FROM current_labels c WHERE c.image_id = images.id AND c.role = 'read'
               ORDER BY c.first_event LIMIT 1),
    read1 = (SELECT c.label FROM current_labels c WHERE c.image_id = images.id AND c.role = 'read'
             ORDER BY c.first_event LIMIT 1),
    reader2 = (SELECT c.annotator FROM current_labels c WHERE c.image_id = images.id AND c.role = 'read'
               ORDER BY c.first_event LIMIT 1 OFFSET 1),
    read2 = (SELECT c.label FROM current_labels c WHERE c.image_id = images.id AND c.role = 'read'
             ORDER BY c.first_event LIMIT 1 OFFSET 1),
    adjudicated = (SELECT c.label FROM current_labels c WHERE c.image_id = images.id AND c.role = 'adjudication'
                   ORDER BY c.event_id DESC LIMIT 1)
WHERE {where}
"""
# Copy the prediction of the images matching {where} onto their rows.
_REFRESH_PREDICTIONS = """
UPDATE images SET pb = p.p_biopsy, pm = p.p_mag, p_oos = p.out_of_sample, p_ts = p.updated_at,
    p_nr = COALESCE(p.needs_review, 0)
FROM predictions p WHERE p.image_id = images.id AND {where}
"""
_MEMBERSHIP = "SELECT " + ", ".join(f"({expr}) IS 1" for expr in queues.COUNTERS.values()) + " FROM images WHERE id = ?"
_RECOUNT = (
    "SELECT " + ", ".join(f"COALESCE(SUM(({expr}) IS 1), 0)" for expr in queues.COUNTERS.values()) + " FROM images"
)
ROLES = ("read", "adjudication", "extra")


class LabelError(ValueError):
    """A label write was refused; nothing was written."""


class BadLabel(LabelError):
    pass


class UnknownImage(LabelError):
    pass


class Withdrawn(LabelError):
    """The image was withdrawn (its file deleted from its drop): it takes no new label until it comes back."""


class StaleSubmit(LabelError):
    """Someone changed the image's label after the submitter saw it."""

    def __init__(self, image_id: int, seen_event: int, current_event: int) -> None:
        super().__init__(f"image {image_id}: you saw event {seen_event}, the current one is {current_event}")
        self.image_id, self.seen_event, self.current_event = image_id, seen_event, current_event


class NothingToUndo(LabelError):
    pass


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def label_code(label: int | str) -> int:
    """The code 1-4 of a label given as a code, a digit string or a name; BadLabel otherwise."""
    if isinstance(label, bool):
        raise BadLabel(f"label must be one of {sorted(LABELS)} or {sorted(CODES)}, not {label!r}")
    if isinstance(label, str):
        text = label.strip().lower()
        if text in CODES:
            return CODES[text]
        if text in {str(k) for k in LABELS}:
            return int(text)
    elif isinstance(label, int) and label in LABELS:
        return label
    raise BadLabel(f"label must be one of {sorted(LABELS)} or {sorted(CODES)}, not {label!r}")


class Leased(LabelError):
    """The training image is leased to another annotator (team mode)."""


class NoLabelStore(LookupError):
    """The label store a reading command was pointed at does not exist or is not a label store."""


def open_existing(path: Path | str, seed: int = 0) -> LabelStore:
    """The label store at `path`, never a new one: for the commands that only read it (`mammo labels stats`,
    `mammo label --export`), so that a mistyped MAMMO_HOME or MAMMO_LABELS_DB is an error and not an empty store,
    and an SQLite file of something else is left untouched (it is looked at read-only first). A store this user
    may not write (another user's home, a read-only mount) is opened read-only (`LabelStore(read_only=True)`).

    Raises NoLabelStore when `path` is not a file, not SQLite, lacks the `images` and `events` tables, or cannot
    be read without an upgrade this user may not write.
    """
    path = Path(path)
    hint = "run `mammo label` or the demo first, or check MAMMO_HOME / MAMMO_LABELS_DB"
    if not path.is_file():
        raise NoLabelStore(f"no label store at {path}: {hint}")
    try:
        with contextlib.closing(_read_only_connection(path)[0]) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise NoLabelStore(f"{path} is not a label store ({e}): {hint}") from e
    if not {"images", "events"} <= tables:
        raise NoLabelStore(f"{path} is an SQLite file but not a label store (no images and events tables): {hint}")
    if _writable(path):
        return LabelStore(path, seed)
    return LabelStore(path, seed, read_only=True)


def _writable(path: Path) -> bool:
    """Whether this user may write the store, its folder (SQLite makes -wal, -shm and journal files there) and
    any -wal / -shm file already beside it."""
    beside = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
    return all(os.access(p, os.W_OK) for p in [path, path.parent, *[b for b in beside if b.exists()]])


def _read_only_connection(path: Path) -> tuple[sqlite3.Connection, bool]:
    """A read-only connection to `path` and whether it reads the file as it is on disk (`immutable`).

    `mode=ro` reads a WAL database only when its -shm file exists or can be made; in a folder this user cannot
    write, the file is opened `immutable=1` instead: the committed database as it is on disk, without what a
    writer still holds in its -wal file (SQLite URI filenames, sqlite.org/uri.html).
    """
    uri = path.resolve().as_uri()
    for parameter, disk_only in (("mode=ro", False), ("immutable=1", True)):
        conn = sqlite3.connect(f"{uri}?{parameter}", uri=True, timeout=5, isolation_level=None)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn, disk_only
        except sqlite3.OperationalError:  # mode=ro: a WAL file without its -shm, which this user cannot make
            conn.close()
            if disk_only:
                raise
        except sqlite3.DatabaseError:  # not SQLite at all
            conn.close()
            raise
    raise AssertionError("immutable=1 either returns or raises")


@dataclass(frozen=True)
class Synced:
    """What one `sync_images` did."""

    new: int = 0  # images added
    withdrawn: int = 0  # images that left their hospital's manifest (file deleted from its drop): out of use now
    restored: int = 0  # withdrawn images back in the manifest (the file sent again): in use with their labels


@dataclass(frozen=True)
class _Lacks:
    """What a label-store file made by an older version lacks (`LabelStore._lacks`)."""

    maintained: list[str]  # maintained columns of `images`
    generated: list[str]  # generated (queue) columns of `images`
    role: bool  # current_labels.role and first_event
    needs_review: bool  # predictions.needs_review
    queues: bool  # the queue indexes of this queues.VERSION
    seed: bool  # the seed of the store's random order

    @property
    def any(self) -> bool:
        return bool(self.maintained or self.generated or self.role or self.needs_review or self.queues or self.seed)


class LabelStore:
    """The label database at `path` (created with its schema on first use, older files upgraded in place)."""

    def __init__(self, path: Path | str, seed: int = 0, read_only: bool = False) -> None:
        """`read_only`: for a store this user may not write (see `open_existing`): nothing is created or upgraded,
        every write raises sqlite3.OperationalError, and `disk_only` says whether a writer's -wal file is left
        out. Raises NoLabelStore when such a store needs an upgrade first."""
        self.path = Path(path)
        self.read_only = read_only
        self.disk_only = False
        self._may_create = False  # only __init__ makes the file (`_db`)
        if read_only:
            with self._db() as db:
                if self._lacks(db).any:  # `_upgrade` would change the file
                    raise NoLabelStore(
                        f"{self.path} was made by an older version and must be upgraded, which this user may not "
                        "write: run `mammo labels stats` once as its owner"
                    )
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._may_create = True
        with self._db() as db:
            db.execute("PRAGMA journal_mode=wal")
            db.conn.executescript(_SCHEMA + _EXTRA_SCHEMA)
        self._may_create = False
        self._upgrade(seed)

    @staticmethod
    def _lacks(db: sqlite_utils.Database) -> _Lacks:
        """What a file made by an older version lacks, which `_upgrade` adds (one reading of the file for both
        `_upgrade` and the read-only open's refusal)."""
        have = {r[1] for r in db.execute("PRAGMA table_xinfo(images)")}
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        return _Lacks(
            maintained=[c for c in _MAINTAINED if c not in have],
            generated=[c for c in queues.GENERATED if c not in have],
            role="role" not in {r[1] for r in db.execute("PRAGMA table_info(current_labels)")},
            needs_review="needs_review" not in {r[1] for r in db.execute("PRAGMA table_info(predictions)")},
            queues=int(meta.get("queues_version", -1)) != queues.VERSION,
            seed="seed" not in meta,
        )

    def _upgrade(self, seed: int) -> None:
        """Add the maintained columns, generated columns and queue indexes a file made by an older version lacks."""
        with self._write() as db:
            lacks = self._lacks(db)
            for col in lacks.maintained:
                db.execute(f"ALTER TABLE images ADD COLUMN {col} {_MAINTAINED[col]}")
            for col in lacks.generated:
                db.execute(f"ALTER TABLE images ADD COLUMN {col} GENERATED ALWAYS AS ({queues.GENERATED[col]}) VIRTUAL")
            if lacks.role:
                db.execute("ALTER TABLE current_labels ADD COLUMN role TEXT NOT NULL DEFAULT 'read'")
                db.execute("ALTER TABLE current_labels ADD COLUMN first_event INTEGER")
                db.execute("UPDATE current_labels SET first_event = event_id")
            if lacks.needs_review:
                db.execute("ALTER TABLE predictions ADD COLUMN needs_review INTEGER")
            if lacks.queues:  # queue memberships or index definitions changed since the file was made
                for name in (*queues.INDEXES, *queues.OBSOLETE_INDEXES):
                    db.execute(f"DROP INDEX IF EXISTS {name}")
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('queues_version', ?)", (queues.VERSION,))
            _create_queue_indexes(db)
            if lacks.seed:
                db.execute("INSERT INTO meta (key, value) VALUES ('seed', ?)", (int(seed),))
            if set(lacks.maintained) - set(_OWN_STATE):  # an older file: fill the new copies once
                store_seed = int(db.execute("SELECT value FROM meta WHERE key = 'seed'").fetchone()[0])
                old = db.execute("SELECT id, sop_instance_uid FROM images").fetchall()
                ranks = list(zip(queues.ranks(store_seed, [r[1] for r in old]), [r[0] for r in old], strict=True))
                db.conn.executemany("UPDATE images SET rnd = ? WHERE id = ?", ranks)
                db.execute(_REFRESH_LABELS.format(where="1"))
                db.execute(_REFRESH_PREDICTIONS.format(where="1"))
            if lacks.maintained or lacks.queues or db.execute("SELECT COUNT(*) FROM queue_totals").fetchone()[0] == 0:
                _recount(db)

    # -- connections ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite_utils.Database]:
        """This thread's connection to the store (opened once per thread and process, then reused).

        Reused because closing the last connection to a WAL database checkpoints and deletes the WAL with an
        fsync (about 12 ms, most of a key press), and opening one costs about a millisecond more. Not when the
        file is no longer the one it opened (deleted or replaced while the app ran): it would write into the
        unlinked file and report success while the label is lost (stop 62's probe). Only `__init__` creates the
        file; a store deleted under a running app raises sqlite3.OperationalError, never comes back empty.
        """
        key = (os.getpid(), str(self.path), self.read_only)
        dbs = _local.__dict__.setdefault("dbs", {})
        db = dbs.get(key)
        if db is not None and not self.read_only and db.file_identity != _identity(self.path):
            del dbs[key]
            db.conn.close()
            db = None
        if db is None:
            if self.read_only:
                conn, self.disk_only = _read_only_connection(self.path)
            else:
                # an existing store is opened without `c`reate: a file deleted under a running app is an error,
                # not a new empty database the next thread writes into
                if not self._may_create and not self.path.exists():
                    raise sqlite3.OperationalError(f"{self.path.name} is gone: deleted while the app ran?")
                target = f"{self.path.resolve().as_uri()}?mode={'rwc' if self._may_create else 'rw'}"
                conn = sqlite3.connect(target, uri=True, timeout=5, isolation_level=None)
                conn.execute("PRAGMA foreign_keys=on")
                # WAL + NORMAL: consistent after any crash; only a power cut can lose the last few commits.
                conn.execute("PRAGMA synchronous=NORMAL")
                # 128 MB of page cache: bulk writes of a million rows touch every index at random places.
                conn.execute("PRAGMA cache_size=-131072")
                conn.execute("PRAGMA temp_store=MEMORY")  # bulk writes stage rows and sort indexes in temp tables
            db = sqlite_utils.Database(conn)
            db.file_identity = None if self.read_only else _identity(self.path)  # type: ignore[attr-defined]
            dbs[key] = db
        db.conn.row_factory = None
        yield db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction that takes the lock up front (BEGIN IMMEDIATE), so it never deadlocks."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _frame(self, sql: str, params: tuple | dict = ()) -> pd.DataFrame:
        with self._db() as db:
            cur = db.execute(sql, params)
            return pd.DataFrame(cur.fetchall(), columns=[c[0] for c in cur.description])

    def seed(self) -> int:
        """The seed the store's random order was made with (fixed when the file was created)."""
        with self._db() as db:
            return int(db.execute("SELECT value FROM meta WHERE key = 'seed'").fetchone()[0])

    # -- images --------------------------------------------------------------------------------------
    def sync_images(
        self,
        manifest: pd.DataFrame,
        seed: int = 0,
        audit_fraction: float = 0.2,
        hospitals: Iterable[str] = (),
    ) -> Synced:
        """Upsert images from the image_cache manifest, withdraw the images that left it, restore those back.

        A known image gets its paths refreshed but keeps its split. A new image of a patient or a study the
        store already knows joins that side; otherwise `audit.assign_splits` draws it (a patient, with the
        studies it shares, at once). Its place in the random order is queues.ranks(store seed, SOP Instance UID).

        The manifest speaks for every hospital it has rows of and for `hospitals` (those whose manifest is empty:
        every file deleted): an image of these hospitals that is not in it is withdrawn (`withdrawn_at`; out of
        every queue, count and label snapshot, its labels kept), and a withdrawn image in it again is restored.
        A hospital the manifest does not speak for keeps its images as they are: a missing cache partition is not
        a deletion, as a drop folder gone from landing is none for dicom_index.
        """
        covered = set(hospitals)
        if manifest.empty and not covered:
            return Synced()
        need = {"sop_instance_uid", "hospital", "display_png", "model_png"}
        if not manifest.empty and (missing := need - set(manifest.columns)):
            raise ValueError(f"the image_cache manifest lacks columns {sorted(missing)}")
        df = manifest if not manifest.empty else pd.DataFrame(columns=sorted(need))  # withdraws all of `hospitals`
        df = df.drop_duplicates("sop_instance_uid", keep="last").reset_index(drop=True)
        covered |= set(df["hospital"].astype(str))
        for col in ("study_instance_uid", "patient_key", "meta_mag", "rel_path"):
            if col not in df.columns:
                df[col] = None
        now = _now()
        with self._write() as db:
            store_seed = int(db.execute("SELECT value FROM meta WHERE key = 'seed'").fetchone()[0])
            # the patients and studies already placed: a new image of either joins their side
            known = dict(
                db.execute(
                    "SELECT 'patient' || char(31) || hospital || char(31) || patient_key, split FROM images "
                    "WHERE patient_key IS NOT NULL UNION ALL "
                    "SELECT 'study' || char(31) || hospital || char(31) || study_instance_uid, split FROM images "
                    "WHERE study_instance_uid IS NOT NULL"
                ).fetchall()
            )
            split = audit.assign_splits(df, seed, audit_fraction, known).tolist()
            before = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            sops = df["sop_instance_uid"].astype(str).tolist()
            hospitals = df["hospital"].astype(str).tolist()
            pk = [v if isinstance(v, str) and v else None for v in df["patient_key"].astype(object).tolist()]
            meta = [None if pd.isna(v) else int(bool(v)) for v in df["meta_mag"].astype(object).tolist()]
            rows = zip(
                sops,
                hospitals,
                [_opt(v) for v in df["study_instance_uid"].astype(object).tolist()],
                pk,
                df["display_png"].astype(str).tolist(),
                df["model_png"].astype(str).tolist(),
                split,
                meta,
                [now] * len(df),
                [_opt(v) for v in df["rel_path"].astype(object).tolist()],
                queues.ranks(store_seed, sops),
                strict=True,
            )
            db.execute(
                """CREATE TEMP TABLE IF NOT EXISTS incoming_images (sop_instance_uid TEXT, hospital TEXT,
                   study_instance_uid TEXT, patient_key TEXT, display_png TEXT, model_png TEXT, split TEXT,
                   meta_mag INTEGER, added_at TEXT, dicom_path TEXT, rnd INTEGER)"""
            )
            db.execute("DELETE FROM incoming_images")
            db.conn.executemany("INSERT INTO incoming_images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute(
                """UPDATE images SET display_png = n.display_png, model_png = n.model_png, meta_mag = n.meta_mag,
                       dicom_path = COALESCE(n.dicom_path, images.dicom_path)
                   FROM incoming_images n WHERE n.sop_instance_uid = images.sop_instance_uid"""
            )
            # Many new rows: drop the queue indexes and build them again afterwards (one sort each), which is
            # several times faster than inserting a million random keys into each.
            rebuild = len(sops) > max(50_000, before)
            if rebuild:
                _drop_queue_indexes(db)
            db.execute(
                """INSERT INTO images (sop_instance_uid, hospital, study_instance_uid, patient_key, display_png,
                       model_png, split, meta_mag, added_at, dicom_path, rnd)
                   SELECT * FROM incoming_images n
                   WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.sop_instance_uid = n.sop_instance_uid)"""
            )
            if rebuild:
                _create_queue_indexes(db)
            after = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            restored = db.execute(
                """UPDATE images SET withdrawn_at = NULL WHERE withdrawn_at IS NOT NULL
                   AND sop_instance_uid IN (SELECT sop_instance_uid FROM incoming_images)"""
            ).rowcount
            withdrawn = db.execute(
                f"""UPDATE images SET withdrawn_at = ? WHERE withdrawn_at IS NULL
                    AND hospital IN ({",".join("?" * len(covered))})
                    AND sop_instance_uid NOT IN (SELECT sop_instance_uid FROM incoming_images)""",
                (now, *sorted(covered)),
            ).rowcount
            if withdrawn or restored:
                _withdrawals_changed(db)
            db.execute("DELETE FROM incoming_images")
            _recount(db)
        return Synced(after - before, withdrawn, restored)

    def withdraw(self, sop_instance_uids: Iterable[str]) -> int:
        """Withdraw these images now, as the next `sync_images` would, whichever hospital the store names them
        under (`withdraw_dropped` passes only images no cached hospital holds any more), so a running labeling app
        stops offering them at once instead of cards without a picture. Returns how many were in use; unknown and
        withdrawn ones are passed over."""
        now, n = _now(), 0
        live = queues.live("sop_instance_uid = ?")
        with self._write() as db:
            for sop in sop_instance_uids:
                row = db.execute(f"SELECT id FROM images WHERE {live}", (sop,))
                if (found := row.fetchone()) is None:
                    continue
                before = db.execute(_MEMBERSHIP, (found[0],)).fetchone()
                db.execute("UPDATE images SET withdrawn_at = ? WHERE id = ?", (now, found[0]))
                _refresh_one(db, found[0], before)
                n += 1
            if n:
                _withdrawals_changed(db)
        return n

    def n_images(self) -> int:
        """Images in use (withdrawn ones left out)."""
        with self._db() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM images WHERE {queues.LIVE}").fetchone()[0])

    def withdrawn_among(self, image_ids: Iterable[int]) -> list[int]:
        """The withdrawn images among `image_ids`."""
        ids = [int(i) for i in image_ids]
        if not ids:
            return []
        with self._db() as db:
            sql = f"SELECT id FROM images WHERE withdrawn_at IS NOT NULL AND id IN ({','.join('?' * len(ids))})"
            return sorted(int(r[0]) for r in db.execute(sql, ids))

    def study_images(self, study_uid: str) -> pd.DataFrame:
        """The store's images of one study (hospital, sop_instance_uid, withdrawn_at: NULL while in use): the one
        lasting record of when an image was withdrawn, since the index, the cache and the current model's
        predictions drop its rows (`mammo lineage` says it). A scan of `images`, for one question at a time."""
        return self._frame(
            "SELECT hospital, sop_instance_uid, withdrawn_at FROM images WHERE study_instance_uid = ? "
            "ORDER BY sop_instance_uid",
            (study_uid,),
        )

    def n_withdrawn(self) -> int:
        """Images withdrawn (their file deleted from its drop): kept with their labels, used nowhere until they come
        back."""
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM images WHERE withdrawn_at IS NOT NULL").fetchone()[0])

    def pngs_in_use(self, prefix: str) -> set[str]:
        """The display and model PNGs (paths relative to `cache/`, as the manifest gave them) of the images in use
        whose path starts with `prefix` (`<hospital>/`): what the labeling app serves until the store's next sync;
        a withdrawn image is served to no one (`cache_prune`)."""
        sql = " UNION ".join(
            f"SELECT {col} FROM images WHERE {queues.live(f'substr({col}, 1, ?) = ?')}"
            for col in ("display_png", "model_png")
        )
        with self._db() as db:
            return {row[0] for row in db.execute(sql, (len(prefix), prefix) * 2)}

    def images(self) -> pd.DataFrame:
        """Every image row (id, sop_instance_uid, hospital, ..., split, meta_mag, and the maintained columns)."""
        df = self._frame("SELECT * FROM images ORDER BY id")
        df["meta_mag"] = df["meta_mag"].map(lambda v: None if pd.isna(v) else bool(v)).astype(object)
        return df

    def image(self, image_id: int) -> dict | None:
        """One image row with its latest decision (label, annotator, event_id) and prediction, or None."""
        with self._db() as db:
            db.conn.row_factory = sqlite3.Row
            row = db.conn.execute(
                """SELECT i.*, i.pb AS p_biopsy, i.pm AS p_mag, p.model_version,
                       (SELECT c.annotator FROM current_labels c WHERE c.image_id = i.id
                        ORDER BY c.event_id DESC LIMIT 1) AS annotator
                   FROM images i LEFT JOIN predictions p ON p.image_id = i.id WHERE i.id = ?""",
                (int(image_id),),
            ).fetchone()
        return None if row is None else dict(row)

    def exists(self, image_id: int) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM images WHERE id = ?", (int(image_id),)).fetchone() is not None

    def sop_uids(self, image_ids: list[int]) -> dict[int, str]:
        """image id -> sop_instance_uid for the ids that exist."""
        wanted = sorted({int(i) for i in image_ids})
        out: dict[int, str] = {}
        with self._db() as db:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                sql = f"SELECT id, sop_instance_uid FROM images WHERE id IN ({','.join('?' * len(chunk))})"
                out.update(dict(db.execute(sql, chunk).fetchall()))
        return out

    def current_event(self, image_id: int) -> int:
        """The id of the image's latest non-undone event (0 when unlabeled)."""
        with self._db() as db:
            return _current_event(db, image_id)

    # -- labels --------------------------------------------------------------------------------------
    def record(
        self,
        image_id: int,
        label: int | str,
        annotator: str,
        source: str = "human",
        round: int | None = None,
        seen_event: int | None = None,
        respect_leases: bool = False,
        recheck: bool = False,
    ) -> int:
        """Append a label event and make it the annotator's current label; return the event id.

        On an audit image the annotator's role follows the reads so far: one of the first two readers
        ('read'), a third annotator after the two disagreed ('adjudication'), or 'extra' (counted nowhere). With
        `recheck` (a read from the audit_recheck queue) a third annotator's read of an agreed image adjudicates
        too: it becomes the audit truth, as a read of a disputed one does.
        With `respect_leases`, a training image leased to someone else raises Leased (team mode). A withdrawn image
        raises Withdrawn: it must not be used, and a label given to it would be used nowhere.
        """
        code = label_code(label)
        if source not in SOURCES:
            raise LabelError(f"source must be one of {SOURCES}, not {source!r}")
        if not annotator:
            raise LabelError("annotator must not be empty")
        iid = int(image_id)
        with self._write() as db:
            row = db.execute(
                "SELECT split, event_id, reader1, reader2, audit_state, withdrawn_at FROM images WHERE id = ?", (iid,)
            ).fetchone()
            if row is None:
                raise UnknownImage(f"no image with id {image_id}")
            split, current, reader1, reader2, state, withdrawn_at = row
            if withdrawn_at is not None:
                raise Withdrawn(f"image {iid} was withdrawn (its file deleted from its drop) at {withdrawn_at}")
            # a blind audit read saw no one's label, so another reader's read since is nothing it missed
            blind_read = split == "audit" and (reader2 is None or annotator in (reader1, reader2))
            if seen_event is not None and current != int(seen_event) and not blind_read:
                raise StaleSubmit(iid, int(seen_event), current)
            if respect_leases and split == "train" and (holder := _lease_holder(db, iid, annotator)):
                raise Leased(f"image {iid} is leased to {holder}")
            old = db.execute(
                "SELECT role FROM current_labels WHERE image_id = ? AND annotator = ?", (iid, annotator)
            ).fetchone()
            if old is not None:
                role = old[0]
            elif split != "audit" or reader2 is None:
                role = "read"
            else:
                role = "adjudication" if state in (3, 4) or (recheck and state == 2) else "extra"
            before = db.execute(_MEMBERSHIP, (iid,)).fetchone()
            ts = _now()
            cur = db.execute(
                "INSERT INTO events (image_id, label, annotator, ts, source, round, seen_event) VALUES (?,?,?,?,?,?,?)",
                (iid, code, annotator, ts, source, round, seen_event),
            )
            event_id = int(cur.lastrowid)
            db.execute(
                """INSERT INTO current_labels (image_id, annotator, label, event_id, ts, role, first_event)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (image_id, annotator) DO UPDATE SET label = excluded.label,
                       event_id = excluded.event_id, ts = excluded.ts""",
                (iid, annotator, code, event_id, ts, role, event_id),
            )
            _refresh_one(db, iid, before)
        return event_id

    def import_labels(self, labels: pd.DataFrame, annotator: str, source: str = "import") -> int:
        """Record many labels at once (an import of earlier work): `labels` has image_id and label (code or name).

        One transaction, one refresh of the touched images and one recount, instead of a transaction per label.
        Returns how many were recorded; unknown image ids raise UnknownImage and write nothing. A withdrawn image
        takes its imported label (earlier work, kept for its return), which is used nowhere while it is withdrawn.
        """
        if source not in SOURCES:
            raise LabelError(f"source must be one of {SOURCES}, not {source!r}")
        if not annotator:
            raise LabelError("annotator must not be empty")
        codes = [label_code(v) for v in labels["label"]]
        ids = [int(i) for i in labels["image_id"]]
        ts = _now()
        with self._write() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS touched (image_id INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM touched")
            db.conn.executemany("INSERT OR IGNORE INTO touched VALUES (?)", ((i,) for i in ids))
            missing = db.execute("SELECT COUNT(*) FROM touched WHERE image_id NOT IN (SELECT id FROM images)")
            if missing.fetchone()[0]:
                raise UnknownImage("some image ids are not in the store")
            first = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]) + 1
            db.conn.executemany(
                "INSERT INTO events (image_id, label, annotator, ts, source) VALUES (?, ?, ?, ?, ?)",
                ((i, c, annotator, ts, source) for i, c in zip(ids, codes, strict=True)),
            )
            db.execute(
                """INSERT INTO current_labels (image_id, annotator, label, event_id, ts, role, first_event)
                   SELECT image_id, annotator, label, id, ts, 'read', id FROM events WHERE id >= ? AND true
                   ON CONFLICT (image_id, annotator) DO UPDATE SET label = excluded.label,
                       event_id = excluded.event_id, ts = excluded.ts""",
                (first,),
            )
            db.execute(_REFRESH_LABELS.format(where="id IN (SELECT image_id FROM touched)"))
            db.execute("DELETE FROM touched")
            _recount(db)
        return len(ids)

    def undo(self, annotator: str) -> int:
        """Mark the annotator's latest live event undone and restore their previous label of that image.

        Returns the undone event's image id.
        """
        with self._write() as db:
            row = db.execute(
                "SELECT id, image_id FROM events WHERE annotator = ? AND undone = 0 ORDER BY id DESC LIMIT 1",
                (annotator,),
            ).fetchone()
            if row is None:
                raise NothingToUndo(f"{annotator} has nothing to undo")
            event_id, image_id = row
            state, withdrawn_at = db.execute(
                "SELECT audit_state, withdrawn_at FROM images WHERE id = ?", (image_id,)
            ).fetchone()
            if withdrawn_at is not None:  # its label is kept for its return; undoing it now would lose it unseen
                raise Withdrawn(f"your last label was on image {image_id}, withdrawn at {withdrawn_at}: nothing undone")
            role = db.execute(
                "SELECT role FROM current_labels WHERE image_id = ? AND annotator = ?", (image_id, annotator)
            ).fetchone()
            if state == 4 and role is not None and role[0] == "read":
                raise NothingToUndo(
                    f"image {image_id}: your blind read was adjudicated; undoing it would leave the adjudication "
                    "without the dispute it settled"
                )
            before = db.execute(_MEMBERSHIP, (image_id,)).fetchone()
            db.execute("UPDATE events SET undone = 1 WHERE id = ?", (event_id,))
            prev = db.execute(
                """SELECT id, label, ts FROM events WHERE image_id = ? AND annotator = ? AND undone = 0
                   ORDER BY id DESC LIMIT 1""",
                (image_id, annotator),
            ).fetchone()
            if prev is None:
                db.execute("DELETE FROM current_labels WHERE image_id = ? AND annotator = ?", (image_id, annotator))
            else:
                db.execute(
                    "UPDATE current_labels SET label = ?, event_id = ?, ts = ? WHERE image_id = ? AND annotator = ?",
                    (prev[1], prev[0], prev[2], image_id, annotator),
                )
            _refresh_one(db, image_id, before)
        return int(image_id)

    def current_labels(self) -> pd.DataFrame:
        """One row per labeled image: its label with the image's columns.

        `label` is the latest decision, except on audit images, where it is the audit truth when there is one:
        the adjudicated label, else the two readers' agreed label, else a lone first read. `label_source` says
        which ('latest' on training images; 'single_read', 'agreed', 'adjudicated' or 'disputed' on audit
        images: 'disputed' keeps the latest decision until a third read decides). `first_read` is the first
        blind read of an audit image (the single-read figure), `n_reads` how many blind reads it has. Withdrawn
        images are left out: their labels train and measure nothing (they are kept for their return).
        """
        df = self._frame(
            """SELECT i.id AS image_id, i.sop_instance_uid, i.hospital, i.study_instance_uid, i.patient_key,
                      CASE WHEN i.truth IS NOT NULL THEN i.truth ELSE i.label END AS code, i.split,
                      c.annotator, i.event_id, i.label_ts AS labeled_at, i.display_png, i.model_png,
                      CASE WHEN i.split != 'audit' THEN 'latest' WHEN i.audit_state = 4 THEN 'adjudicated'
                           WHEN i.audit_state = 2 THEN 'agreed' WHEN i.audit_state = 3 THEN 'disputed'
                           WHEN i.audit_state = 1 THEN 'single_read' ELSE 'latest' END AS label_source,
                      i.read1 AS first_read_code,
                      (i.read1 IS NOT NULL) + (i.read2 IS NOT NULL) AS n_reads
               FROM images i JOIN current_labels c ON c.image_id = i.id AND c.event_id = i.event_id
               WHERE i.label IS NOT NULL AND i.withdrawn_at IS NULL ORDER BY i.id"""
        )
        flags = [flags_of(int(c)) for c in df["code"]]
        df.insert(5, "label", df.pop("code").map(lambda c: LABELS[int(c)]).astype(object))
        df.insert(6, "has_biopsy_marker", [f[0] for f in flags])
        df.insert(7, "is_mag_view", [f[1] for f in flags])
        first = df.pop("first_read_code")
        df["first_read"] = [
            LABELS[int(c)] if s == "audit" and c == c and c is not None else None
            for c, s in zip(first, df["split"], strict=True)
        ]
        df["first_read"] = df["first_read"].astype(object)
        df["n_reads"] = df["n_reads"].astype(int)
        return df

    def snapshot(self) -> tuple[pd.DataFrame, str]:
        """The current labels plus a snapshot_id: a content hash of the label rows (same labels, same id)."""
        df = self.current_labels()
        keys = df[["sop_instance_uid", "label", "annotator", "event_id", "split", "label_source"]].astype(str)
        digest = hashlib.sha256("\n".join("\x1f".join(row) for row in keys.itertuples(index=False)).encode())
        snapshot_id = digest.hexdigest()[:16]
        return df.assign(snapshot_id=snapshot_id), snapshot_id

    def audit_reads(self) -> pd.DataFrame:
        """Audit images with at least one blind read: image_id, sop_instance_uid, hospital, reader1, read1,
        reader2, read2, adjudicated, truth (label names, None when missing) and audit_state (0-4, see queues);
        withdrawn images left out."""
        df = self._frame(
            f"""SELECT id AS image_id, sop_instance_uid, hospital, reader1, read1, reader2, read2, adjudicated,
                       truth, audit_state FROM images WHERE split = 'audit' AND read1 IS NOT NULL AND {queues.LIVE}
                ORDER BY id"""
        )
        for col in ("read1", "read2", "adjudicated", "truth"):
            df[col] = [LABELS[int(v)] if v == v and v is not None else None for v in df[col]]
            df[col] = df[col].astype(object)
        return df

    def audit_stats(self) -> dict:
        """Agreement of the blind audit reads (see labels/agreement.py)."""
        from mammo_pipeline.labels.agreement import audit_agreement

        return audit_agreement(self.audit_reads())

    def recent(self, annotator: str, n: int = 10) -> list[dict]:
        """The annotator's last `n` live decisions, newest first."""
        with self._db() as db:
            rows = db.execute(
                """SELECT e.id, e.image_id, e.label, e.ts, i.hospital, i.sop_instance_uid
                   FROM events e JOIN images i ON i.id = e.image_id
                   WHERE e.annotator = ? AND e.undone = 0 ORDER BY e.id DESC LIMIT ?""",
                (annotator, int(n)),
            ).fetchall()
        keys = ("event_id", "image_id", "label", "ts", "hospital", "sop_instance_uid")
        return [dict(zip(keys, r, strict=True), label_name=LABELS[int(r[2])]) for r in rows]

    def disagreements_between_annotators(self) -> list[dict]:
        """Images whose annotators' current labels differ: image_id, sop_instance_uid, hospital, labels (withdrawn
        images left out: nothing to review there)."""
        df = self._frame(
            """SELECT c.image_id, i.sop_instance_uid, i.hospital, i.split, i.audit_state, c.annotator, c.label,
                      c.event_id, c.role
               FROM current_labels c JOIN images i ON i.id = c.image_id
               WHERE c.image_id IN (SELECT image_id FROM current_labels GROUP BY image_id
                                    HAVING COUNT(DISTINCT label) > 1) AND i.withdrawn_at IS NULL
               ORDER BY c.image_id, c.annotator"""
        )
        out = []
        for image_id, rows in df.groupby("image_id", sort=True):
            out.append(
                {
                    "image_id": int(image_id),
                    "sop_instance_uid": rows["sop_instance_uid"].iloc[0],
                    "hospital": rows["hospital"].iloc[0],
                    "split": rows["split"].iloc[0],
                    "labels": {a: LABELS[int(c)] for a, c in zip(rows["annotator"], rows["label"], strict=True)},
                    "roles": dict(zip(rows["annotator"], rows["role"], strict=True)),
                    "current_event": int(rows["event_id"].max()),
                }
            )
        return out

    # -- predictions and queues ----------------------------------------------------------------------
    def set_predictions(self, df: pd.DataFrame) -> int:
        """Upsert model probabilities keyed by sop_instance_uid; return how many images matched.

        Optional columns: model_version, out_of_sample (bool), needs_review (bool; absent = False).
        """
        if df.empty:
            return 0
        if missing := {"sop_instance_uid", "p_biopsy", "p_mag"} - set(df.columns):
            raise ValueError(f"predictions lack columns {sorted(missing)}")
        probs = df[["p_biopsy", "p_mag"]].astype(float)
        if probs.isna().any().any() or ((probs < 0) | (probs > 1)).any().any():
            raise ValueError("p_biopsy and p_mag must be probabilities in [0, 1]")
        n = len(df)
        version = df["model_version"] if "model_version" in df.columns else pd.Series([None] * n, index=df.index)
        oos = df["out_of_sample"] if "out_of_sample" in df.columns else pd.Series(False, index=df.index)
        review = df["needs_review"] if "needs_review" in df.columns else pd.Series(False, index=df.index)
        now = _now()
        with self._write() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (sop TEXT, pb REAL, pm REAL, v TEXT, o INT, r INT)")
            db.execute("DELETE FROM incoming")
            db.conn.executemany(
                "INSERT INTO incoming VALUES (?, ?, ?, ?, ?, ?)",
                zip(
                    df["sop_instance_uid"],
                    probs["p_biopsy"].tolist(),
                    probs["p_mag"].tolist(),
                    [None if v is None or v != v else str(v) for v in version],
                    [int(bool(v)) for v in oos.fillna(False)],
                    [int(bool(v)) for v in review.fillna(False)],
                    strict=True,
                ),
            )
            cur = db.execute(
                """INSERT INTO predictions (image_id, p_biopsy, p_mag, model_version, out_of_sample, needs_review,
                       updated_at)
                   SELECT i.id, n.pb, n.pm, n.v, n.o, n.r, ? FROM incoming n JOIN images i ON i.sop_instance_uid = n.sop
                   WHERE true
                   ON CONFLICT (image_id) DO UPDATE SET p_biopsy = excluded.p_biopsy, p_mag = excluded.p_mag,
                       model_version = excluded.model_version, out_of_sample = excluded.out_of_sample,
                       needs_review = excluded.needs_review, updated_at = excluded.updated_at""",
                (now,),
            )
            matched = cur.rowcount
            bulk = matched > 50_000  # then dropping and rebuilding the queue indexes is several times faster
            if bulk:
                _drop_queue_indexes(db)
            db.execute(_REFRESH_PREDICTIONS.format(where="p.updated_at = ?"), (now,))
            if bulk:
                _create_queue_indexes(db)
            db.execute("DELETE FROM incoming")
            _recount(db)
        return int(matched)

    def totals(self) -> dict[str, int]:
        """The maintained totals (queues.COUNTERS names -> count)."""
        with self._db() as db:
            return dict(db.execute("SELECT name, n FROM queue_totals").fetchall())

    def queue_info(
        self,
        name: str,
        annotator: str = "",
        seed: int | None = None,
        limit: int = 50,
        exclude: Iterable[int] = (),
        leases: bool = False,
    ) -> queues.Queue:
        """The next `limit` images of queue `name` for `annotator`, with the queue's remaining count and total.

        `exclude`: ids to pass over (skipped ones). `leases`: pass over images leased to other annotators (team
        mode; an audit image is passed over only when its reads plus others' leases reach two). `seed` is
        accepted for compatibility: the order was fixed by the store's seed when each image was added.
        """
        with self._db() as db:
            return _queue(db, name, annotator, limit, list(exclude), leases)

    def queue(self, name: str, annotator: str = "", limit: int = 50, seed: int | None = None) -> list[int]:
        """The next `limit` image ids of queue `name` (see labels/queues.py)."""
        return self.queue_info(name, annotator, seed, limit).ids

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """Queue name -> (remaining, total), from the maintained totals (no scan)."""
        totals = self.totals()
        out = {}
        for name in queues.QUEUES:
            p = queues.plan(name, totals)
            out[name] = (totals.get(p.todo, 0), totals.get(p.pool, 0))
        return out

    def next_cards(
        self,
        name: str,
        annotator: str,
        n: int = 3,
        exclude: Iterable[int] = (),
        lease_seconds: float | None = None,
    ) -> tuple[queues.Queue, dict[str, tuple[int, int]]]:
        """The next `n` images of a queue and every queue's counts from one connection; with `lease_seconds`
        (team mode) the images returned are leased to `annotator` for that long and its older leases end."""
        if lease_seconds is None:
            with self._db() as db:
                q = _queue(db, name, annotator, n, list(exclude), False)
                totals = dict(db.execute("SELECT name, n FROM queue_totals").fetchall())
        else:  # pick and lease in one write transaction, so two sessions never pick the same image
            with self._write() as db:
                q = _queue(db, name, annotator, n, list(exclude), True)
                totals = dict(db.execute("SELECT name, n FROM queue_totals").fetchall())
                _lease(db, q.ids, annotator, lease_seconds, time.time())
        counts = {}
        for qn in queues.QUEUES:
            p = queues.plan(qn, totals)
            counts[qn] = (totals.get(p.todo, 0), totals.get(p.pool, 0))
        return q, counts

    # -- leases (team mode) --------------------------------------------------------------------------
    def lease(self, image_ids: Iterable[int], annotator: str, seconds: float, now: float | None = None) -> None:
        """Hand `image_ids` to `annotator` for `seconds`; their other leases end (they moved on)."""
        with self._write() as db:
            _lease(db, [int(i) for i in image_ids], annotator, seconds, time.time() if now is None else now)

    def lease_free(self, image_ids: Iterable[int], annotator: str, seconds: float) -> list[int]:
        """`lease` for the images no one else holds (a training image is one annotator's at a time; an audit
        image's two blind readers may hold it together), in one write; return the ids left to their holder."""
        ids = [int(i) for i in image_ids]
        with self._write() as db:
            split = dict(db.execute(f"SELECT id, split FROM images WHERE id IN ({','.join('?' * len(ids))})", ids))
            held = [i for i in ids if split.get(i) == "train" and _lease_holder(db, i, annotator)]
            _lease(db, [i for i in ids if i not in held], annotator, seconds, time.time())
        return held

    def leases(self) -> pd.DataFrame:
        """Active leases: image_id, annotator, until (UNIX seconds)."""
        return self._frame(
            "SELECT image_id, annotator, until FROM leases WHERE until >= ? ORDER BY image_id", (time.time(),)
        )

    # -- provenance ----------------------------------------------------------------------------------
    def open_audit_images(self) -> list[int]:
        """Ids of the audit images with exactly one blind read (audit_state 1): that read stays hidden from the
        other annotators until the second is in (the team export leaves their events out)."""
        with self._db() as db:
            rows = db.execute("SELECT id FROM images WHERE split = 'audit' AND audit_state = 1").fetchall()
        return [int(r[0]) for r in rows]

    def events(self) -> pd.DataFrame:
        """Every event with the image keys it refers to (the audit trail, undone ones and those of withdrawn images
        included: `withdrawn_at` says which image is withdrawn now)."""
        df = self._frame(
            """SELECT e.id AS event_id, e.image_id, i.sop_instance_uid, i.hospital, i.study_instance_uid,
                      i.patient_key, i.split, e.label AS code, e.annotator, e.ts, e.source, e.round,
                      e.undone, e.seen_event, i.withdrawn_at
               FROM events e JOIN images i ON i.id = e.image_id ORDER BY e.id"""
        )
        df.insert(7, "label", df["code"].map(lambda c: LABELS[int(c)]).astype(object))
        df["undone"] = df["undone"].astype(bool)
        for column in ("round", "seen_event"):  # nullable integers: 44, not 44.0 beside a missing value
            df[column] = df[column].astype("Int64")
        return df

    def export(self, path: Path, fmt: str = "csv") -> int:
        """Write every event with provenance to `path` as csv or jsonl; return the row count."""
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"export format must be 'csv' or 'jsonl', not {fmt!r}")
        df = self.events()
        with atomic_path(Path(path)) as tmp:
            if fmt == "csv":
                df.to_csv(tmp, index=False)
            else:
                with tmp.open("w") as f:
                    for rec in df.to_dict("records"):
                        f.write(json.dumps(_clean(rec)) + "\n")
        return len(df)

    def last_event_id(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def version(self) -> str:
        """Changes whenever a label, an undo or an image changes (added, withdrawn or restored):
        '<last event>-<undone>-<images>-<syncs that withdrew or restored any>'."""
        with self._db() as db:
            last, undone = db.execute("SELECT COALESCE(MAX(id), 0), COALESCE(SUM(undone), 0) FROM events").fetchone()
            n_images = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            changes = db.execute("SELECT COALESCE(MAX(value), 0) FROM meta WHERE key = 'withdrawals'").fetchone()[0]
        return f"{last}-{undone}-{n_images}-{changes}"


def cached_hospitals(settings: Settings) -> list[str]:
    """The hospitals whose image_cache partition holds a manifest, an empty one too (the cache ran and found no
    image left: every file deleted from its drops); a partition without one (never cached, or only the lock
    files of a run refused for want of an index) speaks for nothing."""
    root = settings.table_dir("image_cache")
    folders = sorted(root.glob("hospital=*")) if root.exists() else []
    return [f.name.split("=", 1)[1] for f in folders if any(f.glob("*.parquet"))]


def read_image_cache(settings: Settings, hospitals: Iterable[str] | None = None) -> pd.DataFrame:
    """The image_cache manifest of `hospitals` (default: every cached one; empty when nothing is cached yet)."""
    parts = []
    for hospital in cached_hospitals(settings) if hospitals is None else hospitals:
        df = warehouse.read_partition(settings, "image_cache", hospital)
        if len(df):
            parts.append(df.assign(hospital=df["hospital"] if "hospital" in df.columns else hospital))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def sync_from_warehouse(settings: Settings, audit_fraction: float = 0.2) -> tuple[LabelStore, Synced]:
    """Open the store at settings.labels_db and sync it with the image_cache table (`LabelStore.sync_images`:
    new images added, those deleted from their drop withdrawn, those sent again restored); the full-resolution
    crops the labeling app kept of a withdrawn image are deleted (`labels/zoom.py`)."""
    store = LabelStore(settings.labels_db, seed=settings.seed)
    hospitals = cached_hospitals(settings)
    synced = store.sync_images(
        read_image_cache(settings, hospitals), seed=settings.seed, audit_fraction=audit_fraction, hospitals=hospitals
    )
    forget_zoom_crops(settings, store)
    return store, synced


def withdraw_dropped(settings: Settings, store: LabelStore, hospital: str, sop_instance_uids: Iterable[str]) -> int:
    """`LabelStore.withdraw` of the images `hospital`'s image_cache has just dropped (their files gone from its
    drops), as the next sync would judge them: the same file sent to two hospitals is one image in the store, named
    after the first, so an image another cached hospital's manifest still holds stays in use, and one whose last
    copy went is withdrawn whichever hospital the store names. Returns how many were withdrawn."""
    gone = set(sop_instance_uids)
    for other in cached_hospitals(settings):
        if other != hospital and gone:
            held = warehouse.read_partition(settings, "image_cache", other, columns=["sop_instance_uid"])
            gone -= set(held["sop_instance_uid"]) if len(held) else set()
    return store.withdraw(sorted(gone))


def forget_zoom_crops(settings: Settings, store: LabelStore) -> int:
    """Delete the full-resolution crops the labeling app kept (`cache/_zoom/<image id>/`, `labels/zoom.py`) of every
    withdrawn image; how many folders. Swept, not told: whichever path withdrew the image (a sync, image_cache's
    `withdraw_dropped`, a run killed part way), the crops go at the next sweep. Few images are ever zoomed, so it reads
    only their folders' names."""
    root = settings.cache / ZOOM_FOLDER
    ids = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    gone = store.withdrawn_among(ids)
    for image_id in gone:
        shutil.rmtree(root / str(image_id), ignore_errors=True)
    return len(gone)


def _recount(db: sqlite_utils.Database) -> None:
    """Recount every maintained total from the images table (bulk writes; one scan)."""
    values = db.execute(_RECOUNT).fetchone()
    db.conn.executemany(
        "INSERT INTO queue_totals (name, n) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET n = excluded.n",
        zip(queues.COUNTERS, values, strict=True),
    )


def _withdrawals_changed(db: sqlite_utils.Database) -> None:
    """Count a write that withdrew or restored images, so that `LabelStore.version()` changes."""
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('withdrawals', 1) ON CONFLICT (key) DO UPDATE SET value = value + 1"
    )


def _drop_queue_indexes(db: sqlite_utils.Database) -> None:
    for name in queues.INDEXES:
        db.execute(f"DROP INDEX IF EXISTS {name}")


def _create_queue_indexes(db: sqlite_utils.Database) -> None:
    for name, spec in queues.INDEXES.items():
        db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {spec}")


def _refresh_one(db: sqlite_utils.Database, image_id: int, before: tuple) -> None:
    """Recompute one image's label columns and move the totals by the change in its queue memberships."""
    db.execute(_REFRESH_LABELS.format(where="id = ?"), (image_id,))
    after = db.execute(_MEMBERSHIP, (image_id,)).fetchone()
    changes = [(int(a) - int(b), name) for name, b, a in zip(queues.COUNTERS, before, after, strict=True) if a != b]
    if changes:
        db.conn.executemany("UPDATE queue_totals SET n = n + ? WHERE name = ?", changes)


def _lease(db: sqlite_utils.Database, ids: list[int], annotator: str, seconds: float, now: float) -> None:
    marks = ",".join("?" * len(ids))
    db.execute(f"DELETE FROM leases WHERE annotator = ? AND image_id NOT IN ({marks})", (annotator, *ids))
    db.conn.executemany(
        """INSERT INTO leases (image_id, annotator, until) VALUES (?, ?, ?)
           ON CONFLICT (image_id, annotator) DO UPDATE SET until = excluded.until""",
        [(i, annotator, now + seconds) for i in ids],
    )
    db.execute("DELETE FROM leases WHERE until < ?", (now,))


def _lease_holder(db: sqlite_utils.Database, image_id: int, annotator: str) -> str | None:
    row = db.execute(
        "SELECT annotator FROM leases WHERE image_id = ? AND annotator != ? AND until > ? LIMIT 1",
        (image_id, annotator, time.time()),
    ).fetchone()
    return None if row is None else row[0]


def _queue(
    db: sqlite_utils.Database, name: str, annotator: str, limit: int, exclude: list[int], leases: bool
) -> queues.Queue:
    """Read the head of a queue through its partial index (queues.PLANS)."""
    totals = dict(db.execute("SELECT name, n FROM queue_totals").fetchall())
    p = queues.plan(name, totals)
    if name == "audit":  # blind double reads: never twice by one annotator
        ids = _audit_queue(db, annotator, limit, exclude, leases)
        return queues.Queue(name, ids, totals.get(p.todo, 0), totals.get(p.pool, 0), p.note)
    where, params = [p.where], []
    if name == "adjudication":  # a third annotator decides
        where.append("reader1 != ? AND reader2 != ?")
        params += [annotator, annotator]
    elif name == "audit_recheck":  # ... one who has not read the image (a read before counts nowhere, and stays so)
        where.append("NOT EXISTS (SELECT 1 FROM current_labels c WHERE c.image_id = images.id AND c.annotator = ?)")
        params.append(annotator)
    more, more_params = _filters(annotator, exclude, leases, audit=False)
    where, params = [*where, *more], [*params, *more_params]
    sql = f"SELECT id FROM images WHERE {' AND '.join(where)} ORDER BY {p.order} LIMIT ?"
    ids = [int(r[0]) for r in db.execute(sql, (*params, int(limit)))]
    return queues.Queue(name, ids, totals.get(p.todo, 0), totals.get(p.pool, 0), p.note)


def _filters(annotator: str, exclude: list[int], leases: bool, audit: bool) -> tuple[list[str], list[object]]:
    """The WHERE terms (and their parameters) every queue adds: not the `exclude`d ids, and in team mode (`leases`)
    not an image someone else holds; an audit image takes two readers at a time (its read so far counts)."""
    where: list[str] = []
    params: list[object] = []
    if exclude:
        where.append(f"id NOT IN ({','.join('?' * len(exclude))})")
        params += [int(i) for i in exclude]
    if leases:
        others = "FROM leases l WHERE l.image_id = images.id AND l.annotator != ? AND l.until > ?"
        held = f"(SELECT COUNT(*) {others}) + (read1 IS NOT NULL) < 2"  # an audit image: its read so far counts
        where.append(held if audit else f"NOT EXISTS (SELECT 1 {others})")
        params += [annotator, time.time()]
    return where, params


AUDIT_HEAD = 256  # images with one read looked at in order before the annotator's own are left out by range


def _audit_queue(db: sqlite_utils.Database, annotator: str, limit: int, exclude: list[int], leases: bool) -> list[int]:
    """The audit queue's head: images with one read by someone else first (completing a pair), then unread ones,
    each in `rnd` order, through partial indexes (`queues.INDEXES`). The images with one read are taken in order
    from the first AUDIT_HEAD; when the annotator's own lone reads fill those, from the two ranges of `reader1`
    around the annotator instead: one ordered scan walked past every one of them (180 ms a key for a reader
    150,000 lone reads ahead of the others), and the ranges alone sort all the others' (90 ms for a reader with
    none when one other is that far ahead)."""
    extra, params = _filters(annotator, exclude, leases, audit=True)
    tail = "".join(f" AND {w}" for w in extra)
    one = "FROM images INDEXED BY {} WHERE " + queues.live("split = 'audit' AND audit_state = 1")
    head = db.execute(
        f"SELECT id, reader1 {one.format('q_audit_one')}{tail} ORDER BY rnd LIMIT ?", (*params, AUDIT_HEAD)
    ).fetchall()
    ids = [int(i) for i, reader in head if reader != annotator][:limit]
    if len(ids) < limit and len(head) == AUDIT_HEAD:
        ranges = " UNION ALL ".join(
            f"SELECT id, rnd {one.format('q_audit_one_reader')} AND reader1 {op} ?{tail}" for op in ("<", ">")
        )
        rows = db.execute(f"SELECT id FROM ({ranges}) ORDER BY rnd LIMIT ?", (annotator, *params) * 2 + (limit,))
        ids = [int(r[0]) for r in rows]
    if len(ids) < limit:
        unread = queues.live("split = 'audit' AND audit_state = 0")
        none = f"SELECT id FROM images INDEXED BY q_audit_none WHERE {unread}{tail}"
        ids += [int(r[0]) for r in db.execute(f"{none} ORDER BY rnd LIMIT ?", (*params, limit - len(ids)))]
    return ids


def _current_event(db: sqlite_utils.Database, image_id: int) -> int:
    row = db.execute("SELECT event_id FROM images WHERE id = ?", (int(image_id),)).fetchone()
    return 0 if row is None else int(row[0])


def _opt(value: object) -> object:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def _clean(rec: dict) -> dict:
    """Plain Python values (None for NaN and pd.NA) so the record serializes to JSON."""
    out = {}
    for k, v in rec.items():
        if hasattr(v, "item"):
            v = v.item()
        if v is pd.NA or (isinstance(v, float) and v != v):
            v = None
        out[k] = v
    return out
