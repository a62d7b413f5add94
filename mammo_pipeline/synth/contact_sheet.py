"""A labelled contact sheet: one example per vendor profile x class (plus a spot-compression view without
magnification), each labelled with the confounders drawn on it, to eyeball what the generator draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mammo_pipeline import atomic
from mammo_pipeline.synth.identities import rng_for
from mammo_pipeline.synth.image import ImageSpec, draw_image
from mammo_pipeline.synth.profiles import CLASS_MIX, PROFILES

TILE_HEIGHT = 320
LABEL_HEIGHT = 22


def _tile(profile_key: str, label: str, seed: int, scale: float, k: int) -> tuple[Image.Image, str]:
    profile = PROFILES[profile_key]
    rows, cols = max(16, round(profile.rows * scale)), max(16, round(profile.columns * scale))
    view = "CC" if k % 2 == 0 else "MLO"
    spec = ImageSpec(
        rows,
        cols,
        profile.pixel_spacing / scale,
        scale,
        view,
        "LR"[k % 2],
        label in ("biopsy", "both"),
        label in ("mag", "both"),
        screening=label == "neither",
        spot=label in ("mag", "both", "spot"),
        vendor=profile_key.split("-")[0],
        film=profile.secondary_capture,
    )
    display, drawn = draw_image(spec, rng_for(seed, "contact-sheet", profile_key, label))
    img = Image.fromarray(np.rint(display * 255).astype(np.uint8))
    width = max(1, round(cols * TILE_HEIGHT / rows))
    extras = [
        f
        for f, on in (
            ("subtle", drawn.subtle_mag),
            ("outside", drawn.marker_partly_outside),
            ("wire", drawn.hook_wire),
        )
        if on
    ] + [
        c.replace("_marker", " mk").replace("_calc", " calc").replace("lead_letters", "letters")
        for c in drawn.confounders
    ]
    if drawn.n_clips_unsaturated:
        extras.append(f"{drawn.n_clips_unsaturated} dim clip")
    text = f"{profile_key} {label}" + (f" ({', '.join(extras)})" if extras else "")
    return img.resize((width, TILE_HEIGHT), Image.BOX), text


def make_contact_sheet(path: Path, seed: int = 0, scale: float = 0.25) -> Path:
    """Write a PNG grid (rows = vendor profiles, columns = classes and a spot view) of synthetic images, labelled."""
    labels = [*CLASS_MIX, "spot"]
    tiles = [[_tile(p, lab, seed, scale, i + j) for j, lab in enumerate(labels)] for i, p in enumerate(PROFILES)]
    cell_w = max(t.width for row in tiles for t, _ in row) + 8
    sheet = Image.new("L", (cell_w * len(labels), (TILE_HEIGHT + LABEL_HEIGHT) * len(tiles)), 40)
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for i, row in enumerate(tiles):
        for j, (tile, text) in enumerate(row):
            x, y = j * cell_w + 4, i * (TILE_HEIGHT + LABEL_HEIGHT)
            sheet.paste(tile, (x, y + LABEL_HEIGHT))
            draw.text((x + 2, y + 3), text, fill=255, font=font)
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return path
