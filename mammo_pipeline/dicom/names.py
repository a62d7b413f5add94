"""How patient names are written: scripts that put no space between a family and a given name.

Chinese, Japanese and Korean names are short (most Chinese family names are one character) and written without a
separator ("王芳" for 王^芳), so the rules made for Latin names (a part of 2-3 characters or more, a match on word
boundaries) miss them; `dicom/headers.py::scrub_identifiers` and `landing._names_it` ask `unspaced` instead.
"""

from __future__ import annotations

import re
import unicodedata

# CJK Unified Ideographs and Extension A, compatibility ideographs, Hiragana and Katakana, Hangul syllables (Unicode
# blocks; https://www.unicode.org/charts/)
_UNSPACED = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


def unspaced(text: str) -> bool:
    """True when `text` holds a character of a script written without spaces between the parts of a name."""
    return _UNSPACED.search(text) is not None


def fold(text: str) -> str:
    """`text` with case and accents aside ("Núñez" -> "nunez"): case-folded, decomposed (NFKD), without its
    combining marks."""
    return fold_with_origin(text)[0]


def fold_with_origin(text: str) -> tuple[str, list[int]]:
    """(`fold(text)`, for each of its characters the index in `text` it came from): a match found on the folded
    text ("NUNEZ" for Núñez) names what to replace in the text as typed."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFKD", ch.casefold()):
            if not unicodedata.combining(c):
                out.append(c)
                origin.append(i)
    return "".join(out), origin
