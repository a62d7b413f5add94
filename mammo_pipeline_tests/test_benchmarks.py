"""The benchmarks still run against the current code (at toy sizes), so a change to the app or the
pipeline cannot silently break the commands the README quotes. Figures are not checked here: speed
targets live in the benchmarks themselves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def bench_module(name: str):
    """A script of benchmarks/ imported as a module (they import each other by bare name, so the folder goes on
    sys.path while it loads)."""
    import importlib

    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def run(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"bench_{name}.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_benchmark_in_run_all_exists():
    run_all = bench_module("run_all")
    listed = {**run_all.BENCHMARKS, **run_all.EXTRA}
    for name in listed:
        assert (BENCHMARKS / f"bench_{name}.py").exists(), name
    # and every benchmark is listed, so `make bench` or its name finds it
    assert {p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py")} == set(listed)


def test_run_all_refuses_an_unknown_name_in_one_line_before_running_any():
    """A user's report: `python benchmarks/run_all.py nosuch` ended in a KeyError traceback."""
    run_all = bench_module("run_all")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "nosuch", "synth"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""  # synth, a known name, did not run either
    assert done.stderr == f"unknown benchmark(s) nosuch; known: {', '.join({**run_all.BENCHMARKS, **run_all.EXTRA})}\n"


def test_label_app_benchmark_labels_through_the_secured_routes():
    out = run("label_app", "--sizes", "300,600", "--n", "5", "--warmup", "2")
    verdict = re.search(r"POST /label p95 at 600 images: ([\d.]+) ms \((meets|MISSES)", out)
    assert verdict, out
    # both modes and all three routes were timed at both sizes
    rows = [line for line in out.splitlines() if re.match(r"\s*(300|600)\s+(single|team)\s", line)]
    assert len(rows) == 12, out


def test_infer_benchmark_runs_the_second_look_path():
    out = run("infer", "-n", "8", "--batch-size", "4", "--second-look")
    for how in ("kept candidates", "cut at inference"):
        assert re.search(rf"onnxruntime fp32 \+ second look \({how}\):\s+[\d.]+ images/s", out), out
    # the engines alone too, the ONNX one against eager
    assert re.search(r"network alone: pytorch eager:\s+[\d.]+ images/s", out), out
    assert re.search(r"network alone: onnx fp32\s+:\s+[\d.]+ images/s .* x[\d.]+ wall", out), out


def test_air_benchmark_scores_the_air_rule_on_drawn_images(monkeypatch):
    monkeypatch.setenv("MAMMO_REALDATA", "/nonexistent-realdata")
    out = run("air", "--per-kind", "1")
    by_profile = out.split("synthetic contact views, by profile:")[1].split("real images")[0]
    # profile, found, true_found, true, tissue_as_air, no_air_found, precision, recall, images
    pattern = r"^(\S+)\s+\d+\s+\d+\s+\d+\s+(\d+)\s+\d+\s+([\d.]+)\s+([\d.]+)\s+\d+$"
    rows = re.findall(pattern, by_profile, flags=re.M)
    assert {name for name, *_ in rows} >= {"FILM-DF", "GE-ESS", "SIE-INS"}, out
    # detector contact views: what the rule calls air is air, in every image (the film's burned-out periphery is
    # harder)
    detectors = [(faults, float(precision)) for name, faults, precision, _ in rows if name != "FILM-DF"]
    assert all(faults == "0" and precision >= 0.9 for faults, precision in detectors), out
    assert "real images skipped" in out


