"""How many clip images have a clip among the second look's candidates, by kind of view and vendor profile, with
every miss listed: the ceiling on the biopsy ROC-AUC that the patch network cannot lift (a clip image without a
candidate on its clip scores like a clip-free one).

Run:  .venv/bin/python benchmarks/bench_candidate_recall.py [--data DIR] [--studies 80] [--drops-seed 0]
      [--demo-drops]

Builds (or reuses) the learning-curve data set (`bench_learning_curve.build_dataset`: synthetic drops -> dicom_index
-> image_cache, 3 hospitals, scale 0.25); `--demo-drops` draws the drops `mammo demo` draws instead
(`demo.DemoConfig`: 90 studies per hospital, 2 % corrupt files, seed 0), so its misses are the ones a demo's audit
split can draw. Candidates come from the image cache's store (`candidate_store` through
`second_look_model.candidates_of`), as in the product; a clip is found when a candidate centre lies in
one of the truth's clip boxes (`clip_among`, diagnosis only). Prints recall by kind of view and by profile, each
miss (kind, profile, unsaturated clips, the display PNG, and why: `why_missed`), and the RATIO of the recall at K
candidates to the recall at the first K / 2 (what the second half of the slots buys), in the same run.
Nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
from bench_learning_curve import (
    box_kinds_at,
    build_dataset,
    clip_among,
    labels_frame,
    truth_and_scale,
    view_kind,
)
from PIL import Image

from mammo_pipeline.demo import DemoConfig
from mammo_pipeline.model.air import canonical
from mammo_pipeline.model.candidates import ONE_DOME_IN, K, blob_score, grid_centres
from mammo_pipeline.model.second_look_model import candidates_of


def why_missed(png: Path, boxes: str, scale: float, long_side: int) -> str:
    """Why no candidate lies on an image's clip (diagnosis only): the blob score's searchable local maxima
    (`candidates.blob_score`, on the image with its chest wall at column 0, as the candidates are cut), each at
    its centre in the stored image's pixels as `candidates` places one, on a clip box when `box_kinds_at` says so
    (as `clip_among` decides a candidate). None there: the clip lies in the air margin (`air.SKIN_DEPTH` from what
    the air rule takes for air), at the frame or beside a stronger maximum within half a crop. Else the best one's
    rank among the image's maxima: beyond the K - K // ONE_DOME_IN blob slots, and not among the strongest domes."""
    gray, mirrored = canonical(np.asarray(Image.open(png).convert("L")))
    maxima, f = blob_score(gray, long_side)
    rows, cols = np.nonzero(maxima)
    values = maxima[rows, cols]
    rows, cols = grid_centres(rows, cols, f, gray.shape)
    if mirrored:
        cols = gray.shape[1] - 1 - cols
    on_clip = np.array(
        [any(k.startswith("clip") for k in box_kinds_at(boxes, scale, r, c)) for r, c in zip(rows, cols, strict=True)],
        dtype=bool,
    )
    if not any(on_clip):
        return "no searchable maximum of the blob score on the clip (air margin, frame, or a stronger one beside it)"
    best = float(values[on_clip].max())
    rank = int((values > best).sum()) + 1
    return f"its best maximum ({best:.2f}) ranks {rank} of the blob score, past its {K - K // ONE_DOME_IN} slots"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/mammo-learning-curve"))
    ap.add_argument("--studies", type=int, default=80)
    ap.add_argument("--drops-seed", type=int, default=0, help="synthetic drops' seed: 0 development, others held out")
    ap.add_argument("--demo-drops", action="store_true", help="the drops mammo demo draws (DemoConfig)")
    args = ap.parse_args()
    if args.demo_drops:
        demo = DemoConfig()
        settings = build_dataset(args.data, demo.studies_per_hospital, demo.seed, demo.corrupt_fraction)
    else:
        settings = build_dataset(args.data, args.studies, args.drops_seed)
    labels = labels_frame(settings)
    labels = labels[labels["has_biopsy_marker"]].reset_index(drop=True)
    truth, scale = truth_and_scale(settings, labels)
    found = candidates_of(
        [settings.cache / p for p in labels["display_png"]], threads=2, long_side=settings.display_size
    )
    rows = []
    for i, row in enumerate(truth.itertuples()):
        centres = found.centres[i]
        rows.append(
            {
                "kind": view_kind(row),
                "profile": row.vendor_profile,
                "unsaturated": int(row.n_clips_unsaturated or 0),
                "found": clip_among(row.boxes, scale[i], centres),
                "found_half": clip_among(row.boxes, scale[i], centres[: K // 2]),
                "png": str(settings.cache / labels["display_png"].iat[i]),
            }
        )
    df = pd.DataFrame(rows)
    print(f"{len(df)} clip images; candidate recall (a clip among the {K} candidates):")
    for column in ("kind", "profile"):
        print(df.groupby(column)["found"].agg(found="sum", images="count").to_string() + "\n")
    for miss in df[~df["found"]].itertuples():
        print(f"  missed: {miss.kind} {miss.profile}, {miss.unsaturated} unsaturated clip(s): {miss.png}")
        why = why_missed(Path(miss.png), truth["boxes"].iat[miss.Index], scale[miss.Index], settings.display_size)
        print(f"    {why}")
    full, half = df["found"].mean(), df["found_half"].mean()
    print(f"RATIO recall at K = {K} / at K = {K // 2}: {full:.3f} / {half:.3f} = {full / half:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
