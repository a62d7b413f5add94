"""Pictures people look at after a training: confusion matrix, missed audit images, accuracy by round.

matplotlib with the Agg backend, rendered to bytes and written atomically (the same PNG goes to the
model folder and to settings.reports).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from mammo_pipeline.atomic import write_bytes
from mammo_pipeline.model.evaluate import CLASSES


def _save(fig, paths: list[Path]) -> list[Path]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    for path in paths:
        write_bytes(path, buf.getvalue())
    return paths


def confusion_png(cm: np.ndarray | list, paths: list[Path], title: str = "") -> list[Path]:
    """4x4 matrix (rows true, columns predicted) with counts and row percentages."""
    cm = np.asarray(cm, dtype=int)
    rows = cm.sum(axis=1, keepdims=True)
    pct = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0) * 100
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if pct[i, j] > 60 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{pct[i, j]:.0f}%", ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (audit)")
    ax.set_title(title or f"Audit confusion matrix (n={int(cm.sum())})")
    return _save(fig, paths)


def missed_gallery_png(
    missed: pd.DataFrame,
    cache: Path,
    paths: list[Path],
    max_tiles: int = 24,
    heatmaps: Callable[[str], np.ndarray] | None = None,
    title: str = "Missed audit images",
) -> list[Path]:
    """Audit images the model got wrong; columns model_png, label, p_biopsy, p_mag, reason.

    With `heatmaps` (model_png -> [2, H, W] maps in 0..1) the map of the flag the reason names is drawn over
    each tile (biopsy unless the reason is about mag), so the gallery shows where the model looked.
    """
    shown = missed.head(max_tiles)
    n = len(shown)
    cols = min(6, max(n, 1))
    rows = max(1, -(-n // cols))
    # constrained layout keeps the figure title clear of the tiles' three-line titles; at least 5.5 in wide, so
    # the figure title of a gallery of one tile is not cut
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(2.2 * cols, 5.5), 2.9 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel():
        ax.axis("off")
    if n == 0:
        axes[0, 0].text(0.5, 0.5, f"no {title.lower()}", ha="center", va="center")
    for ax, row in zip(axes.ravel(), shown.itertuples(), strict=False):
        with Image.open(cache / row.model_png) as img:
            ax.imshow(np.asarray(img.convert("L")), cmap="gray")
        if heatmaps is not None:
            k = 1 if "mag" in row.reason and "marker" not in row.reason else 0
            ax.imshow(np.ma.masked_less(heatmaps(row.model_png)[k], 0.15), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(f"true {row.label}\np_biopsy {row.p_biopsy:.2f} p_mag {row.p_mag:.2f}\n{row.reason}", fontsize=7)
    fig.suptitle(f"{title} ({len(missed)} total, {n} shown)" + (", heat map of the flag" if heatmaps else ""))
    return _save(fig, paths)


def accuracy_by_round_png(registry: pd.DataFrame, paths: list[Path]) -> list[Path]:
    """Audit accuracy and per-flag ROC-AUC against the number of train labels, one point per registered model;
    ROC-AUC with its 95 % interval as an error bar where the registry has one (`model/intervals.py`)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    reg = registry.dropna(subset=["accuracy"]) if len(registry) else registry
    if len(reg):
        reg = reg.sort_values("n_train")
        ax.plot(reg["n_train"].astype(float), reg["accuracy"].astype(float) * 100, "o-", label="4-class")
        if "accuracy_3class" in reg and reg["accuracy_3class"].notna().any():
            ax.plot(reg["n_train"].astype(float), reg["accuracy_3class"].astype(float) * 100, "s--", label="3-class")
        for flag, marker in (("biopsy", "^:"), ("mag", "v:")):
            col = f"{flag}_roc_auc"
            if col in reg and reg[col].notna().any():
                x, y = reg["n_train"].astype(float), reg[col].astype(float) * 100
                if f"{col}_low" in reg and reg[f"{col}_low"].notna().any():
                    low = (y - reg[f"{col}_low"].astype(float) * 100).clip(lower=0).fillna(0)
                    high = (reg[f"{col}_high"].astype(float) * 100 - y).clip(lower=0).fillna(0)
                    ax.errorbar(x, y, yerr=[low, high], fmt=marker, capsize=3, label=f"{flag} ROC-AUC (95 % CI)")
                else:
                    ax.plot(x, y, marker, label=f"{flag} ROC-AUC")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no model with audit metrics yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("train labels")
    ax.set_ylabel("audit accuracy / ROC-AUC (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy by labeling round")
    return _save(fig, paths)