def test_learning_curve_second_look_says_what_limits_its_roc_auc(tmp_path):
    out = run("learning_curve", "--data", str(tmp_path / "data"), "--studies", "12", "--second-look", "--counts", "40")
    assert re.search(r"candidate recall \(diagnosis, from the truth's boxes\): \d+/\d+ clip images", out), out
    auc = float(re.search(r"^second look\s+\d+\s+([\d.]+)\s", out, flags=re.M).group(1))
    pairs, total = map(int, re.search(r"(\d+) misordered pairs of (\d+)", out).groups())
    # the listed pairs are the ROC-AUC's own (ties count one half, so allow a little)
    assert total > 0 and abs(auc - (1 - pairs / total)) <= 0.05, out
    # the pairs split by kind of clip image (an unsaturated clip or not) add up to all of them
    by_kind = re.findall(r"(\d+) clip images with (?:an unsaturated clip|every clip saturated): ROC-AUC [\d.]+ "
                         r"against all negatives, (\d+) of the misordered pairs", out)  # fmt: skip
    assert by_kind and sum(int(n) for _, n in by_kind) == pairs, out
    shares = [int(x) for x in re.findall(r"negatives above \((\d+)%\)", out)]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 101, out
    above = int(re.search(r"(\d+) negatives above the lowest clip image with its clip among the candidates", out)[1])
    assert pairs > 0 or above == 0, out  # no misordered pair: no negative above a found clip
    assert re.search(r"negative \.\.\.\w+ p=[\d.]+: winning candidate on [\w,-]+", out), out


def test_second_look_cross_validation_scores_every_image_once_by_a_model_that_never_saw_its_patient(tmp_path):
    out = run("second_look_cv", "--data", str(tmp_path / "data"), "--studies", "8", "--folds", "2", "--labels", "30",
              "--bootstrap", "50", "--shift-probe", "--tone-probe")  # fmt: skip
    n = int(re.search(r"data set: (\d+) images", out).group(1))
    folds = re.findall(r"^fold \d: trained on (\d+) images .*, scored (\d+) ", out, flags=re.M)
    assert len(folds) == 2 and sum(int(scored) for _, scored in folds) == n, out
    assert all(int(trained) <= 30 for trained, _ in folds), out
    assert f"scored {n} of {n} images, each once" in out, out
    auc, low, high = map(float, re.search(r"pooled biopsy ROC-AUC ([\d.]+) \(patient bootstrap 95 % interval "
                                          r"([\d.]+)-([\d.]+)\)", out).groups())  # fmt: skip
    assert 0 <= low <= high <= 1 and 0 <= auc <= 1, out
    assert re.search(r"RATIO pooled second look / candidate score alone: biopsy ROC-AUC [\d.]+ / [\d.]+ = ", out)
    mean, p95, largest = map(float, re.search(r"displays moved 1 px: \|change of p_biopsy\| mean ([\d.]+), 95th "
                                              r"percentile ([\d.]+), largest ([\d.]+);", out).groups())  # fmt: skip
    assert 0 <= mean <= largest <= 1 and p95 <= largest, out
    assert mean > 0, out  # moved by a pixel, a crop is not the same crop: some reading changes
    # under a display curve: the same kind of line, and the candidate recall of the curved displays
    toned = r"under a random display curve: \|change of p_biopsy\| mean ([\d.]+), 95th percentile [\d.]+, largest "
    toned += r"([\d.]+);.*\n  its candidate recall: (\d+)/(\d+) clip images"
    mean, largest, found, clips = map(float, re.search(toned, out).groups())
    assert 0 < mean <= largest <= 1 and 0 < found <= clips, out


def test_patient_folds_keep_each_patient_whole_and_use_every_fold():
    patient_folds = bench_module("bench_second_look_cv").patient_folds
    patients = np.repeat(np.arange(20), 4)[np.random.default_rng(0).permutation(80)]
    fold = patient_folds(patients, 3, seed=1)
    assert set(fold) == {0, 1, 2}
    for p in range(20):
        assert len(set(fold[patients == p])) == 1
    assert (patient_folds(patients, 3, seed=1) == fold).all()  # seeded


def test_learning_curve_refuses_an_audit_split_without_both_classes(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_learning_curve.py"), "--data", str(tmp_path / "d"), "--studies", "2",
         "--second-look", "--counts", "10"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode != 0 and "raise --studies" in done.stderr, done.stderr[-2000:]


def test_film_compression_benchmark_compresses_at_the_asked_ratio(monkeypatch):
    monkeypatch.setenv("MAMMO_REALDATA", "/nonexistent-realdata")  # without the real header: 10:1
    out = run("film_compression", "--studies", "2")
    lo, hi = map(float, re.search(r"achieved ([\d.]+)-([\d.]+):1", out).groups())
    assert 9.0 <= lo <= hi <= 11.0, out
    rows = re.findall(r"^(\w+)\s+([\d.e-]+)\s+([\d.e-]+)\s+([\d.]+)x$", out, flags=re.M)
    assert {r[0] for r in rows} >= {"tophat_p99", "noise", "beta"}, out


def test_the_film_codec_is_lossy_at_its_ratio():
    bench = bench_module("bench_film_compression")
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    pixels = (2000 + 800 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 60, (256, 256))).astype(np.uint16)
    decoded, ratio = bench.j2k_lossy(pixels, 10.0)
    assert decoded.shape == pixels.shape and decoded.dtype == pixels.dtype
    assert 9.0 <= ratio <= 11.0
    error = np.abs(decoded.astype(np.int32) - pixels.astype(np.int32))
    assert error.max() > 0  # lossy: the noise is not kept exactly
    assert error.mean() < 60  # but the image is: the error is below the noise's own SD


