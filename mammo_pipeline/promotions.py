"""Which model is current for which hospital, from when to when: the append-only `model_promotions` table.

Every promotion is one Parquet file `warehouse/model_promotions/<promoted_at>-<id>.parquet` holding one row
(hospital NULL = every hospital), so promotions never rewrite each other and two writers never collide.
The trained model is promoted when its checks pass (the `promoted_model` asset); `mammo model promote`
promotes or rolls back by hand. Rows of `image_predictions` / `study_predictions` are never touched by a
promotion: the `*_current` views pick, per hospital, the slice of the model current at a given time.

The rule (also used by `mammo lineage --as-of`): among the models that had predictions for a hospital at the
time (rows written at or before it), the one whose latest promotion applying to that hospital (its own or an
all-hospitals one) happened at or before the time wins. A hospital none of whose models was ever promoted (homes
from before promotions) falls back to its most recently predicted model, marked `promoted = false`. Each table
answers from its own rows: between a new model's image predictions and its study predictions, the study table
keeps the previous model's flags. A slice predicted again keeps the rows of the images it already held
(`model/infer.py::write_predictions`); a re-cached image counts from its new row. `prune` keeps, per table, the
slice that table's current view shows.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from mammo_pipeline import warehouse
from mammo_pipeline.landing import list_hospitals
from mammo_pipeline.model.evaluate import FLAGS, TRUTH_COLUMNS, resampling_groups, roc_auc
from mammo_pipeline.model.intervals import roc_auc_interval
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.settings import Settings

TABLE = "model_promotions"
REASONS = ("checks_passed", "manual", "rollback")
REF_FILE = "ref.json"  # models/<v>/ref.json: the exported model's ModelRef (model/export.py writes it too)


class UnknownModel(LookupError):
    """No exported model with this version."""


class UnknownHospital(LookupError):
    """A promotion for a hospital that neither the landing folder nor any warehouse table knows (a typo)."""


def known_hospitals(settings: Settings) -> list[str]:
    """Hospitals a promotion may name: folders of the landing zone and partitions of any warehouse table."""
    in_tables = {p.name.split("=", 1)[1] for p in settings.warehouse.glob("*/hospital=*") if p.is_dir()}
    return sorted(set(list_hospitals(settings.landing)) | in_tables)


def utc(when: pd.Timestamp | str | datetime) -> pd.Timestamp:
    """`when` as a UTC timestamp; a value without a time zone is taken as UTC, a date as its start, and the words
    "now" and "today" as this moment and today's start in UTC (pandas reads them as the machine's local time)."""
    if isinstance(when, str) and when.strip().lower() in ("now", "today"):
        now = pd.Timestamp.now(tz="UTC")
        return now if when.strip().lower() == "now" else now.normalize()
    ts = pd.Timestamp(when)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def timestamp_sql(when: pd.Timestamp | str | None) -> str:
    """A DuckDB TIMESTAMPTZ literal for `when` (see `utc`); now() when None."""
    return "now()" if when is None else f"TIMESTAMPTZ '{utc(when).isoformat()}'"


def current_models_sql(as_of: str = "now()", table: str = "image_predictions") -> str:
    """SELECT hospital, model_version, promoted_at, promoted: the current model per hospital at `as_of` (a SQL
    timestamp, `timestamp_sql`), among the models whose rows of `table` (image_predictions or study_predictions)
    had been written by then, pruned ones included (`prediction_prunes`): a time when a pruned model was current
    has that model, whose rows are gone, and so no current rows, rather than the model before it.

    Needs the `table`, `model_promotions` and `prediction_prunes` views (warehouse.connect makes them).
    """
    return f"""
    WITH avail AS (
        SELECT hospital, model_version, max(predicted_at) AS predicted_at FROM (
            SELECT hospital, model_version, predicted_at FROM {table} WHERE predicted_at <= {as_of}
            UNION ALL  -- a slice pruned since: its model was there then, and may have been the current one
            SELECT hospital, model_version, least(last_predicted_at, {as_of}) FROM prediction_prunes
            WHERE table_name = '{table}' AND first_predicted_at <= {as_of}
        ) GROUP BY ALL
    ), promo AS (
        SELECT a.hospital, a.model_version, max(p.promoted_at) AS promoted_at
        FROM avail a JOIN model_promotions p
          ON p.model_version = a.model_version AND (p.hospital IS NULL OR p.hospital = a.hospital)
        WHERE p.promoted_at <= {as_of}
        GROUP BY ALL
    )
    SELECT a.hospital, a.model_version, p.promoted_at, p.promoted_at IS NOT NULL AS promoted
    FROM avail a LEFT JOIN promo p USING (hospital, model_version)
    QUALIFY row_number() OVER (
        PARTITION BY a.hospital ORDER BY p.promoted_at DESC NULLS LAST, a.predicted_at DESC, a.model_version
    ) = 1
    """


def current_rows_sql(table: str, as_of: str = "now()") -> str:
    """The rows of `table` (image_predictions or study_predictions) from each hospital's current model."""
    return (
        f"SELECT t.* FROM {table} t JOIN ({current_models_sql(as_of, table)}) c "
        "ON t.hospital = c.hospital AND t.model_version = c.model_version"
    )


