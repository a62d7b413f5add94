"""Drift and newcomer checks for one hospital partition, as plain functions (the Dagster checks wrap them).

Three questions, each answered with a `Finding` that says what to do when it fires:

- **newcomers**: does the partition bring a Manufacturer, ManufacturerModelName or `image_kind` that no
  labeled image has? The model never saw such images labeled, so its output there is unchecked.
- **class rates**: do the hospital's predicted class rates (its current model) sit further from the audit
  set's label rates than chance allows?
- **needs_review**: has the share of predictions flagged `needs_review` grown against the hospital's previous
  model (or, for its first model, against the other hospitals)?

The bounds are policy, not fitted to any data set: a rate difference fires only when it is both larger than
`Z` standard errors of the two proportions (sampling noise) and larger than a minimum effect that matters to
a reader (`MIN_CLASS_SHIFT`, `MIN_REVIEW_GROWTH`). Below `MIN_IMAGES` images a rate is not judged at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from mammo_pipeline import warehouse
from mammo_pipeline.labels.codes import LABELS
from mammo_pipeline.settings import Settings

NEWCOMER_FIELDS = ("manufacturer", "model_name", "image_kind")
MISSING = "(missing)"
Z = 3.0  # standard errors: a difference this large happens by chance about 3 times in 1000
MIN_CLASS_SHIFT = 0.10  # absolute difference of a class's share that a reader would care about
MIN_REVIEW_GROWTH = 0.05  # absolute growth of the needs_review share
MIN_IMAGES = 20  # fewer images than this: a rate is too noisy to judge


@dataclass
class Finding:
    """One check's verdict for one hospital: passed, what it saw, and what to do if it did not pass."""

    passed: bool
    summary: str
    details: dict = field(default_factory=dict)


def _labels(settings: Settings) -> pd.DataFrame:
    path = settings.table_dir("labels") / "current.parquet"
    if not path.exists():
        return pd.DataFrame(columns=["sop_instance_uid", "label", "split"])
    df = pd.read_parquet(path)
    df["label"] = df["label"].map(lambda v: LABELS.get(int(v)) if isinstance(v, int | float) else v)
    return df


def newcomers(settings: Settings, hospital: str) -> Finding:
    """Values of NEWCOMER_FIELDS in this hospital's dicom_index that no labeled image has, among the images the
    cache rendered once it has any: the others (For Processing, tomosynthesis, quarantined) can never be labeled,
    so a finding about them could never clear (stop 62's probe: a For Processing "image_kind" warned for good)."""
    labeled = _labels(settings)
    if labeled.empty:
        return Finding(True, "no labeled images yet: nothing to compare with")
    with warehouse.connect(settings) as con:
        if "dicom_index" not in warehouse.views(con):
            return Finding(True, "no dicom_index yet")
        columns = set(con.execute("SELECT * FROM dicom_index LIMIT 0").df().columns)
        fields = [f for f in NEWCOMER_FIELDS if f in columns]
        con.register("labeled", labeled[["sop_instance_uid"]])
        exprs = ", ".join(f'coalesce(CAST("{f}" AS VARCHAR), \'{MISSING}\') AS "{f}"' for f in fields)
        where, params = "hospital = ?", [hospital]
        if "image_cache" in warehouse.views(con):
            rendered = "SELECT sop_instance_uid FROM image_cache WHERE hospital = ?"
            if con.execute(f"SELECT count(*) FROM ({rendered})", [hospital]).fetchone()[0]:
                where, params = f"{where} AND sop_instance_uid IN ({rendered})", [hospital, hospital]
        here = con.execute(f"SELECT {exprs} FROM dicom_index WHERE {where}", params).df()
        seen = con.execute(
            f"SELECT DISTINCT {exprs} FROM dicom_index WHERE sop_instance_uid IN (SELECT sop_instance_uid FROM labeled)"
        ).df()
    new: dict[str, dict[str, int]] = {}
    for f in fields:
        counts = here.loc[~here[f].isin(set(seen[f])), f].value_counts()
        if len(counts):
            new[f] = {str(k): int(v) for k, v in counts.items()}
    absent = [f for f in NEWCOMER_FIELDS if f not in fields]
    details = {"newcomers": new, "images": len(here), "labeled_images": len(labeled)}
    if absent:
        details["not_in_dicom_index"] = absent  # e.g. image_kind before the index gained it
    if not new:
        return Finding(True, f"every {', '.join(fields)} of {hospital} is among the labeled images", details)
    parts = [f"{f} {', '.join(f'{v!r} ({n} images)' for v, n in values.items())}" for f, values in new.items()]
    return Finding(
        False,
        f"{hospital} brings {'; '.join(parts)}, never seen among the labeled images. "
        f"Label some of those images (mammo label, hospital {hospital}) and retrain before trusting their flags.",
        details,
    )