def test_oracle_bags_hold_only_the_clip_crops_of_clip_images():
    oracle_bags = bench_module("bench_second_look_cv").oracle_bags
    from types import SimpleNamespace

    crops = np.arange(3 * 3 * 2 * 4 * 4, dtype=np.float32).reshape(3, 3, 2, 4, 4)
    centres = np.array([[[10, 10], [50, 50], [-1, -1]], [[50, 50], [10, 10], [80, 80]], [[50, 50], [1, 1], [2, 2]]])
    boxes = np.array(['[["clip", 45, 55, 45, 55]]', '[["clip", 45, 55, 45, 55]]', '[["clip", 300, 310, 0, 5]]'])
    y = np.array([True, False, True])  # image 1 has the box but no clip label; image 2's clip is no candidate
    out = oracle_bags(SimpleNamespace(crops=crops, centres=centres), boxes, np.ones(3), y)
    assert all((out[0, j] == crops[0, 1]).all() for j in range(3))  # every slot repeats the one clip crop
    assert (out[1:] == crops[1:]).all()  # clip-free and candidate-miss images keep their bags
    assert (crops[0, 0] != crops[0, 1]).any()  # the input was not modified in place


def test_missed_clip_images_are_counted_by_view_and_cost_their_share_of_the_roc_auc():
    missed_line = bench_module("bench_second_look_cv").missed_line
    import pandas as pd

    from mammo_pipeline.model.evaluate import roc_auc

    hit, miss = '[["clip", 45, 55, 45, 55]]', '[["clip", 300, 310, 0, 5]]'
    truth = pd.DataFrame(
        {
            "boxes": [hit, miss, miss, hit, "[]", "[]", "[]", "[]"],
            "vendor_profile": ["H-LOR", "H-LOR", "FILM-DF", "H-LOR", "H-LOR", "H-LOR", "H-LOR", "H-LOR"],
            "is_mag_view": [False, True, False, False, False, False, False, False],
            "is_spot_view": [False, False, False, False, False, False, False, False],
        }
    )
    y = np.array([True, True, True, True, False, False, False, False])
    scored = np.array([0.9, 0.1, 0.35, 0.8, 0.2, 0.3, 0.4, 0.5])  # the misses sit below 4 and 2 of 4 negatives
    centres = np.tile(np.array([[50, 50]]), (8, 1, 1))
    line = missed_line(truth, y, scored, centres, np.ones(8))
    assert "missed: 2 clip images (1 magnification, 1 film)" in line, line
    cost = float(re.search(r"([\d.]+) of ROC-AUC", line).group(1))
    assert cost == pytest.approx(1 - roc_auc(y, scored), abs=1e-3) == pytest.approx((4 / 4 + 2 / 4) / 4)
    found = truth.assign(boxes=[hit] * 4 + ["[]"] * 4)
    assert "no clip image without a clip" in missed_line(found, y, scored, centres, np.ones(8))


