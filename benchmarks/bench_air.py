"""Where the second look's air rule (model/air.py) finds air: precision and recall against the drawn breast mask on
synthetic images of every vendor profile (contact, magnification and spot views), and the share of each real
evaluation image it calls air (no truth there: look at the picture). Candidates within air.SKIN_DEPTH of the air
are ignored, so precision below 1 is tissue where a clip would be missed; recall below 1 leaves letters and
pellets in the candidates.

Run: .venv/bin/python benchmarks/bench_air.py [--per-kind 3] [--out air.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
from PIL import Image

from mammo_pipeline.model.air import air_mask
from mammo_pipeline.model.candidates import air_grid
from mammo_pipeline.synth import image as synth_image
from mammo_pipeline.synth.profiles import PROFILES


def synthetic_rows(per_kind: int) -> pd.DataFrame:
    """One row per drawn image: found air pixels, those truly air (outside the breast, in the exposed field)."""
    breasts = []
    original = synth_image.draw_breast

    def keep(*args, **kwargs):
        breasts.append(original(*args, **kwargs))
        return breasts[-1]

    synth_image.draw_breast = keep
    rows = []
    try:
        for i, (key, p) in enumerate(sorted(PROFILES.items())):
            scale = 1024 / max(p.rows, p.columns)  # the display PNG's size
            for kind in ("contact", "mag", "spot"):
                for seed in range(per_kind):
                    spec = synth_image.ImageSpec(
                        round(p.rows * scale), round(p.columns * scale), p.pixel_spacing / scale, scale,
                        "CC" if seed % 2 else "MLO", "L", False, kind == "mag", spot=kind == "spot",
                        vendor=key.split("-")[0], film=p.secondary_capture,
                    )  # fmt: skip
                    img, drawn = synth_image.draw_image(spec, np.random.default_rng(100 * i + seed))
                    exposed = np.ones(img.shape, dtype=bool)
                    if drawn.field is not None:
                        r0, r1, c0, c1 = drawn.field
                        exposed[:] = False
                        exposed[r0:r1, c0:c1] = True
                    grid, step = air_grid(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8))
                    truth = (~breasts[-1].mask & exposed)[::step, ::step][: grid.shape[0], : grid.shape[1]]
                    found = air_mask(grid)
                    rows.append((key, kind, int(found.sum()), int((found & truth).sum()), int(truth.sum())))
    finally:
        synth_image.draw_breast = original
    return pd.DataFrame(rows, columns=["profile", "kind", "found", "true_found", "true"])


def summary(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Pixel precision and recall of the air per group, and per image the faults a pixel total hides: images whose
    found air is under 90 % true air (tissue taken for air: a clip there is lost) and images with air where none
    was found (their letters and pellets stay candidates)."""
    per_image_precision = df["true_found"] / df["found"].clip(lower=1)
    tissue_as_air = (df["found"] > 0) & (per_image_precision < 0.9)
    df = df.assign(tissue_as_air=tissue_as_air, no_air_found=(df["found"] == 0) & (df["true"] > 0))
    g = df.groupby(by)[["found", "true_found", "true", "tissue_as_air", "no_air_found"]].sum()
    g["precision"] = g["true_found"] / g["found"].clip(lower=1)
    g["recall"] = g["true_found"] / g["true"].clip(lower=1)
    g["images"] = df.groupby(by).size()
    return g.round(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=3, help="images per profile and view kind")
    parser.add_argument("--realdata", type=Path, default=None, help="default: $MAMMO_REALDATA or ../shared/realdata")
    parser.add_argument("--out", type=Path, default=None, help="PNG of the real images with their air in red")
    args = parser.parse_args()
    df = synthetic_rows(args.per_kind)
    print("synthetic, by view kind:\n" + summary(df, ["kind"]).to_string())
    detector = df.assign(detector=np.where(df["profile"] == "FILM-DF", "film", "FFDM"))
    print("\nsynthetic, by detector and view kind:\n" + summary(detector, ["detector", "kind"]).to_string())
    print("\nsynthetic contact views, by profile:\n" + summary(df[df["kind"] == "contact"], ["profile"]).to_string())

    from mammo_pipeline.synth.realism_report import RealdataMissing, load_real

    try:
        real = load_real(args.realdata, echo=lambda _: None)
    except RealdataMissing as e:
        print(f"\nreal images skipped: {e}")
        return
    tiles = []
    print("\nreal images (evaluation only), share of the image taken as air:")
    for m in real:
        img = np.asarray(m.image, dtype=np.float32)
        s = 1024 / max(img.shape)  # the display PNG's size
        small = Image.fromarray(img).resize((round(img.shape[1] * s), round(img.shape[0] * s)), Image.Resampling.BOX)
        grid, _ = air_grid(np.rint(np.clip(np.asarray(small), 0, 1) * 255).astype(np.uint8))
        found = air_mask(grid)
        print(f"  {m.name}: {found.mean():.3f}")
        rgb = np.repeat(grid[..., None], 3, axis=2)
        rgb[found] = rgb[found] * 0.5 + np.array([0.5, 0.0, 0.0])
        tiles.append(np.asarray(Image.fromarray((rgb * 255).astype(np.uint8)).resize((160, 240))))
    if args.out and tiles:
        Image.fromarray(np.hstack(tiles)).save(args.out)
        print(f"picture: {args.out}")


if __name__ == "__main__":
    main()
