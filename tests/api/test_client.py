"""The lab client and ``dcmdb studies`` / ``dcmdb download`` against the real API.

The API runs as ``dcmdb api`` in a process of its own, on a free port, with a key, over a
SQLite catalog filled here row by row and an archive holding real DICOM and NIfTI files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from services.api.client import ApiError, ApiUnreachable, Client, extract_zip
from shared.catalog.database import open_catalog
from shared.catalog.models import Instance, NiftiOutput, Patient, Series, Study
from shared.catalog.states import ConversionState
from tests.conftest import REPO, TESTDATA
from tests.support import free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]

MR_FILES = TESTDATA / "d2n_mr_4slice_uncompressed" / "dicom"
NIFTI_FILE = TESTDATA / "d2n_mr_4slice_uncompressed" / "ref_dicom2nifti" / "001_ground_truth.nii.gz"
UTC = dt.UTC


@dataclass(frozen=True)
class Row:
    """A study of the test catalog: (uid, physician name, folder, patient, date, modalities,
    description, accession, received)."""

    uid: str
    physician_name: str
    physician_folder: str
    patient: tuple[str, str]
    study_date: str
    modalities: tuple[str, ...]
    description: str
    accession: str
    received: dt.datetime


STUDIES = [
    Row("1.2.3.1", "Smith^John", "SMITH_JOHN", ("P1", "DOE^JANE"), "20240105", ("MR",),
        "Brain MRI", "A1", dt.datetime(2024, 1, 5, 10, tzinfo=UTC)),
    Row("1.2.3.2", "Smith^John", "SMITH_JOHN", ("P2", "DOE^JOHN"), "20240210", ("CT",),
        "Chest CT", "A2", dt.datetime(2024, 2, 10, 10, tzinfo=UTC)),
    Row("1.2.3.3", "SMITH^JOHN", "SMITH_JOHN", ("P3", "ROE^RICHARD"), "", ("MR",),
        "Knee", "A3", dt.datetime(2024, 3, 1, 10, tzinfo=UTC)),
    Row("1.2.3.4", "", "UNKNOWN", ("P1", "DOE^JANE"), "20231120", ("CT", "MR"),
        "Follow-up", "A4", dt.datetime(2023, 11, 20, 10, tzinfo=UTC)),
    Row("1.2.3.5", "Miller^Ann", "MILLER_ANN", ("P3", "ROE^RICHARD"), "20240301", ("US",),
        "Abdomen", "A5", dt.datetime(2024, 3, 2, 10, tzinfo=UTC)),
]  # fmt: skip
DOWNLOAD_UID = "1.2.3.1"  # its MR series has real files, and a NIfTI volume
MR_SERIES_UID = "1.2.3.1.1"
STUDY_FOLDER = "DOE_JANE_20240105_Brain_MRI"
SERIES_FOLDER = "001_T1"


@dataclass(frozen=True)
class Api:
    url: str
    key: str
    archive: Path
    files: dict[str, bytes]  # archive path (relative) of each file of the download study

    def client(self, key: str | None = None) -> Client:
        return Client(self.url, self.key if key is None else key, timeout=30)


def fill_catalog(url: str, archive: Path) -> dict[str, bytes]:
    """The studies of STUDIES, and the real files of the download study in `archive`."""
    engine, sessions = open_catalog(url, writer=True)
    with sessions.begin() as session:
        patients: dict[str, Patient] = {}
        for row in STUDIES:
            patient_id, patient_name = row.patient
            if patient_id not in patients:
                patients[patient_id] = Patient(patient_id=patient_id, patient_name=patient_name)
            study = Study(
                study_instance_uid=row.uid,
                patient=patients[patient_id],
                physician_name=row.physician_name,
                physician_folder=row.physician_folder,
                folder=STUDY_FOLDER if row.uid == DOWNLOAD_UID else f"STUDY_{row.uid}",
                study_date=row.study_date,
                study_time="101500",
                description=row.description,
                accession_number=row.accession,
                received_at=row.received,
                last_received_at=row.received,
            )
            session.add(study)
            for number, modality in enumerate(row.modalities, start=1):
                series = Series(
                    series_instance_uid=f"{row.uid}.{number}",
                    study=study,
                    folder=SERIES_FOLDER if number == 1 else f"{number:03d}_{modality}",
                    modality=modality,
                    series_number=number,
                    received_at=row.received,
                    last_received_at=row.received,
                    completion="complete",
                    instance_count=10,
                    size_bytes=1000,
                )
                session.add(series)
        session.flush()
        files = _add_files(session, archive)
    engine.dispose()
    return files


def _add_files(session: Session, archive: Path) -> dict[str, bytes]:
    series = session.query(Series).filter_by(series_instance_uid=MR_SERIES_UID).one()
    folder = f"SMITH_JOHN/{STUDY_FOLDER}/{SERIES_FOLDER}"
    files: dict[str, bytes] = {}
    sources = sorted(MR_FILES.iterdir())[:3]
    for number, source in enumerate(sources, start=1):
        relative = f"{folder}/{source.stem}.dcm"
        content = source.read_bytes()
        _put(archive / relative, content)
        files[relative] = content
        session.add(
            Instance(
                sop_instance_uid=f"{MR_SERIES_UID}.{number}",
                series=series,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                instance_number=number,
                path=relative,
                size=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
                received_at=series.received_at,
            )
        )
    series.instance_count = len(sources)
    series.size_bytes = sum(len(c) for c in files.values())
    series.conversion = ConversionState.CONVERTED
    nifti, sidecar = (
        f"{folder}/nifti/{SERIES_FOLDER}.nii.gz",
        f"{folder}/nifti/{SERIES_FOLDER}.json",
    )
    _put(archive / nifti, NIFTI_FILE.read_bytes())
    _put(archive / sidecar, json.dumps({"Modality": "MR"}).encode())
    series.outputs.append(
        NiftiOutput(
            path=nifti,
            sidecar_path=sidecar,
            engine="dcm2niix",
            size=NIFTI_FILE.stat().st_size,
            created_at=series.received_at,
        )
    )
    return files


def _put(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """``dcmdb api`` on a free port with one read key, over the test catalog."""
    base = tmp_path_factory.mktemp("api")
    data, database = base / "data", f"sqlite:///{base / 'catalog.sqlite'}"
    files = fill_catalog(database, data / "archive")
    port, key = free_port(), secrets.token_hex(16)
    env = {name: value for name, value in os.environ.items() if not name.startswith("DCMDB_")}
    env |= {
        "PYTHONPATH": str(REPO),
        "DCMDB_DATA_DIR": str(data),
        "DCMDB_DATABASE_URL": database,
        "DCMDB_API_PORT": str(port),
        "DCMDB_API_KEYS": f"{key}:read",
    }
    log = base / "api.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.commands.cli", "api"],
            cwd=base,  # no .env of the repository applies
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or _healthy(url), 60, "the API to start")
        assert process.poll() is None, log.read_text()
        yield Api(url, key, data / "archive", files)
    finally:
        process.terminate()
        process.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def uids(studies: object) -> list[str]:
    return [study.study_uid for study in studies]  # type: ignore[attr-defined]


# --- the client ----------------------------------------------------------------------------


@pytest.mark.parametrize(("sort", "order"), [("received", "desc"), ("study_date", "asc")])
def test_iter_studies_sees_every_study_once_across_pages(api: Api, sort: str, order: str) -> None:
    with api.client() as client:
        first = client.studies(limit=2, sort=sort, order=order)  # type: ignore[typeddict-item]
        seen = uids(client.iter_studies(limit=2, sort=sort, order=order))  # type: ignore[typeddict-item]
    assert len(first.items) == 2 and first.next is not None
    assert seen[:2] == uids(first.items)
    assert sorted(seen) == sorted(row.uid for row in STUDIES)  # each exactly once
    if sort == "received":
        by_received = sorted(STUDIES, key=lambda row: row.received, reverse=True)
        assert seen == [row.uid for row in by_received]
    else:
        dates = [row.study_date for row in sorted(STUDIES, key=lambda r: r.study_date)]
        assert [next(r for r in STUDIES if r.uid == uid).study_date for uid in seen] == dates


def test_filters_reach_the_api(api: Api) -> None:
    with api.client() as client:

        def found(**filters: object) -> set[str]:
            return set(uids(client.iter_studies(**filters)))  # type: ignore[arg-type]

        smith = {"1.2.3.1", "1.2.3.2", "1.2.3.3"}
        assert found(physician="SMITH_JOHN") == smith
        assert found(physician="smith^john") == smith
        assert found(physician="Nobody^Here") == set()
        assert found(patient_id="P3") == {"1.2.3.3", "1.2.3.5"}
        assert found(patient_name="doe*") == {"1.2.3.1", "1.2.3.2", "1.2.3.4"}
        assert found(study_date="20240101-20240229") == {"1.2.3.1", "1.2.3.2"}
        assert found(study_date=dt.date(2023, 11, 20)) == {"1.2.3.4"}
        assert found(modality="mr") == {"1.2.3.1", "1.2.3.3", "1.2.3.4"}
        assert found(accession_number="A5") == {"1.2.3.5"}
        assert found(description="mri") == {"1.2.3.1"}
        since = dt.datetime(2024, 2, 10, 10, tzinfo=UTC)
        assert found(received_since=since) == {"1.2.3.2", "1.2.3.3", "1.2.3.5"}
        assert found(received_since="2024-03-01T12:00:00") == {"1.2.3.5"}
        assert found(physician="SMITH_JOHN", modality="CT") == {"1.2.3.2"}


def test_study_series_and_physicians_parse_into_the_models(api: Api) -> None:
    with api.client() as client:
        study = client.study(DOWNLOAD_UID)
        series = client.series(MR_SERIES_UID)
        physicians = client.physicians()
    assert study.study_uid == DOWNLOAD_UID and study.patient_name == "DOE^JANE"
    assert study.folder == f"SMITH_JOHN/{STUDY_FOLDER}"
    assert [s.series_uid for s in study.series] == [MR_SERIES_UID]
    assert study.instance_count == 3 and study.size_bytes == sum(map(len, api.files.values()))
    assert series.instance_count == 3 and series.nifti.status == "converted"
    assert series.folder == f"SMITH_JOHN/{STUDY_FOLDER}/{SERIES_FOLDER}"
    assert [p.folder for p in physicians] == ["MILLER_ANN", "SMITH_JOHN", "UNKNOWN"]
    assert physicians[1].study_count == 3
    assert physicians[1].names == ["SMITH^JOHN", "Smith^John"]


def test_unknown_uids_raise_404(api: Api) -> None:
    with api.client() as client:
        with pytest.raises(ApiError) as study:
            client.study("9.9.9")
        with pytest.raises(ApiError) as series:
            client.series("9.9.9")
    assert study.value.status == 404 and "9.9.9" in study.value.detail
    assert str(study.value).startswith("404: no study with UID '9.9.9'")
    assert series.value.status == 404


def test_a_wrong_or_missing_key_raises_401_saying_what_to_do(api: Api) -> None:
    with api.client(key="not-the-key-" + "x" * 20) as client, pytest.raises(ApiError) as wrong:
        client.studies()
    assert wrong.value.status == 401
    assert str(wrong.value) == "401: unknown API key; check DCMDB_API_KEY"
    with api.client(key="") as client, pytest.raises(ApiError) as missing:
        client.physicians()
    assert missing.value.status == 401 and "an API key is required" in missing.value.detail
    assert "set DCMDB_API_KEY" in str(missing.value)


def test_invalid_filters_raise_422_naming_the_parameter(api: Api) -> None:
    with api.client() as client:
        with pytest.raises(ApiError) as date:
            client.studies(study_date="2024")
        with pytest.raises(ApiError) as limit:
            client.studies(limit=0)
        with pytest.raises(TypeError, match="unknown study filter"):
            client.studies(physican="SMITH_JOHN")  # type: ignore[call-arg]
    assert date.value.status == 422
    assert date.value.detail.startswith("study_date: '2024' is not a date")
    assert limit.value.status == 422 and limit.value.detail.startswith("limit: ")


def test_an_api_that_is_not_there_raises_api_unreachable() -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", "k")
    with client, pytest.raises(ApiUnreachable) as error:
        client.studies()
    assert error.value.status is None and "dcmdb api" in str(error.value)


def test_download_study_writes_exactly_the_files(api: Api, tmp_path: Path) -> None:
    chunks: list[int] = []
    with api.client() as client:
        files = client.download_study(DOWNLOAD_UID, tmp_path / "out", progress=chunks.append)
    out = (tmp_path / "out").resolve()
    expected = {path.removeprefix("SMITH_JOHN/"): content for path, content in api.files.items()}
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in files} == expected
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(expected)  # the ZIP is gone, nothing else written
    assert chunks and sum(chunks) > sum(map(len, expected.values()))  # the ZIP's bytes


def test_download_study_as_nifti_and_all(api: Api, tmp_path: Path) -> None:
    folder = f"{STUDY_FOLDER}/{SERIES_FOLDER}/nifti"
    with api.client() as client:
        nifti = client.download_study(DOWNLOAD_UID, tmp_path / "nifti", format="nifti")
        both = client.download_study(DOWNLOAD_UID, tmp_path / "all", format="all")
    names = sorted(p.relative_to((tmp_path / "nifti").resolve()).as_posix() for p in nifti)
    assert names == [f"{folder}/{SERIES_FOLDER}.json", f"{folder}/{SERIES_FOLDER}.nii.gz"]
    assert len(both) == 5
    volume = tmp_path / "nifti" / folder / f"{SERIES_FOLDER}.nii.gz"
    assert volume.read_bytes() == NIFTI_FILE.read_bytes()


def test_series_nifti_alone_or_with_its_sidecar(api: Api, tmp_path: Path) -> None:
    with api.client() as client:
        alone = client.series_nifti(MR_SERIES_UID, tmp_path / "alone")
        with_sidecar = client.series_nifti(MR_SERIES_UID, tmp_path / "both", sidecar=True)
        with pytest.raises(ApiError) as none:
            client.series_nifti("1.2.3.2.1", tmp_path / "none")
    assert [p.name for p in alone] == [f"{SERIES_FOLDER}.nii.gz"]
    assert alone[0].read_bytes() == NIFTI_FILE.read_bytes()
    assert sorted(p.name for p in with_sidecar) == [
        f"{SERIES_FOLDER}.json",
        f"{SERIES_FOLDER}.nii.gz",
    ]
    assert none.value.status == 404 and "no NIfTI" in none.value.detail
    assert list((tmp_path / "none").iterdir()) == []  # no partial download left


def test_preview_is_a_png(api: Api) -> None:
    with api.client() as client:
        png = client.preview(MR_SERIES_UID)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt", "C:/evil"])
def test_extract_zip_refuses_unsafe_names_before_writing(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("fine/first.txt", b"first")
        bundle.writestr(name, b"evil")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ApiError, match="unsafe file name"):
        extract_zip(archive, out)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_extract_zip_does_not_follow_a_link_out_of_the_directory(tmp_path: Path) -> None:
    archive, out, outside = tmp_path / "a.zip", tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside)
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("link/evil.txt", b"evil")
    with pytest.raises(ApiError, match="unsafe file name"):
        extract_zip(archive, out)
    assert list(outside.iterdir()) == []


# --- the commands ----------------------------------------------------------------------------


def dcmdb(api: Api | None, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("DCMDB_")}
    if api is not None:
        env |= {"DCMDB_API_URL": api.url, "DCMDB_API_KEY": api.key if key is None else key}
    return subprocess.run(
        [sys.executable, "-m", "services.commands.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_studies_json_lists_every_match(api: Api) -> None:
    result = dcmdb(api, "studies", "--json", "--limit", "0", "--physician", "Smith^John")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["study_uid"] for line in lines] == ["1.2.3.3", "1.2.3.2", "1.2.3.1"]
    assert lines[2]["instance_count"] == 3 and lines[2]["modalities"] == ["MR"]
    assert result.stderr == ""


def test_studies_limit_shows_that_many_and_says_more_match(api: Api) -> None:
    result = dcmdb(api, "studies", "--json", "--limit", "2", "--sort", "study_date")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["study_uid"] for line in result.stdout.splitlines()] == [
        "1.2.3.5",
        "1.2.3.2",
    ]
    assert "2 shown; more match" in result.stderr


def test_studies_table_is_aligned(api: Api) -> None:
    result = dcmdb(api, "studies", "--date", "20231101-")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "DATE", "PHYSICIAN", "PATIENT", "MODALITIES", "SERIES", "INSTANCES", "SIZE",
        "DESCRIPTION", "STUDY", "UID",
    ]  # fmt: skip
    assert len(rows) == 4
    column = header.index("STUDY UID")
    assert all(row[column:].startswith("1.2.3.") for row in rows)
    mri = next(row for row in rows if row.endswith("1.2.3.1"))
    assert mri.split()[:6] == ["2024-01-05", "SMITH_JOHN", "DOE^JANE", "MR", "1", "3"]
    assert "396.8 kB" in mri


def test_studies_errors_are_one_line_and_exit_1(api: Api) -> None:
    invalid = dcmdb(api, "studies", "--date", "2024")
    assert invalid.returncode == 1
    assert invalid.stderr.splitlines() == [invalid.stderr.strip()]
    assert invalid.stderr.startswith("dcmdb studies: 422: study_date: '2024' is not a date")
    wrong_key = dcmdb(api, "studies", key="wrong-" + "k" * 30)
    assert wrong_key.returncode == 1
    assert wrong_key.stderr == "dcmdb studies: 401: unknown API key; check DCMDB_API_KEY\n"
    away = dcmdb(None, "studies", "--url", f"http://127.0.0.1:{free_port()}")
    assert away.returncode == 1 and len(away.stderr.splitlines()) == 1
    assert "start it with 'dcmdb api'" in away.stderr
    usage = dcmdb(api, "studies", "--limit", "-1")
    assert usage.returncode == 2 and "--limit" in usage.stderr


def test_download_writes_the_files_and_says_where(api: Api, tmp_path: Path) -> None:
    result = dcmdb(api, "download", DOWNLOAD_UID, "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    series = (tmp_path / "out" / STUDY_FOLDER / SERIES_FOLDER).resolve()
    assert result.stdout == f"3 file(s), 396.8 kB, in {series}\n"
    for path, content in api.files.items():
        assert (tmp_path / "out" / path.removeprefix("SMITH_JOHN/")).read_bytes() == content
    nifti = dcmdb(api, "download", DOWNLOAD_UID, "-o", str(tmp_path / "nifti"), "--nifti")
    assert nifti.returncode == 0, nifti.stderr
    assert nifti.stdout.startswith("2 file(s), ")


def test_download_of_an_unknown_study_fails_in_one_line(api: Api, tmp_path: Path) -> None:
    result = dcmdb(api, "download", "9.9.9", "-o", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr == "dcmdb download: 404: no study with UID '9.9.9' in the catalog\n"
    assert not (tmp_path / "out").exists()
    usage = dcmdb(api, "download", DOWNLOAD_UID, "--nifti", "--all", "-o", str(tmp_path))
    assert usage.returncode == 2
    missing = dcmdb(api, "download", DOWNLOAD_UID)
    assert missing.returncode == 2 and "-o" in missing.stderr


def test_download_of_a_study_with_nothing_to_download_fails(api: Api, tmp_path: Path) -> None:
    result = dcmdb(api, "download", "1.2.3.2", "-o", str(tmp_path / "out"), "--nifti")
    assert result.returncode == 1
    assert result.stderr == "dcmdb download: study 1.2.3.2 has no NIfTI files to download yet\n"