def test_demo_audit_counts_each_clip_images_misordered_pairs_and_names_its_view():
    bench = bench_module("bench_demo_audit")
    misordered, view_kind = bench.misordered, bench.view_kind
    from types import SimpleNamespace

    from mammo_pipeline.model.evaluate import roc_auc

    rng = np.random.default_rng(3)
    pos, neg = rng.uniform(0.2, 1.0, 30), np.r_[rng.uniform(0.0, 0.7, 50), [0.5, 0.5]]
    pos[:3] = 0.5  # ties count half, as in ROC-AUC
    pairs = misordered(pos, neg)
    y = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    assert 1 - pairs.sum() / (len(pos) * len(neg)) == pytest.approx(roc_auc(y, np.r_[pos, neg]))
    assert pairs[0] == (neg > 0.5).sum() + 1.0  # two ties at 0.5, half each

    def row(mag=False, spot=False, vendor="H-LOR"):
        return SimpleNamespace(is_mag_view=mag, is_spot_view=spot, vendor_profile=vendor)

    assert view_kind(row(mag=True, vendor="FILM-DF")) == "magnification"
    assert view_kind(row(vendor="FILM-DF")) == "film"
    assert view_kind(row(spot=True)) == "spot" and view_kind(row()) == "contact"


def test_demo_audit_prints_no_roc_auc_for_an_audit_set_without_clip_images(monkeypatch, capsys):
    """A user's report: an audit set with no clip image printed "ROC-AUC 1.000"; ROC-AUC needs both classes."""
    import pandas as pd

    from mammo_pipeline.model.evaluate import roc_auc

    bench = bench_module("bench_demo_audit")
    no_candidate = (None, np.array([[-1, -1]]))  # candidates_of_png: (crops, centres); an empty slot

    def audit(clip: list[bool]) -> pd.DataFrame:
        n = len(clip)
        return pd.DataFrame(
            {"sop_instance_uid": [f"1.{i}" for i in range(n)], "p_biopsy": np.linspace(0.9, 0.1, n),
             "has_biopsy_marker": clip, "is_mag_view": False, "is_spot_view": False, "vendor_profile": "H-LOR",
             "boxes": "[]", "display_png": "x.png", "scale": 1.0}
        )  # fmt: skip

    monkeypatch.setattr(bench, "candidates_of_png", lambda path: no_candidate)
    monkeypatch.setattr(bench, "why_missed", lambda *args: "why")
    monkeypatch.setattr(bench, "review_bands", lambda home: 1.0)
    monkeypatch.setattr(sys, "argv", ["bench_demo_audit.py", "--home", "h"])
    for clip in ([False] * 4, [True] * 4, [True, False, True, False]):
        monkeypatch.setattr(bench, "audit_scores", lambda home, clip=clip: ("m1", audit(clip)))
        assert bench.main() == 0
        out = capsys.readouterr().out
        auc = roc_auc(np.array(clip), np.linspace(0.9, 0.1, 4))
        assert ("ROC-AUC n/a" in out) == (auc is None), out
        assert auc is None or f"ROC-AUC {auc:.3f}, of which they cost {1 - auc:.3f}" in out, out


def test_demo_audit_names_every_clip_image_without_a_candidate_and_says_why(tmp_path, monkeypatch, capsys):
    """Stop 69 needed a throwaway script to find which audit image the missed clip was: each miss is now named by
    SOP Instance UID and display PNG, with `why_missed`'s reason, read from the PNG itself: a clip deep in the
    breast whose maximum the kept candidates lack ranks among the blob score's maxima; a clip within the skin
    depth of the air has no searchable maximum at all. A clip the candidates hold is not listed."""
    import json

    import pandas as pd
    from PIL import Image

    bench = bench_module("bench_demo_audit")
    rng = np.random.default_rng(0)
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(0, 1, (1024, 800)), 3)
    tissue = np.where(np.arange(800)[None, :] < 560, 120 + 10 * noise / noise.std(), 0.0)  # air from column 560

    def png(name: str, where: tuple[int, int]) -> str:
        img = tissue.copy()
        img[where[0] - 2 : where[0] + 3, where[1] - 7 : where[1] + 8] = 250  # a 5 x 15 px ribbon
        path = tmp_path / f"{name}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        return str(path)

    def box(where: tuple[int, int]) -> str:
        return json.dumps([["clip", where[0] - 3, where[0] + 3, where[1] - 8, where[1] + 8]])

    deep, skin, held = (500, 250), (500, 552), (300, 200)
    audit = pd.DataFrame(
        {"sop_instance_uid": ["1.deep", "1.skin", "1.held", "1.none"], "p_biopsy": [0.2, 0.1, 0.9, 0.3],
         "has_biopsy_marker": [True, True, True, False], "is_mag_view": False, "is_spot_view": False,
         "vendor_profile": "H-LOR", "boxes": [box(deep), box(skin), box(held), "[]"],
         "display_png": [png("deep", deep), png("skin", skin), png("held", held), png("none", (0, 0))],
         "scale": 1.0}
    )  # fmt: skip
    centres = {"held.png": np.array([list(held)])}
    monkeypatch.setattr(bench, "candidates_of_png", lambda path: (None, centres.get(path.name, np.array([[-1, -1]]))))
    monkeypatch.setattr(bench, "audit_scores", lambda home: ("m1", audit))
    monkeypatch.setattr(bench, "review_bands", lambda home: 1.0)
    monkeypatch.setattr(sys, "argv", ["bench_demo_audit.py", "--home", str(tmp_path)])
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert f"missed: 1.skin (contact, H-LOR): {tmp_path / 'skin.png'}\n    no searchable maximum" in out, out
    assert f"missed: 1.deep (contact, H-LOR): {tmp_path / 'deep.png'}\n    its best maximum" in out, out
    assert out.index("missed: 1.skin") < out.index("missed: 1.deep")  # lowest p_biopsy first
    assert "missed: 1.held" not in out and "2 clip images without a candidate" in out


