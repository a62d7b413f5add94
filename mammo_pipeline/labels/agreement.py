"""Agreement of the blind audit reads: Cohen's κ between the two readers and each reader's agreement with the
audit truth. Pure functions over the table `LabelStore.audit_reads()` returns (label names, None when missing).

Cohen's κ = (p_o - p_e) / (1 - p_e), with p_o the observed agreement and p_e the agreement expected by chance
from each reader's label frequencies (Cohen 1960); computed over the 4 classes (biopsy, mag, neither, both).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

Ratings = Sequence[Hashable] | pd.Series | np.ndarray


def cohen_kappa(a: Ratings, b: Ratings) -> float | None:
    """Cohen's κ of two equally long rating sequences (label names, booleans: any hashable values), by
    scikit-learn's `cohen_kappa_score`. None when it is undefined: no ratings, or both raters giving one same
    value throughout (p_e = 1, so κ = 0/0). Raises ValueError for sequences of different lengths.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"kappa needs paired ratings, got {len(a)} and {len(b)}")
    if len(set(a) | set(b)) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score  # imported when used: the labeling app starts without it

    return float(cohen_kappa_score(a, b))


def kappa_text(kappa: float | None) -> str:
    """κ as reports show it: three decimals, "n/a" where it is undefined (`cohen_kappa` returned None)."""
    return "n/a" if kappa is None else f"{kappa:.3f}"


def audit_agreement(reads: pd.DataFrame) -> dict:
    """Agreement figures of the audit reads.

    `reads`: columns reader1, read1, reader2, read2, adjudicated, truth, audit_state (LabelStore.audit_reads).
    Returns n_read (audit images with a read), n_double (two blind reads), n_agreed, n_disputed (waiting for
    adjudication), n_adjudicated, kappa (reader 1 vs reader 2 over double reads; None without any),
    kappa_by_pair ("alice|bob" -> κ), and per_reader: name -> {reads, agree_truth (share of their reads that
    equal the final truth, over images with two reads and a truth), n_adjudicated, agree_adjudicated (share of
    their reads on adjudicated images that equal the third read)}.
    """
    double = reads[reads["read2"].notna()] if len(reads) else reads
    out: dict = {
        "n_read": len(reads),
        "n_double": len(double),
        "n_agreed": int((reads["audit_state"] == 2).sum()) if len(reads) else 0,
        "n_disputed": int((reads["audit_state"] == 3).sum()) if len(reads) else 0,
        "n_adjudicated": int((reads["audit_state"] == 4).sum()) if len(reads) else 0,
        "kappa": cohen_kappa(double["read1"], double["read2"]) if len(double) else None,
        "kappa_by_pair": {},
        "per_reader": {},
    }
    if not len(double):
        return out
    pairs = double.assign(
        pair=["|".join(sorted((str(x), str(y)))) for x, y in zip(double["reader1"], double["reader2"], strict=True)]
    )
    for pair, part in pairs.groupby("pair", sort=True):
        out["kappa_by_pair"][pair] = cohen_kappa(part["read1"], part["read2"])
    long = pd.concat(
        [
            double[["reader1", "read1", "truth", "adjudicated"]].set_axis(["reader", "read", "truth", "adj"], axis=1),
            double[["reader2", "read2", "truth", "adjudicated"]].set_axis(["reader", "read", "truth", "adj"], axis=1),
        ],
        ignore_index=True,
    )
    for reader, part in long.groupby("reader", sort=True):
        final = part[part["truth"].notna()]
        adj = part[part["adj"].notna()]
        out["per_reader"][str(reader)] = {
            "reads": len(part),
            "agree_truth": float((final["read"] == final["truth"]).mean()) if len(final) else None,
            "n_adjudicated": len(adj),
            "agree_adjudicated": float((adj["read"] == adj["adj"]).mean()) if len(adj) else None,
        }
    return out


def stats_markdown(stats: dict) -> str:
    """The agreement figures as a short markdown report (asset metadata, CLI)."""
    k = stats["kappa"]
    lines = [
        f"Audit images read: {stats['n_read']}; double-read: {stats['n_double']} "
        f"(agreed {stats['n_agreed']}, disputed {stats['n_disputed']}, adjudicated {stats['n_adjudicated']})",
        f"Cohen's κ between the two blind readers: {kappa_text(k)}",
    ]
    if stats["per_reader"]:
        lines += [
            "",
            "| reader | reads | agree with audit truth | adjudicated | agree with adjudication |",
            "|---|---|---|---|---|",
        ]
        for name, r in stats["per_reader"].items():
            fmt = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
            lines.append(
                f"| {name} | {r['reads']} | {fmt(r['agree_truth'])} | {r['n_adjudicated']} | "
                f"{fmt(r['agree_adjudicated'])} |"
            )
    return "\n".join(lines)
