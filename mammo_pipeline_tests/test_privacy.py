"""No raw identifier leaves the DICOM files (issue 14): tables of any dtype, file names, Dagster's event log."""

from __future__ import annotations

import os
import sqlite3

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mammo_pipeline.defs.ingest import dicom_index, image_cache
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline.dicom.source_paths import private_root, redact
from mammo_pipeline.synth.drops import generate_drops
from mammo_pipeline_tests.dicom.test_headers import PATIENT, write_mg
from mammo_pipeline_tests.privacy import identifiers, scan


def test_identifiers_come_from_every_header_including_name_parts(settings):
    write_mg(settings.landing / "h1" / "d1" / "x" / "a.dcm")
    ids = identifiers(settings.landing)
    assert {PATIENT["PatientID"], PATIENT["PatientBirthDate"], PATIENT["AccessionNumber"], "Jane"} <= ids
    assert {"Doe^Jane"} <= ids


def test_the_scan_finds_an_identifier_in_any_column_type_name_and_database(settings):
    """The positive control: a scan that cannot find planted identifiers proves nothing."""
    ids = {"PAT-0042", "19610203", "Núñez"}
    frame = pd.DataFrame({"s": pd.Series(["x/PAT-0042/y"], dtype="str"), "n": [1]})  # pandas 3 `str`
    frame["typed"] = ["L CC MAG NUNEZ"]  # a name typed without its accents, in another case
    (settings.warehouse / "t1").mkdir(parents=True)
    frame.to_parquet(settings.warehouse / "t1" / "a.parquet")
    table = pa.table(
        {
            "large": pa.array(["...19610203"], pa.large_string()),
            "dict": pa.array(["PAT-0042"]).dictionary_encode(),
            "nested": pa.array([[{"k": "a PAT-0042"}]]),
        }
    )
    pq.write_table(table, settings.warehouse / "t1" / "b.parquet")
    (settings.cache / "h1" / "PAT-0042.png").parent.mkdir(parents=True)
    (settings.cache / "h1" / "PAT-0042.png").write_bytes(b"")
    with sqlite3.connect(settings.dagster_home / "events.db") as con:
        con.execute("CREATE TABLE e (body TEXT)")
        con.execute('INSERT INTO e VALUES (\'{"path": "h1/d1/PAT-0042/s/x.dcm"}\')')
    where = {(f.where.rsplit("/", 1)[-1], f.identifier) for f in scan(settings, ids)}
    assert {
        ("a.parquet:s", "PAT-0042"),
        ("a.parquet:typed", "Núñez"),
        ("b.parquet:large", "19610203"),
        ("b.parquet:dict", "PAT-0042"),
        ("b.parquet:nested", "PAT-0042"),
        ("PAT-0042.png", "PAT-0042"),
        ("events.db", "PAT-0042"),
    } <= where


@pytest.fixture
def ingested(settings):
    """A synthetic drop laid out <hospital>/<drop>/<PatientID>/<Study>/<file>, with corrupt files, ingested
    through Dagster with an instance on disk in DAGSTER_HOME (so its event log can be scanned)."""
    generate_drops(settings.landing, 1, 3, seed=3, scale=0.05, corrupt_fraction=0.3, drop="d1", workers=1)
    hospital = next(p.name for p in settings.landing.iterdir() if not p.name.startswith("_"))
    with dg.DagsterInstance.local_temp(tempdir=str(settings.dagster_home)) as instance:
        instance.add_dynamic_partitions("hospital", [hospital])
        result = dg.materialize(
            [dicom_index, image_cache],
            partition_key=hospital,
            resources={"mammo": MammoSettings(home=str(settings.home), workers=1)},
            instance=instance,
        )
        assert result.success
    return settings


def test_no_identifier_but_the_patient_folder_leaves_the_dicom_files(ingested):
    """Names, birth dates and accession numbers appear nowhere; the Patient ID only where issue 17 fixes it."""
    ids = identifiers(ingested.landing)
    patient_ids = {p.name for p in ingested.landing.glob("*/*/*") if p.is_dir()}
    assert patient_ids and patient_ids <= ids
    findings = scan(ingested, ids)
    assert not [f for f in findings if f.identifier not in patient_ids]


def test_no_identifier_leaves_the_dicom_files_anywhere(ingested):
    # The one exception is on purpose: the operators' private path lookup (mode 600, outside the warehouse).
    private = private_root(ingested)
    assert private.exists() and oct(private.stat().st_mode & 0o777) == "0o700"
    findings = scan(ingested, exclude=(private,))
    assert not findings, sorted({f.where.split(str(ingested.home))[-1] for f in findings})


@pytest.mark.parametrize("name", [b"M\xfcller^Anna", b"O'Brien^Sean", b"Back\\slash^Bo", "Zoë^Lee".encode()])
def test_redaction_finds_a_path_in_the_spelling_an_exception_gives_it(tmp_path, name):
    """OSError and pydicom quote a file name with repr, which writes a name that is not UTF-8 (held as surrogate
    escapes) as `\\udcXX`, a backslash doubled and a quote escaped: each spelling is replaced, none survives."""
    landing = tmp_path / "landing"
    real = landing / "h1" / "d1" / os.fsdecode(name) / "1.dcm"
    try:
        real.open("rb")
    except OSError as e:
        message = f"{e}; also {real}, {real.relative_to(landing).as_posix()}"
    redacted = redact(message, real, "h1/d1/abc", landing)
    assert redacted.count("h1/d1/abc") == 3, redacted
    assert "Anna" not in redacted and "Sean" not in redacted and "slash" not in redacted and "Lee" not in redacted