def test_demo_audit_prints_the_stored_and_the_recomputed_review_bands_and_the_images_inside(tmp_path, capsys):
    """A home whose model stored a band of the threshold's gap alone (0.499-0.5): the band recomputed from the
    model's audit predictions is wider (a patient resample without the clip-free image at 0.499 lowers the
    threshold), and the images counted inside each are those `needs_review` sends to review."""
    import pandas as pd

    from mammo_pipeline.model.evaluate import needs_review, operating_points
    from mammo_pipeline.model.ref import ModelRef
    from mammo_pipeline.settings import Settings

    bench = bench_module("bench_demo_audit")
    settings = Settings.under(tmp_path)
    n = 40
    clip = np.arange(n) % 2 == 0
    p_biopsy = np.where(clip, 0.9 + np.arange(n) / 1000, 0.01 + np.arange(n) / 200)
    p_biopsy[0], p_biopsy[[1, 3, 5]] = 0.5, (0.499, 0.47, 0.44)
    audit = pd.DataFrame(
        {"sop_instance_uid": [f"a{i}" for i in range(n)], "has_biopsy_marker": clip, "is_mag_view": np.arange(n) < 10,
         "p_biopsy": p_biopsy, "p_mag": np.where(np.arange(n) < 10, 0.8, 0.2)}
    )  # fmt: skip
    labels = audit[["sop_instance_uid"]].assign(
        patient_key=[f"p{i}" for i in range(n)], study_instance_uid=[f"s{i}" for i in range(n)], split="audit"
    )
    point = {"threshold": 0.4995, "review_low": 0.499, "review_high": 0.5, "rule": "before stop 57"}
    stored = {"biopsy": point, "mag": {"threshold": 0.5, "review_low": 0.2, "review_high": 0.8}}
    ModelRef("m1", "s1", "m1", 64, (0, 0, 0), (1, 1, 1), extra={"operating_points": stored}).save(settings.models)
    (settings.models / "m1").mkdir(parents=True)
    audit.to_parquet(settings.models / "m1" / "audit_predictions.parquet")
    (settings.warehouse / "labels").mkdir(parents=True)
    labels.to_parquet(settings.warehouse / "labels" / "current.parquet")
    p_mag = np.where(np.arange(50) < 5, 0.5, 0.1)
    preds = pd.DataFrame({"sop_instance_uid": [f"x{i}" for i in range(50)], "study_instance_uid": "t1",
                          "p_biopsy": np.linspace(0.3, 0.6, 50), "p_mag": p_mag})  # fmt: skip
    folder = settings.warehouse / "image_predictions" / "hospital=h" / "model_version=m1"
    folder.mkdir(parents=True)
    preds.to_parquet(folder / "part.parquet")

    ratio = bench.review_bands(tmp_path)
    out = capsys.readouterr().out
    now = operating_points(audit.merge(labels, on="sop_instance_uid"), audit[["p_biopsy", "p_mag"]].to_numpy())
    probs = preds[["p_biopsy", "p_mag"]].to_numpy()
    before, after = needs_review(probs, stored).sum(), needs_review(probs, now).sum()
    assert now["biopsy"]["review_low"] < 0.47 and before < after
    assert f"predicted images {before} ({before / 50:.1%}) -> {after} ({after / 50:.1%}) of 50" in out, out
    assert ratio == pytest.approx(after / before)
    assert "biopsy stored threshold 0.4995 band [0.4990, 0.5000):" in out and "resampled thresholds" in out