def _differs(p1: float, n1: int, p2: float, n2: int, min_shift: float) -> bool:
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return abs(p1 - p2) > max(min_shift, Z * se)


def class_rates(settings: Settings, hospital: str) -> Finding:
    """The hospital's predicted class shares (current model) against the audit set's label shares."""
    labeled = _labels(settings)
    audit = labeled[labeled["split"] == "audit"]["label"].value_counts() if len(labeled) else pd.Series(dtype=int)
    with warehouse.connect(settings) as con:
        if "image_predictions_current" not in warehouse.views(con):
            return Finding(True, "no predictions yet")
        predicted = con.execute(
            "SELECT predicted_class, count(*) AS n FROM image_predictions_current WHERE hospital = ? GROUP BY 1",
            [hospital],
        ).df()
    predicted = predicted.set_index("predicted_class")["n"]
    n_h, n_a = int(predicted.sum()), int(audit.sum())
    if n_h < MIN_IMAGES or n_a < MIN_IMAGES:
        return Finding(True, f"too few images to judge ({n_h} predicted, {n_a} audit labels; need {MIN_IMAGES})")
    rows, moved = {}, []
    for cls in LABELS.values():
        p_h, p_a = predicted.get(cls, 0) / n_h, audit.get(cls, 0) / n_a
        rows[cls] = {"predicted": round(p_h, 4), "audit": round(p_a, 4)}
        if _differs(p_h, n_h, p_a, n_a, MIN_CLASS_SHIFT):
            moved.append(f"{cls} {p_h:.1%} vs {p_a:.1%}")
    details = {"shares": rows, "n_predicted": n_h, "n_audit": n_a, "z": Z, "min_shift": MIN_CLASS_SHIFT}
    if not moved:
        return Finding(True, f"{hospital}'s predicted class shares are within the bound of the audit set's", details)
    return Finding(
        False,
        f"{hospital}'s predicted class shares moved from the audit set's: {'; '.join(moved)}. Either this hospital "
        "differs or the model is wrong here: label a sample of its images (mammo label) and compare.",
        details,
    )


def needs_review_growth(settings: Settings, hospital: str) -> Finding:
    """The share of needs_review among the hospital's current predictions against its previous model's (or,
    for a first model, the other hospitals' current share)."""
    with warehouse.connect(settings) as con:
        if "image_predictions_current" not in warehouse.views(con):
            return Finding(True, "no predictions yet")
        now = con.execute(
            "SELECT any_value(model_version) AS v, count(needs_review) AS n, count_if(needs_review) AS k "
            "FROM image_predictions_current WHERE hospital = ?",
            [hospital],
        ).fetchone()
        version, n_now, k_now = now
        if version is None:  # nothing of this hospital predicted (only For Processing images, say)
            return Finding(True, f"no current predictions of {hospital} yet")
        if not n_now:
            return Finding(True, "these predictions carry no needs_review flag (a model from before the flag)")
        previous = con.execute(
            "SELECT model_version, count(needs_review) AS n, count_if(needs_review) AS k FROM image_predictions "
            "WHERE hospital = ? AND model_version <> ? GROUP BY 1 HAVING count(needs_review) > 0 "
            "ORDER BY max(predicted_at) DESC LIMIT 1",
            [hospital, version],
        ).fetchone()
        if previous:
            base_name, n_base, k_base = f"its previous model {previous[0]}", previous[1], previous[2]
        else:
            other = con.execute(
                "SELECT count(needs_review), count_if(needs_review) FROM image_predictions_current WHERE hospital <> ?",
                [hospital],
            ).fetchone()
            base_name, n_base, k_base = "the other hospitals", other[0], other[1]
    share = k_now / n_now
    details = {"share": round(share, 4), "n": int(n_now), "model_version": version, "baseline": base_name}
    if not n_base or n_now < MIN_IMAGES or n_base < MIN_IMAGES:
        return Finding(True, f"needs_review {share:.1%} of {n_now}; no baseline with {MIN_IMAGES}+ images", details)
    base = k_base / n_base
    details.update(baseline_share=round(base, 4), baseline_n=int(n_base))
    if share - base <= 0 or not _differs(share, n_now, base, n_base, MIN_REVIEW_GROWTH):
        return Finding(True, f"needs_review {share:.1%} of {hospital}'s images vs {base:.1%} for {base_name}", details)
    return Finding(
        False,
        f"needs_review grew to {share:.1%} of {hospital}'s images from {base:.1%} for {base_name}. Review and label "
        "those images first (mammo label, low-confidence queue): they are where the model is unsure.",
        details,
    )
