"""Plain hive Parquet slices (this project) vs a Delta Lake table (delta-rs) for prediction history.

Writes `--slices` (hospital, model_version) slices of `--rows` image_predictions rows each, then measures:
1. sequential write time per slice: atomic file rename vs `write_deltalake(mode='overwrite', predicate=...)`;
2. concurrent writers: `--writers` processes each replacing their own hospital's slice `--rounds` times at
   once; counts failed commits (conflicts) for each format;
3. a DuckDB query over everything (plain: read_parquet over the hive folders; Delta: the table's current
   files, as delta-rs lists them, since DuckDB's delta extension would be a run-time download).
Prints the ratios Delta / plain. deltalake is not a project dependency: pass `--deltalake-path DIR` for a
folder it was installed into with `pip install --target DIR 'deltalake>=1.6,<2'`.

    nice .venv/bin/python benchmarks/bench_table_format.py --slices 20 --rows 5000 --writers 2 --rounds 5 --repeat 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from mammo_pipeline import schemas
from mammo_pipeline.atomic import atomic_path


def frame(hospital: str, version: str, rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.random((rows, 2)).astype(np.float32)
    return pd.DataFrame(
        {
            "sop_instance_uid": [f"{hospital}.{version}.{i}" for i in range(rows)],
            "study_instance_uid": [f"{hospital}.{i // 4}" for i in range(rows)],
            "patient_key": "pk",
            "hospital": hospital,
            "p_biopsy": p[:, 0],
            "p_mag": p[:, 1],
            "has_biopsy_marker": p[:, 0] >= 0.5,
            "is_mag_view": p[:, 1] >= 0.5,
            "predicted_class": "neither",
            "needs_review": p[:, 0] > 0.9,
            "model_version": version,
            "onnx_sha256": "0" * 64,
            "label_snapshot_id": "snap",
            "dagster_run_id": "run",
            "predicted_at": pd.Timestamp.now(tz="UTC"),
        }
    )


def write_plain(root: Path, df: pd.DataFrame) -> None:
    import pyarrow.parquet as pq

    h, v = df["hospital"].iloc[0], df["model_version"].iloc[0]
    path = root / f"hospital={h}" / f"model_version={v}" / "part.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(schemas.conform("image_predictions", df), tmp)


def write_delta(root: Path, df: pd.DataFrame) -> None:
    from deltalake import write_deltalake

    h, v = df["hospital"].iloc[0], df["model_version"].iloc[0]
    table = schemas.conform("image_predictions", df)
    exists = (root / "_delta_log").exists()
    write_deltalake(
        str(root),
        table,
        mode="overwrite" if exists else "append",
        partition_by=["hospital", "model_version"],
        predicate=f"hospital = '{h}' AND model_version = '{v}'" if exists else None,
    )


def _writer(args: tuple[str, str, str, int, int, str]) -> int:
    fmt, root, hospital, rows, rounds, extra = args
    if extra:
        sys.path.append(extra)
    failures = 0
    for r in range(rounds):
        df = frame(hospital, "m1", rows, r)
        try:
            (write_delta if fmt == "delta" else write_plain)(Path(root), df)
        except Exception:  # a commit conflict: the write did not land
            failures += 1
    return failures


TIMED = ("write_ms_per_slice", "rewrite_ms_per_slice", "query_ms")


def measure(fmt: str, writer, tmp: Path, frames: list[pd.DataFrame], a, with_concurrency: bool) -> dict[str, float]:
    """One pass: write every slice, rewrite every slice, count rows with DuckDB, then concurrent writers."""
    root = tmp / fmt
    root.mkdir()
    start = time.perf_counter()
    for df in frames:
        writer(root, df)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    for df in frames:  # re-materialization of the same model
        writer(root, df)
    rewrite_s = time.perf_counter() - start
    if fmt == "plain":
        source = f"read_parquet('{root}/*/*/*.parquet', {schemas.read_options('image_predictions')})"
    else:
        from deltalake import DeltaTable

        files = [str(root / f) for f in DeltaTable(str(root)).file_uris()]
        source = f"read_parquet({files!r}, hive_partitioning=true, hive_types_autocast=false)"
    start = time.perf_counter()
    n = duckdb.connect().execute(f"SELECT count(*) FROM {source}").fetchone()[0]
    query_s = time.perf_counter() - start
    out = {
        "write_ms_per_slice": 1000 * write_s / len(frames),
        "rewrite_ms_per_slice": 1000 * rewrite_s / len(frames),
        "query_ms": 1000 * query_s,
        "rows": n,
        "parquet_files_on_disk": sum(1 for _ in root.rglob("*.parquet")),
        "concurrent_failed_commits": -1,
        "concurrent_writes": 0,
    }
    if with_concurrency:
        croot = tmp / f"{fmt}-concurrent"
        croot.mkdir()
        writer(croot, frame("seed", "m1", 10, 0))
        jobs = [(fmt, str(croot), f"w{i}", a.rows, a.rounds, a.deltalake_path) for i in range(a.writers)]
        with mp.get_context("spawn").Pool(a.writers) as pool:
            out["concurrent_failed_commits"] = sum(pool.map(_writer, jobs))
        out["concurrent_writes"] = a.writers * a.rounds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="passes per format; timings are medians")
    parser.add_argument("--deltalake-path", default="")
    a = parser.parse_args()
    if a.deltalake_path:
        sys.path.append(a.deltalake_path)  # appended: never shadows the project's own packages
    try:
        import deltalake  # noqa: F401
    except ImportError:
        raise SystemExit("deltalake is not importable; see --deltalake-path in the docstring") from None

    frames = [frame(f"h{i % 5}", f"m{i // 5}", a.rows, i) for i in range(a.slices)]
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "delta": []}
    for repeat in range(a.repeat):  # formats alternate, so load from other jobs hits both alike
        for fmt, writer in (("plain", write_plain), ("delta", write_delta)):
            with tempfile.TemporaryDirectory() as tmp:
                runs[fmt].append(measure(fmt, writer, Path(tmp), frames, a, with_concurrency=repeat == 0))
    results = {
        fmt: {k: float(np.median([r[k] for r in rs])) if k in TIMED else rs[0][k] for k in rs[0]}
        for fmt, rs in runs.items()
    }
    for fmt, r in results.items():
        print(fmt, {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()})
    for key in TIMED:
        print(f"{key}: delta/plain = {results['delta'][key] / results['plain'][key]:.2f}x")


if __name__ == "__main__":
    main()
