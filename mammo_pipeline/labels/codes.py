"""The four labels, their keys and the two flags they stand for.

Keys follow the labeling app: 1 biopsy marker, 2 magnification view, 3 neither, 4 both.
The model learns the two flags independently; the classes are derived from them for reporting.
"""

from __future__ import annotations

LABELS: dict[int, str] = {1: "biopsy", 2: "mag", 3: "neither", 4: "both"}
CODES: dict[str, int] = {name: code for code, name in LABELS.items()}
FLAGS = ("has_biopsy_marker", "is_mag_view")


def flags_of(label: int | str) -> tuple[bool, bool]:
    """(has_biopsy_marker, is_mag_view) for a label code or name."""
    code = CODES[label] if isinstance(label, str) else int(label)
    if code not in LABELS:
        raise ValueError(f"label must be one of {sorted(LABELS)} or {sorted(CODES)}, not {label!r}")
    return code in (1, 4), code in (2, 4)


def label_of(has_biopsy_marker: bool, is_mag_view: bool) -> str:
    """The class name for two flags."""
    return {(True, True): "both", (True, False): "biopsy", (False, True): "mag"}.get(
        (bool(has_biopsy_marker), bool(is_mag_view)), "neither"
    )
