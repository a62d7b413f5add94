"""One pyarrow schema per warehouse table, enforced when a table is written and when it is read.

`TABLES` names every table with its layout: which hive keys its folders carry (always strings, whatever
the folder name looks like: a hospital called `1001`, `2024-01-05`, `inf` or `0042` stays that text) and
where its schema lives. Tables whose writer owns the schema (dicom_index, quarantine, image_cache) keep it
beside that writer and are imported from there, so there is still exactly one definition per table.

`conform` is the write side (cast a DataFrame to the schema, fill absent nullable columns, refuse unknown
ones); `select_sql` is the read side (the DuckDB SELECT every view uses: each column cast to its type,
absent columns as typed NULLs, hive keys as VARCHAR).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

_STR, _F32, _F64, _I64, _BOOL = pa.string(), pa.float32(), pa.float64(), pa.int64(), pa.bool_()
_TS = pa.timestamp("us", tz="UTC")

IMAGE_PREDICTIONS = pa.schema(
    [
        ("sop_instance_uid", _STR),
        ("study_instance_uid", _STR),
        ("patient_key", _STR),
        ("hospital", _STR),
        ("p_biopsy", _F32),
        ("p_mag", _F32),
        ("has_biopsy_marker", _BOOL),
        ("is_mag_view", _BOOL),
        ("predicted_class", _STR),
        ("needs_review", _BOOL),  # nullable: rows from models before issue 13 have none
        ("model_version", _STR),
        ("onnx_sha256", _STR),
        ("label_snapshot_id", _STR),
        ("dagster_run_id", _STR),
        ("predicted_at", _TS),
    ]
)

STUDY_PREDICTIONS = pa.schema(
    [
        ("study_instance_uid", _STR),
        ("hospital", _STR),
        ("patient_key", _STR),
        ("n_images", _I64),
        ("has_biopsy_marker", _BOOL),
        ("is_mag_view", _BOOL),
        ("n_biopsy_images", _I64),  # images flagged at the image threshold (the study flag has its own)
        ("n_mag_images", _I64),
        ("max_p_biopsy", _F32),
        ("max_p_mag", _F32),
        ("needs_review", _BOOL),  # a study MAX in its study review band (older models: ANY image); NULL: no flag
        ("n_needs_review", _I64),
        ("model_version", _STR),
        ("onnx_sha256", _STR),
        ("label_snapshot_id", _STR),
        ("dagster_run_id", _STR),
        ("predicted_at", _TS),
    ]
)

# One row per promotion event (append-only). hospital NULL = every hospital.
MODEL_PROMOTIONS = pa.schema(
    [
        ("promotion_id", _STR),
        ("hospital", _STR),
        ("model_version", _STR),
        ("promoted_at", _TS),
        ("reason", _STR),  # checks_passed | manual | rollback
        ("previous_model_version", _STR),
        ("promoted_by", _STR),
        ("dagster_run_id", _STR),
        ("note", _STR),
    ]
)


# labels/current.parquet, written by defs/labels.py (issue 16 owns the writer; types as it writes them today).
LABELS = pa.schema(
    [
        ("image_id", _I64),
        ("sop_instance_uid", _STR),
        ("hospital", _STR),
        ("study_instance_uid", _STR),
        ("patient_key", _STR),
        ("label", _STR),  # 'biopsy' | 'mag' | 'neither' | 'both'
        ("has_biopsy_marker", _BOOL),
        ("is_mag_view", _BOOL),
        ("split", _STR),  # 'train' | 'audit'
        ("annotator", _STR),
        ("event_id", _I64),
        ("labeled_at", _STR),
        ("snapshot_id", _STR),
        ("model_png", _STR),
        ("display_png", _STR),
    ]
)

# warehouse/model_registry/<v>.parquet, written by model/registry.py (its COLUMNS, with these types).
MODEL_REGISTRY = pa.schema(
    [
        ("model_version", _STR),
        ("created_at", _TS),
        ("label_snapshot_id", _STR),
        ("n_train", _I64),
        ("n_audit", _I64),
        ("label_counts", _STR),  # JSON
        ("hyperparameters", _STR),  # JSON
        ("seed", _I64),
        ("pretrained", _STR),
        ("pretrained_source", _STR),
        *((name, _F64) for name in ("accuracy", "accuracy_3class", "biopsy_precision", "biopsy_recall", "biopsy_f1")),
        *((name, _F64) for name in ("mag_precision", "mag_recall", "mag_f1")),
        ("per_hospital_accuracy", _STR),  # JSON
        ("ece", _F64),
        ("train_seconds", _F64),
        ("onnx_sha256", _STR),
        ("int8_accuracy", _F64),
        ("fp32_accuracy", _F64),
        ("onnx_bytes", _I64),
        ("int8_bytes", _I64),
        ("inference_file", _STR),
        # what image_predictions.onnx_sha256 holds (the inference file's: int8 or fp32), and the second look's
        # file, which answers p_biopsy: a prediction joins its registry row on (model_version, inference_sha256)
        ("inference_sha256", _STR),
        ("second_look_sha256", _STR),
    ]
)


# One row per prediction slice `mammo model prune` deleted: what it held, so that `--as-of` still knows the model
# was there (and current) at a time whose rows are gone, instead of taking the model before it for current.
PREDICTION_PRUNES = pa.schema(
    [
        ("table_name", _STR),  # image_predictions | study_predictions
        ("hospital", _STR),
        ("model_version", _STR),
        ("first_predicted_at", _TS),
        ("last_predicted_at", _TS),
        ("n_rows", _I64),
        ("pruned_at", _TS),
    ]
)


@dataclass(frozen=True)
class TableSpec:
    """Where a table lives and how its folders are laid out."""

    name: str
    hive_keys: tuple[str, ...]  # folder levels below the table, e.g. ('hospital', 'model_version')
    schema_ref: str  # 'module:ATTRIBUTE' of the pyarrow schema, imported on demand (no import cycles)
    strict: bool = True  # False: schema columns typed, columns the schema does not know yet passed through

    @property
    def schema(self) -> pa.Schema | None:
        if not self.schema_ref:
            return None
        import importlib

        module, attr = self.schema_ref.split(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def glob_pattern(self) -> str:
        return "/".join(["*"] * len(self.hive_keys) + ["*.parquet"])


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("dicom_index", ("hospital",), "mammo_pipeline.dicom.index:SCHEMA"),
        TableSpec("quarantine", ("hospital",), "mammo_pipeline.dicom.quarantine:SCHEMA"),
        TableSpec("image_cache", ("hospital",), "mammo_pipeline.cache:SCHEMA"),
        TableSpec("image_predictions", ("hospital", "model_version"), "mammo_pipeline.schemas:IMAGE_PREDICTIONS"),
        TableSpec("study_predictions", ("hospital", "model_version"), "mammo_pipeline.schemas:STUDY_PREDICTIONS"),
        TableSpec("model_promotions", (), "mammo_pipeline.schemas:MODEL_PROMOTIONS"),
        TableSpec("prediction_prunes", (), "mammo_pipeline.schemas:PREDICTION_PRUNES"),
        # Their writers live elsewhere and may add columns before this file learns them: those pass through.
        TableSpec("labels", (), "mammo_pipeline.schemas:LABELS", strict=False),
        TableSpec("model_registry", (), "mammo_pipeline.schemas:MODEL_REGISTRY", strict=False),
    )
}


class SchemaError(ValueError):
    """A frame does not fit its table's schema."""


