"""The REST API over a catalog filled by the real pipeline: ``dcmdb up`` (receiver, sorter,
converter and API) receives the whole test data from storescu, on SQLite and PostgreSQL.

What each filter should return is worked out from the DICOM headers of the test data
themselves, not from the catalog.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from PIL import Image

from shared.naming import physician_folder
from tests.api.pipeline import ADMIN_KEY, READ_KEY, Api, study_facts
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup("api", shared_by="tests.api.conftest.api")]


def _uids(items: list[dict[str, Any]]) -> list[str]:
    return [item["study_uid"] for item in items]


def _expected(condition: Any) -> set[str]:
    return {uid for uid, facts in study_facts().items() if condition(facts)}


# Listing and pagination -------------------------------------------------------------------


@pytest.mark.parametrize("sort", ["received", "study_date"])
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_pages_show_every_study_exactly_once_in_order(api: Api, sort: str, order: str) -> None:
    items = api.all_studies(limit=3, sort=sort, order=order)
    uids = _uids(items)
    assert len(uids) == len(set(uids)) == len(study_facts())
    assert set(uids) == set(study_facts())
    keys = [
        (item["received_at"] if sort == "received" else item["study_date"] or "") for item in items
    ]
    assert keys == sorted(keys, reverse=order == "desc")


def test_a_listed_study_says_what_it_holds(api: Api) -> None:
    for item in api.all_studies(limit=1000):
        facts = study_facts()[item["study_uid"]]
        assert item["series_count"] == len(facts.series)
        assert item["instance_count"] == len(facts.instances)
        assert set(item["modalities"]) == facts.modalities - {""}
        assert item["physician_folder"] == physician_folder(next(iter(facts.physicians)))
        folder = api.archive / item["folder"]
        on_disk = [p for p in folder.rglob("*.dcm") if "nifti" not in p.relative_to(folder).parts]
        assert len(on_disk) == item["instance_count"]
        assert sum(p.stat().st_size for p in on_disk) == item["size_bytes"]
        assert sum(item["conversion"].values()) == item["series_count"]
        assert item["conversion"]["pending"] == 0


def test_limit_defaults_to_50_and_stops_at_1000(api: Api) -> None:
    assert api.get("/studies").status_code == 200
    for bad in (0, 1001, -1, "many"):
        answer = api.get("/studies", limit=bad)
        assert answer.status_code == 422
        assert "limit" in answer.text


# Filters ------------------------------------------------------------------------------------


def _one_value(attribute: str) -> str:
    """A value of `attribute` that some studies have and others do not."""
    counts: dict[str, int] = defaultdict(int)
    for facts in study_facts().values():
        for value in getattr(facts, attribute):
            if value:
                counts[value] += 1
    return min(counts, key=lambda v: (abs(counts[v] - 3), v))


def test_filter_by_physician_folder_or_name_in_any_case(api: Api) -> None:
    name = _one_value("physicians")
    folder = physician_folder(name)
    expected = _expected(lambda f: any(physician_folder(p) == folder for p in f.physicians))
    for value in (folder, folder.lower(), name, name.upper()):
        assert set(_uids(api.all_studies(physician=value))) == expected, value
    unknown = _expected(lambda f: any(physician_folder(p) == "unknown" for p in f.physicians))
    assert set(_uids(api.all_studies(physician="unknown"))) == unknown
    assert api.all_studies(physician="NOBODY_AT_ALL") == []


def test_filter_by_patient(api: Api) -> None:
    patient_id = _one_value("patient_ids")
    expected = _expected(lambda f: patient_id in f.patient_ids)
    assert set(_uids(api.all_studies(patient_id=patient_id))) == expected
    name = _one_value("patient_names")
    prefix = name[: max(2, len(name) // 2)]
    expected = _expected(
        lambda f: any(n.lower().startswith(prefix.lower()) for n in f.patient_names)
    )
    assert set(_uids(api.all_studies(patient_name=f"{prefix.lower()}*"))) == expected
    assert set(_uids(api.all_studies(patient_name=name))) == _expected(
        lambda f: any(n.lower() == name.lower() for n in f.patient_names)
    )
    assert api.all_studies(patient_name="%") == []  # LIKE's wildcard matches itself only


def test_filter_by_study_date(api: Api) -> None:
    dates = sorted({d for f in study_facts().values() for d in f.dates if d})
    middle = dates[len(dates) // 2]
    cases = {
        middle: lambda d: d == middle,
        f"{dates[0]}-{middle}": lambda d: dates[0] <= d <= middle,
        f"{middle}-": lambda d: d >= middle,
        f"-{middle}": lambda d: d <= middle,
    }
    for expression, matches in cases.items():
        expected = _expected(lambda f, m=matches: any(d and m(d) for d in f.dates))
        assert set(_uids(api.all_studies(study_date=expression))) == expected, expression
    today = dt.date.today()
    for word in ("today", "yesterday"):
        day = today if word == "today" else today - dt.timedelta(days=1)
        text = day.strftime("%Y%m%d")
        expected = _expected(lambda f, d=text: d in f.dates)
        assert set(_uids(api.all_studies(study_date=word))) == expected


def test_filter_by_modality_accession_description_and_arrival(api: Api) -> None:
    expected = _expected(lambda f: "MR" in f.modalities)
    assert 0 < len(expected) < len(study_facts())
    assert set(_uids(api.all_studies(modality="mr"))) == expected
    accession = _one_value("accessions")
    assert set(_uids(api.all_studies(accession_number=accession))) == _expected(
        lambda f: accession in f.accessions
    )
    description = _one_value("descriptions")
    part = description[1:-1] if len(description) > 3 else description
    assert set(_uids(api.all_studies(description=part.swapcase()))) == _expected(
        lambda f: any(part.lower() in d.lower() for d in f.descriptions)
    )
    assert len(api.all_studies(received_since="2000-01-01T00:00:00Z")) == len(study_facts())
    assert api.all_studies(received_since="2999-01-01T00:00:00") == []


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("study_date", "2024"),
        ("study_date", "20241301"),
        ("study_date", "20240201-20240101"),
        ("study_date", "-"),
        ("received_since", "last week"),
        ("sort", "patient"),
        ("order", "sideways"),
        ("cursor", "not-a-cursor"),
        ("cursor", "WyJyZWNlaXZlZCIsImRlc2MiLDEsMl0"),  # a well-formed cursor of wrong types
    ],
)
def test_bad_parameters_get_422_naming_them(api: Api, parameter: str, value: str) -> None:
    answer = api.get("/studies", **{parameter: value})
    assert answer.status_code == 422, answer.text
    assert parameter in answer.text


def test_a_cursor_only_continues_its_own_order(api: Api) -> None:
    first = api.get("/studies", limit=1, sort="received").json()
    answer = api.get("/studies", limit=1, sort="study_date", cursor=first["next"])
    assert answer.status_code == 422
    assert "cursor" in answer.text


# Details, physicians ------------------------------------------------------------------------


def test_study_details_list_every_series(api: Api) -> None:
    for uid, facts in study_facts().items():
        answer = api.get(f"/studies/{uid}")
        assert answer.status_code == 200
        study = answer.json()
        assert {s["series_uid"] for s in study["series"]} == facts.series
        assert sum(s["instance_count"] for s in study["series"]) == len(facts.instances)
        for series in study["series"]:
            assert (api.archive / series["folder"]).is_dir()
            nifti = series["nifti"]
            assert nifti["status"] in ("converted", "skipped", "failed")
            if nifti["status"] == "converted":
                assert nifti["outputs"] and nifti["reason"] == ""
                for output in nifti["outputs"]:
                    assert (api.archive / output["path"]).is_file()
            else:
                assert nifti["reason"] and not nifti["outputs"]
            same = api.get(f"/series/{series['series_uid']}").json()
            assert same == series


def test_unknown_uids_get_404(api: Api) -> None:
    for path in (
        "/studies/1.2.3.4",
        "/studies/1.2.3.4/archive",
        "/series/1.2.3.4",
        "/series/1.2.3.4/preview.png",
        "/series/1.2.3.4/nifti",
        "/studies/..%2F..%2Fetc%2Fpasswd",
        "/series/%2E%2E/nifti",
    ):
        answer = api.get(path)
        assert answer.status_code == 404, (path, answer.status_code)
        assert answer.json()["detail"]


def test_physicians_add_up_to_the_catalog(api: Api) -> None:
    answer = api.get("/physicians")
    assert answer.status_code == 200
    physicians = answer.json()
    studies = api.all_studies(limit=1000)
    assert sum(p["study_count"] for p in physicians) == len(studies)
    assert sum(p["size_bytes"] for p in physicians) == sum(s["size_bytes"] for s in studies)
    by_folder = {p["folder"]: p for p in physicians}
    for study in studies:
        physician = by_folder[study["physician_folder"]]
        if study["physician_name"]:
            assert study["physician_name"] in physician["names"]
        if study["study_date"]:
            assert physician["latest_study_date"] >= study["study_date"]


# Downloads ----------------------------------------------------------------------------------


def _zip(answer: httpx.Response) -> zipfile.ZipFile:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    assert archive.testzip() is None
    return archive


@pytest.mark.parametrize("kind", ["dicom", "nifti", "all"])
def test_a_study_archive_holds_exactly_its_files_byte_for_byte(api: Api, kind: str) -> None:
    for item in api.all_studies(limit=1000):
        study_dir = api.archive / item["folder"]
        expected = {}
        for path in study_dir.rglob("*"):
            if not path.is_file():
                continue
            is_nifti = path.relative_to(study_dir).parts[0] == "nifti"
            if kind == "all" or (kind == "nifti") == is_nifti:
                expected[f"{study_dir.name}/{path.relative_to(study_dir)}"] = path
        answer = api.get(f"/studies/{item['study_uid']}/archive", format=kind)
        assert f'filename="{study_dir.name}.zip"' in answer.headers["content-disposition"]
        archive = _zip(answer)
        assert sorted(archive.namelist()) == sorted(expected)
        for name, path in expected.items():
            assert archive.read(name) == path.read_bytes()


def _series(api: Api, status: str) -> list[dict[str, Any]]:
    found = []
    for uid in study_facts():
        found += [
            s for s in api.get(f"/studies/{uid}").json()["series"] if s["nifti"]["status"] == status
        ]
    return found


def test_nifti_downloads(api: Api) -> None:
    converted = _series(api, "converted")
    assert converted
    for series in converted:
        outputs = series["nifti"]["outputs"]
        gradients = [Path(o[k]).name for o in outputs for k in ("bval_path", "bvec_path") if o[k]]
        answer = api.get(f"/series/{series['series_uid']}/nifti")
        assert answer.status_code == 200
        if len(outputs) == 1 and not gradients:
            assert answer.content == (api.archive / outputs[0]["path"]).read_bytes()
            assert gzip.decompress(answer.content)[344:348] == b"n+1\x00"  # NIfTI-1 magic
        else:  # several volumes, or a diffusion volume with its gradient table: a ZIP
            volumes = sorted(Path(n).name for n in _zip(answer).namelist())
            assert volumes == sorted([Path(o["path"]).name for o in outputs] + gradients)
        archive = _zip(api.get(f"/series/{series['series_uid']}/nifti", sidecar=1))
        names = sorted(Path(n).name for n in archive.namelist())
        expected = sorted(Path(o[key]).name for o in outputs for key in ("path", "sidecar_path"))
        assert names == sorted(expected + gradients)
        sidecar = next(n for n in archive.namelist() if n.endswith(".json"))
        assert json.loads(archive.read(sidecar))["SeriesInstanceUID"] == series["series_uid"]
    skipped = _series(api, "skipped")[0]
    answer = api.get(f"/series/{skipped['series_uid']}/nifti")
    assert answer.status_code == 404
    assert skipped["nifti"]["reason"] in answer.json()["detail"]


def test_previews_are_pngs_of_the_middle_slice_size(api: Api) -> None:
    shown = 0
    for series in _series(api, "converted"):
        answer = api.get(f"/series/{series['series_uid']}/preview.png")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(answer.content))
        assert image.format == "PNG"
        files = sorted((api.archive / series["folder"]).glob("*.dcm"))
        sizes = set()
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            sizes.add((int(ds.Columns), int(ds.Rows)))
        assert image.size in sizes
        assert image.getextrema() != (image.getextrema()[0],) * 2 or len(image.getbands()) > 1
        shown += 1
    assert shown > 5


# Access --------------------------------------------------------------------------------------


def test_keys_guard_every_data_route(api: Api) -> None:
    uid = next(iter(study_facts()))
    for path in ("/studies", f"/studies/{uid}", f"/studies/{uid}/archive", "/physicians"):
        missing = api.get(path, key=None)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = api.get(path, key="x" * 40)
        assert wrong.status_code == 401
        assert "invalid_token" in wrong.headers["www-authenticate"]
        basic = api.client.get(path, headers={"Authorization": f"Basic {READ_KEY}"})
        assert basic.status_code == 401
        assert api.get(path, key=READ_KEY).status_code == 200
        assert api.get(path, key=ADMIN_KEY).status_code == 200
    for open_path in ("/healthz", "/readyz", "/openapi.json"):
        assert api.get(open_path, key=None).status_code == 200


def test_keys_never_reach_the_logs(api: Api) -> None:
    api.get("/studies", key="leaked" + "k" * 30)
    log = api.dcmdb.log()
    assert READ_KEY not in log and ADMIN_KEY not in log and "leaked" not in log


def test_metrics_count_requests_by_route(api: Api) -> None:
    api.get(f"/studies/{next(iter(study_facts()))}")
    assert api.get("/metrics", key=None).status_code == 401
    assert api.get("/metrics", key=READ_KEY).status_code == 403
    text = api.get("/metrics", key=ADMIN_KEY).text
    assert 'route="/studies/{study_uid}"' in text
    assert "dcmdb_api_request_duration_seconds_bucket" in text
    assert next(iter(study_facts())) not in text  # UIDs stay out of the labels


# Start-up rules ---------------------------------------------------------------------------


def _start_api(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "services.commands.cli", "api"],
        cwd=REPO,
        env={**os.environ, "DCMDB_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_keys_means_loopback_only(tmp_path: Path) -> None:
    result = _start_api(tmp_path, DCMDB_API_HOST="0.0.0.0", DCMDB_API_KEYS="")
    assert result.returncode == 2
    assert "dcmdb keys add" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("keys", ["short:read", f"{READ_KEY}:write", f"{READ_KEY}"])
def test_malformed_keys_stop_the_start_without_showing_them(tmp_path: Path, keys: str) -> None:
    result = _start_api(tmp_path, DCMDB_API_KEYS=keys)
    assert result.returncode == 2
    assert "DCMDB_API_KEYS" in result.stderr
    assert READ_KEY not in result.stderr
