"""How many clip images have a clip among the second look's candidates, by kind of view and vendor profile, with
every miss listed: the ceiling on the biopsy ROC-AUC that the patch network cannot lift (a clip image without a
candidate on its clip scores like a clip-free one).

Run:  .venv/bin/python benchmarks/bench_candidate_recall.py [--data DIR] [--studies 80] [--drops-seed 0]
      [--demo-drops]

Builds (or reuses) the learning-curve data set (`bench_learning_curve.build_dataset`: synthetic drops -> dicom_index
-> image_cache, 3 hospitals, scale 0.25); `--demo-drops` draws the drops `mammo demo` draws instead (90 studies per
hospital, 2 % corrupt files, seed 0), so its misses are the ones a demo's audit split can draw. Candidates come from
the image cache's store (`candidate_store`), as in the product; a clip is found when a candidate centre lies in
one of the truth's clip boxes (`clip_among`, diagnosis only). Prints recall by kind of view and by profile, each
miss (kind, profile, unsaturated clips, the display PNG), and the RATIO of the recall at K candidates to the recall
at the first K / 2 (what the second half of the slots buys), in the same run. Nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_learning_curve
import pandas as pd
from bench_learning_curve import build_dataset, clip_among, labels_frame, view_kind

from mammo_pipeline.model.candidate_store import candidates_of_png
from mammo_pipeline.model.candidates import K


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/mammo-learning-curve"))
    ap.add_argument("--studies", type=int, default=80)
    ap.add_argument("--drops-seed", type=int, default=0, help="synthetic drops' seed: 0 development, others held out")
    ap.add_argument("--demo-drops", action="store_true", help="the drops mammo demo draws (90 studies, 2 %% corrupt)")
    args = ap.parse_args()
    if args.demo_drops:
        draw = bench_learning_curve.generate_drops
        bench_learning_curve.generate_drops = lambda landing, **kw: draw(
            landing, **{**kw, "studies_per_hospital": 90, "corrupt_fraction": 0.02}
        )
    settings = build_dataset(args.data, 90 if args.demo_drops else args.studies, args.drops_seed)
    labels = labels_frame(settings)
    labels = labels[labels["has_biopsy_marker"]].reset_index(drop=True)
    truth = pd.concat(pd.read_parquet(f) for f in sorted((settings.landing / "_truth").glob("*.parquet")))
    truth = truth.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid").loc[labels["sop_instance_uid"]]
    manifests = sorted(settings.table_dir("image_cache").glob("hospital=*/manifest.parquet"))
    columns = ["sop_instance_uid", "height", "display_height"]
    display = pd.concat(pd.read_parquet(f, columns=columns) for f in manifests).drop_duplicates("sop_instance_uid")
    scale = (display.set_index("sop_instance_uid").eval("display_height / height")).loc[labels["sop_instance_uid"]]
    rows = []
    for i, row in enumerate(truth.itertuples()):
        png = settings.cache / labels["display_png"].iat[i]
        centres = candidates_of_png(png)[1]
        rows.append(
            {
                "kind": view_kind(row),
                "profile": row.vendor_profile,
                "unsaturated": int(row.n_clips_unsaturated or 0),
                "found": clip_among(row.boxes, scale.iat[i], centres),
                "found_half": clip_among(row.boxes, scale.iat[i], centres[: K // 2]),
                "png": str(png),
            }
        )
    df = pd.DataFrame(rows)
    print(f"{len(df)} clip images; candidate recall (a clip among the {K} candidates):")
    for column in ("kind", "profile"):
        print(df.groupby(column)["found"].agg(found="sum", images="count").to_string() + "\n")
    for miss in df[~df["found"]].itertuples():
        print(f"  missed: {miss.kind} {miss.profile}, {miss.unsaturated} unsaturated clip(s): {miss.png}")
    full, half = df["found"].mean(), df["found_half"].mean()
    print(f"RATIO recall at K = {K} / at K = {K // 2}: {full:.3f} / {half:.3f} = {full / half:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
