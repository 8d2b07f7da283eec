"""What the DICOMweb tests share: dicomweb-client on the running API with a key, raw answers
decoded by dicomweb-client's own multipart reader, and the archived files by SOP Instance UID.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client import DICOMwebClient

from shared.naming import physician_folder
from tests.api.pipeline import ADMIN_KEY, Api, study_facts

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Dicomweb:
    """dicomweb-client with one key, and its session for requests of our own making."""

    client: DICOMwebClient
    session: requests.Session
    url: str

    def raw(self, path: str, accept: str = ANY_SYNTAX, **params: Any) -> requests.Response:
        return self.session.get(f"{self.url}{path}", headers={"Accept": accept}, params=params)

    def parts(self, answer: requests.Response) -> list[bytes]:
        """The parts of a multipart answer, as dicomweb-client reads them."""
        assert answer.status_code == 200, answer.text
        return list(self.client._decode_multipart_message(answer, stream=False))


def dicomweb(api: Api, key: str = ADMIN_KEY) -> Dicomweb:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    url = str(api.client.base_url).rstrip("/") + "/dicomweb"
    # permissive: the test data has UIDs with components that start with 0
    client = DICOMwebClient(url, session=session, permissive_uid=True)
    return Dicomweb(client, session, url)


@functools.cache
def _archived(archive: Path) -> dict[str, Path]:
    found = {}
    for path in archive.rglob("*.dcm"):
        if "nifti" not in path.parts:
            sop = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            found[str(sop.SOPInstanceUID)] = path
    return found


def archived(api: Api, sop_uid: str) -> Path:
    """The archived file of an instance."""
    return _archived(api.archive)[sop_uid]


def stored_syntax(api: Api, sop_uid: str) -> str:
    meta = pydicom.filereader.read_file_meta_info(archived(api, sop_uid))
    return str(meta.TransferSyntaxUID)


def studies_by_syntax(api: Api) -> Iterator[tuple[str, set[str]]]:
    """Each test study and the transfer syntaxes its instances are stored in."""
    for uid, facts in sorted(study_facts().items()):
        yield uid, {stored_syntax(api, sop) for sop in facts.instances}


def uid_of(item: dict[str, Any], tag: str) -> str:
    return str(item[tag]["Value"][0])


def lab_studies(lab: str) -> set[str]:
    """The test studies a lab folder holds."""
    return {
        uid
        for uid, facts in study_facts().items()
        if physician_folder(next(iter(facts.physicians))) == lab
    }
