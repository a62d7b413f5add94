"""`mammo label`: syncs the image_cache table first and starts uvicorn with the right mode; exports events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner
from starlette.testclient import TestClient

from mammo_pipeline import warehouse
from mammo_pipeline.cli.label import command
from mammo_pipeline.labels.app import check_password
from mammo_pipeline.labels.store import LabelStore, sync_from_warehouse
from mammo_pipeline.settings import Settings

from .conftest import write_images


@pytest.fixture
def cached(settings):
    manifest = write_images(settings.cache, 5)
    warehouse.write_partition(settings, "image_cache", "h1", manifest, name="manifest.parquet")
    return manifest


def test_export_writes_the_stores_events_and_never_makes_a_store(settings, cached, tmp_path):
    out = tmp_path / "events.jsonl"
    missing = CliRunner().invoke(command, ["--export", str(out)])  # a mistyped MAMMO_HOME looks like this
    assert missing.exit_code == 1 and "no label store at" in missing.output
    assert not settings.labels_db.exists() and not out.exists()
    store, _ = sync_from_warehouse(settings)
    result = CliRunner().invoke(command, ["--export", str(out)])
    assert result.exit_code == 0, result.output
    assert "Wrote 0 label events" in result.output and out.read_text() == ""
    store.record(int(store.images()["id"][0]), 3, "alice")
    assert CliRunner().invoke(command, ["--export", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["label"] == "neither"
    csv = tmp_path / "events.csv"
    assert CliRunner().invoke(command, ["--export", str(csv)]).exit_code == 0
    assert csv.read_text().startswith("event_id,")


def test_export_writes_the_integer_columns_as_integers(settings, cached, tmp_path):
    """A user's report: the export CSV held seen_event as 44.0 (a float column, some events having none)."""
    import csv

    store, _ = sync_from_warehouse(settings)
    image = int(store.images()["id"][0])
    first = store.record(image, 3, "alice")  # no seen_event, no round
    store.record(image, 1, "bob", round=2, seen_event=first)
    assert CliRunner().invoke(command, ["--export", str(tmp_path / "e.csv")]).exit_code == 0
    with (tmp_path / "e.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["seen_event"], r["round"]) for r in rows] == [("", ""), (str(first), "2")]
    assert CliRunner().invoke(command, ["--export", str(tmp_path / "e.jsonl")]).exit_code == 0
    records = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [(r["seen_event"], r["round"]) for r in records] == [(None, None), (first, 2)]
    assert type(records[1]["seen_event"]) is int and type(records[1]["round"]) is int


@pytest.mark.parametrize("content", [b"not a database at all, just text" * 40, None])
def test_reading_commands_leave_a_foreign_file_untouched(settings, content, tmp_path):
    """`labels stats` and `label --export` pointed at a file that is not a label store (another tool's SQLite
    database, a text file) say so and change nothing in it."""
    import sqlite3

    from mammo_pipeline.cli.labels import command as labels_command

    path = settings.labels_db
    if content is None:  # someone else's SQLite database
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE patients (name TEXT)")
        path.with_name(path.name + "-wal").unlink(missing_ok=True)
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    for result in (
        CliRunner().invoke(labels_command, ["stats"]),
        CliRunner().invoke(command, ["--export", str(tmp_path / "x.csv")]),
    ):
        assert result.exit_code == 1 and "not a label store" in result.output, result.output
    assert path.read_bytes() == before and not (tmp_path / "x.csv").exists()


def test_serve_single_user_on_loopback(settings, cached, monkeypatch):
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port))
    result = CliRunner().invoke(command, ["--annotator", "reader7", "--port", "5099"])
    assert result.exit_code == 0, result.output
    assert "5 images (5 new)" in result.output and seen["host"] == "127.0.0.1" and seen["port"] == 5099
    page = TestClient(seen["app"], base_url="http://localhost:5001").get("/")
    assert page.status_code == 200 and "reader7" in page.text


