"""What a digitized screen-film mammogram carries besides the breast: the film's own edge, dust, and the scanner.

`anatomy.film_display` turns the breast's exposure into film density (OD) and display gray; `digitize` then
finishes the film after every object is drawn, in optical density, in the order the film met them:

1. Metal and lead stop the beam, so they leave the film at base + fog (`dmin`, the film's clearest density): on
   film, clips, pellets and lead letters are exactly as bright as unexposed film and never brighter. (Detectors
   draw them at >= markers.CLIP_MIN instead; a film's clear level is 0.94-0.96 on the DDSM scanner's scale.)
2. The film's unexposed edge: the collimated field is a little smaller than the film, so strips along the film's
   top, bottom and far edge stay at base + fog, behind a short penumbra (FILM_EDGE_MM, FILM_PENUMBRA_MM, †).
3. Dust and lint on the intensifying screen block its light and print as sharp white specks that mimic
   calcifications (Hogge et al., "Quality assurance in mammography: artifact analysis", RadioGraphics 1999;
   19:503-522). Rate and sizes are †.
4. The laser scanner measures transmitted light: its flare (light scattered inside the scanner from the clear
   film edge and bright tissue, a wide blur of transmittance) lifts the dark air near them, and its read-out
   noise is constant in transmittance, so it grows as 10^OD: the air of a scanned film is grainy and uneven, not
   flat (†: flare share and width, noise at OD 3 from digitizer specification sheets' order of magnitude).
   Densities beyond SCANNER_OD_MAX read as the scanner's floor.

† = not from a source; chosen from physics and the look of published film, never fitted to any data set (the
real film in ../shared/realdata is for evaluation only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mammo_pipeline.synth.anatomy import OD_PER_DISPLAY, upsample

SCANNER_OD_MAX = 3.6  # Lumisys 200 laser digitizer of DDSM: pixel = 4095 - 1000 OD down to OD 3.6 (DDSM calibration)
FILM_EDGE_P = 0.7  # chance that each of the film's three free edges shows an unexposed strip (†)
FILM_EDGE_MM = (1.0, 6.0)  # width of the unexposed strip (†)
FILM_PENUMBRA_MM = (0.5, 2.0)  # exposure ramp from the field edge to the strip (focal spot x collimator geometry, †)
DUST_P = 0.3  # chance that a film carries dust or lint specks (†)
DUST_COUNT = (1, 8)  # specks on a dusty film (†)
DUST_MM = (0.1, 0.5)  # speck diameter (†; the size of microcalcifications, which they mimic)
FLARE_SHARE = (0.001, 0.01)  # scanner flare: share of the locally averaged transmittance added (†)
FLARE_MM = (5.0, 15.0)  # width (Gaussian sigma) of the flare (†)
NOISE_OD_AT_3 = 0.01  # scanner read-out noise, SD in OD at OD 3.0 for a 50-um pixel (†)
SCANNER_PIXEL_MM = 0.05  # DDSM scanners: 42-50 um


def clear_display(dmin: float) -> float:
    """Display gray of unexposed film (base + fog `dmin`, OD): the brightest a film can be, 0.94-0.96."""
    return 1.0 - dmin / OD_PER_DISPLAY


def to_od(display: np.ndarray) -> np.ndarray:
    """Display gray in [0, 1] -> optical density (the DDSM scanner's linear map)."""
    return (np.float32(1.0) - display) * np.float32(OD_PER_DISPLAY)


def to_display(od: np.ndarray) -> np.ndarray:
    """Optical density -> display gray, with the scanner's floor at SCANNER_OD_MAX."""
    return np.float32(1.0) - np.minimum(od, np.float32(SCANNER_OD_MAX)) * np.float32(1.0 / OD_PER_DISPLAY)


@dataclass(frozen=True)
class Digitized:
    """What `digitize` added: the unexposed edges ('top', 'bottom', 'far'), and ('film_edge' | 'film_dust', box)
    for every strip (with its penumbra) and dust speck, boxes as (row0, row1, col0, col1) before any flip."""

    edges: tuple[str, ...] = ()
    boxes: tuple[tuple[str, tuple[int, int, int, int]], ...] = ()


def digitize(img: np.ndarray, rng: np.random.Generator, dmin: float, spacing_mm: float) -> Digitized:
    """Finish a drawn film image in place (chest wall at column 0): metal at base + fog, edges, dust, scanner.

    `img`: display gray (rows x cols, float32, white = dense) with every object already drawn; `dmin`: the film's
    base + fog (OD) from `anatomy.film_display`; `spacing_mm`: pixel size at this scale. Returns what was added.
    """
    rows, cols = img.shape
    od = np.maximum(to_od(img), np.float32(dmin))  # 1. nothing on film is clearer than base + fog
    # 2. the unexposed edge: strips along the top, the bottom and the edge far from the chest wall
    edges = tuple(e for e in ("top", "bottom", "far") if rng.random() < FILM_EDGE_P)
    boxes: list[tuple[str, tuple[int, int, int, int]]] = []
    if edges:
        dist = np.full((rows, cols), np.inf, dtype=np.float32)
        r = np.arange(rows, dtype=np.float32)[:, None] * np.float32(spacing_mm)
        c = np.arange(cols, dtype=np.float32)[None, :] * np.float32(spacing_mm)
        widths = {e: float(rng.uniform(*FILM_EDGE_MM)) for e in edges}
        penumbra = float(rng.uniform(*FILM_PENUMBRA_MM))
        for edge, width in widths.items():  # distance (mm) inside the exposed field from this edge's field boundary
            d = {
                "top": r - width,
                "bottom": (rows - 1) * spacing_mm - r - width,
                "far": (cols - 1) * spacing_mm - c - width,
            }
            dist = np.minimum(dist, d[edge])
            reach = min(max(rows, cols), int(np.ceil((width + penumbra) / spacing_mm)) + 2)
            strip = {
                "top": (0, reach, 0, cols),
                "bottom": (rows - reach, rows, 0, cols),
                "far": (0, rows, cols - reach, cols),
            }
            boxes.append(("film_edge", strip[edge]))
        ramp = np.clip(dist / np.float32(penumbra), 0, 1)
        od = np.float32(dmin) + (od - np.float32(dmin)) * ramp
    # 3. dust on the screen: sharp specks, nearly as clear as unexposed film, anywhere in the field
    if rng.random() < DUST_P:
        for _ in range(int(rng.integers(DUST_COUNT[0], DUST_COUNT[1] + 1))):
            rad = max(0.7, float(rng.uniform(*DUST_MM)) / 2 / spacing_mm)
            y, x = float(rng.uniform(0.05, 0.95) * rows), float(rng.uniform(0.05, 0.95) * cols)
            h = int(np.ceil(rad)) + 1
            y0, y1 = max(0, int(y) - h), min(rows, int(y) + h + 1)
            x0, x1 = max(0, int(x) - h), min(cols, int(x) + h + 1)
            yy, xx = np.ogrid[y0:y1, x0:x1]
            cover = np.clip(rad + 0.5 - np.sqrt((yy - y) ** 2 + (xx - x) ** 2), 0, 1).astype(np.float32)
            block = np.float32(rng.uniform(0.8, 1.0)) * cover  # share of the screen's light the speck stops
            od[y0:y1, x0:x1] -= (od[y0:y1, x0:x1] - np.float32(dmin)) * block
            boxes.append(("film_dust", (y0, y1, x0, x1)))
    # 4. the scanner: flare and read-out noise in transmittance, then the density floor
    t = np.power(np.float32(10.0), -od)
    sigma_px = float(rng.uniform(*FLARE_MM)) / spacing_mm
    step = max(1, int(sigma_px // 8))  # the flare is smooth: blur a subsampled copy
    flare = upsample(ndimage.gaussian_filter(t[::step, ::step], sigma_px / step, mode="nearest"), (rows, cols))
    t += np.float32(rng.uniform(*FLARE_SHARE)) * flare
    sd_t = NOISE_OD_AT_3 * np.log(10.0) * 1e-3 * SCANNER_PIXEL_MM / spacing_mm  # SD in T, averaged over the pixel
    t += rng.standard_normal(t.shape, dtype=np.float32) * np.float32(sd_t)
    od = -np.log10(np.maximum(t, np.float32(10.0**-SCANNER_OD_MAX)))
    np.copyto(img, to_display(od))
    return Digitized(edges=edges, boxes=tuple(boxes))
