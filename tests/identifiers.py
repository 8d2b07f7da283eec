"""The test data's patient identifiers, in every form a log line could show them, and
finding them in a log."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom

from shared.naming import safe_component

# Values of the test data that are no evidence of a leak when found in a log:
# - "dicom2nifti" is the patient name and ID of the dicom2nifti test series, and also the name
#   of a conversion engine, which the converter's lines may name;
# - values under four characters ("999", "O") match time stamps, UIDs or ordinary words.
# Other ordinary words among the names ("Development", "Anonymous") are looked for: no line
# of dcmdb's has a reason to say them.
NOT_TELLING = {"dicom2nifti"}
SHORTEST = 4
# Placeholder name parts that are ordinary words on their own; the whole names
# ("Last Name^First Name") are still looked for.
ORDINARY_NAME_PARTS = {"Last Name", "First Name", "Lastname", "Firstname", "Last", "First", "Test"}


def patient_identifiers(files: list[Path]) -> set[str]:
    """Every form in which a patient's name, ID or birth date could show in a log line."""
    found: set[str] = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        name = str(ds.get("PatientName", "") or "").strip()
        patient_id = str(ds.get("PatientID", "") or "").strip()
        birth_date = str(ds.get("PatientBirthDate", "") or "").strip()
        # A name as stored, as a reader would write it, and its longer parts.
        parts = [p.strip() for p in name.split("^") if p.strip()]
        found |= {name, " ".join(parts)}
        found |= {p for p in parts if len(p) >= 6 and p not in ORDINARY_NAME_PARTS}
        # An ID as stored and as it appears in study folder names.
        if patient_id:
            found |= {patient_id, safe_component(patient_id, "-")}
        if len(birth_date) == 8 and birth_date.isdigit():
            found |= {birth_date, f"{birth_date[:4]}-{birth_date[4:6]}-{birth_date[6:]}"}
    # A value of separators alone (a name sent as "^^^^") identifies no one, and would be
    # found in any traceback's ^^^^ underline.
    telling = {v for v in found if any(c.isalnum() for c in v)}
    return {v for v in telling if len(v) >= SHORTEST and v not in NOT_TELLING}


def leaks(log: str, identifiers: set[str]) -> list[str]:
    """The identifiers found in ``log``; digits only where no other digit touches them, as
    UIDs are long runs of digits in which a birth date may occur by chance."""
    found = []
    for value in sorted(identifiers):
        pattern = re.escape(value)
        if value[0].isdigit():
            pattern = rf"(?<![0-9]){pattern}(?![0-9])"
        if re.search(pattern, log):
            found.append(value)
    return found