def test_serve_on_a_network_host_needs_annotators(settings, cached, monkeypatch):
    monkeypatch.delenv("MAMMO_ANNOTATORS", raising=False)
    monkeypatch.delenv("MAMMO_ANNOTATORS_FILE", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not serve"))
    result = CliRunner().invoke(command, ["--host", "0.0.0.0"])
    assert result.exit_code != 0 and "team mode needs annotators" in result.output
    seen = {}
    monkeypatch.setenv("MAMMO_ANNOTATORS", "alice:pw")
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app))
    assert CliRunner().invoke(command, ["--host", "0.0.0.0"]).exit_code == 0
    assert TestClient(seen["app"], base_url="http://localhost:5001").get("/", follow_redirects=False).status_code == 303


def test_label_refuses_a_home_that_does_not_exist(tmp_path, monkeypatch):
    """A user's report: with MAMMO_HOME mistyped, `mammo label` made the home (labels.sqlite, .session_secret) and
    served an app with 0 images; now the refusal of the other commands that read a home."""
    from mammo_pipeline.cli import cli

    home = tmp_path / "some-typo"
    monkeypatch.setenv("MAMMO_HOME", str(home))
    for var in ("MAMMO_WAREHOUSE", "MAMMO_LABELS_DB", "MAMMO_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not serve"))
    for args in ([], ["--export", str(tmp_path / "labels.csv")]):
        result = CliRunner().invoke(cli, ["label", *args])
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"Error: no mammo home at {home} (MAMMO_HOME)")
        assert result.output.count("\n") == 1
    assert not home.exists() and not (tmp_path / "labels.csv").exists()


def test_bad_manifest_is_a_clear_error(settings):
    warehouse.write_partition(settings, "image_cache", "h1", write_images(settings.cache, 2).drop(columns="model_png"))
    result = CliRunner().invoke(command, [])
    assert result.exit_code != 0 and "model_png" in result.output


def test_hash_password_prints_a_line_ready_for_the_annotators_file(tmp_path, monkeypatch):
    """A user's report: --hash-password printed the hash alone, and the line pasted into MAMMO_ANNOTATORS_FILE was
    refused ("annotators must be given as name:password"). It prints name:<hash>, alone on stdout."""
    import getpass

    from mammo_pipeline.labels.app import load_annotators

    def line(args: list[str], answers: str) -> str:
        result = CliRunner().invoke(command, ["--hash-password", *args], input=answers)
        assert result.exit_code == 0, result.output
        return result.stdout.strip().splitlines()[-1]

    annotators = tmp_path / "annotators.txt"
    annotators.write_text(line(["--annotator", "alice"], "s3cret\ns3cret\n") + "\n")
    users = load_annotators({"MAMMO_ANNOTATORS_FILE": str(annotators)})
    assert list(users) == ["alice"] and check_password(users["alice"], "s3cret")
    assert not check_password(users["alice"], "s3cre")

    monkeypatch.setattr(getpass, "getuser", lambda: "reader7")
    asked, default = line([], "bob\npw2\npw2\n"), line([], "\npw3\npw3\n")  # the name asked for, OS user default
    annotators.write_text(f"{asked}\n{default}\n")
    users = load_annotators({"MAMMO_ANNOTATORS_FILE": str(annotators)})
    assert check_password(users["bob"], "pw2") and check_password(users["reader7"], "pw3")
    result = CliRunner().invoke(command, ["--hash-password"], input="bob\npw2\npw2\n")
    assert result.stdout.count("\n") == 1  # the prompts are on stderr: `>> annotators.txt` takes the line only
    refused = CliRunner().invoke(command, ["--hash-password", "--annotator", "a:b"], input="pw\npw\n")
    assert refused.exit_code == 2 and "cannot name an annotator" in refused.output


