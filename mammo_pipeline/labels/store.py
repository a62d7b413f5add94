"""The label store: one SQLite file (WAL) holding images, an append-only event log and current labels.

The app, the demo's simulated annotator and the `labels` asset all use this one API. Each call opens its
own connection (safe from any thread or process) and every write runs inside `BEGIN IMMEDIATE`, so two
annotators writing at once queue on the lock instead of failing with "database is locked".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import sqlite_utils

from mammo_pipeline import warehouse
from mammo_pipeline.atomic import atomic_path
from mammo_pipeline.labels import audit, queues
from mammo_pipeline.labels.codes import CODES, LABELS, flags_of
from mammo_pipeline.settings import Settings

SOURCES = ("human", "import", "model")

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

# Bumped in every transaction that changes images or predictions, so readers can cache those tables.
_BUMP = "INSERT INTO meta (key, value) VALUES ('rev', 1) ON CONFLICT (key) DO UPDATE SET value = value + 1"

# The latest decision per image: the newest current label over all annotators.
_LATEST = """
SELECT c.image_id, c.annotator, c.label, c.event_id, c.ts
FROM current_labels c
JOIN (SELECT image_id, MAX(event_id) AS event_id FROM current_labels GROUP BY image_id) m
  ON m.image_id = c.image_id AND m.event_id = c.event_id
