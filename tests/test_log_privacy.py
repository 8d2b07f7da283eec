"""The logs of a whole run, as ``dcmdb up`` prints them at the default level: every test
file sent with storescu, filed and converted. They hold no patient name, ID or birth date,
in text or in JSON lines; in JSON, every line is an object naming its service, and the
lines about a message carry its id and its study's UID."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from shared.naming import safe_component
from tests.conftest import fresh_vhost
from tests.system import Dcmdb, dicom_files, send_dicom, settled, wait_for

pytestmark = pytest.mark.e2e

# Values of the test data that are no evidence of a leak when found in a log:
# - "dicom2nifti" is the patient name and ID of the dicom2nifti test series, and also the name
#   of a conversion engine, which the converter's lines may name;
# - values under four characters ("999", "O") match time stamps, UIDs or ordinary words.
NOT_TELLING = {"dicom2nifti"}
SHORTEST = 4
# Placeholder name parts that are ordinary words on their own; the whole names
# ("Last Name^First Name") are still looked for.
ORDINARY_NAME_PARTS = {"Last Name", "First Name", "Lastname", "Firstname", "Last", "First", "Test"}


@dataclass(frozen=True)
class Run:
    log: str
    study_uids: set[str]


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
    return {v for v in found if len(v) >= SHORTEST and v not in NOT_TELLING}


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


@pytest.fixture(scope="module")
def whole_run(
    tmp_path_factory: pytest.TempPathFactory, testdata: Path
) -> Iterator[Callable[[str], Run]]:
    """``whole_run(format)``: the run in that log format, made once for the module."""
    runs: dict[str, Run] = {}
    vhosts: list[Iterator[str]] = []

    def run(fmt: str) -> Run:
        if fmt not in runs:
            vhost = fresh_vhost()
            vhosts.append(vhost)
            runs[fmt] = _run(tmp_path_factory.mktemp(fmt), next(vhost), fmt, testdata)
        return runs[fmt]

    yield run
    for vhost in vhosts:
        next(vhost, None)  # deletes it


def _run(folder: Path, broker_url: str, fmt: str, testdata: Path) -> Run:
    data = folder / "data"
    dcmdb = Dcmdb(
        data,
        broker_url,
        f"sqlite:///{data / 'catalog.sqlite'}",
        extra_env={"DCMDB_LOG_FORMAT": fmt, "DCMDB_STABLE_AGE": "2"},
    )
    files = dicom_files(testdata)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    try:
        dcmdb.start("up")
        dcmdb.wait_until_listening()
        send_dicom(dcmdb.port, files)
        sop_uids = {str(ds.SOPInstanceUID) for ds in headers}
        wait_for(lambda: settled(dcmdb.database_url, sop_uids), 600, "everything converted")
    finally:
        dcmdb.stop()
    return Run(dcmdb.log(), {str(ds.StudyInstanceUID) for ds in headers})


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_logs_hold_no_patient_name_id_or_birth_date(
    fmt: str, whole_run: Callable[[str], Run], testdata: Path
) -> None:
    identifiers = patient_identifiers(dicom_files(testdata))
    assert {"FF fMRI^Laser1", "crlab", "19990101", "ROGERS_20180526"} <= identifiers
    run = whole_run(fmt)
    assert "series" in run.log and "generation" in run.log  # the run logged its work
    assert leaks(run.log, identifiers) == []


def test_the_check_finds_an_identifier_where_it_is() -> None:
    identifiers = {"FF fMRI^Laser1", "19990101", "FF_Laser1"}
    assert leaks("filed into unknown/20200101_FF_Laser1_Brain", identifiers) == ["FF_Laser1"]
    assert leaks("born 19990101.", identifiers) == ["19990101"]
    assert leaks("series 1.2.840.119990101123", identifiers) == []


def test_json_lines_name_the_service_and_the_message_and_study_they_concern(
    whole_run: Callable[[str], Run],
) -> None:
    run = whole_run("json")
    lines = [json.loads(line) for line in run.log.splitlines() if line.strip()]
    assert all(isinstance(line, dict) for line in lines)
    assert all({"time", "level", "service", "message"} <= line.keys() for line in lines)
    services = {line["service"] for line in lines}
    assert {"receiver", "sorter", "converter", "api", "retriever", "up"} <= services
    # Every service line came through logging (conversion processes included), none was
    # printed past it and wrapped by ``dcmdb up``.
    assert [line for line in lines if line["service"] != "up" and "logger" not in line] == []
    for line in lines:
        if line.get("logger", "").startswith("dicom2nifti"):  # in a conversion process
            assert "study_uid" in line and "message_id" in line, line
    about_series = re.compile(r"series (\S+) generation (\d+)")
    completed: dict[tuple[str, str], dict[str, str]] = {}
    converted: dict[tuple[str, str], dict[str, str]] = {}
    for line in lines:
        match = about_series.match(line["message"])
        if match and line["service"] in ("sorter", "converter"):
            (completed if line["service"] == "sorter" else converted)[match.groups()] = line
    assert len(converted) >= 20 and converted.keys() <= completed.keys()
    for key, line in converted.items():
        # The converter's line names the completion it handled: the sorter's message.
        assert line["message_id"] == completed[key]["message_id"]
        assert line["study_uid"] == completed[key]["study_uid"]
        uuid.UUID(line["message_id"])
    assert {line["study_uid"] for line in lines if "study_uid" in line} <= run.study_uids
