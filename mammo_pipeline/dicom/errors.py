"""Why an image cannot be used: one exception family whose `reason` is the quarantine code.

The index and the cache catch `UnusableImage`, write `reason` and `str(exc)` to the quarantine table and carry
on, so a bad file costs one row, never a run. Messages name the file and, where one is to blame, the tag:
``NoPixelData(f"{path}: no (7FE0,0010) Pixel Data element")``.
"""

from __future__ import annotations


class UnusableImage(Exception):
    """An image the pipeline cannot read or render; `reason` is its quarantine code."""

    reason: str = "unusable"


class NotDicom(UnusableImage):
    """Not a DICOM file (no DICM prefix and no readable dataset)."""

    reason = "not_dicom"


class Truncated(UnusableImage):
    """The file ends before its header or its Pixel Data does."""

    reason = "truncated"


class NoPixelData(UnusableImage):
    """No (7FE0,0010) Pixel Data, or it is empty."""

    reason = "no_pixel_data"


class NotMammography(UnusableImage):
    """A readable image that is not a mammogram (Modality / SOP Class); decided by the index, not by render."""

    reason = "not_mammography"


class Undecodable(UnusableImage):
    """Pixel Data that no installed decoder could decode (corrupt codestream, missing plugin)."""

    reason = "undecodable"


class Unsupported(UnusableImage):
    """A legal image this pipeline does not handle (colour, float pixels, unknown transfer syntax)."""

    reason = "unsupported"


class InvalidUID(UnusableImage):
    """A SOP / Study / Series Instance UID that is not a DICOM UID (digits and dots, <= 64 characters)."""

    reason = "invalid_uid"


class Tomosynthesis(UnusableImage):
    """A tomosynthesis slice or projection stack: not a 2D view, never rendered or trained on."""

    reason = "tomosynthesis"


class ForProcessing(UnusableImage):
    """A For Processing image where only For Presentation images are shown (`mammo convert`, like the cache)."""

    reason = "for_processing"


REASONS: tuple[str, ...] = tuple(
    cls.reason
    for cls in (
        NotDicom,
        Truncated,
        NoPixelData,
        NotMammography,
        Undecodable,
        Unsupported,
        InvalidUID,
        Tomosynthesis,
        ForProcessing,
    )
)