def read_promotions(settings: Settings) -> pd.DataFrame:
    """Every promotion, oldest first, with `valid_to`: when the next promotion that also covers its scope came
    (for a hospital's own promotion, the next one for that hospital or for all; for an all-hospitals one, the
    next all-hospitals one); NULL while it still holds."""
    with warehouse.connect(settings) as con:
        return con.execute(
            """
            SELECT p.*, (
                SELECT min(q.promoted_at) FROM model_promotions q
                WHERE q.promoted_at > p.promoted_at
                  AND (q.hospital IS NULL OR q.hospital IS NOT DISTINCT FROM p.hospital)
            ) AS valid_to
            FROM model_promotions p ORDER BY p.promoted_at, p.promotion_id
            """
        ).df()


def promoted_version(settings: Settings, hospital: str | None = None) -> str | None:
    """The model promoted last for `hospital` (its own or an all-hospitals promotion; only the latter when
    None); None if none was ever promoted."""
    df = read_promotions(settings)
    if df.empty:
        return None
    scope = df["hospital"].isna() if hospital is None else df["hospital"].isna() | (df["hospital"] == hospital)
    df = df[scope]
    return None if df.empty else str(df.iloc[-1]["model_version"])


AUDIT_FILE = "audit_predictions.parquet"  # models/<v>/: each audit image's truth and probabilities (model/train.py)
_AUDIT_COLUMNS = ("sop_instance_uid", *TRUTH_COLUMNS.values(), *(f"p_{flag}" for flag in FLAGS))
_GROUP_COLUMNS = ("patient_key", "study_instance_uid")  # what the ROC-AUC bootstrap resamples whole


@dataclass(frozen=True)
class AuditComparison:
    """The hold-back check's answer: `regressions`, one line per flag that keeps the new model back (none: it may
    be promoted), and `basis`, which audit images the figures compared were measured on. A hold-back is only as
    good as its basis, so every caller shows both; `compared` is False when the check was skipped (and why is in
    `basis`): a model is never held back on figures from different audit sets."""

    regressions: tuple[str, ...]
    basis: str
    compared: bool = True