def test_labels_stats_prints_queues_kappa_and_reader_agreement(settings, cached):
    from mammo_pipeline.cli.labels import command as labels_command

    result = CliRunner().invoke(labels_command, ["stats"])
    assert result.exit_code != 0 and "no label store" in result.output
    store = LabelStore(settings.labels_db)
    store.sync_images(cached, audit_fraction=1.0)
    ids = store.images()["id"].tolist()
    for image_id, (a, b) in zip(ids, [(1, 1), (2, 2), (3, 3), (4, 1), (2, 2)], strict=True):
        store.record(image_id, a, "alice")
        store.record(image_id, b, "bob")
    result = CliRunner().invoke(labels_command, ["stats"])
    assert result.exit_code == 0, result.output
    assert "Cohen's κ between the two blind readers: 0.722" in result.output  # p_o .8, p_e .28: .52 / .72
    assert "disputed 1" in result.output and "| alice | 5 |" in result.output
    assert "adjudication           1 left of 1" in result.output
    data = json.loads(CliRunner().invoke(labels_command, ["stats", "--json"]).output)
    assert data["audit"]["n_double"] == 5 and data["queues"]["audit"] == [0, 5]


def test_team_flag_signs_in_on_loopback_behind_a_proxy(settings, cached, monkeypatch):
    seen = {}
    monkeypatch.setenv("MAMMO_ANNOTATORS", "alice:pw")
    monkeypatch.setenv("MAMMO_ALLOWED_HOSTS", "labels.example.org")
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host))
    result = CliRunner().invoke(command, ["--host", "127.0.0.1", "--team"])
    assert result.exit_code == 0 and "labels.example.org" in result.output and seen["host"] == "127.0.0.1"
    proxied = TestClient(seen["app"], base_url="https://labels.example.org")
    assert proxied.get("/", follow_redirects=False).status_code == 303  # sign in first
    assert TestClient(seen["app"], base_url="http://evil.example").get("/login").status_code == 400


@pytest.mark.parametrize("app_running", [True, False])
def test_labels_stats_and_export_read_a_store_this_user_may_not_write(cached, app_running, tmp_path):
    """Another user's home or a read-only mount: `labels stats` and `label --export` read the store and change
    nothing, with a running app's -wal file (its labels counted) or without one (the file read as it is on disk,
    and the output says so). Run as the unprivileged user `nobody` when the tests run as root (root may write
    anything), else with the folder made read-only."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: no way to be a user who may not write")
    home = Path(tempfile.mkdtemp(prefix="mammo-ro-"))  # tmp_path's parents are private to the test's user
    out = Path(tempfile.mkdtemp(prefix="mammo-ro-out-"))
    try:
        home.chmod(0o755)
        store = LabelStore(home / "labels.sqlite")
        store.sync_images(cached, audit_fraction=0.0)
        store.record(int(store.images()["id"][0]), 1, "alice")
        if not app_running:  # the app has stopped: SQLite folds the -wal file back when its last connection closes
            from mammo_pipeline.labels import store as store_module

            for db in store_module._local.dbs.values():
                db.conn.close()
            store_module._local.dbs.clear()
        assert {p.name for p in home.iterdir()} == (
            {"labels.sqlite", "labels.sqlite-wal", "labels.sqlite-shm"} if app_running else {"labels.sqlite"}
        )
        before = {p.name: p.read_bytes() for p in home.iterdir() if p.name != "labels.sqlite-shm"}
        out.chmod(0o777)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        if not as_user:
            home.chmod(0o555)
        env = {**os.environ, **Settings.under(home).as_env(), "HOME": str(out), "MPLCONFIGDIR": str(out / "mpl")}

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*as_user, sys.executable, *args], env=env, capture_output=True, text=True)

        if run("-c", "import mammo_pipeline").returncode != 0:
            pytest.skip("the unprivileged user cannot run this checkout's Python")
        stats = run("-m", "mammo_pipeline", "labels", "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["queues"]["unlabeled"] == [4, 5]
        assert ("read as it is on disk" in stats.stderr) is not app_running
        export = run("-m", "mammo_pipeline", "label", "--export", str(out / "events.csv"))
        assert export.returncode == 0, export.stderr
        assert "Wrote 1 label events" in export.stdout
        assert {p.name: p.read_bytes() for p in home.iterdir() if p.name != "labels.sqlite-shm"} == before
    finally:
        home.chmod(0o755)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
