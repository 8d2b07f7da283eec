"""The catalog the API tests read: the whole test data, received, filed and converted by
the real pipeline (``dcmdb up``), on SQLite and PostgreSQL; and what the test data's own
headers say each study holds, to check the API against.

Keys: an admin and a read key of every lab (DCMDB_API_KEYS), and in the keys file a key
of lab A, one of lab B (the two labs with the most studies) and a revoked one.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom

from shared import keys
from shared.naming import physician_folder
from tests.conftest import TESTDATA, fresh_postgres_database, fresh_vhost
from tests.support import add_key
from tests.system import Dcmdb, dicom_files

READ_KEY = "r" * 8 + "read-key-for-tests-0123456789"
ADMIN_KEY = "a" * 8 + "admin-key-for-tests-012345678"


@dataclass
class StudyFacts:
    """What the test data's headers say about one study."""

    physicians: set[str] = field(default_factory=set)
    patient_ids: set[str] = field(default_factory=set)
    patient_names: set[str] = field(default_factory=set)
    dates: set[str] = field(default_factory=set)
    modalities: set[str] = field(default_factory=set)
    accessions: set[str] = field(default_factory=set)
    descriptions: set[str] = field(default_factory=set)
    instances: set[str] = field(default_factory=set)
    series: set[str] = field(default_factory=set)


@functools.cache
def study_facts() -> dict[str, StudyFacts]:
    """Read when a test needs them, not when every worker collects the tests."""
    studies: dict[str, StudyFacts] = defaultdict(StudyFacts)
    for path in dicom_files(TESTDATA):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        facts = studies[str(ds.StudyInstanceUID)]
        facts.physicians.add(str(ds.get("ReferringPhysicianName") or ""))
        facts.patient_ids.add(str(ds.get("PatientID") or ""))
        facts.patient_names.add(str(ds.get("PatientName") or ""))
        facts.dates.add(str(ds.get("StudyDate") or ""))
        facts.modalities.add(str(ds.get("Modality") or ""))
        facts.accessions.add(str(ds.get("AccessionNumber") or ""))
        facts.descriptions.add(str(ds.get("StudyDescription") or ""))
        facts.instances.add(str(ds.SOPInstanceUID))
        facts.series.add(str(ds.SeriesInstanceUID))
    return dict(studies)


@dataclass
class Api:
    dcmdb: Dcmdb
    client: httpx.Client
    labs: LabKeys

    @property
    def archive(self) -> Path:
        return self.dcmdb.data_dir / "archive"

    def get(self, path: str, key: str | None = READ_KEY, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.client.get(path, params=params, headers=headers)

    def all_studies(self, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.get("/studies", **params, **({"cursor": cursor} if cursor else {}))
            assert page.status_code == 200, page.text
            body = page.json()
            items += body["items"]
            cursor = body["next"]
            if cursor is None:
                return items


def everything_converted(api: Api) -> bool:
    try:
        items = api.all_studies(limit=1000)
    except (httpx.HTTPError, AssertionError):
        return False
    return len(items) == len(study_facts()) and all(
        item["conversion"]["pending"] == 0
        and item["instance_count"] == len(study_facts()[item["study_uid"]].instances)
        for item in items
    )


class catalog:  # noqa: N801 - a context manager used like a function
    def __init__(self, backend: str, root: Path) -> None:
        self._backend, self._root = backend, root
        self._postgres: Iterator[str] | None = None

    def __enter__(self) -> str:
        if self._backend == "sqlite":
            return f"sqlite:///{self._root / 'catalog.sqlite'}"
        self._postgres = fresh_postgres_database()
        return next(self._postgres)

    def __exit__(self, *_: object) -> None:
        if self._postgres is not None:
            next(self._postgres, None)


class vhost:  # noqa: N801
    def __enter__(self) -> str:
        self._vhosts = fresh_vhost()
        return next(self._vhosts)

    def __exit__(self, *_: object) -> None:
        next(self._vhosts, None)


@dataclass(frozen=True)
class LabKeys:
    lab_a: str
    lab_b: str
    key_a: str
    key_b: str
    revoked: str


def labs_by_size() -> list[str]:
    """The test data's lab folders, the one with the most studies first."""
    counts = Counter(
        physician_folder(next(iter(facts.physicians))) for facts in study_facts().values()
    )
    return [lab for lab, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def write_lab_keys(keys_file: Path) -> LabKeys:
    lab_a, lab_b = labs_by_size()[:2]
    key_a = add_key(keys_file, "lab-a", [lab_a])
    key_b = add_key(keys_file, "lab-b", [lab_b])
    revoked = add_key(keys_file, "gone", [lab_a])
    with keys.editing(keys_file) as document:
        document.keys.remove(next(e for e in document.keys if e.name == "gone"))
    return LabKeys(lab_a, lab_b, key_a, key_b, revoked)
