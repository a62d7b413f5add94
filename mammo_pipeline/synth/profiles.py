"""Vendor profiles for synthetic drops (research note dicom_mammo.md §7) and the class mix.

Each profile is one kind of machine: matrix, spacing, bit depth, photometric, VOI, transfer syntax and the
inconsistent way it (does not) mark magnification views. Values marked † in the note are test scenarios,
not ground truth. Every hard case of the display pipeline is carried by at least one profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import uid

# Share of images per class in a drop; studies are drawn so the image mix matches in expectation.
CLASS_MIX: dict[str, float] = {"neither": 0.55, "biopsy": 0.20, "mag": 0.17, "both": 0.08}
# Share of a two-matrix machine's studies stored at its other matrix (VendorProfile.other_matrix): † (no published
# figure; the eight Hologic headers of OMI-DB in dicom_mammo.md are all 18 x 24, so neither size is rare)
OTHER_MATRIX_SHARE = 0.5

JPEG_LOSSLESS_SV1 = uid.JPEGLosslessSV1  # 1.2.840.10008.1.2.4.70
JPEG_LOSSLESS = uid.JPEGLossless  # 1.2.840.10008.1.2.4.57 (any predictor)


@dataclass(frozen=True)
class VendorProfile:
    """One machine type, as seen in its DICOM headers."""

    key: str
    manufacturer: str
    model_name: str
    rows: int
    columns: int
    pixel_spacing: float  # mm at full size
    bits_stored: int
    # The machine's other stored matrix (rows, columns at the same spacing): a detector that takes an 18 x 24 and
    # a 24 x 30 cm paddle stores each field at its own size (dicom_mammo.md §7 Rows x Cols and realism.md §3:
    # Hologic 4096 x 3328 / 3328 x 2560, GE 3062 x 2394 / 2294 x 1914, Fujifilm 5928 x 4728 / 4740 x 3540),
    # in practice chosen by the size of the woman's breast; here drawn per study (drops.study_matrix), in
    # OTHER_MATRIX_SHARE of a machine's studies (contact views)
    other_matrix: tuple[int, int] | None = None
    photometric: str = "MONOCHROME2"
    presentation_lut_shape: str | None = "IDENTITY"
    # (center, width) as fractions of the stored range; several pairs = several windows
    windows: tuple[tuple[float, float], ...] = ((0.5, 1.0),)
    window_explanations: tuple[str, ...] = ()
    voi_lut_function: str | None = None
    voi_lut_sequence_fraction: float = 0.0  # share of files that also carry a VOI LUT Sequence
    voi_lut_only: bool = False  # VOI LUT Sequence instead of windows
    rescale: bool = True
    transfer_syntax: str = uid.ExplicitVRLittleEndian
    jpeg_predictor: int = 1  # for JPEG Lossless (.57 / .70)
    alt_transfer_syntax: str | None = None  # some files of this machine use another syntax
    alt_transfer_fraction: float = 0.0
    grid_contact: str | None = "HTC_IN"
    # Magnification coding: where the site records it (0..1 fractions of mag images)
    mag_modifier_scheme: str | None = None  # 'SNM3' | 'SRT' | 'SCT' | None
    mag_modifier_fraction: float = 0.0
    mag_in_series_description: float = 0.0
    magnification_factor_right: float = 0.0  # share of mag images whose ERMF is the true factor (else 1.0)
    spot_modifier_fraction: float = 0.0
    partial_view: str | None = None  # '' (empty) or 'NO' on mag/spot views, None = absent
    for_processing_fraction: float = 0.0  # share of presentation images that get a For Processing partner
    for_processing_syntax: str = uid.ExplicitVRLittleEndian
    compression_force: tuple[float, float] | None = (80.0, 130.0)
    protocol_name: str | None = None
    software_versions: str = "1.0"
    secondary_capture: bool = False  # digitized film: Secondary Capture, ConversionType DF, no detector tags


MAG_CODES: dict[str, tuple[str, str]] = {  # scheme -> (code value, meaning) for Magnification (CID 4015)
    "SNM3": ("R-102D6", "magnification"),
    "SRT": ("R-102D6", "magnification"),
    "SCT": ("399163009", "magnification"),
}
SPOT_CODES: dict[str, tuple[str, str]] = {
    "SNM3": ("R-102D7", "spot compression"),
    "SRT": ("R-102D7", "spot compression"),
    "SCT": ("399055006", "spot compression"),
}
VIEW_CODES: dict[str, dict[str, tuple[str, str]]] = {  # scheme -> view -> (code, meaning) (CID 4014)
    "SNM3": {"CC": ("R-10242", "cranio-caudal"), "MLO": ("R-10226", "medio-lateral oblique")},
    "SRT": {"CC": ("R-10242", "cranio-caudal"), "MLO": ("R-10226", "medio-lateral oblique")},
    "SCT": {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")},
}

PROFILES: dict[str, VendorProfile] = {
    p.key: p
    for p in (
        VendorProfile(
            key="H-DIM",
            manufacturer="HOLOGIC, Inc.",
            model_name="Selenia Dimensions",
            rows=4096,
            columns=3328,
            pixel_spacing=0.070,
            bits_stored=12,
            other_matrix=(3328, 2560),  # the 18 x 24 paddle: the Lorad Selenia's (and the NYU images') matrix
            windows=((0.5, 1.0),),
            transfer_syntax=uid.JPEG2000Lossless,
            mag_modifier_scheme="SNM3",
            mag_modifier_fraction=0.8,
            mag_in_series_description=0.7,
            magnification_factor_right=1.0,
            spot_modifier_fraction=0.7,
            partial_view="NO",
            for_processing_fraction=0.15,
            for_processing_syntax=uid.JPEGLSLossless,
            compression_force=(40.0, 130.0),
            software_versions="1.9.0.7",
        ),
        VendorProfile(
            key="H-LOR",
            manufacturer="HOLOGIC, Inc.",
            model_name="Lorad Selenia",
            rows=3328,
            columns=2560,
            pixel_spacing=0.070,
            bits_stored=12,
            windows=((0.5, 1.0),),
            transfer_syntax=uid.ExplicitVRLittleEndian,
            partial_view="",
            for_processing_fraction=0.15,
            for_processing_syntax=uid.RLELossless,
            protocol_name="Data anonymised",
            software_versions="Data anonymised",
        ),
        VendorProfile(
            key="GE-ESS",
            manufacturer="GE MEDICAL SYSTEMS",
            model_name="Senographe Essential",
            rows=3062,
            columns=2394,
            pixel_spacing=0.100,
            bits_stored=12,
            other_matrix=(2294, 1914),  # the 19 x 23 cm field (Senographe 2000D / DS and the small paddle)
            presentation_lut_shape="IDENTITY",
            windows=((0.5, 0.9), (0.55, 0.7), (0.45, 1.1), (0.5, 0.8)),
            window_explanations=("NORMAL", "HARDER", "SOFTER", "USER"),
            voi_lut_function="SIGMOID",
            voi_lut_sequence_fraction=0.2,
            rescale=False,
            transfer_syntax=JPEG_LOSSLESS_SV1,
            mag_modifier_scheme="SCT",
            mag_modifier_fraction=0.6,
            magnification_factor_right=0.8,
            spot_modifier_fraction=0.8,
            software_versions="ADS_55.10",
        ),
        VendorProfile(
            key="SIE-INS",
            manufacturer="SIEMENS",
            model_name="Mammomat Inspiration",
            rows=3584,
            columns=2816,
            pixel_spacing=0.085,
            bits_stored=12,
            windows=((0.5, 0.95), (0.45, 0.7)),
            voi_lut_function="LINEAR",
            transfer_syntax=uid.JPEGLSLossless,  # the note guesses J2K (†); JPEG-LS keeps .80 covered
            grid_contact="NONE",
            magnification_factor_right=1.0,
            software_versions="VB30",
        ),
        VendorProfile(
            key="FUJ-AMU",
            manufacturer="FUJIFILM Corporation",
            model_name="FDR-3500",
            rows=4740,
            columns=3540,
            pixel_spacing=0.050,
            bits_stored=10,
            other_matrix=(5928, 4728),  # the 24 x 30 paddle
            photometric="MONOCHROME1",
            presentation_lut_shape="INVERSE",
            windows=((0.5, 1.0),),
            voi_lut_function="LINEAR_EXACT",
            transfer_syntax=JPEG_LOSSLESS,
            jpeg_predictor=6,
            mag_modifier_scheme="SRT",
            mag_modifier_fraction=0.5,
            magnification_factor_right=0.5,
            spot_modifier_fraction=0.5,
            software_versions="A08",
        ),
        VendorProfile(
            key="PHI-MD",
            manufacturer="Philips Digital Mammography Sweden AB",
            model_name="MicroDose SI",
            rows=5200,
            columns=4800,
            pixel_spacing=0.050,
            bits_stored=14,
            presentation_lut_shape=None,
            windows=(),
            voi_lut_only=True,
            rescale=False,
            transfer_syntax=uid.ExplicitVRLittleEndian,
            alt_transfer_syntax=uid.ImplicitVRLittleEndian,
            alt_transfer_fraction=0.3,
            grid_contact="NONE",
            mag_in_series_description=1.0,
            compression_force=None,
            software_versions="8.2",
        ),
        # Digitized screen-film prior (realism.md §1.1: film beta ~2.8; DDSM-style laser scan of an 18 x 24 cm
        # film at 50 um, 12 bits): Secondary Capture with Modality MG, no vendor or detector attributes.
        VendorProfile(
            key="FILM-DF",
            manufacturer="",
            model_name="",
            rows=4800,
            columns=3600,
            pixel_spacing=0.050,
            bits_stored=12,
            windows=((0.5, 1.0),),
            grid_contact=None,
            mag_in_series_description=0.5,
            compression_force=None,
            software_versions="",
            secondary_capture=True,
        ),
    )
}
PROFILE_ORDER: tuple[str, ...] = tuple(PROFILES)


def machines_of(hospital_index: int) -> list[str]:
    """The 2-3 profiles a hospital runs (odd hospitals 3), consecutive in PROFILE_ORDER, so hospitals 0-2
    together cover all seven (the digitized-film "machine" stands for a site's scanned priors)."""
    n = len(PROFILE_ORDER)
    start = 2 * hospital_index + hospital_index // 2
    count = 3 if hospital_index % 2 == 1 else 2
    return [PROFILE_ORDER[(start + k) % n] for k in range(count)]