def _audit_home(tmp_path, audit_p: dict[str, list[float] | None], predicting: dict[str, list[float]]):
    """A demo home whose current model m2 has a second look: six images of hospital h (a0-a3 in the audit split,
    a4-a5 in train), their synthetic truth (a0 twice: two drops), cache manifest, `image_predictions` of the models
    in `predicting` and `audit_predictions.parquet` of the models in `audit_p` (on a0-a3 and `gone`, an image
    withdrawn since training); returns the Settings."""
    import pandas as pd

    from mammo_pipeline import atomic, cache, promotions, warehouse
    from mammo_pipeline.model import second_look_model
    from mammo_pipeline.model.ref import ModelRef
    from mammo_pipeline.settings import Settings
    from mammo_pipeline.synth.drops import TRUTH_DIR

    settings = Settings.under(tmp_path)
    uids = [f"a{i}" for i in range(6)]
    split = ["audit"] * 4 + ["train"] * 2
    labels = pd.DataFrame({"sop_instance_uid": uids, "hospital": "h", "split": split, "has_biopsy_marker": False})
    atomic.write_parquet(labels, settings.table_dir("labels") / "current.parquet")
    clip = [i % 2 == 0 for i in range(6)]
    truth = pd.DataFrame(
        {"sop_instance_uid": uids, "drop": "d1", "has_biopsy_marker": clip, "is_mag_view": [i == 1 for i in range(6)],
         "is_spot_view": [i == 2 for i in range(6)], "vendor_profile": "H-LOR",
         "boxes": ["[[1, 2, 3, 4]]" if c else "[]" for c in clip]}
    )  # fmt: skip
    atomic.write_parquet(pd.concat([truth, truth[:1].assign(drop="d2")]), settings.landing / TRUTH_DIR / "h.parquet")
    manifest = pd.DataFrame(
        {"hospital": "h", "sop_instance_uid": uids, "display_png": [f"h/{u}.png" for u in uids], "height": 1000,
         "display_height": 500}
    )  # fmt: skip
    warehouse.write_table_file("image_cache", manifest, cache.manifest_path(settings, "h"))
    for version, p_biopsy in predicting.items():
        preds = pd.DataFrame({"sop_instance_uid": uids, "hospital": "h", "p_biopsy": p_biopsy, "p_mag": 0.1})
        warehouse.write_slice(settings, "image_predictions", "h", version, preds)
    look = {"second_look": second_look_model.describe(settings.display_size)}
    for version in ("m1", "m2"):  # m1 promoted before; m2 trained last: current.json
        ref = ModelRef(version, "s1", version, 64, (0, 0, 0), (1, 1, 1), extra=look)
        promotions.save_ref(settings, ref)
        ref.save(settings.models)
        if audit_p.get(version) is not None:
            audit = pd.DataFrame(
                {"sop_instance_uid": [*uids[:4], "gone"], "hospital": "h", "has_biopsy_marker": False,
                 "is_mag_view": False, "p_biopsy": audit_p[version], "p_mag": 0.1, "model_version": version}
            )  # fmt: skip
            atomic.write_parquet(audit, settings.models / version / promotions.AUDIT_FILE)
    return settings


M1_AUDIT, M2_AUDIT = [0.31, 0.32, 0.33, 0.34, 0.35], [0.91, 0.92, 0.93, 0.94, 0.95]
M1_PREDICTS = {"m1": [0.11, 0.12, 0.13, 0.14, 0.15, 0.16]}


