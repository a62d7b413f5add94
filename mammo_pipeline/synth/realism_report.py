"""The realism report: the same untrained statistics (`realism.py`) on synthetic drops and on the real public
mammograms in `../shared/realdata/`, a table, a statistics figure and a real | synthetic contact sheet.

The real images are for evaluation only (their README): they are read, measured and drawn next to synthetic
ones; nothing is fitted to them and nothing of them is copied into the project (the contact sheet shows them
at 256 px inside the report picture, which stays outside the package). Without the folder the report is
skipped with a message (`RealdataMissing`).

Synthetic images are measured as the pipeline sees them: the DICOM files of a drop, rendered by
`mammo_pipeline.dicom.normalize.render` (VOI, MONOCHROME1 inversion) at their full stored size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mammo_pipeline import atomic
from mammo_pipeline.settings import realdata_dir
from mammo_pipeline.synth.realism import SHARE_NAMES, STAT_NAMES, image_stats, model_rendition

NYU_SPACING_MM = 0.07  # no pixel spacing in the PNGs; 2560 x 3328 matches a 70-um detector (realdata README)
FILM_SPACING_MM = 0.05  # no pixel spacing in the WG04 header; DDSM films were scanned at 43.5-50 um
NEAREST_PROFILE = {"FFDM": "H-LOR", "FILM": "FILM-DF"}  # NYU: 2560 x 3328 at 70 um = the Lorad Selenia matrix
# The NYU images' detector (rows x columns at 70 um): the Hologic 18 x 24 cm field, which both Hologic profiles store
# (H-LOR always, H-DIM for its small paddle: profiles.VendorProfile.other_matrix)
NYU_MATRIX = "3328x2560"
TOLERANCE = 0.2  # with one real value, "inside" means within 20 % of it


class RealdataMissing(RuntimeError):
    """The evaluation images are not on this machine: the report is skipped."""


@dataclass
class Measured:
    """One measured image."""

    name: str
    kind: str  # 'FFDM' | 'FILM'
    source: str  # 'real' | vendor profile key
    view: str
    image: np.ndarray  # display [0, 1]
    spacing_mm: float
    stats: dict = field(default_factory=dict)
    label: str | None = None  # synthetic: the truth label ('neither', 'biopsy', ...); real: unknown
    matrix: str | None = None  # synthetic: the full-size "ROWSxCOLUMNS" of its detector field (truth's `matrix`)


def load_real(folder: Path | str | None = None, echo: Callable[[str], None] = print) -> list[Measured]:
    """The real images as display images in [0, 1]; undecodable files are skipped with a message.

    Raises RealdataMissing when the folder (or every image in it) is absent.
    """
    import pydicom
    from PIL import Image

    from mammo_pipeline.dicom.decode import decode_frame

    root = realdata_dir(folder)
    if not root.is_dir():
        raise RealdataMissing(f"{root}: no real images here; the realism report needs ../shared/realdata")
    out: list[Measured] = []
    for path in sorted(root.glob("nyu-*/*.png")):
        with Image.open(path) as im:
            arr = np.asarray(im).astype(np.float32)
        top = 65535.0 if arr.max() > 4095 else 4095.0  # breast_cancer_classifier: 12 bits rescaled to 16
        view = "MLO" if "MLO" in path.stem else "CC"
        out.append(Measured(f"{path.parent.name}/{path.name}", "FFDM", "real", view, arr / top, NYU_SPACING_MM))
    for path in sorted(root.glob("dicom-wg04/*.dcm")):
        try:
            ds = pydicom.dcmread(path)
            arr = decode_frame(ds, path=str(path)).pixels.astype(np.float32)
        except Exception as exc:
            echo(f"realism: skipping {path.name}: cannot decode ({type(exc).__name__}: {str(exc).splitlines()[0]})")
            continue
        if any(m.kind == "FILM" for m in out):  # the same film in another encoding
            echo(f"realism: skipping {path.name}: the same film as an image already loaded")
            continue
        arr /= float((1 << int(ds.BitsStored)) - 1)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            arr = 1.0 - arr
        out.append(Measured(path.name, "FILM", "real", str(ds.get("ViewPosition", "MLO")), arr, FILM_SPACING_MM))
    if not out:
        raise RealdataMissing(f"{root}: no readable real images")
    return out


def contact_views(truth: pd.DataFrame) -> pd.DataFrame:
    """The truth rows of drawn For Presentation contact views: no corrupt file, no magnification or spot view."""
    truth = truth[truth["corrupt_kind"].isna() & ~truth["for_processing"].astype(bool)]
    return truth[~truth["is_mag_view"].astype(bool) & ~truth["is_spot_view"].astype(bool)]


def synthetic_display(ds, vendor_profile: str, matrix: str | None = None) -> tuple[np.ndarray, float]:
    """(display image in [0, 1] at the full stored size, as the pipeline's VOI renders it; its pixel spacing in mm,
    from the vendor profile's detector scaled to the stored size) of a synthetic dataset. `matrix` is the truth's
    full-size "ROWSxCOLUMNS" (a machine with two paddle fields stores two sizes); None: the profile's."""
    from mammo_pipeline.dicom.normalize import render
    from mammo_pipeline.synth.profiles import PROFILES

    long_side = max(int(ds.Rows), int(ds.Columns))
    rend = render(ds, (long_side,))
    profile = PROFILES[vendor_profile]
    full_rows = int(matrix.split("x")[0]) if matrix else profile.rows
    # the display's long side holds the content (the stored frame less a frame of padding, which synthetic drops
    # never have) at `long_side` px
    spacing = profile.pixel_spacing * full_rows / rend.source_shape[0] * max(rend.content_shape) / long_side
    return rend.images[long_side].astype(np.float32) / 255.0, spacing


def load_synthetic(landing: Path, limit: int | None = None, seed: int = 0) -> list[Measured]:
    """For Presentation images of the drops under `landing` (truth in `_truth/`), rendered like the pipeline."""
    from mammo_pipeline.dicom.normalize import read_dataset
    from mammo_pipeline.synth.drops import read_truth
    from mammo_pipeline.synth.profiles import PROFILES

    truth = read_truth(Path(landing))
    if truth.empty:
        raise FileNotFoundError(f"{landing}: no synthetic drops (no _truth/)")
    truth = contact_views(truth)
    if limit and len(truth) > limit:
        truth = truth.sample(limit, random_state=seed)
    out = []
    for row in truth.sort_values("rel_path").itertuples():
        path = Path(landing) / row.rel_path
        ds, _ = read_dataset(path)
        profile = PROFILES[row.vendor_profile]
        matrix = getattr(row, "matrix", None) or f"{profile.rows}x{profile.columns}"  # drops before the column
        img, spacing = synthetic_display(ds, row.vendor_profile, matrix)
        kind = "FILM" if profile.secondary_capture else "FFDM"
        out.append(
            Measured(
                path.name, kind, row.vendor_profile, row.view_position, img, spacing, label=row.label, matrix=matrix
            )
        )
    return out


def measure(images: list[Measured]) -> pd.DataFrame:
    """One row per image: name, kind, source, view, label, matrix and every statistic."""
    rows = []
    for m in images:
        m.stats = image_stats(m.image, m.spacing_mm).as_dict()
        keys = {"name": m.name, "kind": m.kind, "source": m.source, "view": m.view, "label": m.label}
        rows.append({**keys, "matrix": m.matrix, **m.stats})
    return pd.DataFrame(rows)


def nyu_detector(synth: pd.DataFrame) -> pd.Series:
    """Which synthetic rows were drawn on the NYU images' detector (NYU_MATRIX at 70 um; by vendor profile when
    the table has no matrix column)."""
    if "matrix" in synth and synth["matrix"].notna().any():
        return (synth["matrix"] == NYU_MATRIX) & (synth["kind"] == "FFDM")
    return synth["source"] == NEAREST_PROFILE["FFDM"]


def compare(real: pd.DataFrame, synth: pd.DataFrame) -> pd.DataFrame:
    """Per kind (FFDM, FILM) and statistic: the real range, the synthetic median and 10-90 % range, inside?

    "inside" = the synthetic median lies in [real min, real max] (within TOLERANCE of the value when there is one
    real image). Shares of images with a saturated object compare shares (inside = within 0.25 of the real share,
    since a handful of real images cannot pin a share down more finely), like for like: the real images are
    screening views, so the synthetic share counts the images of label 'neither' only (no clip, no
    magnification; markers, letters and calcifications at their published rates), when `synth` has labels.

    When `synth` has a `source` column, the image statistics are also compared like for like by detector: kind
    "FFDM 3328x2560" holds the real FFDM images against the synthetic ones drawn on the NYU images' detector
    (`nyu_detector`: the 18 x 24 cm field at 70 um; the top-hat of the 256-px rendition depends on the field of
    view that 256 px span).
    """
    rows: list[dict] = []
    for kind in sorted(set(real["kind"]) & set(synth["kind"])):
        r, s = real[real["kind"] == kind], synth[synth["kind"] == kind]
        rows += _compare_stats(kind, r, s)
        plain = s[s["label"] == "neither"] if "label" in s and (s["label"] == "neither").any() else s
        for stat in SHARE_NAMES:
            rs, ss = float(r[stat].mean()), float(plain[stat].mean())
            rows.append(
                {
                    "kind": kind,
                    "statistic": f"share {stat}",
                    "n_real": len(r),
                    "real_min": rs,
                    "real_max": rs,
                    "n_synthetic": len(plain),
                    "synthetic_median": ss,
                    "synthetic_p10": np.nan,
                    "synthetic_p90": np.nan,
                    "inside": abs(ss - rs) <= 0.25,
                }
            )
    if "source" in synth:
        r, s = real[real["kind"] == "FFDM"], synth[nyu_detector(synth)]
        if len(r) and len(s):
            rows += _compare_stats(f"FFDM {NYU_MATRIX}", r, s)
    return pd.DataFrame(rows)


def _compare_stats(kind: str, r: pd.DataFrame, s: pd.DataFrame) -> list[dict]:
    """The STAT_NAMES rows of `compare` for real images `r` against synthetic ones `s`, labelled `kind`."""
    rows = []
    for stat in STAT_NAMES:
        rv, sv = r[stat].dropna(), s[stat].dropna()
        if rv.empty or sv.empty:
            continue
        lo, hi = float(rv.min()), float(rv.max())
        if len(rv) == 1:
            lo, hi = lo - TOLERANCE * abs(lo), hi + TOLERANCE * abs(hi)
        med = float(sv.median())
        rows.append(
            {
                "kind": kind,
                "statistic": stat,
                "n_real": len(rv),
                "real_min": float(rv.min()),
                "real_max": float(rv.max()),
                "n_synthetic": len(sv),
                "synthetic_median": med,
                "synthetic_p10": float(sv.quantile(0.1)),
                "synthetic_p90": float(sv.quantile(0.9)),
                "inside": lo <= med <= hi,
            }
        )
    return rows


def table_markdown(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table (the README's)."""
    lines = [
        "| kind | statistic | real (n) | real min – max | synthetic (n) | synthetic median [p10 – p90] | inside |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in table.itertuples():
        spread = "" if np.isnan(t.synthetic_p10) else f" [{t.synthetic_p10:.3g} – {t.synthetic_p90:.3g}]"
        real = f"{t.real_min:.3g}" if t.real_min == t.real_max else f"{t.real_min:.3g} – {t.real_max:.3g}"
        lines.append(
            f"| {t.kind} | {t.statistic} | {t.n_real} | {real} | {t.n_synthetic} | {t.synthetic_median:.3g}{spread} "
            f"| {'yes' if t.inside else 'no'} |"
        )
    return "\n".join(lines)


def contact_sheet(real: list[Measured], synth: list[Measured], path: Path, height: int = 300) -> Path:
    """PNG: one row per real image, the real one left and a synthetic image of the nearest profile and view right."""
    from PIL import Image, ImageDraw, ImageFont

    pairs = []
    for m in real:
        want = NEAREST_PROFILE[m.kind]
        pool = [s for s in synth if s.source == want and s.view == m.view] or [s for s in synth if s.kind == m.kind]
        pairs.append((m, pool[len(pairs) % len(pool)] if pool else None))

    def tile(m: Measured | None) -> Image.Image:
        if m is None:
            return Image.new("L", (height * 3 // 4, height), 0)
        small = model_rendition(m.image, height)
        return Image.fromarray(small)

    tiles = [(tile(a), tile(b), a, b) for a, b in pairs]
    cell = max(max(x.width, y.width) for x, y, _, _ in tiles) + 8
    label = 18
    per_row = 3  # pairs per row of the sheet
    n_rows = -(-len(tiles) // per_row)
    sheet = Image.new("L", (per_row * 2 * cell, n_rows * (height + label)), 30)
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for i, (ra, sy, a, b) in enumerate(tiles):
        x, y = (i % per_row) * 2 * cell, (i // per_row) * (height + label)
        sheet.paste(ra, (x + 4, y + label))
        sheet.paste(sy, (x + cell + 4, y + label))
        draw.text((x + 4, y + 2), f"real {a.name.split('/')[-1]}", fill=255, font=font)
        draw.text((x + cell + 4, y + 2), f"synthetic {b.source if b else '-'} {a.view}", fill=255, font=font)
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return path


def stats_figure(real: pd.DataFrame, synth: pd.DataFrame, path: Path) -> Path:
    """PNG: per statistic, real values (dots) against synthetic ones (box per kind; the middle box holds only the
    synthetic images of the NYU images' detector, `nyu_detector`, against the same real FFDM dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = list(STAT_NAMES)
    fig, axes = plt.subplots(2, (len(stats) + 1) // 2, figsize=(3.0 * ((len(stats) + 1) // 2), 6.2))
    for ax, stat in zip(axes.ravel(), stats, strict=False):
        groups = (("FFDM", synth["kind"] == "FFDM"), ("FFDM", nyu_detector(synth)))
        for i, (kind, pick) in enumerate((*groups, ("FILM", synth["kind"] == "FILM"))):
            sv = synth.loc[pick, stat].dropna()
            rv = real.loc[real["kind"] == kind, stat].dropna()
            if len(sv):
                ax.boxplot([sv], positions=[i], widths=0.5, showfliers=False)
            if len(rv):
                jitter = np.linspace(-0.12, 0.12, len(rv)) if len(rv) > 1 else [0.0]
                ax.scatter(np.full(len(rv), i) + jitter, rv, color="tab:red", s=14, zorder=3, label="real")
        ax.set_xticks([0, 1, 2], ["FFDM", NYU_MATRIX, "film"])
        ax.set_title(stat, fontsize=10)
    for ax in axes.ravel()[len(stats) :]:
        ax.axis("off")
    fig.suptitle("Realism statistics: synthetic (boxes: quartiles, whiskers 1.5 IQR) vs real (red dots)", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


@dataclass
class RealismReport:
    table: pd.DataFrame
    real: pd.DataFrame
    synthetic: pd.DataFrame
    pictures: list[Path]

    def summary(self) -> str:
        main = self.table[self.table["kind"].isin(["FFDM", "FILM"])]
        lines = [
            table_markdown(self.table),
            "",
            f"{int(main['inside'].sum())} of {len(main)} statistics inside the real range",
        ]
        for kind in sorted(set(self.table["kind"]) - {"FFDM", "FILM"}):
            part = self.table[self.table["kind"] == kind]
            lines.append(f"like for like, {kind}: {int(part['inside'].sum())} of {len(part)} image statistics inside")
        return "\n".join(lines)


def realism_report(
    landing: Path,
    picture: Path,
    realdata: Path | str | None = None,
    limit: int | None = 60,
    echo: Callable[[str], None] = print,
) -> RealismReport:
    """Measure the drops under `landing` and the real images; write `picture` (contact sheet) and
    `<picture stem>_stats.png`. Raises RealdataMissing when there are no real images."""
    real_images = load_real(realdata, echo)
    synth_images = load_synthetic(landing, limit)
    real, synth = measure(real_images), measure(synth_images)
    table = compare(real, synth)
    picture = Path(picture)
    pictures = [
        contact_sheet(real_images, synth_images, picture),
        stats_figure(real, synth, picture.with_name(f"{picture.stem}_stats.png")),
    ]
    return RealismReport(table, real, synth, pictures)