def audit_regressions(
    new: dict, current: dict, new_audit: pd.DataFrame | None = None, current_audit: pd.DataFrame | None = None
) -> AuditComparison:
    """Whether the model of registry row `new` must not replace the model of row `current` by itself: a line per
    flag whose audit ROC-AUC lies below the low end of the current model's 95 % interval (bootstrapped over whole
    patients: model/intervals.py). A round whose training failed is held back (stop 50: one demo round's patch
    network ended at biopsy 0.561 after the previous round's 0.982 [0.936-0.998], and was promoted); a figure
    inside that interval, a round's ordinary noise, is not. No line for a flag that either side lacks (models
    from before the registry kept intervals; a flag with one class among the shared images).

    Like with like: `new_audit` / `current_audit` are each model's per-image audit predictions (`AUDIT_FILE`,
    with `patient_key` where known). An image withdrawn since the current model's audit leaves the new model's
    audit set, and an image relabeled since changes its truth, so the two registry figures were measured on
    different sets; then both ROC-AUCs and the current model's interval are measured again on the images both
    sets hold, under the new model's (latest) labels. Without the per-image predictions the registry's `n_audit`
    is all that is known of the sets: different counts skip the check (`compared` False)."""
    name = current.get("model_version")
    if new_audit is None or current_audit is None:
        n_new, n_current = _count(new.get("n_audit")), _count(current.get("n_audit"))
        if n_new is not None and n_current is not None and n_new != n_current:
            return AuditComparison(
                (),
                f"not compared: audit sets differ ({n_current} images in {name}'s, {n_new} in this model's; "
                "which images is not recorded)",
                compared=False,
            )
        size = f"{n_new} images each" if n_new is not None and n_new == n_current else "sizes not recorded"
        return AuditComparison(
            _registry_lines(new, current), f"registry figures; the audit images were not recorded ({size})"
        )
    new_audit, current_audit = _audit_rows(new_audit), _audit_rows(current_audit)
    shared = new_audit.index.intersection(current_audit.index, sort=False)
    gone, added = len(current_audit) - len(shared), len(new_audit) - len(shared)
    truth = [TRUTH_COLUMNS[flag] for flag in FLAGS]
    now, then = new_audit.loc[shared, truth].to_numpy(bool), current_audit.loc[shared, truth].to_numpy(bool)
    relabeled = int((now != then).any(axis=1).sum())
    if not (gone or added or relabeled):
        return AuditComparison(_registry_lines(new, current), f"the same {len(shared)} audit images")
    differ = (
        f"audit sets differ: {gone} of {name}'s {len(current_audit)} audit images withdrawn since (no longer in the "
        f"audit set), {added} new, {relabeled} relabeled"
    )
    if not len(shared):
        return AuditComparison((), f"not compared: {differ}; no audit image in common", compared=False)
    keys = new_audit.loc[shared, list(_GROUP_COLUMNS)].combine_first(current_audit.loc[shared, list(_GROUP_COLUMNS)])
    if keys.isna().all().all():
        return AuditComparison(
            (), f"not compared: {differ}; no patient keys to resample the shared images by", compared=False
        )
    groups = resampling_groups(keys.assign(sop_instance_uid=shared))
    lines = []
    for k, flag in enumerate(FLAGS):
        ours, theirs = (a.loc[shared, f"p_{flag}"].to_numpy(float) for a in (new_audit, current_audit))
        value, was = roc_auc(now[:, k], ours), roc_auc(now[:, k], theirs)
        bounds = roc_auc_interval(now[:, k], theirs, groups)  # as training measured it: model/evaluate.flag_metrics
        if value is None or was is None or bounds is None or value >= bounds[0]:
            continue
        lines.append(
            f"{flag} ROC-AUC {value:.3f} on the {len(shared)} shared audit images, below {name}'s {was:.3f} "
            f"[{bounds[0]:.3f}-{bounds[1]:.3f}] on them"
        )
    return AuditComparison(tuple(lines), f"{differ}; both measured again on the {len(shared)} they share")


def _registry_lines(new: dict, current: dict) -> tuple[str, ...]:
    """`audit_regressions` from the two registry rows' own figures (right only when both rest on one audit set)."""
    lines = []
    for flag in FLAGS:
        value, low = new.get(f"{flag}_roc_auc"), current.get(f"{flag}_roc_auc_low")
        if value is None or low is None or pd.isna(value) or pd.isna(low):
            continue
        if float(value) < float(low):
            was, high = float(current[f"{flag}_roc_auc"]), float(current[f"{flag}_roc_auc_high"])
            lines.append(
                f"{flag} ROC-AUC {float(value):.3f} on the audit set, below {current.get('model_version')}'s "
                f"{was:.3f} [{float(low):.3f}-{high:.3f}]"
            )
    return tuple(lines)