def test_demo_audit_scores_a_held_back_model_by_its_own_audit_predictions(tmp_path, capsys):
    """A model promotion held back predicts nothing (the model before it does): its audit ROC-AUC must come from
    the audit predictions its training wrote, not from empty rows or from the predicting model's."""
    bench = bench_module("bench_demo_audit")
    settings = _audit_home(tmp_path, {"m1": M1_AUDIT, "m2": M2_AUDIT}, M1_PREDICTS)

    version, out = bench.audit_scores(tmp_path)
    printed = capsys.readouterr().out
    assert f"{tmp_path}: model m2 made no image_predictions (held back?): its audit predictions" in printed
    out = out.sort_values("sop_instance_uid").reset_index(drop=True)
    assert version == "m2" and out["sop_instance_uid"].tolist() == ["a0", "a1", "a2", "a3"]  # audit split only
    assert out["p_biopsy"].tolist() == pytest.approx(M2_AUDIT[:4])
    assert out["has_biopsy_marker"].tolist() == [True, False, True, False]  # the truth's, not the audit file's
    assert out["is_mag_view"].tolist() == [False, True, False, False] and out["is_spot_view"].tolist()[2]
    assert out["boxes"].tolist() == ["[[1, 2, 3, 4]]", "[]", "[[1, 2, 3, 4]]", "[]"]
    assert out["display_png"].tolist() == [str(settings.cache / f"h/a{i}.png") for i in range(4)]
    assert out["scale"].tolist() == [0.5] * 4


def test_demo_audit_refuses_a_held_back_model_without_audit_predictions_and_names_it(tmp_path, capsys):
    """No image_predictions and no audit file of the current model: nothing of its own to score, and the other
    model's rows must not stand in for it."""
    bench = bench_module("bench_demo_audit")
    _audit_home(tmp_path, {"m1": M1_AUDIT}, M1_PREDICTS)

    with pytest.raises(SystemExit, match="model m2 has neither image_predictions nor audit predictions"):
        bench.audit_scores(tmp_path)
    assert "held back" not in capsys.readouterr().out


def test_demo_audit_scores_a_predicting_model_by_its_image_predictions(tmp_path, capsys):
    """A model that predicts is scored by its image_predictions (what inference made), not by its audit file or
    the older model's rows, and no held-back line is printed."""
    bench = bench_module("bench_demo_audit")
    m2_predicts = [0.51, 0.52, 0.53, 0.54, 0.55, 0.56]
    _audit_home(tmp_path, {"m1": M1_AUDIT, "m2": M2_AUDIT}, {**M1_PREDICTS, "m2": m2_predicts})

    version, out = bench.audit_scores(tmp_path)
    assert "held back" not in capsys.readouterr().out
    out = out.sort_values("sop_instance_uid").reset_index(drop=True)
    assert version == "m2" and out["sop_instance_uid"].tolist() == ["a0", "a1", "a2", "a3"]  # not a4, a5 (train)
    assert out["p_biopsy"].tolist() == pytest.approx(m2_predicts[:4])


def test_a_data_folder_keeps_the_drops_seed_it_was_built_with(tmp_path):
    """Held-out drops (`--drops-seed`) must never be silently the development set's: a folder records its seed."""

    bench = bench_module("bench_learning_curve")
    (tmp_path / "drops-seed.txt").write_text("1\n")
    with pytest.raises(SystemExit, match="holds the drops of seed 1, not 0"):
        bench.build_dataset(tmp_path, 1)
    assert not (tmp_path / "landing").exists()  # refused before drawing anything


def test_candidate_recall_counts_every_clip_image_once_and_lists_each_miss(tmp_path):
    out = run("candidate_recall", "--data", str(tmp_path / "data"), "--studies", "6")
    n = int(re.search(r"^(\d+) clip images; candidate recall", out, flags=re.M)[1])
    tables = re.findall(r"^(?:contact|film|magnification|spot|[A-Z]+-[A-Z]+)\s+(\d+)\s+(\d+)$", out, flags=re.M)
    found = sum(int(f) for f, _ in tables)
    assert n > 0 and sum(int(i) for _, i in tables) == 2 * n  # by kind, then by profile: each image twice
    assert len(re.findall(r"^  missed: ", out, flags=re.M)) == n - found // 2, out
    full, half = map(float, re.search(r"RATIO recall at K = \d+ / at K = \d+: ([\d.]+) / ([\d.]+)", out).groups())
    assert half <= full == round(found / 2 / n, 3), out
