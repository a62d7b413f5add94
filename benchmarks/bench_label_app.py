"""Key-press latency of the labeling app at archive scale, through the app's own routes (Starlette TestClient).

For each store size it builds a label store (`sync_images` of the whole manifest, timed), gives every image a
prediction (`set_predictions`), labels `--labeled` of the training images (`import_labels`), then times
- POST /label: record the decision on the card's image and answer the next card (what a key press costs), and
- GET /card: the next card alone,
`--n` requests each after a warm-up, in single-user mode and in team mode (leases: every card is a write).
Wall time depends on what else runs on the machine; `cpu_ms` (CPU time of this process per request, client and
server together) and the sync's CPU seconds do not.
Baseline, measured in the same run: GET /static/app.css through the same client (the framework's own floor),
and the smallest store (a cost that does not grow with the store is flat across sizes).

    nice .venv/bin/python benchmarks/bench_label_app.py --sizes 10000,100000,1000000 --n 200
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from starlette.testclient import TestClient

from mammo_pipeline.labels.app import create_app
from mammo_pipeline.labels.store import LabelStore

HX = {"HX-Request": "true"}
STATE = re.compile(r'name="image_id" value="(\d*)".*?name="seen_event" value="(\d*)"', re.S)
CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
ORIGIN = "http://localhost:5001"  # a Host the app answers to (labels/security.py) and the Origin its CSRF check wants


def manifest(n: int) -> pd.DataFrame:
    """An image_cache manifest of n images over 10 hospitals, 2 images per patient, a third with a mag flag."""
    i = np.arange(n)
    sop = pd.Series(i).map("1.2.826.0.1.3680043.10.{}".format)
    hosp = pd.Series(i % 10).map("hospital-{:02d}".format)
    return pd.DataFrame(
        {
            "sop_instance_uid": sop,
            "hospital": hosp,
            "study_instance_uid": pd.Series(i // 4).map("1.2.3.{}".format),
            "patient_key": pd.Series(i // 2).map("patient-{:07d}".format),
            "display_png": "h/d.png",
            "model_png": "h/m.png",
            "meta_mag": pd.Series(np.where(i % 3 == 0, True, np.where(i % 3 == 1, False, None)), dtype=object),
        }
    )


def build(path: Path, n: int, labeled: float) -> dict[str, float]:
    """The store at `path` with n images, predictions for all and labels for `labeled` of the training images."""
    df = manifest(n)
    rng = np.random.default_rng(0)
    store = LabelStore(path)
    t0, c0 = time.perf_counter(), time.process_time()
    store.sync_images(df, seed=0, audit_fraction=0.2)
    t_sync, c_sync = time.perf_counter() - t0, time.process_time() - c0
    preds = df[["sop_instance_uid"]].assign(
        p_biopsy=rng.random(n), p_mag=rng.random(n), model_version="bench", out_of_sample=rng.random(n) < 0.5
    )
    t0 = time.perf_counter()
    store.set_predictions(preds)
    t_pred = time.perf_counter() - t0
    images = store.images()[["id", "split"]]
    train = images.loc[images["split"] == "train", "id"].to_numpy()
    chosen = rng.choice(train, size=int(len(train) * labeled), replace=False)
    t0 = time.perf_counter()
    store.import_labels(pd.DataFrame({"image_id": chosen, "label": rng.integers(1, 5, len(chosen))}), "importer")
    t_import = time.perf_counter() - t0
    return {
        "sync_images": t_sync,
        "sync_images_cpu": c_sync,
        "set_predictions": t_pred,
        "import_labels": t_import,
        "labeled": len(chosen),
    }


def timed(fn, n: int, warmup: int) -> tuple[list[float], float]:
    """(wall milliseconds of each call, CPU milliseconds per call of this whole process: client and server)."""
    for _ in range(warmup):
        fn()
    out = []
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out, (time.process_time() - cpu0) * 1000 / n


def measure(path: Path, n: int, warmup: int, team: bool) -> dict[str, tuple[list[float], float]]:
    """Milliseconds per request of POST /label, GET /card and the static floor, labeling what each card shows."""
    users = {"reader": "pw"}
    app = create_app(path, annotator="reader", team=team, users=users if team else None, secret="bench")
    client = TestClient(app, base_url=ORIGIN)
    token = CSRF.search(client.get("/login" if team else "/").text).group(1)
    client.headers.update({"Origin": ORIGIN, "X-CSRF-Token": token})
    if team:
        assert client.post("/login", data={"name": "reader", "password": "pw"}).status_code < 400
        client.headers["X-CSRF-Token"] = CSRF.search(client.get("/").text).group(1)
    state = {"html": client.get("/card", params={"q": "unlabeled"}, headers=HX).text}

    def label() -> None:
        image_id, seen = STATE.search(state["html"]).groups()
        r = client.post(
            "/label", data={"label": "3", "image_id": image_id, "seen_event": seen, "q": "unlabeled"}, headers=HX
        )
        assert r.status_code == 200, r.text
        state["html"] = r.text

    def card() -> None:
        assert client.get("/card", params={"q": "low_confidence"}, headers=HX).status_code == 200

    def floor() -> None:
        assert client.get("/static/app.css").status_code == 200

    return {
        "POST /label": timed(label, n, warmup),
        "GET /card": timed(card, n, warmup),
        "GET /static (floor)": timed(floor, n, warmup),
    }


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="store sizes, comma-separated")
    ap.add_argument("--n", type=int, default=200, help="timed requests per route")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--labeled", type=float, default=0.05, help="share of training images labeled beforehand")
    ap.add_argument("--target-ms", type=float, default=50.0, help="p95 target for POST /label at the largest size")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_label_app_") as tmp:
        for size in sizes:
            path = Path(tmp) / f"labels_{size}.sqlite"
            built = build(path, size, args.labeled)
            print(
                f"{size:>9,} images: sync_images {built['sync_images']:.1f} s ({built['sync_images_cpu']:.1f} s CPU), "
                f"set_predictions "
                f"{built['set_predictions']:.1f} s, import_labels ({built['labeled']:,}) "
                f"{built['import_labels']:.1f} s",
                flush=True,
            )
            for team in (False, True):
                for route, (ms, cpu) in measure(path, args.n, args.warmup, team).items():
                    rows.append(
                        {
                            "images": size,
                            "mode": "team" if team else "single",
                            "route": route,
                            "median_ms": statistics.median(ms),
                            "p95_ms": p95(ms),
                            "cpu_ms": cpu,
                        }
                    )
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    table = pd.DataFrame(rows)
    smallest = table[table["images"] == sizes[0]].set_index(["mode", "route"])["p95_ms"]
    floor = table[table["route"] == "GET /static (floor)"].set_index(["images", "mode"])["p95_ms"]
    table["p95_vs_smallest"] = [r.p95_ms / smallest[(r.mode, r.route)] for r in table.itertuples(index=False)]
    table["p95_vs_floor"] = [r.p95_ms / floor[(r.images, r.mode)] for r in table.itertuples(index=False)]
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    worst = table[(table["images"] == sizes[-1]) & (table["route"] == "POST /label")]["p95_ms"].max()
    verdict = "meets" if worst <= args.target_ms else "MISSES"
    print(f"\nPOST /label p95 at {sizes[-1]:,} images: {worst:.1f} ms ({verdict} the {args.target_ms:.0f} ms target)")
    print(f"load average during the run: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