def _count(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _audit_rows(audit: pd.DataFrame) -> pd.DataFrame:
    """One row per audit image, indexed by SOP Instance UID, with the group columns (NULL where unknown)."""
    out = audit.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid")
    for column in _GROUP_COLUMNS:
        if column not in out:
            out[column] = None
    return out


def held_back(settings: Settings, model_version: str, current_version: str) -> AuditComparison:
    """`audit_regressions` of `model_version` against `current_version` from their registry rows and per-image
    audit predictions (models/<v>/audit_predictions.parquet). Models trained before the audit file kept patient
    keys get them from their label snapshots. Not compared when either registry row is missing (a model exported
    by hand, or from before the registry)."""
    from mammo_pipeline.model import registry

    rows = {}
    for version in (model_version, current_version):
        try:
            rows[version] = registry.read_row(settings, version)
        except FileNotFoundError:
            return AuditComparison((), f"not compared: no registry row for model {version}", compared=False)
    audits = {version: read_audit(settings, version) for version in rows}
    kept = [a for a in audits.values() if a is not None]
    if kept and not any(a[list(_GROUP_COLUMNS)].notna().any().any() for a in kept):
        keys = _snapshot_keys(settings, [rows[v].get("label_snapshot_id") for v in rows])
        audits = {v: None if a is None else _with_keys(a, keys) for v, a in audits.items()}
    return audit_regressions(rows[model_version], rows[current_version], audits[model_version], audits[current_version])


def read_audit(settings: Settings, model_version: str) -> pd.DataFrame | None:
    """The model's per-image audit predictions (`AUDIT_FILE`) with the group columns (NULL where the file has none);
    None when the file is missing or lacks a column the comparison needs."""
    path = settings.models / model_version / AUDIT_FILE
    if not path.exists():
        return None
    audit = pd.read_parquet(path).reset_index(drop=True)
    if not set(_AUDIT_COLUMNS) <= set(audit.columns):
        return None
    return audit.assign(**{c: audit.get(c) for c in _GROUP_COLUMNS})


def _snapshot_keys(settings: Settings, snapshot_ids: list[object]) -> pd.DataFrame:
    """sop_instance_uid -> patient_key, study_instance_uid from the label snapshots named (comma-separated ids)."""
    folder = settings.table_dir("labels") / "snapshots"
    names = {s for ids in snapshot_ids if isinstance(ids, str) for s in ids.split(",") if s}
    frames = [
        pd.read_parquet(folder / f"{name}.parquet", columns=["sop_instance_uid", *_GROUP_COLUMNS])
        for name in sorted(names)
        if (folder / f"{name}.parquet").exists()
    ]
    if not frames:
        return pd.DataFrame(columns=["sop_instance_uid", *_GROUP_COLUMNS])
    return pd.concat(frames, ignore_index=True).drop_duplicates("sop_instance_uid")


def _with_keys(audit: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
    """`audit` with its missing group columns filled from `keys` (by SOP Instance UID)."""
    audit = audit.reset_index(drop=True)
    found = keys.set_index("sop_instance_uid").reindex(audit["sop_instance_uid"]).reset_index(drop=True)
    return audit.assign(**{c: audit[c].combine_first(found[c]) for c in _GROUP_COLUMNS})


def ref_path(settings: Settings, model_version: str) -> Path:
    return settings.models / model_version / REF_FILE


def save_ref(settings: Settings, ref: ModelRef) -> Path:
    """Keep the exported model's ModelRef beside its files, so it can be used again after a newer one."""
    return ref.save(settings.models, f"{ref.folder}/{REF_FILE}")


def model_ref(settings: Settings, model_version: str) -> ModelRef:
    """The ModelRef of an exported model: models/<v>/ref.json, else current.json when it names <v>."""
    path = ref_path(settings, model_version)
    if path.exists():
        return ModelRef.load(path.parent, REF_FILE)
    try:
        current = ModelRef.load(settings.models)
    except FileNotFoundError:
        current = None
    if current is not None and current.model_version == model_version and current.onnx_file:
        return current
    known = sorted(p.parent.name for p in settings.models.glob(f"*/{REF_FILE}"))
    raise UnknownModel(
        f"model {model_version}: no exported ONNX model (models/{model_version}/{REF_FILE}); "
        f"promotable: {', '.join(known) or 'none yet'}"
    )


def model_for_hospital(settings: Settings, hospital: str) -> ModelRef:
    """The model that speaks for `hospital`: the one promoted last for it (or for every hospital), else, in a
    home where nothing was ever promoted, the newest one (`models/current.json`).

    Raises FileNotFoundError when there is no model at all, UnknownModel when the promoted one lost its files.
    """
    version = promoted_version(settings, hospital)
    return model_ref(settings, version) if version else ModelRef.load(settings.models)


def promote(
    settings: Settings,
    model_version: str,
    hospital: str | None = None,
    reason: str = "manual",
    promoted_by: str = "",
    dagster_run_id: str = "",
    note: str = "",
    now: datetime | None = None,
) -> dict:
    """Append one promotion row making `model_version` current (for `hospital`, or all when None).

    Raises
    ------
    UnknownModel
        When `model_version` has no exported ONNX model.
    UnknownHospital
        When `hospital` is given and is not a hospital of this home (`known_hospitals`).
    ModelMismatch
        When one of the model's ONNX files is not the one exported (`model.infer.check_files`); FileNotFoundError
        when its inference file is missing.
    """
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {REASONS}, not {reason!r}")
    if hospital is not None and hospital not in (known := known_hospitals(settings)):
        raise UnknownHospital(
            f"no hospital {hospital!r} in the landing folder or the warehouse (known: {', '.join(known) or 'none'}); "
            "leave --hospital out to promote for every hospital"
        )
    ref = model_ref(settings, model_version)
    from mammo_pipeline.model.infer import check_files  # onnxruntime, only when promoting

    check_files(settings, ref)  # a changed file would fail every prediction of the hospitals it becomes current for
    if not ref_path(settings, model_version).exists():
        save_ref(settings, ref)
    when = utc(now) if now is not None else pd.Timestamp.now(tz="UTC")
    row = {
        "promotion_id": uuid.uuid4().hex[:12],
        "hospital": hospital,
        "model_version": model_version,
        "promoted_at": when,
        "reason": reason,
        "previous_model_version": promoted_version(settings, hospital),
        "promoted_by": promoted_by,
        "dagster_run_id": dagster_run_id,
        "note": note,
    }
    name = f"{when.strftime('%Y%m%dT%H%M%S%fZ')}-{row['promotion_id']}.parquet"
    warehouse.write_table_file(TABLE, pd.DataFrame([row]), settings.table_dir(TABLE) / name)
    return row


def predicted_hospitals(settings: Settings, model_version: str) -> list[str]:
    """Hospitals with an image_predictions slice of this model."""
    root = settings.table_dir("image_predictions")
    return sorted(
        p.parent.name.split("=", 1)[1]
        for p in root.glob(f"hospital=*/model_version={model_version}")
        if (p / warehouse.SLICE_FILE).exists()
    )


def partly_predicted(settings: Settings, model_version: str, hospitals: list[str]) -> list[tuple[str, int, int]]:
    """(hospital, images the model predicted, images cached) for each of `hospitals` whose cached images the
    model's slice does not all cover: made current, it shows fewer images than the cache holds until predicted
    again (a drop that arrived after the model last ran there)."""
    if not hospitals:
        return []
    with warehouse.connect(settings) as con:
        if not {"image_cache", "image_predictions"} <= warehouse.views(con):
            return []
        rows = con.execute(
            """SELECT c.hospital, count(DISTINCT p.sop_instance_uid) AS n, count(DISTINCT c.sop_instance_uid) AS cached
               FROM image_cache c LEFT JOIN image_predictions p ON p.hospital = c.hospital
                 AND p.sop_instance_uid = c.sop_instance_uid AND p.model_version = ?
               WHERE c.hospital IN (SELECT unnest(?)) GROUP BY 1 ORDER BY 1""",
            [model_version, hospitals],
        ).fetchall()
    return [(str(h), int(n), int(cached)) for h, n, cached in rows if n < cached]


@dataclass(frozen=True)
class PruneItem:
    table: str
    hospital: str
    model_version: str
    path: Path


def prune_plan(settings: Settings, keep: int) -> list[PruneItem]:
    """The prediction slices the retention rule drops; see `prune`.

    Kept per hospital: the model current now, and the `keep` most recently promoted models that applied to
    it (so `--as-of` and roll back keep working for them). Never-promoted slices older than the newest
    promoted one are dropped too. keep >= 1.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1 (the current model is always kept)")
    promotions = read_promotions(settings)
    with warehouse.connect(settings) as con:
        present = warehouse.views(con)
        if "image_predictions_current" not in present:
            return []
        current: dict[str, set[tuple[str, str]]] = {}  # per table: each keeps its own model between the two writes
        for table in (t for t in warehouse.HISTORY if t in present):
            sql = f"SELECT hospital, model_version FROM ({current_models_sql(table=table)})"
            current[table] = {(str(h), str(v)) for h, v in con.execute(sql).fetchall()}
    plan = []
    for table in warehouse.HISTORY:
        for folder in sorted(settings.table_dir(table).glob("hospital=*/model_version=*")):
            hospital = folder.parent.name.split("=", 1)[1]
            version = folder.name.split("=", 1)[1]
            applying = promotions[promotions["hospital"].isna() | (promotions["hospital"] == hospital)]
            recent = list(dict.fromkeys(reversed(applying["model_version"].tolist())))[:keep]
            if (hospital, version) in current.get(table, set()) or version in recent:
                continue
            plan.append(PruneItem(table, hospital, version, folder))
    return plan


def prune(settings: Settings, keep: int, dry_run: bool = False) -> list[PruneItem]:
    """Delete the slices `prune_plan` names (whole model_version folders), recording each in `prediction_prunes`
    first (so `--as-of` still knows its model was there); return them."""
    plan = prune_plan(settings, keep)
    if dry_run or not plan:
        return plan
    now = pd.Timestamp.now(tz="UTC")
    rows = []
    for item in plan:
        times = pd.concat(
            [pq.read_table(f, columns=["predicted_at"]).to_pandas() for f in item.path.glob("*.parquet")]
            or [pd.DataFrame({"predicted_at": pd.Series(dtype="datetime64[ns, UTC]")})]
        )["predicted_at"]
        rows.append(
            {
                "table_name": item.table,
                "hospital": item.hospital,
                "model_version": item.model_version,
                "first_predicted_at": times.min() if len(times) else None,
                "last_predicted_at": times.max() if len(times) else None,
                "n_rows": len(times),
                "pruned_at": now,
            }
        )
    name = f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}.parquet"
    warehouse.write_table_file("prediction_prunes", pd.DataFrame(rows), settings.table_dir("prediction_prunes") / name)
    for item in plan:
        shutil.rmtree(item.path)
    warehouse.refresh_views(settings)
    return plan


def migrate_legacy(settings: Settings) -> int:
    """Move predictions written before the history layout (`hospital=H/predictions.parquet`,
    `hospital=H/studies.parquet`) to `hospital=H/model_version=V/part.parquet`; return files moved."""
    moved = 0
    for table, name in (("image_predictions", "predictions.parquet"), ("study_predictions", "studies.parquet")):
        for old in settings.table_dir(table).glob(f"hospital=*/{name}"):
            hospital = old.parent.name.split("=", 1)[1]
            df = pd.read_parquet(old)
            versions = df["model_version"].dropna().unique().tolist() if "model_version" in df else []
            if len(versions) != 1:
                continue  # mixed or unknown: leave it for a person (the views ignore it)
            target = warehouse.slice_file(settings, table, hospital, str(versions[0]))
            if not target.exists():
                warehouse.write_table_file(table, df.assign(hospital=hospital), target)
            old.unlink()
            moved += 1
    return moved
