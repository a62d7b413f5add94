"""Seeded fuzz of the index and the cache: hostile and broken files never fail a partition or get lost (issue 14).

`mammo synth` writes small drops for three hospitals (together all seven vendor profiles, uncompressed and
compressed transfer syntaxes); from those files the fuzzer makes ~300 mutants, seeded: hostile header values
written as raw bytes (Number of Frames 1e30, traversal UIDs, zero or huge Rows, Bits Allocated 64, NaN windows,
...), flipped bytes in the header and in the pixel data, cuts at random offsets, inserted and zeroed blocks.
Indexing and caching every hospital must then raise nothing, and every file must end up either indexed or
quarantined with a reason, every indexed image either cached or quarantined by the cache with a reason.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from mammo_pipeline.cache import cache_hospital, read_manifest
from mammo_pipeline.dicom.index import index_hospital
from mammo_pipeline.landing import iter_dicom_files
from mammo_pipeline.synth.drops import generate_drops
from mammo_pipeline.warehouse import read_partition

SEED = 14
HOSPITALS = 3  # hospitals 0-2 run all seven vendor profiles between them
MUTANTS_PER_HOSPITAL = 100
HOSTILE_VALUES: list[tuple[int, str, bytes]] = [
    (0x00280008, "IS", b"-1"),  # Number of Frames
    (0x00280008, "IS", b"abc"),
    (0x00280010, "US", b"\x00\x00"),  # Rows
    (0x00280010, "US", b"\xff\xff"),
    (0x00280011, "US", b"\x00\x00"),  # Columns
    (0x00280100, "US", b"\x40\x00"),  # Bits Allocated 64
    (0x00280100, "US", b"\x07\x00"),
    (0x00280101, "US", b"\x28\x00"),  # Bits Stored 40
    (0x00280102, "US", b"\xff\x00"),  # High Bit 255
    (0x00280002, "US", b"\x03\x00"),  # Samples per Pixel 3
    (0x00280004, "CS", b"YBR_FULL"),
    (0x00280004, "CS", b"\x00\x00"),
    (0x00281050, "DS", b"nan "),  # Window Center
    (0x00281050, "DS", b"1e400 "),
    (0x00281051, "DS", b"0 "),  # Window Width
    (0x00281051, "DS", b"-inf"),
    (0x00281052, "DS", b"1e308 "),  # Rescale Intercept
    (0x00281053, "DS", b"0 "),  # Rescale Slope
    (0x00280030, "DS", b"abc\\def "),  # Pixel Spacing
    (0x00080018, "UI", b"../../../../../../escaped-1\x00"),  # SOP Instance UID
    (0x00080018, "UI", b"1.2.3/../../x"),
    (0x00080018, "UI", b"\x00\x00"),
    (0x00080018, "UI", b"1." * 100),
    (0x0020000D, "UI", b"../../study\x00"),  # Study Instance UID
    (0x00100020, "LO", b"../../../etc/passwd"),  # Patient ID
    (0x00100020, "LO", b"x" * 5000),
    (0x00185101, "CS", b"\xff\xfe\x00garbage"),  # View Position
    (0x00200062, "CS", b"L" * 1000),  # Image Laterality
    (0x00080060, "CS", b"MG\x00\x00"),  # Modality
    (0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.1.2.1\x00"),  # SOP Class UID: For Processing
    (0x00082218, "SQ", b"\xff" * 16),  # Anatomic Region Sequence, not a sequence
]

# Values the index cannot take yet: write_index raises OverflowError outside its per-file handling (issue 17).
OVERFLOW_VALUES: list[tuple[int, str, bytes]] = [
    (0x00280008, "IS", b"1e30"),  # Number of Frames
    (0x00280008, "IS", b"9223372036854775807"),
]


def _with_value(data: bytes, tag: int, vr: str, value: bytes) -> bytes:
    """The file with one element replaced by raw bytes (pydicom writes them as given, no validation)."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if len(value) % 2:
        value += b" "
    ds[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, ds.is_implicit_VR, ds.is_little_endian, True)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def _fresh_uid(data: bytes, uid: str) -> bytes:
    """The file as a new image (new SOP Instance UID), so the index reads it instead of skipping a duplicate."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def _mutate(data: bytes, rng: np.random.Generator, i: int, values: list) -> tuple[str, bytes]:
    """Mutant `i` of a valid file: (kind, bytes). The first len(values) apply each hostile value once."""
    kinds = ["value", "value", "flip_header", "flip_pixels", "cut", "insert", "zero"]
    kind = "value" if i < len(values) else rng.choice(kinds)
    buf = bytearray(data)
    if kind == "value":
        tag, vr, value = values[i if i < len(values) else int(rng.integers(len(values)))]
        try:
            return f"value {tag:08x}", _with_value(data, tag, vr, value)
        except Exception:  # pydicom could not even rewrite it: fall back to flipping bytes
            kind = "flip_header"
    if kind in ("flip_header", "flip_pixels"):
        lo, hi = (128, min(len(buf), 2048)) if kind == "flip_header" else (min(len(buf) - 1, 2048), len(buf))
        for pos in rng.integers(lo, max(hi, lo + 1), size=int(rng.integers(1, 9))):
            buf[int(pos) % len(buf)] ^= 1 << int(rng.integers(8))
    elif kind == "cut":
        buf = buf[: int(rng.integers(0, len(buf)))]
    elif kind == "insert":
        pos = int(rng.integers(128, len(buf)))
        buf[pos:pos] = rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:
        pos = int(rng.integers(128, len(buf)))
        buf[pos : pos + int(rng.integers(1, 512))] = b"\x00" * len(buf[pos : pos + 512])
    return str(kind), bytes(buf)


@pytest.fixture(
    scope="module",
    params=["hostile", "overflow"],
)
def fuzzed_home(request, tmp_path_factory):
    """MAMMO_HOME with synthetic drops plus a `fuzz` drop of mutants per hospital (overflow values with "overflow")."""
    values = HOSTILE_VALUES + (OVERFLOW_VALUES if request.param == "overflow" else [])
    from mammo_pipeline.settings import Settings

    home = tmp_path_factory.mktemp("fuzz") / "home"
    settings = Settings.under(home, workers=1, salt="fuzz-salt", display_size=256, model_size=64).ensure_dirs()
    generate_drops(settings.landing, HOSPITALS, 2, seed=SEED, scale=0.05, drop="d1", workers=1)
    rng = np.random.default_rng(SEED)
    kinds: dict[str, str] = {}
    for hospital in sorted(p.name for p in settings.landing.iterdir() if not p.name.startswith("_")):
        sources = [path for _, path in iter_dicom_files(settings.landing, hospital)]
        for i in range(MUTANTS_PER_HOSPITAL):
            source = sources[int(rng.integers(len(sources)))]
            kind, data = _mutate(_fresh_uid(source.read_bytes(), f"2.25.{SEED}{i:04d}{len(kinds)}"), rng, i, values)
            target = settings.landing / hospital / "fuzz" / f"m{i:03d}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            kinds[str(target)] = kind
    return settings, kinds


def test_fuzzed_drops_never_fail_a_partition_and_lose_no_file(fuzzed_home):
    settings, kinds = fuzzed_home
    assert len(kinds) == HOSPITALS * MUTANTS_PER_HOSPITAL
    start = time.monotonic()
    failures = {}
    for hospital in sorted({Path(k).relative_to(settings.landing).parts[0] for k in kinds}):
        try:  # neither stage may raise, whatever the files hold
            index_hospital(settings, hospital)
            cache_hospital(settings, hospital)
        except Exception as exc:
            failures[hospital] = f"{type(exc).__name__}: {exc}"
    assert not failures, f"partitions failed: {failures}"
    for hospital in sorted({Path(k).relative_to(settings.landing).parts[0] for k in kinds}):
        files = [path for _, path in iter_dicom_files(settings.landing, hospital)]

        index = read_partition(settings, "dicom_index", hospital)
        quarantine = read_partition(settings, "quarantine", hospital)
        at_index = quarantine[quarantine["stage"] == "index"]
        at_cache = quarantine[quarantine["stage"] == "cache"]
        # Every file is indexed or quarantined with a reason, exactly once.
        assert len(index) + len(at_index) == len(files), hospital
        paths = list(index["rel_path"]) + list(at_index["rel_path"])
        assert len(set(paths)) == len(paths)
        assert quarantine["reason"].notna().all() and (quarantine["reason"].astype(str) != "").all()
        # Every indexed For Presentation image is cached or quarantined by the cache with a reason.
        shown = index[~index["for_processing"].fillna(False).astype(bool)].drop_duplicates("sop_instance_uid")
        cached = set(read_manifest(settings, hospital)["sop_instance_uid"])
        assert set(shown["sop_instance_uid"]) == cached | (
            set(at_cache["sop_instance_uid"]) & set(shown["sop_instance_uid"])
        )
        assert not cached & set(at_cache["sop_instance_uid"])
    assert not list(settings.home.parent.rglob("escaped-1*"))  # no hostile UID wrote outside its folder
    assert time.monotonic() - start < 120, "the fuzz run should stay well inside CI's time"
