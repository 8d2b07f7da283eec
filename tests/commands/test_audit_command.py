"""``dcmdb audit`` as an administrator types it, against ``dcmdb api`` in a process of its own
over real catalogs (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.arrivals import Sorter
from tests.audit_server import Server, answered, api_server
from tests.audit_site import (
    ADMIN,
    ADMIN_KEY,
    OPERATOR,
    PATIENT_ID,
    PATIENT_NAME,
    READ,
    READ_KEY,
    READER,
    patient_study,
)
from tests.conftest import REPO
from tests.filed_studies import Archive

pytestmark = pytest.mark.integration


@pytest.fixture
def archive(sorter: Sorter, testdata: Path, catalog_url: str) -> Archive:
    return Archive(sorter, testdata, catalog_url)


@pytest.fixture
def server(archive: Archive) -> Iterator[Server]:
    with api_server(archive) as running:
        yield running


def dcmdb_audit(
    server: Server, *args: str, key: str = ADMIN_KEY
) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("DCMDB_")}
    env |= {"DCMDB_API_URL": server.url, "DCMDB_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "services.commands.cli", "audit", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_trail_as_a_table_and_as_json(server: Server, archive: Archive) -> None:
    study, series = patient_study(archive)
    listing = answered(server, f"/studies?patient_id={PATIENT_ID}", READ)
    assert answered(server, f"/studies/{study}", READ).status_code == 200
    assert answered(server, f"/series/{series}", READ).status_code == 200
    assert answered(server, "/studies/1.2.3.4.5", ADMIN).status_code == 404

    table = dcmdb_audit(server)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "TIME", "(UTC)", "KEY", "ACTION", "STATUS", "SENT", "CLIENT", "STUDY", "UID",
        "SERIES", "UID", "/", "JOB",
    ]  # fmt: skip
    assert [row.split()[2:5] for row in rows] == [  # newest first
        [OPERATOR, "study.read", "404"],
        [READER, "series.read", "200"],
        [READER, "study.read", "200"],
        [READER, "studies.list", "200"],
    ]
    assert rows[1].split()[-3:] == ["127.0.0.1", study, series]
    assert rows[3].split()[5:8] == [f"{len(listing.content)}", "B", "127.0.0.1"]
    assert PATIENT_ID not in table.stdout and PATIENT_NAME not in table.stdout

    lines = dcmdb_audit(server, "--json", "--key-name", READER, "--action", "study.read")
    assert lines.returncode == 0, lines.stderr
    (only,) = [json.loads(line) for line in lines.stdout.splitlines()]
    assert (only["key_name"], only["action"], only["study_uid"]) == (READER, "study.read", study)

    by_study = dcmdb_audit(server, "--json", "--study", study, "--since", "2020-01-01")
    assert [json.loads(line)["action"] for line in by_study.stdout.splitlines()] == [
        "series.read",
        "study.read",
    ]
    limited = dcmdb_audit(server, "--limit", "1", "--json")
    assert len(limited.stdout.splitlines()) == 1
    assert "1 shown; more match" in limited.stderr
    none = dcmdb_audit(server, "--until", "2020-01-01")
    assert none.returncode == 0 and none.stdout == "" and "no record matches" in none.stderr


def test_a_read_key_or_a_bad_option_is_refused_in_one_line(server: Server) -> None:
    refused = dcmdb_audit(server, key=READ_KEY)
    assert refused.returncode == 1
    assert refused.stderr.startswith("dcmdb audit: 403: this API key lacks the admin scope")
    assert len(refused.stderr.splitlines()) == 1
    for bad in (["--since", "last week"], ["--action", "study.delete"], ["--limit", "-1"]):
        usage = dcmdb_audit(server, *bad)
        assert usage.returncode == 2 and bad[0] in usage.stderr, usage.stderr
