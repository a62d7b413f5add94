"""How much each hospital's metadata can be trusted: per hospital x field, the share of images where it is set.

The mag/spot metadata is patchy and vendor-specific (see dicom/headers.py), which is why the pipeline sorts
images visually. This table shows, per hospital, which fields are populated, and how often the fields that
speak about magnification contradict each other (e.g. a Magnification modifier with a factor of 1.0).
It also counts, per hospital, the images of each `image_kind` (2d, synthesized_2d, digitized_film,
for_processing, secondary_capture from the index; tomosynthesis from the index's quarantine rows), as fields
`image kind: <kind>` whose fraction is of all the hospital's images including the quarantined tomosynthesis.
Written to `warehouse/reports/metadata_completeness.{parquet,png}`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mammo_pipeline.atomic import write_bytes, write_parquet
from mammo_pipeline.dicom.headers import (
    IMAGE_KINDS,
    MAG_FACTOR_THRESHOLD,
    SCT_MAGNIFICATION,
    mentions_mag,
    mentions_spot,
)
from mammo_pipeline.settings import Settings

COLUMNS = [
    "view_modifier_codes",
    "series_description",
    "magnification_factor",
    "window_centers",
    "voi_lut_function",
    "has_voi_lut_sequence",
    "rescale_slope",
    "pixel_spacing",
    "laterality",
    "view_position",
    "view_code",
    "paddle_description",
    "focal_spot",
    "meta_mag",
    "meta_spot",
]
OPTIONAL_COLUMNS = ["image_kind"]  # absent from indexes written before issue 17
KIND_FIELDS = {kind: f"image kind: {kind}" for kind in IMAGE_KINDS}


def _populated(column: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda df: df[column].notna()


def _non_empty(column: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda df: df[column].map(lambda v: v is not None and len(v) > 0)


def _mag_opinions(df: pd.DataFrame) -> pd.DataFrame:
    """What each mag-speaking field says per image: True, False or None (silent)."""
    codes = df["view_modifier_codes"].map(lambda v: list(v) if v is not None else [])
    factor = df["magnification_factor"]
    return pd.DataFrame(
        {
            "modifier": [True if SCT_MAGNIFICATION in c else (False if c else None) for c in codes],
            "description": [True if mentions_mag(t) else None for t in df["series_description"]],
            "factor": [None if pd.isna(f) else bool(f >= MAG_FACTOR_THRESHOLD) for f in factor],
        },
        index=df.index,
    )


def _mag_disagreement(df: pd.DataFrame) -> pd.Series:
    opinions = _mag_opinions(df)
    says_yes = opinions.apply(lambda r: any(v is True for v in r), axis=1)
    says_no = opinions.apply(lambda r: any(v is False for v in r), axis=1)
    return says_yes & says_no


def _modifier_mag_factor_one(df: pd.DataFrame) -> pd.Series:
    opinions = _mag_opinions(df)
    return (opinions["modifier"] == True) & (df["magnification_factor"] <= 1.0)  # noqa: E712 (object column)


# field -> "is it populated in this image?"; the last three are disagreements, not completeness.
FIELDS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "view modifier": _non_empty("view_modifier_codes"),
    "view code": _populated("view_code"),
    "series description": _populated("series_description"),
    "series description says MAG/SPOT": lambda df: df["series_description"].map(
        lambda t: mentions_mag(t) or mentions_spot(t)
    ),
    "magnification factor": _populated("magnification_factor"),
    "magnification factor != 1": lambda df: df["magnification_factor"].notna() & (df["magnification_factor"] != 1.0),
    "paddle description": _populated("paddle_description"),
    "focal spot": _populated("focal_spot"),
    "window": _non_empty("window_centers"),
    "VOI LUT function": _populated("voi_lut_function"),
    "VOI LUT sequence": lambda df: df["has_voi_lut_sequence"].fillna(False).astype(bool),
    "rescale": _populated("rescale_slope"),
    "pixel spacing": _populated("pixel_spacing"),
    "laterality": _populated("laterality"),
    "view position": _populated("view_position"),
    "meta_mag decided": _populated("meta_mag"),
    "meta_spot decided": _populated("meta_spot"),
    "mag fields disagree": _mag_disagreement,
    "mag modifier but factor <= 1.0": _modifier_mag_factor_one,
}


def report_paths(settings: Settings) -> tuple[Path, Path]:
    folder = settings.warehouse_reports
    return folder / "metadata_completeness.parquet", folder / "metadata_completeness.png"


def metadata_completeness(settings: Settings) -> tuple[pd.DataFrame, Path]:
    """Completeness per hospital x field (long table) and its heatmap; both written atomically."""
    frames = [
        pd.concat([_completeness_of(hospital, df), _kinds_of(settings, hospital, df)], ignore_index=True)
        for hospital, df in _read_index(settings)
    ]
    columns = ["hospital", "field", "n_images", "n_populated", "fraction"]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    parquet, png = report_paths(settings)
    write_parquet(table, parquet)
    write_bytes(png, draw_heatmap(table))
    return table, png


def draw_heatmap(table: pd.DataFrame) -> bytes:
    """The completeness table as a fields x hospitals heatmap (PNG bytes); no pyplot, no global backend."""
    grid = table.pivot(index="field", columns="hospital", values="fraction") if len(table) else pd.DataFrame()
    grid = grid.reindex([f for f in [*FIELDS, *KIND_FIELDS.values()] if f in grid.index])
    n_rows, n_cols = max(len(grid.index), 1), max(len(grid.columns), 1)
    fig = Figure(figsize=(2.5 + 1.1 * n_cols, 1.0 + 0.38 * n_rows), dpi=110)
    ax = fig.add_subplot()
    values = grid.to_numpy(dtype=float) if grid.size else np.full((1, 1), np.nan)
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns], rotation=30, ha="right")
    ax.set_yticks(range(len(grid.index)), list(grid.index))
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_title("Metadata completeness (share of images)" if grid.size else "No images indexed yet")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _completeness_of(hospital: str, df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name, populated in FIELDS.items():
        flags = populated(df).fillna(False).astype(bool) if len(df) else pd.Series([], dtype=bool)
        n = int(flags.sum())
        rows.append((hospital, name, len(df), n, n / len(df) if len(df) else 0.0))
    return pd.DataFrame(rows, columns=["hospital", "field", "n_images", "n_populated", "fraction"])


def _kinds_of(settings: Settings, hospital: str, df: pd.DataFrame) -> pd.DataFrame:
    """Rows `image kind: <kind>` for one hospital: counts of indexed kinds plus quarantined tomosynthesis."""
    kinds = df["image_kind"].fillna("2d") if "image_kind" in df.columns else pd.Series("2d", index=df.index)
    counts = kinds.value_counts().to_dict()
    counts["tomosynthesis"] = counts.get("tomosynthesis", 0) + _quarantined(settings, hospital, "tomosynthesis")
    total = len(df) + counts["tomosynthesis"] - int((kinds == "tomosynthesis").sum())
    rows = [(hospital, field, total, int(counts.get(kind, 0))) for kind, field in KIND_FIELDS.items()]
    out = pd.DataFrame(rows, columns=["hospital", "field", "n_images", "n_populated"])
    out["fraction"] = out["n_populated"] / total if total else 0.0
    return out


def _quarantined(settings: Settings, hospital: str, reason: str) -> int:
    """Index quarantine rows of one hospital with `reason`."""
    folder = settings.table_dir("quarantine", hospital)
    files = sorted(folder.glob("index-*.parquet")) if folder.exists() else []
    return sum(int((pd.read_parquet(f, columns=["reason"])["reason"] == reason).sum()) for f in files)


def _read_index(settings: Settings):
    """(hospital, its dicom_index rows, only the columns needed) for every hospital with an index."""
    import pyarrow.parquet as pq

    root = settings.table_dir("dicom_index")
    for folder in sorted(root.glob("hospital=*")) if root.exists() else []:
        files = sorted(folder.glob("*.parquet"))
        if files:
            frames = []
            for f in files:
                present = set(pq.read_schema(f).names)
                frames.append(pd.read_parquet(f, columns=COLUMNS + [c for c in OPTIONAL_COLUMNS if c in present]))
            yield folder.name.removeprefix("hospital="), pd.concat(frames, ignore_index=True)