"""


class LabelError(ValueError):
    """A label write was refused; nothing was written."""


class BadLabel(LabelError):
    pass


class UnknownImage(LabelError):
    pass


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


class LabelStore:
    """The label database at `path` (created with its schema on first use)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cached: tuple[int, pd.DataFrame, pd.DataFrame] | None = None  # (rev, images, predictions)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=wal")
            db.conn.executescript(_SCHEMA)

    # -- connections ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite_utils.Database]:
        conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        conn.execute("PRAGMA foreign_keys=on")
        # WAL + NORMAL: consistent after any crash; only a power cut can lose the last few commits.
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield sqlite_utils.Database(conn)
        finally:
            conn.close()

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

    # -- images --------------------------------------------------------------------------------------
    def sync_images(self, manifest: pd.DataFrame, seed: int = 0, audit_fraction: float = 0.2) -> int:
        """Upsert images from the image_cache manifest; return how many are new.

        A known image gets its paths refreshed but keeps its split. A new image of a patient the store
        already knows joins that patient's split; otherwise its split comes from audit.split_of.
        """
        if manifest.empty:
            return 0
        need = {"sop_instance_uid", "hospital", "display_png", "model_png"}
        if missing := need - set(manifest.columns):
            raise ValueError(f"the image_cache manifest lacks columns {sorted(missing)}")
        df = manifest.drop_duplicates("sop_instance_uid", keep="last").reset_index(drop=True)
        for col in ("study_instance_uid", "patient_key", "meta_mag"):
            if col not in df.columns:
                df[col] = None
        df["split"] = audit.assign_splits(df, seed, audit_fraction)
        now = _now()
        with self._write() as db:
            known = {r[0]: r[1] for r in db.execute("SELECT hospital || '\x1f' || patient_key, split FROM images")}
            before = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            rows = []
            for r in df.itertuples(index=False):
                key = f"{r.hospital}\x1f{r.patient_key}" if isinstance(r.patient_key, str) and r.patient_key else None
                meta = None if pd.isna(r.meta_mag) else int(bool(r.meta_mag))
                rows.append(
                    (
                        r.sop_instance_uid,
                        r.hospital,
                        _opt(r.study_instance_uid),
                        _opt(r.patient_key),
                        r.display_png,
                        r.model_png,
                        known.get(key, r.split),
                        meta,
                        now,
                    )
                )
            db.conn.executemany(
                """INSERT INTO images (sop_instance_uid, hospital, study_instance_uid, patient_key, display_png,
                       model_png, split, meta_mag, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (sop_instance_uid) DO UPDATE SET display_png = excluded.display_png,
                       model_png = excluded.model_png, meta_mag = excluded.meta_mag""",
                rows,
            )
            db.execute(_BUMP)
            after = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        return after - before

    def images(self) -> pd.DataFrame:
        """Every image row (id, sop_instance_uid, hospital, ..., split, meta_mag)."""
        df = self._frame("SELECT * FROM images ORDER BY id")
        df["meta_mag"] = df["meta_mag"].map(lambda v: None if pd.isna(v) else bool(v)).astype(object)
        return df

    def image(self, image_id: int) -> dict | None:
        """One image row with its latest decision and prediction, or None."""
        df = self._frame(
            f"""SELECT i.*, l.label, l.annotator, l.event_id, p.p_biopsy, p.p_mag, p.model_version
                FROM images i LEFT JOIN ({_LATEST}) l ON l.image_id = i.id
                LEFT JOIN predictions p ON p.image_id = i.id WHERE i.id = ?""",
            (int(image_id),),
        )
        return None if df.empty else _clean(df.iloc[0].to_dict())

    def sop_uids(self, image_ids: list[int]) -> dict[int, str]:
        """image id -> sop_instance_uid for the ids that exist."""
        wanted = {int(i) for i in image_ids}
        df = self._frame("SELECT id, sop_instance_uid FROM images")
        return {int(i): sop for i, sop in zip(df["id"], df["sop_instance_uid"], strict=True) if int(i) in wanted}

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
    ) -> int:
        """Append a label event and make it the annotator's current label; return the event id."""
        code = label_code(label)
        if source not in SOURCES:
            raise LabelError(f"source must be one of {SOURCES}, not {source!r}")
        if not annotator:
            raise LabelError("annotator must not be empty")
        with self._write() as db:
            if db.execute("SELECT 1 FROM images WHERE id = ?", (int(image_id),)).fetchone() is None:
                raise UnknownImage(f"no image with id {image_id}")
            if seen_event is not None and (current := _current_event(db, image_id)) != int(seen_event):
                raise StaleSubmit(int(image_id), int(seen_event), current)
            ts = _now()
            cur = db.execute(
                "INSERT INTO events (image_id, label, annotator, ts, source, round, seen_event) VALUES (?,?,?,?,?,?,?)",
                (int(image_id), code, annotator, ts, source, round, seen_event),
            )
            event_id = int(cur.lastrowid)
            db.execute(
                """INSERT INTO current_labels (image_id, annotator, label, event_id, ts) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (image_id, annotator) DO UPDATE SET label = excluded.label,
                       event_id = excluded.event_id, ts = excluded.ts""",
                (int(image_id), annotator, code, event_id, ts),
            )
        return event_id

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
        return int(image_id)

    def current_labels(self) -> pd.DataFrame:
        """One row per labeled image: its latest decision with the image's columns."""
        df = self._frame(
            f"""SELECT l.image_id, i.sop_instance_uid, i.hospital, i.study_instance_uid, i.patient_key,
                       l.label AS code, i.split, l.annotator, l.event_id, l.ts AS labeled_at,
                       i.display_png, i.model_png
                FROM ({_LATEST}) l JOIN images i ON i.id = l.image_id ORDER BY l.image_id"""
        )
        flags = [flags_of(int(c)) for c in df["code"]]
        df.insert(5, "label", df.pop("code").map(lambda c: LABELS[int(c)]).astype(object))
        df.insert(6, "has_biopsy_marker", [f[0] for f in flags])
        df.insert(7, "is_mag_view", [f[1] for f in flags])
        return df

    def snapshot(self) -> tuple[pd.DataFrame, str]:
        """The current labels plus a snapshot_id: a content hash of the label rows (same labels, same id)."""
        df = self.current_labels()
        keys = df[["sop_instance_uid", "label", "annotator", "event_id", "split"]].astype(str)
        digest = hashlib.sha256("\n".join("\x1f".join(row) for row in keys.itertuples(index=False)).encode())
        snapshot_id = digest.hexdigest()[:16]
        return df.assign(snapshot_id=snapshot_id), snapshot_id

    def recent(self, annotator: str, n: int = 10) -> list[dict]:
        """The annotator's last `n` live decisions, newest first."""
        df = self._frame(
            """SELECT e.id AS event_id, e.image_id, e.label, e.ts, i.hospital, i.sop_instance_uid
               FROM events e JOIN images i ON i.id = e.image_id
               WHERE e.annotator = ? AND e.undone = 0 ORDER BY e.id DESC LIMIT ?""",
            (annotator, int(n)),
        )
        return [dict(r, label_name=LABELS[int(r["label"])]) for r in df.to_dict("records")]

    def disagreements_between_annotators(self) -> list[dict]:
        """Images whose annotators' current labels differ: image_id, sop_instance_uid, hospital, labels."""
        df = self._frame(
            """SELECT c.image_id, i.sop_instance_uid, i.hospital, c.annotator, c.label, c.event_id
               FROM current_labels c JOIN images i ON i.id = c.image_id
               WHERE c.image_id IN (SELECT image_id FROM current_labels GROUP BY image_id
                                    HAVING COUNT(DISTINCT label) > 1)
               ORDER BY c.image_id, c.annotator"""
        )
        out = []
        for image_id, rows in df.groupby("image_id", sort=True):
            out.append(
                {
                    "image_id": int(image_id),
                    "sop_instance_uid": rows["sop_instance_uid"].iloc[0],
                    "hospital": rows["hospital"].iloc[0],
                    "labels": {a: LABELS[int(c)] for a, c in zip(rows["annotator"], rows["label"], strict=True)},
                    "current_event": int(rows["event_id"].max()),
                }
            )
        return out

    # -- predictions and queues ----------------------------------------------------------------------
    def set_predictions(self, df: pd.DataFrame) -> int:
        """Upsert model probabilities keyed by sop_instance_uid; return how many images matched."""
        if df.empty:
            return 0
        if missing := {"sop_instance_uid", "p_biopsy", "p_mag"} - set(df.columns):
            raise ValueError(f"predictions lack columns {sorted(missing)}")
        probs = df[["p_biopsy", "p_mag"]].astype(float)
        if probs.isna().any().any() or ((probs < 0) | (probs > 1)).any().any():
            raise ValueError("p_biopsy and p_mag must be probabilities in [0, 1]")
        df = df.assign(
            model_version=df["model_version"] if "model_version" in df.columns else None,
            out_of_sample=df["out_of_sample"] if "out_of_sample" in df.columns else False,
        )
        now = _now()
        with self._write() as db:
            ids = dict(db.execute("SELECT sop_instance_uid, id FROM images").fetchall())
            rows = [
                (
                    ids[r.sop_instance_uid],
                    float(r.p_biopsy),
                    float(r.p_mag),
                    None if r.model_version is None else str(r.model_version),
                    int(bool(r.out_of_sample)),
                    now,
                )
                for r in df.itertuples(index=False)
                if r.sop_instance_uid in ids
            ]
            db.conn.executemany(
                """INSERT INTO predictions (image_id, p_biopsy, p_mag, model_version, out_of_sample, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (image_id) DO UPDATE SET p_biopsy = excluded.p_biopsy,
                   p_mag = excluded.p_mag, model_version = excluded.model_version,
                   out_of_sample = excluded.out_of_sample, updated_at = excluded.updated_at""",
                rows,
            )
            db.execute(_BUMP)
        return len(rows)

    def _queue_inputs(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(images, labels, predictions) for queues.build; images and predictions are cached until they change."""
        with self._db() as db:
            rev = int(db.execute("SELECT COALESCE(MAX(value), 0) FROM meta WHERE key = 'rev'").fetchone()[0])
        cached = self._cached
        if cached is None or cached[0] != rev:
            images = self._frame("SELECT id, split, meta_mag FROM images")  # meta_mag: 1.0, 0.0 or NaN
            preds = self._frame("SELECT image_id, p_biopsy, p_mag, out_of_sample, updated_at FROM predictions")
            cached = self._cached = (rev, images, preds)
        labels = self._frame(f"SELECT image_id, label, ts FROM ({_LATEST})")
        return cached[1], labels, cached[2]

    def queue_info(self, name: str, annotator: str = "", seed: int = 0) -> queues.Queue:
        """The whole queue `name`: ids best first, pool size and how it was ordered."""
        return queues.build(name, *self._queue_inputs(), seed=seed, annotator=annotator)

    def queue(self, name: str, annotator: str = "", limit: int = 50, seed: int = 0) -> list[int]:
        """The next `limit` image ids of queue `name` (see labels/queues.py)."""
        return self.queue_info(name, annotator, seed).ids[:limit]

    def all_queues(self, annotator: str = "", seed: int = 0) -> dict[str, queues.Queue]:
        """Every queue from one read of the database (what a screen with counts needs)."""
        inputs = self._queue_inputs()
        return {name: queues.build(name, *inputs, seed=seed, annotator=annotator) for name in queues.QUEUES}

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """Queue name -> (remaining, total)."""
        return counts_of(self.all_queues())

    # -- provenance ----------------------------------------------------------------------------------
    def events(self) -> pd.DataFrame:
        """Every event with the image keys it refers to (the audit trail, undone ones included)."""
        df = self._frame(
            """SELECT e.id AS event_id, e.image_id, i.sop_instance_uid, i.hospital, i.study_instance_uid,
                      i.patient_key, i.split, e.label AS code, e.annotator, e.ts, e.source, e.round,
                      e.undone, e.seen_event
               FROM events e JOIN images i ON i.id = e.image_id ORDER BY e.id"""
        )
        df.insert(7, "label", df["code"].map(lambda c: LABELS[int(c)]).astype(object))
        df["undone"] = df["undone"].astype(bool)
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
        """Changes whenever a label, an undo or an image changes: '<last event>-<undone>-<images>'."""
        with self._db() as db:
            last, undone = db.execute("SELECT COALESCE(MAX(id), 0), COALESCE(SUM(undone), 0) FROM events").fetchone()
            n_images = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        return f"{last}-{undone}-{n_images}"


def read_image_cache(settings: Settings) -> pd.DataFrame:
    """The image_cache manifest of every hospital (empty when nothing is cached yet)."""
    root = settings.table_dir("image_cache")
    parts = []
    for folder in sorted(root.glob("hospital=*")) if root.exists() else []:
        hospital = folder.name.split("=", 1)[1]
        df = warehouse.read_partition(settings, "image_cache", hospital)
        if len(df):
            parts.append(df.assign(hospital=df["hospital"] if "hospital" in df.columns else hospital))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def sync_from_warehouse(settings: Settings, audit_fraction: float = 0.2) -> tuple[LabelStore, int]:
    """Open the store at settings.labels_db and add the images of the image_cache table; (store, new images)."""
    store = LabelStore(settings.labels_db)
    return store, store.sync_images(read_image_cache(settings), seed=settings.seed, audit_fraction=audit_fraction)


def counts_of(all_queues: dict[str, queues.Queue]) -> dict[str, tuple[int, int]]:
    return {name: (len(q.ids), q.total) for name, q in all_queues.items()}


def _current_event(db: sqlite_utils.Database, image_id: int) -> int:
    row = db.execute("SELECT COALESCE(MAX(event_id), 0) FROM current_labels WHERE image_id = ?", (int(image_id),))
    return int(row.fetchone()[0])


def _opt(value: object) -> object:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def _clean(rec: dict) -> dict:
    """Plain Python values (None for NaN) so the record serializes to JSON."""
    out = {}
    for k, v in rec.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and v != v:
            v = None
        out[k] = v
    return out
