"""Per-frame display attributes of enhanced (functional-group) objects, brought to the top level.

Enhanced IODs such as Breast Projection X-Ray (…13.1.4/5) and Breast Tomosynthesis (…13.1.3) keep the window,
the rescale and the side not at the top level but in functional-group macros (PS3.3 C.7.6.16):

- Frame VOI LUT (C.7.6.16.2.10, `FrameVOILUTSequence`): Window Center/Width, VOI LUT Function, explanations, and
  in the "with LUT" variant a VOI LUT Sequence;
- Pixel Value Transformation (C.7.6.16.2.9, `PixelValueTransformationSequence`): Rescale Slope/Intercept/Type
  (and a Modality LUT Sequence in later editions);
- Frame Anatomy (C.7.6.16.2.8, `FrameAnatomySequence`): Frame Laterality, the side of a Breast Projection
  object, whose top level has no (0020,0062) Image Laterality;
- Pixel Measures (C.7.6.16.2.1, `PixelMeasuresSequence`): Pixel Spacing, the only pixel pitch such an object
  carries (without it the display was not drawn at its pitch: stop 64's probe of real images re-encoded).

A macro sits in the Shared Functional Groups Sequence (same for every frame) or in each item of the Per-frame
Functional Groups Sequence; `frame_attributes` looks in Shared first, then in the frame's Per-frame item, and
returns a data set whose top level holds what it found, so the rest of the display pipeline reads one place.
"""

from __future__ import annotations

import contextlib

from pydicom.dataset import Dataset

MACROS: dict[str, tuple[str, ...]] = {
    "FrameVOILUTSequence": (
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "WindowCenterWidthExplanation",
        "VOILUTSequence",
    ),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence"),
    "FrameAnatomySequence": ("FrameLaterality",),
    "PixelMeasuresSequence": ("PixelSpacing",),
}


_SHARED, _PER_FRAME = 0x52009229, 0x52009230  # (5200,9229) Shared, (5200,9230) Per-frame Functional Groups Sequence


def macro_item(ds: Dataset, macro: str, frame: int = 0) -> Dataset | None:
    """The item of `macro` that applies to `frame`: Shared Functional Groups first, then Per-frame; else None."""
    for groups_keyword, index in (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", frame)):
        try:
            groups = ds.get(groups_keyword)
            if groups and index < len(groups):
                items = groups[index].get(macro)
                if items:
                    return items[0]
        except Exception:  # a malformed sequence counts as absent
            continue
    return None


def frame_attributes(ds: Dataset, frame: int = 0) -> Dataset:
    """`ds` itself when no macro of MACROS applies to `frame`; otherwise a
    shallow copy whose top level holds the macro's attributes (they replace any top-level ones, which enhanced
    IODs do not define). The copy shares element objects with `ds` and keeps its file meta and encoding.
    """
    if _SHARED not in ds and _PER_FRAME not in ds:  # the common case (non-enhanced objects): no copy, no lookups
        return ds
    found = {macro: item for macro in MACROS if (item := macro_item(ds, macro, frame)) is not None}
    if not found:
        return ds
    out = Dataset()
    for elem in ds.elements():
        out.add(elem)
    for attribute in ("file_meta", "preamble", "filename"):
        if hasattr(ds, attribute):
            setattr(out, attribute, getattr(ds, attribute))
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        out.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    for macro, item in found.items():
        for keyword in MACROS[macro]:
            if keyword in out:
                del out[keyword]
            if keyword in item:
                out.add(item[keyword])
    return out
