"""``dcmdb bids export`` and ``dcmdb bids rules`` as a lab types them, against the API over
a catalog filled by the real sorter and converter: a dataset written, then brought up to
date without downloading what did not change; the rules shown and replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.bids.dataset import SessionPlace
from tests.api.pipeline import vhost
from tests.bids_sessions import build_session, session_of
from tests.conftest import REPO
from tests.web.site import LAB_A, LAB_B, Site, fill, serving, study_of

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]

T1W = "siemens_xa30_t1w_3d_classic"
CT = "d2n_ct_gantry_tilt"
LABS = {LAB_A: [T1W, CT], LAB_B: ["d2n_hitachi_mr"]}


@dataclass
class Served:
    site: Site
    place: SessionPlace

    def dcmdb(self, *args: str, key: str = "lab-a") -> subprocess.CompletedProcess[str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("DCMDB_")}
        env |= {"DCMDB_API_URL": self.site.url, "DCMDB_API_KEY": self.site.key(key)}
        return subprocess.run(
            [sys.executable, "-m", "services.commands.cli", "bids", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def export(self, output: Path, *args: str, key: str = "lab-a") -> str:
        done = self.dcmdb("export", "--physician", LAB_A, "-o", str(output), *args, key=key)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("bids-command")
    url = fill(root / "data", LABS)
    with vhost() as broker, serving(root / "data", url, broker_url=broker) as site:
        archive = site.settings.archive_root
        assert build_session(site.sessions, archive, study_of(CT)) is None  # left over
        yield Served(site, session_of(site.sessions, archive, study_of(T1W)))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_an_export_then_updates_only_what_changed(served: Served, tmp_path: Path) -> None:
    place, output = served.place, tmp_path / "dataset"
    session = f"sub-{place.subject}/ses-{place.session}"
    # A dataset the lab keeps: its own participants' rows and columns stay.
    output.mkdir()
    (output / "participants.tsv").write_text("participant_id\tgroup\nsub-99\tcontrol\n")

    first = served.export(output)
    assert f"added: {session} (study {study_of(T1W)})" in first
    assert f"without BIDS: study {study_of(CT)}" in first
    assert "1 added, 0 updated, 0 unchanged, 0 removed, 1 without BIDS" in first
    assert _files(output / session) == _files(place.folder)
    assert json.loads((output / "dataset_description.json").read_text())["BIDSVersion"]
    rows = [line.split("\t") for line in (output / "participants.tsv").read_text().splitlines()]
    assert rows[0] == ["participant_id", "group"]
    assert {row[0]: row[1] for row in rows[1:]} == {
        f"sub-{place.subject}": "n/a",
        "sub-99": "control",
    }
    folder = (output / session).stat().st_ino

    second = served.export(output)
    assert "0 added, 0 updated, 1 unchanged, 0 removed, 1 without BIDS" in second
    assert (output / session).stat().st_ino == folder  # not downloaded, not replaced

    added = place.folder / "anat" / "added.txt"
    added.write_text("a file more\n")
    try:
        third = served.export(output)
        assert f"updated: {session}" in third and "1 updated, 0 unchanged" in third
        assert _files(output / session) == _files(place.folder)
    finally:
        added.unlink()
    fourth = served.export(output)
    assert "1 updated" in fourth
    assert _files(output / session) == _files(place.folder)  # the file gone here too
    # Nothing of the work left behind: only what the next run reads.
    assert [path.name for path in output.glob(".dcmdb-*")] == [".dcmdb-export.json"]

    # The session gone from dcmdb's dataset (its series named no more): gone here too.
    away = place.root / "away"
    place.folder.rename(away)
    try:
        fifth = served.export(output)
        assert f"removed: {session} (study {study_of(T1W)})" in fifth
        assert "1 removed, 2 without BIDS" in fifth
        assert not (output / session).exists()
    finally:
        away.rename(place.folder)
    assert "1 added" in served.export(output)


def test_an_export_since_a_day_takes_the_studies_received_since(
    served: Served, tmp_path: Path
) -> None:
    later = served.export(tmp_path / "later", "--since", "2999-01-01")
    assert "0 added, 0 updated, 0 unchanged, 0 removed, 0 without BIDS" in later
    assert "1 added" in served.export(tmp_path / "since", "--since", "2000-01-01")


def test_an_export_that_cannot_be_made_fails_in_one_line(served: Served, tmp_path: Path) -> None:
    refused = served.dcmdb("export", "--physician", LAB_A, "-o", str(tmp_path), key="lab-b")
    # Lab B's key lists none of lab A's studies: nothing to do, nothing shown.
    assert refused.returncode == 0 and "0 added" in refused.stdout
    assert not (tmp_path / "sub-01").exists()
    env_key = served.dcmdb(
        "export", "--physician", LAB_A, "-o", str(tmp_path), "--key", "dcmdb_wrong_key_0123456789"
    )
    assert env_key.returncode == 1
    assert env_key.stderr.startswith("dcmdb bids export: 401: unknown API key")
    served.export(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / ".dcmdb-export.json").rename(tmp_path / "b" / ".dcmdb-export.json")
    other = served.dcmdb("export", "--physician", LAB_B, "-o", str(tmp_path / "b"), key="admin")
    assert other.returncode == 1
    assert f"holds the export of lab {LAB_A!r}, not {LAB_B!r}" in other.stderr
    bad_date = served.dcmdb("export", "--physician", LAB_A, "-o", str(tmp_path), "--since", "May")
    assert bad_date.returncode == 2 and "not a date YYYY-MM-DD" in bad_date.stderr


def test_rules_are_shown_and_set(served: Served, tmp_path: Path) -> None:
    rules = {
        "descriptions": [
            {"datatype": "anat", "suffix": "T2w", "criteria": {"SeriesDescription": "t2_spc*"}}
        ]
    }
    file = tmp_path / "rules.json"
    file.write_text(json.dumps(rules))
    done = served.dcmdb("rules", "--physician", LAB_A, "--set", str(file))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == rules
    shown = served.dcmdb("rules", "--physician", LAB_A)
    assert shown.returncode == 0 and json.loads(shown.stdout) == rules

    file.write_text(json.dumps({"descriptions": "anat"}))
    bad = served.dcmdb("rules", "--physician", LAB_A, "--set", str(file))
    assert bad.returncode == 1 and bad.stderr.startswith("dcmdb bids rules: 422: ")
    file.write_text("{")
    not_json = served.dcmdb("rules", "--physician", LAB_A, "--set", str(file))
    assert not_json.returncode == 1 and "is not JSON" in not_json.stderr
    other = served.dcmdb("rules", "--physician", LAB_B)
    assert other.returncode == 1 and other.stderr.startswith("dcmdb bids rules: 404: ")
    assert json.loads(served.dcmdb("rules", "--physician", LAB_A).stdout) == rules
