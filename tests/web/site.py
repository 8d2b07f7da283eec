"""A running dcmdb API for the web page's tests: a catalog filled by the real sorter and
converter from real DICOM, two labs, a keys file, and uvicorn serving `create_app` on a
free port in a thread.

Lab A (SMITH_JOHN) and lab B (DOE_JANE) get real test series, their Referring Physician
rewritten (UIDs kept). A study of lab A can be filed short of some instances, which the
PACS (dcmqrscp) holds whole: the PACS check finds them missing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.converter import records
from services.sorter.completion import complete_stable_series, unannounced
from services.sorter.filing import Filer
from shared.catalog.database import open_catalog
from shared.catalog.models import Series, Study
from shared.keys import editing
from tests.arrivals import arrive, dicom_files, with_new_uids
from tests.conftest import TESTDATA
from tests.support import add_key, free_port, wait_for

LAB_A, LAB_B = "SMITH_JOHN", "DOE_JANE"
PHYSICIANS = {LAB_A: "SMITH^JOHN", LAB_B: "DOE^JANE"}
# Each key's labs (None: every lab) and scope, as `dcmdb keys add` writes them.
KEYS: dict[str, tuple[list[str] | None, str]] = {
    "admin": (None, "admin"),
    "lab-a": ([LAB_A], "read"),
    "lab-b": ([LAB_B], "read"),
    "lab-a-spare": ([LAB_A], "read"),  # revoked by a test
}


@dataclass
class Site:
    """The API as the browser reaches it, and the catalog behind it."""

    url: str
    data: Path
    sessions: sessionmaker[Session]
    settings: ApiSettings
    keys: dict[str, str]  # name -> key

    def key(self, name: str) -> str:
        return self.keys[name]

    def revoke(self, name: str) -> None:
        """As `dcmdb keys revoke NAME`: the entry leaves the keys file."""
        with editing(self.settings.keys_path) as document:
            document.keys = [entry for entry in document.keys if entry.name != name]

    def studies(self, lab: str) -> dict[str, str]:
        """The lab's studies: UID -> description."""
        with self.sessions() as session:
            rows = session.execute(
                select(Study.study_instance_uid, Study.description).where(
                    Study.physician_folder == lab
                )
            )
            return {uid: description for uid, description in rows}

    def series(self, study_uid: str) -> list[Series]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(Series)
                    .join(Study, Study.id == Series.study_pk)
                    .where(Study.study_instance_uid == study_uid)
                )
            )


def study_of(folder: str) -> str:
    """The study UID of a test data folder."""
    first = dicom_files(TESTDATA, folder)[0]
    return str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def fill(data: Path, labs: dict[str, list[str]], short: dict[str, int] | None = None) -> str:
    """A catalog in `data` holding `labs` (folder -> test data folders), each instance
    filed by the sorter's own code, each series completed and converted by the
    converter's; `short` files that many instances fewer of a folder. Its URL."""
    url = f"sqlite:///{data / 'catalog.sqlite'}"
    engine, sessions = open_catalog(url, writer=True)
    archive = data / "archive"
    filer = Filer(sessions, data, archive, data / "quarantine")
    for lab, folders in labs.items():
        for folder in folders:
            files = dicom_files(TESTDATA, folder)
            files = files[: len(files) - (short or {}).get(folder, 0)]
            rewritten = [
                with_new_uids(path, keep_sop=True, ReferringPhysicianName=PHYSICIANS[lab])
                for path in files
            ]
            filer.file_batch([arrive(content, data) for content in rewritten])
    complete_stable_series(sessions, stable_age=0.001)
    for event in unannounced(sessions):
        job = records.job_for(sessions, archive, event)
        assert job is not None
        records.record(sessions, archive, event, job.convert(data / "work"))
    engine.dispose()
    return url


@contextmanager
def serving(data: Path, catalog_url: str, **settings: object) -> Iterator[Site]:
    """The API over the catalog, with the keys file, on a free port."""
    keys = {
        name: add_key(data / "keys.yaml", name, labs, scope) for name, (labs, scope) in KEYS.items()
    }
    chosen = ApiSettings(
        data_dir=data,
        database_url=catalog_url,
        # No broker, unless a test gives one: the page needs none.
        **{"broker_url": f"amqp://guest:guest@127.0.0.1:{free_port()}/", **settings},  # type: ignore[arg-type]
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(chosen), host="127.0.0.1", port=port, log_config=None, access_log=False
        )
    )
    thread = threading.Thread(target=server.run, name="web-api", daemon=True)
    thread.start()
    engine, sessions = open_catalog(catalog_url, writer=True)
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 60, "the API to start")
        assert thread.is_alive(), "the API stopped at start"
        yield Site(f"http://127.0.0.1:{port}", data, sessions, chosen, keys)
    finally:
        server.should_exit = True
        thread.join(30)
        engine.dispose()
