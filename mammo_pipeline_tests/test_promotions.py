"""Prediction history: two models predict one hospital, promotions decide what is current, now and as of a date."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mammo_pipeline import promotions, warehouse
from mammo_pipeline.cli.lineage import command as lineage_command
from mammo_pipeline.cli.model import command as model_command
from mammo_pipeline.lineage import study_lineage
from mammo_pipeline.model.infer import load_model, write_predictions
from mammo_pipeline.summary import aggregate_studies
from mammo_pipeline_tests.model.test_infer import make_cache, make_model

STUDIES = {"h1": {"s1": 2, "s2": 1}, "h2": {"t1": 2, "t2": 1}}
OCT, NOV = pd.Timestamp("2026-10-01", tz="UTC"), pd.Timestamp("2026-11-15", tz="UTC")
HOUR = pd.Timedelta(hours=1)


def predict(settings, hospital: str, version: str, seed: int = 0, at: pd.Timestamp | None = None) -> None:
    """What image_predictions + study_predictions do for one (hospital, model) slice, its rows stamped `at` (the
    run's own time when None)."""
    ref = promotions.model_ref(settings, version)
    manifest = make_cache(settings, hospital, STUDIES[hospital], seed=seed)
    path = warehouse.slice_file(settings, "image_predictions", hospital, version)
    write_predictions(settings, manifest, load_model(settings, ref), path, run_id=f"run-{version}-{hospital}")
    if at is not None:
        rows = pq.read_table(path)
        stamp = pa.array([at.to_pydatetime()] * rows.num_rows, type=rows.schema.field("predicted_at").type)
        pq.write_table(rows.set_column(rows.schema.get_field_index("predicted_at"), "predicted_at", stamp), path)
    warehouse.write_slice(settings, "study_predictions", hospital, version, aggregate_studies(path))


def export(settings, version: str, seed: int) -> None:
    """An exported model with its ref kept (what promoted_model does before promoting)."""
    promotions.save_ref(settings, make_model(settings, version, seed, snapshot=f"snap-{version}"))


def current(settings, view: str = "image_predictions_current") -> dict[str, set[str]]:
    df = warehouse.query(settings, f"SELECT hospital, model_version FROM {view}")
    return {h: set(g["model_version"]) for h, g in df.groupby("hospital")}


def promote_m3_with_image_rows_only(settings) -> None:
    """m3 promoted, its image predictions of h1 written and its study predictions not yet (running, or failed)."""
    export(settings, "m3", 2)
    promotions.promote(settings, "m3")
    ref = promotions.model_ref(settings, "m3")
    manifest = make_cache(settings, "h1", STUDIES["h1"], seed=0)
    path = warehouse.slice_file(settings, "image_predictions", "h1", "m3")
    write_predictions(settings, manifest, load_model(settings, ref), path, run_id="run-m3-h1")


@pytest.fixture
def two_models(settings):
    """m1 promoted in October and m2 in November, both predicted h1 (and h2)."""
    export(settings, "m1", 0)
    export(settings, "m2", 1)
    promotions.promote(settings, "m1", reason="checks_passed", now=OCT)
    predict(settings, "h1", "m1", at=OCT + HOUR)
    predict(settings, "h2", "m1", at=OCT + HOUR)
    promotions.promote(settings, "m2", reason="checks_passed", now=NOV)
    predict(settings, "h1", "m2", seed=0, at=NOV + HOUR)
    predict(settings, "h2", "m2", seed=0, at=NOV + HOUR)
    return settings


def test_a_new_model_adds_rows_and_the_current_views_follow_the_promotion(two_models):
    settings = two_models
    history = warehouse.query(
        settings,
        "SELECT model_version, count(*) AS n FROM image_predictions WHERE hospital = 'h1' GROUP BY 1 ORDER BY 1",
    )
    assert history.to_dict("list") == {"model_version": ["m1", "m2"], "n": [3, 3]}  # both sets of rows remain
    assert current(settings) == {"h1": {"m2"}, "h2": {"m2"}}
    assert current(settings, "study_predictions_current") == {"h1": {"m2"}, "h2": {"m2"}}
    assert len(warehouse.query(settings, "SELECT * FROM image_predictions_current")) == 6


def test_lineage_as_of_before_the_promotion_shows_the_old_model(two_models):
    settings = two_models
    then = study_lineage(settings, "s1", as_of="2026-11-01")
    now = study_lineage(settings, "s1")
    assert then["current"]["model_version"] == "m1" and now["current"]["model_version"] == "m2"
    assert then["current"]["promoted_at"].startswith("2026-10-01")
    registry = pd.read_parquet(settings.warehouse / "model_registry" / "m1.parquet").iloc[0]
    assert then["current"]["onnx_sha256"] == registry["onnx_sha256"]
    assert then["current"]["label_snapshot_id"] == "snap-m1"
    assert then["current"]["dagster_run_id"] == "run-m1-h1"
    assert {i["model_version"] for i in then["images"]} == {"m1"} and len(then["images"]) == 2
    assert [h["model_version"] for h in now["history"]] == ["m1", "m2"]
    with pytest.raises(Exception, match="no model current"):
        study_lineage(settings, "s1", as_of="2026-09-01")  # before any promotion and before any prediction


def test_roll_back_and_per_hospital_promotion(two_models):
    settings = two_models
    row = promotions.promote(settings, "m1", hospital="h2", reason="rollback")
    assert row["previous_model_version"] == "m2"
    assert current(settings) == {"h1": {"m2"}, "h2": {"m1"}}
    promotions.promote(settings, "m1", reason="rollback")  # every hospital back to m1
    assert current(settings) == {"h1": {"m1"}, "h2": {"m1"}}
    assert study_lineage(settings, "s1", as_of="2026-11-20")["current"]["model_version"] == "m2"  # history intact
    table = promotions.read_promotions(settings)
    assert table["model_version"].tolist() == ["m1", "m2", "m1", "m1"]
    # scopes all, all, h2, all: h2's own roll back ends when the later all-hospitals one comes
    assert table["valid_to"].isna().tolist() == [False, False, False, True]
    assert table["valid_to"].iloc[2] == table["promoted_at"].iloc[3]


def test_a_promoted_model_without_predictions_keeps_the_previous_rows_current(two_models):
    settings = two_models
    export(settings, "m3", 2)
    promotions.promote(settings, "m3")
    assert current(settings) == {"h1": {"m2"}, "h2": {"m2"}}
    predict(settings, "h1", "m3")
    assert current(settings) == {"h1": {"m3"}, "h2": {"m2"}}


def test_as_of_a_time_between_a_promotion_and_its_predictions_the_previous_model_is_current(two_models):
    """m3 promoted on Nov 20 but h1's m3 rows written on Nov 25: on Nov 22 users saw m2's flags."""
    settings = two_models
    export(settings, "m3", 2)
    promotions.promote(settings, "m3", now=NOV + pd.Timedelta(days=5))
    predict(settings, "h1", "m3", at=NOV + pd.Timedelta(days=10))
    assert study_lineage(settings, "s1", as_of=NOV + pd.Timedelta(days=7))["current"]["model_version"] == "m2"
    assert study_lineage(settings, "s1", as_of=NOV + pd.Timedelta(days=11))["current"]["model_version"] == "m3"
    assert study_lineage(settings, "s1")["current"]["model_version"] == "m3"


def test_study_flags_stay_with_the_previous_model_until_the_new_models_study_rows_exist(two_models):
    """Between image_predictions and study_predictions of a new model (the second failed, say) the study view
    keeps the previous model's study rows instead of losing the hospital, and lineage names that model."""
    settings = two_models
    promote_m3_with_image_rows_only(settings)
    assert current(settings) == {"h1": {"m3"}, "h2": {"m2"}}
    assert current(settings, "study_predictions_current") == {"h1": {"m2"}, "h2": {"m2"}}
    lineage = study_lineage(settings, "s1")
    assert lineage["current"]["model_version"] == "m2" and lineage["prediction"]["model_version"] == "m2"


def test_prune_keeps_the_study_slice_the_study_view_still_shows(two_models):
    """Between a new model's image and study predictions, the study view shows the previous model's rows; prune
    must keep that slice (it followed the image table's current model and emptied the hospital's study view)."""
    settings = two_models
    promote_m3_with_image_rows_only(settings)
    promotions.prune(settings, keep=1)
    assert current(settings, "study_predictions_current") == {"h1": {"m2"}, "h2": {"m2"}}
    assert warehouse.slice_dir(settings, "study_predictions", "h1", "m2").exists()


def test_a_new_drop_does_not_re_date_the_predictions_of_the_images_before_it(two_models):
    """Predicting a hospital again after a new drop keeps the rows of the images predicted before as they were
    (time, run), so `--as-of` a time when m2 was current and had predicted s1 still answers m2."""
    settings = two_models
    ref = promotions.model_ref(settings, "m2")
    before = warehouse.query(settings, "SELECT sop_instance_uid, predicted_at FROM image_predictions_current")
    manifest = make_cache(settings, "h1", {**STUDIES["h1"], "s9": 2}, seed=0)  # a new study arrives
    path = warehouse.slice_file(settings, "image_predictions", "h1", "m2")
    stats = write_predictions(settings, manifest, load_model(settings, ref), path, run_id="run-new-drop")
    warehouse.write_slice(settings, "study_predictions", "h1", "m2", aggregate_studies(path))
    assert (stats.n_images, stats.n_kept) == (2, 3)
    rows = pq.read_table(path).to_pandas().set_index("sop_instance_uid")
    assert set(rows.loc[["s1.0", "s1.1", "s2.0"], "dagster_run_id"]) == {"run-m2-h1"}
    assert set(rows.loc[["s9.0", "s9.1"], "dagster_run_id"]) == {"run-new-drop"}
    old = before[before["sop_instance_uid"].isin(["s1.0", "s1.1", "s2.0"])].set_index("sop_instance_uid")
    assert (rows.loc[old.index, "predicted_at"] == old["predicted_at"]).all()
    assert study_lineage(settings, "s1", as_of=str(NOV + 2 * HOUR))["current"]["model_version"] == "m2"


def test_as_of_now_and_today_are_read_in_utc_whatever_the_machines_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert abs(promotions.utc("now") - pd.Timestamp.now(tz="UTC")) < pd.Timedelta(minutes=1)
        assert promotions.utc("today") == pd.Timestamp.now(tz="UTC").normalize()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_prune_keeps_the_current_and_recently_promoted_models(two_models):
    settings = two_models
    export(settings, "m3", 2)
    promotions.promote(settings, "m3")
    predict(settings, "h1", "m3")
    plan = promotions.prune(settings, keep=2, dry_run=True)
    assert {(p.table, p.hospital, p.model_version) for p in plan} == {
        (t, h, "m1") for t in warehouse.HISTORY for h in ("h1", "h2")
    }
    assert (warehouse.slice_dir(settings, "image_predictions", "h1", "m1")).exists()  # dry run
    promotions.prune(settings, keep=1)
    left = warehouse.query(settings, "SELECT DISTINCT hospital, model_version FROM image_predictions ORDER BY ALL")
    assert list(left.itertuples(index=False, name=None)) == [("h1", "m3"), ("h2", "m2")]  # h2's current stays
    with pytest.raises(ValueError, match="keep"):
        promotions.prune(settings, keep=0)


def test_legacy_single_file_partitions_move_into_the_history_layout(settings):
    export(settings, "m1", 0)
    predict(settings, "h1", "m1")
    for table, name in (("image_predictions", "predictions.parquet"), ("study_predictions", "studies.parquet")):
        new = warehouse.slice_file(settings, table, "h1", "m1")
        new.rename(settings.table_dir(table, "h1") / name)
        new.parent.rmdir()
    assert promotions.migrate_legacy(settings) == 2
    assert current(settings) == {"h1": {"m1"}}  # never promoted: the newest predictions count


def test_cli_promote_history_prune_and_lineage_as_of(two_models):
    runner = CliRunner()
    out = runner.invoke(model_command, ["promote", "m1", "--rollback", "--note", "m2 misses clips"])
    assert out.exit_code == 0, out.output
    assert "m1 is current for every hospital" in out.output and "(was m2)" in out.output
    hist = runner.invoke(model_command, ["history"])
    assert hist.exit_code == 0 and hist.output.count("rollback") == 1 and "(all)" in hist.output
    bad = runner.invoke(model_command, ["promote", "nope"])
    assert bad.exit_code == 1 and "no exported ONNX model" in bad.output
    then = runner.invoke(lineage_command, ["s1", "--as-of", "2026-11-01"])
    assert then.exit_code == 0, then.output
    assert "current    model m1  promoted 2026-10-01" in then.output
    assert "as of      2026-11-01T00:00:00+00:00" in then.output
    data = json.loads(runner.invoke(lineage_command, ["s1", "--as-of", "2026-11-20", "--format", "json"]).output)
    assert data["current"]["model_version"] == "m2"
    assert runner.invoke(lineage_command, ["s1", "--as-of", "soon"]).exit_code == 2
    dry = runner.invoke(model_command, ["prune", "--keep", "1", "--dry-run"])
    assert dry.exit_code == 0 and "would delete image_predictions hospital=h1 model_version=m2" in dry.output


def test_cli_model_list_gives_each_models_intervals_and_what_it_serves(two_models):
    from mammo_pipeline.model import registry

    old = {"model_version": "m1", "created_at": OCT, "n_train": 100, "n_audit": 50, "biopsy_roc_auc": 0.9}
    registry.write_row(two_models, old)  # registered before the intervals: the figure alone
    new = {"model_version": "m2", "created_at": NOV, "n_train": 400, "n_audit": 138, "biopsy_source": "second_look"}
    new |= {"biopsy_roc_auc": 0.907, "biopsy_roc_auc_low": 0.825, "biopsy_roc_auc_high": 0.967}
    registry.write_row(two_models, new)
    out = CliRunner().invoke(model_command, ["list"])
    assert out.exit_code == 0, out.output
    lines = {line.split()[0]: line for line in out.output.splitlines()[1:]}
    assert lines.keys() == {"m1", "m2"} and out.output.index("m1") < out.output.index("m2")  # oldest first
    assert "0.900 " in lines["m1"] and "[" not in lines["m1"] and lines["m1"].rstrip().endswith("-")
    assert "0.907 [0.825-0.967]" in lines["m2"] and "second_look" in lines["m2"]
    assert lines["m2"].rstrip().endswith("h1, h2")  # m2, promoted in November, serves both hospitals
    runner = CliRunner()
    runner.invoke(model_command, ["promote", "m1", "--hospital", "h2", "--rollback"])
    lines = {line.split()[0]: line for line in runner.invoke(model_command, ["list"]).output.splitlines()[1:]}
    assert lines["m1"].rstrip().endswith("h2") and lines["m2"].rstrip().endswith("h1")


def test_as_of_a_time_before_a_study_gained_an_image_answers_with_the_images_of_then(two_models):
    """A user's report: a late image of s1 (a new drop, predicted by m2 after T) showed up in the answer for T, with
    its drop, its time and its run, and the study's flags of after T; an `--as-of` answer must stay the answer."""
    settings = two_models
    before = study_lineage(settings, "s1", as_of=NOV + 2 * HOUR)
    path = warehouse.slice_file(settings, "image_predictions", "h1", "m2")
    rows = pd.read_parquet(path)
    late = (
        rows[rows["study_instance_uid"] == "s1"]
        .iloc[[0]]
        .assign(
            sop_instance_uid="s1.late",
            predicted_at=NOV + 5 * HOUR,
            dagster_run_id="run-late",
            p_biopsy=0.99,
            has_biopsy_marker=True,
        )
    )
    warehouse.write_table_file("image_predictions", pd.concat([rows, late]), path)  # the next run's slice
    warehouse.write_slice(settings, "study_predictions", "h1", "m2", aggregate_studies(path))  # s1's row rewritten
    then = study_lineage(settings, "s1", as_of=NOV + 2 * HOUR)
    assert (
        [i["sop_instance_uid"] for i in then["images"]]
        == ["s1.0", "s1.1"]
        == [i["sop_instance_uid"] for i in before["images"]]
    )
    assert then["current"]["dagster_run_id"] == "run-m2-h1"
    assert then["prediction"]["n_images"] == 2 and then["prediction"]["recomputed_as_of"] is True
    assert then["prediction"]["has_biopsy_marker"] == before["prediction"]["has_biopsy_marker"]
    assert [h["n_images"] for h in then["history"]] == [2, 2]
    now = study_lineage(settings, "s1")
    assert len(now["images"]) == 3 and now["current"]["dagster_run_id"] == "run-late"
    assert now["prediction"]["n_images"] == 3 and "recomputed_as_of" not in now["prediction"]


def test_as_of_a_time_when_a_pruned_model_was_current_has_no_current_model(two_models):
    """A user's report: after `prune --keep 1` removed m2's slices, asking about a time when m2 was current named m1
    (promoted before it) as current; the README promises 'no model current'. Pruned slices are now recorded."""
    settings = two_models
    export(settings, "m3", 2)
    promotions.promote(settings, "m3", now=NOV + 10 * HOUR)
    predict(settings, "h1", "m3", at=NOV + 11 * HOUR)
    predict(settings, "h2", "m3", at=NOV + 11 * HOUR)
    promotions.prune(settings, keep=1)
    assert study_lineage(settings, "s1")["current"]["model_version"] == "m3"
    with pytest.raises(Exception, match="no model current"):
        study_lineage(settings, "s1", as_of=NOV + 2 * HOUR)  # m2's time: its rows are gone, m1's do not stand in
    pruned = warehouse.query(settings, "SELECT table_name, hospital, model_version, n_rows FROM prediction_prunes")
    assert set(pruned["model_version"]) == {"m1", "m2"} and (pruned["n_rows"] > 0).all()
    assert current(settings) == {"h1": {"m3"}, "h2": {"m3"}}


def test_promote_refuses_a_model_whose_onnx_file_changed_and_warns_of_images_a_rollback_hides(two_models):
    """A user's report: a model whose ONNX file had changed was promoted all the same (every prediction then failed),
    and a rollback silently showed fewer images in the current views than the cache holds."""
    settings = two_models
    runner = CliRunner()
    manifest = pd.read_parquet(settings.table_dir("image_cache", "h1") / "manifest.parquet")
    late = manifest.iloc[[0]].assign(sop_instance_uid="s1.late")
    warehouse.write_table_file(
        "image_cache", pd.concat([manifest, late]), settings.table_dir("image_cache", "h1") / "manifest.parquet"
    )
    out = runner.invoke(model_command, ["promote", "m1", "--rollback"])
    assert out.exit_code == 0, out.output
    assert "m1 predicted 3 of the 4 cached images of h1" in out.output and "of h2" not in out.output
    onnx = promotions.model_ref(settings, "m2").path(settings.models, "model.onnx")
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    before = len(promotions.read_promotions(settings))
    bad = runner.invoke(model_command, ["promote", "m2"])
    assert bad.exit_code == 1 and "model m2 recorded when it was exported" in bad.output, bad.output
    assert len(promotions.read_promotions(settings)) == before  # nothing promoted


def test_the_demo_summary_names_the_model_of_flags_a_roll_back_left_on_an_older_one(two_models):
    """After a roll back the newest model's accuracy and the current model's study flags are two models' figures;
    the demo summary's flagged-study line names its model when it is not the newest."""
    from mammo_pipeline.demo import _studies_flagged_line, studies_flagged

    settings = two_models
    promotions.promote(settings, "m1", hospital="h2", reason="rollback")
    rows = {r["hospital"]: r for r in studies_flagged(settings).to_dict("records")}
    assert {h: r["model_version"] for h, r in rows.items()} == {"h1": "m2", "h2": "m1"}
    assert rows["h1"]["studies"] == len(STUDIES["h1"])
    assert "current model" not in _studies_flagged_line(rows["h1"], "m2")
    assert _studies_flagged_line(rows["h2"], "m2").endswith("(current model m1, not m2)")


def audit_frame(n: int, start: int, separation: float, seed: int) -> pd.DataFrame:
    """A model's per-image audit predictions (models/<v>/audit_predictions.parquet) of `n` images a{start}...,
    two per patient, every other one with a biopsy marker, scored `separation` logits apart (plus unit noise);
    every third a magnification view, scored perfectly."""
    index = np.arange(start, start + n)
    truth, mag = index % 2 == 0, index % 3 == 0
    noise = np.random.default_rng(seed).normal(0.0, 1.0, n)
    return pd.DataFrame(
        {
            "sop_instance_uid": [f"a{i:03d}" for i in index],
            "hospital": "h1",
            "has_biopsy_marker": truth,
            "is_mag_view": mag,
            "p_biopsy": 1 / (1 + np.exp(-(separation * (2 * truth - 1) + noise))),
            "p_mag": np.where(mag, 0.9, 0.1),
            "study_instance_uid": [f"st{i // 2}" for i in index],
            "patient_key": [f"pk{i // 2}" for i in index],
        }
    )


def measured_on(settings, version: str, audit: pd.DataFrame, snapshot: str = "") -> dict:
    """Give model `version` the audit predictions `audit` (its audit_predictions.parquet) and the registry row
    training would write for them: n_audit and each flag's ROC-AUC with its patient-bootstrap interval."""
    from mammo_pipeline.model import registry
    from mammo_pipeline.model.evaluate import flag_metrics, resampling_groups

    (settings.models / version).mkdir(parents=True, exist_ok=True)
    audit.to_parquet(settings.models / version / "audit_predictions.parquet")
    path = settings.table_dir("model_registry") / f"{version}.parquet"
    row = pd.read_parquet(path).iloc[0].to_dict() if path.exists() else {"model_version": version}
    row.update(created_at=pd.Timestamp("2026-01-01", tz="UTC"), n_audit=len(audit))
    row["label_snapshot_id"] = snapshot or row.get("label_snapshot_id", "")
    groups = resampling_groups(audit)
    for flag, truth, p in (("biopsy", "has_biopsy_marker", "p_biopsy"), ("mag", "is_mag_view", "p_mag")):
        m = flag_metrics(audit[truth].to_numpy(bool), audit[p].to_numpy(float), 0.5, groups)
        row.update({f"{flag}_roc_auc{end}": m[f"roc_auc{end}"] for end in ("", "_low", "_high")})
    registry.write_row(settings, {k: v for k, v in row.items() if k in registry.COLUMNS})
    return registry.read_row(settings, version)


# 40 hard audit images and 40 easy ones: a model measured on all 80 has biopsy 0.954 [0.877-0.989]; on the hard
# 40 alone the same scores give 0.815, below that interval, though not one score changed.
HARD, EASY = audit_frame(40, 0, 0.5, 1), audit_frame(40, 40, 6.0, 2)


def test_the_same_audit_images_compare_the_registry_figures(settings):
    """Both models measured on the same 80 images under the same labels: the registry figures are like with like."""
    both = pd.concat([HARD, EASY])
    current = measured_on(settings, "m1", both)
    worse = measured_on(settings, "m2", both.assign(p_biopsy=0.5))  # ROC-AUC 0.5
    found = promotions.audit_regressions(worse, current, both.assign(p_biopsy=0.5), both)
    assert found.compared and found.basis == "the same 80 audit images"
    assert found.regressions == ("biopsy ROC-AUC 0.500 on the audit set, below m1's 0.954 [0.877-0.989]",)


def test_after_withdrawals_the_same_scores_on_fewer_images_are_not_a_regression(settings):
    """40 easy audit images withdrawn after m1's audit: m2 scores the remaining 40 exactly as m1 did, and its
    registry figure (0.815) lies below m1's interval from all 80 (0.877). Compared on the 40 both were measured
    on, the two figures are the same."""
    current = measured_on(settings, "m1", pd.concat([HARD, EASY]))
    new = measured_on(settings, "m2", HARD)
    assert new["biopsy_roc_auc"] < current["biopsy_roc_auc_low"]  # what the registry rows alone compare
    found = promotions.audit_regressions(new, current, HARD, pd.concat([HARD, EASY]))
    assert found.compared and found.regressions == ()
    assert found.basis == (
        "audit sets differ: 40 of m1's 80 audit images withdrawn since (no longer in the audit set), 0 new, "
        "0 relabeled; both measured again on the 40 they share"
    )


def test_a_regression_on_the_shared_images_is_found_though_new_easy_images_hide_it(settings):
    """m2 scores m1's 40 audit images barely better than chance, and 160 new audit images perfectly: its registry
    figure from all 200 lies inside m1's interval, its figure on the 40 both were measured on far below it."""
    current = measured_on(settings, "m1", HARD.assign(p_biopsy=audit_frame(40, 0, 2.5, 3)["p_biopsy"]))
    poor = HARD.assign(p_biopsy=audit_frame(40, 0, 0.1, 4)["p_biopsy"])
    new_audit = pd.concat([poor, audit_frame(160, 40, 6.0, 5)])
    new = measured_on(settings, "m2", new_audit)
    assert new["biopsy_roc_auc"] >= current["biopsy_roc_auc_low"]  # the registry rows alone see no regression
    found = promotions.audit_regressions(new, current, new_audit, read_back(settings, "m1"))
    assert found.regressions == (
        "biopsy ROC-AUC 0.465 on the 40 shared audit images, below m1's 0.995 [0.894-1.000] on them",
    )
    assert "0 of m1's 40 audit images withdrawn since (no longer in the audit set), 160 new" in found.basis


def read_back(settings, version: str) -> pd.DataFrame:
    found = promotions.read_audit(settings, version)
    assert found is not None
    return found


def test_a_relabeled_audit_image_is_scored_under_its_new_label_for_both_models(settings):
    """The same 80 images, one relabeled since m1's audit (an adjudication): m1's registry figure was measured
    against the old label, so both are measured again under the new one."""
    relabeled = pd.concat([HARD, EASY]).reset_index(drop=True)
    relabeled.loc[0, "has_biopsy_marker"] = not relabeled.loc[0, "has_biopsy_marker"]
    found = promotions.audit_regressions(
        measured_on(settings, "m2", relabeled),
        measured_on(settings, "m1", pd.concat([HARD, EASY])),
        relabeled,
        pd.concat([HARD, EASY]),
    )
    assert found.compared and "0 new, 1 relabeled; both measured again on the 80 they share" in found.basis


def test_without_per_image_predictions_different_audit_sizes_are_not_compared(settings):
    """Rows alone (no audit_predictions.parquet): n_audit 80 and 40 are different sets, so even a figure far below
    the interval holds nothing back; the basis says why."""
    current = measured_on(settings, "m1", pd.concat([HARD, EASY]))
    new = measured_on(settings, "m2", HARD.assign(p_biopsy=0.5))
    found = promotions.audit_regressions(new, current)
    assert not found.compared and found.regressions == ()
    assert found.basis.startswith("not compared: audit sets differ (80 images in m1's, 40 in this model's")
    same_size = promotions.audit_regressions(
        measured_on(settings, "m3", EASY.assign(p_biopsy=0.5)), measured_on(settings, "m4", EASY)
    )
    assert same_size.regressions == ("biopsy ROC-AUC 0.500 on the audit set, below m4's 1.000 [0.903-1.000]",)
    assert same_size.basis == "registry figures; the audit images were not recorded (40 images each)"


def test_held_back_takes_patient_keys_of_older_audit_files_from_their_label_snapshots(settings):
    """Audit files written before they kept patient keys: the shared images are resampled by the patients their
    label snapshot names; with neither, the check is skipped rather than resampled by image."""
    keys = pd.concat([HARD, EASY])[["sop_instance_uid", "study_instance_uid", "patient_key"]]
    older = [c for c in HARD.columns if c not in ("study_instance_uid", "patient_key")]
    measured_on(settings, "m1", pd.concat([HARD, EASY])[older], snapshot="snap1")
    measured_on(settings, "m2", HARD[older], snapshot="snap2")
    assert promotions.held_back(settings, "m2", "m1").basis == (
        "not compared: audit sets differ: 40 of m1's 80 audit images withdrawn since (no longer in the audit set), "
        "0 new, 0 relabeled; no patient keys to resample the shared images by"
    )
    (settings.table_dir("labels") / "snapshots").mkdir(parents=True)
    keys.to_parquet(settings.table_dir("labels") / "snapshots" / "snap1.parquet")
    found = promotions.held_back(settings, "m2", "m1")
    assert found.compared and found.regressions == () and found.basis.endswith("measured again on the 40 they share")


def test_held_back_without_a_registry_row_says_so(settings):
    measured_on(settings, "m1", HARD)
    found = promotions.held_back(settings, "m2", "m1")
    assert not found.compared and found.basis == "not compared: no registry row for model m2"