def conform(table: str, df: pd.DataFrame) -> pa.Table:
    """`df` as a pyarrow Table with exactly the table's schema (column order, types).

    Absent columns become NULL; a column the schema does not know, or a value that cannot be cast, raises
    SchemaError naming the table and column.
    """
    schema = TABLES[table].schema
    if schema is None:
        raise SchemaError(f"{table}: no pyarrow schema to conform to")
    unknown = sorted(set(df.columns) - set(schema.names))
    if unknown:
        raise SchemaError(f"{table}: columns {unknown} are not in its schema (mammo_pipeline/schemas.py)")
    arrays = []
    for field in schema:
        if field.name not in df.columns:
            arrays.append(pa.nulls(len(df), field.type))
            continue
        try:
            arrays.append(pa.array(df[field.name], from_pandas=True).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise SchemaError(f"{table}.{field.name}: cannot store as {field.type}: {e}") from e
    return pa.Table.from_arrays(arrays, schema=schema)


def read_options(table: str) -> str:
    """read_parquet options: hive keys typed VARCHAR (never guessed), files unioned by column name."""
    keys = TABLES[table].hive_keys
    if not keys:
        return "union_by_name=true"
    types = ", ".join(f"'{k}': VARCHAR" for k in keys)
    return f"hive_partitioning=true, hive_types={{{types}}}, hive_types_autocast=false, union_by_name=true"


_DUCK = {
    pa.string(): "VARCHAR",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.int64(): "BIGINT",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    pa.list_(pa.float64()): "DOUBLE[]",
    pa.list_(pa.string()): "VARCHAR[]",
}


def duckdb_type(t: pa.DataType) -> str:
    try:
        return _DUCK[t]
    except KeyError:
        raise SchemaError(f"no DuckDB type for {t}; add it to schemas._DUCK") from None


def select_sql(table: str, source: str, present: set[str]) -> str:
    """The typed SELECT over `source` (a read_parquet call) for a table whose files hold columns `present`.

    Every schema column comes cast (a typed NULL when no file has it), plus the hive keys as VARCHAR; a
    non-strict table also passes through the columns its schema does not know yet.
    """
    spec = TABLES[table]
    schema = spec.schema
    if schema is None:
        return f"SELECT * FROM {source}"
    cols = []
    for field in schema:
        ident = f'"{field.name}"'
        if field.name in spec.hive_keys:
            cols.append(f"CAST({ident} AS VARCHAR) AS {ident}")
        elif field.name in present:
            cols.append(f"CAST({ident} AS {duckdb_type(field.type)}) AS {ident}")
        else:
            cols.append(f"CAST(NULL AS {duckdb_type(field.type)}) AS {ident}")
    cols += [f'"{k}"' for k in spec.hive_keys if k not in schema.names]
    if not spec.strict:
        cols += [f'"{c}"' for c in sorted(present - set(schema.names) - set(spec.hive_keys))]
    return f"SELECT {', '.join(cols)} FROM {source}"


def empty_sql(table: str) -> str:
    """A typed, empty SELECT for a strict table that has no files yet."""
    schema = TABLES[table].schema
    cols = ", ".join(f'CAST(NULL AS {duckdb_type(f.type)}) AS "{f.name}"' for f in schema)
    return f"SELECT {cols} WHERE false"


def check_file(table: str, path) -> None:
    """Refuse a Parquet file written by another module whose columns do not fit the table's schema.

    Columns may be missing (read as NULL) but none may be unknown or of another type. Reads the footer only.
    """
    import pyarrow.parquet as pq

    schema = TABLES[table].schema
    found = pq.read_schema(path)
    for field in found:
        if field.name not in schema.names:
            raise SchemaError(f"{path}: column {field.name} is not in the {table} schema (mammo_pipeline/schemas.py)")
        want = schema.field(field.name).type
        if field.type != want:
            raise SchemaError(f"{path}: {table}.{field.name} is {field.type}, the schema says {want}")
