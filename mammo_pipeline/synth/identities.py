"""Names for synthetic hospitals and patients, and deterministic UIDs.

Everything is a pure function of its arguments (seed, hospital, drop, index), so two runs agree byte for
byte and a new drop never reuses a UID of an earlier one.
"""

from __future__ import annotations

import hashlib
import uuid

import numpy as np

from mammo_pipeline.synth.dicom_writer import Patient

_HOSPITALS = (
    "royal-surrey-county",
    "leeds-general-infirmary",
    "addenbrookes-cambridge",
    "st-georges-tooting",
    "royal-victoria-newcastle",
    "bristol-royal-infirmary",
    "queen-elizabeth-birmingham",
    "ninewells-dundee",
    "royal-berkshire-reading",
    "norfolk-and-norwich",
    "derriford-plymouth",
    "john-radcliffe-oxford",
    "manchester-royal-infirmary",
    "royal-liverpool",
    "nottingham-city",
    "royal-devon-exeter",
    "kings-college-london",
    "northern-general-sheffield",
    "university-hospital-of-wales",
    "aberdeen-royal-infirmary",
    "james-cook-middlesbrough",
    "royal-cornwall-truro",
    "musgrove-park-taunton",
    "royal-sussex-county",
    "frimley-park",
)
_GIVEN = (
    "Margaret",
    "Susan",
    "Patricia",
    "Linda",
    "Elizabeth",
    "Janet",
    "Karen",
    "Helen",
    "Sarah",
    "Alison",
    "Julie",
    "Gillian",
    "Deborah",
    "Amanda",
    "Fiona",
    "Catherine",
    "Joanne",
    "Nicola",
    "Claire",
    "Priya",
    "Aisha",
    "Mei",
    "Agnieszka",
    "Bernadette",
    "Siobhan",
    "Rhiannon",
    "Morag",
    "Yvonne",
    "Wendy",
    "Lorraine",
)
_FAMILY = (
    "Smith",
    "Jones",
    "Taylor",
    "Brown",
    "Williams",
    "Wilson",
    "Johnson",
    "Davies",
    "Robinson",
    "Wright",
    "Thompson",
    "Evans",
    "Walker",
    "White",
    "Roberts",
    "Green",
    "Hall",
    "Wood",
    "Jackson",
    "Clarke",
    "Patel",
    "Khan",
    "Singh",
    "Macdonald",
    "Campbell",
    "Murphy",
    "O'Neill",
    "Hughes",
    "Edwards",
    "Kowalski",
)


def hospital_slugs(n: int) -> list[str]:
    """The first `n` hospital folder names: plausible UK hospitals, comma-free lower-case slugs."""
    if n < 0:
        raise ValueError(f"number of hospitals must be >= 0, got {n}")
    base = len(_HOSPITALS)
    return [_HOSPITALS[i % base] + (f"-{i // base + 1}" if i >= base else "") for i in range(n)]


def institution_name(slug: str) -> str:
    """'royal-surrey-county' -> 'Royal Surrey County Hospital'."""
    words = slug.replace("-and-", " & ").replace("-of-", " of ").split("-")
    name = " ".join(w if w in ("&", "of") else w.capitalize() for w in " ".join(words).split())
    return name if name.endswith(("Infirmary", "Hospital")) else f"{name} Hospital"


def stable_int(*parts: object) -> int:
    """A 64-bit integer hash of `parts` that does not change between runs or Python versions."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def rng_for(*parts: object) -> np.random.Generator:
    return np.random.default_rng(stable_int(*parts))


def make_uid(*parts: object) -> str:
    """A 2.25 UID (PS3.5 B.2: a UUID as one integer) derived from `parts` (seed, hospital, drop, ...).

    pydicom's generate_uid ignores entropy sources when prefix is None, hence our own hash.
    """
    digest = hashlib.sha256("|".join(map(str, ("mammo-synth", *parts))).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def make_patient(seed: int, hospital: str, index: int) -> Patient:
    """Patient `index` of a hospital's population."""
    rng = rng_for(seed, hospital, "patient", index)
    given, family = rng.choice(_GIVEN), rng.choice(_FAMILY)
    year = int(rng.integers(1940, 1978))
    birth = f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    prefix = "".join(w[0] for w in hospital.split("-")[:3]).upper()
    return Patient(
        patient_id=f"{prefix}{stable_int(seed, hospital, index) % 10**7:07d}",
        name=f"{family.upper()}^{given}",
        birth_date=birth,
    )
