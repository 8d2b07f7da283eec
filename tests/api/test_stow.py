"""STOW-RS (`POST /dicomweb/studies`), sent by the real DICOMweb client (`dicomweb-client`)
to dcmdb started as a user starts it: what is stored is filed byte for byte and converted,
what is not is listed with its Failure Reason, and a lab's key stores into its labs only.

Keys: an admin key and a read key of every lab (DCMDB_API_KEYS), and in the keys file a key
of lab `Luci` (siemens_xa10_enhanced_fmri's Referring Physician) and one of lab
`KUIJK_C_VAN` (siemens_agfa_pair_original's).
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from tests.api.pipeline import ADMIN_KEY, READ_KEY, vhost
from tests.conftest import TESTDATA, require_tool
from tests.support import SLOW_POLL, add_key, refused_port, wait_for
from tests.system import Dcmdb, catalog, dicom_files

pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup()]

LAB, OTHER_LAB = "Luci", "KUIJK_C_VAN"
LAB_FOLDER, OTHER_LAB_FOLDER = "siemens_xa10_enhanced_fmri", "siemens_agfa_pair_original"
MAX_INSTANCE = 2_000_000  # DCMDB_STOW_MAX_INSTANCE here: every test file is smaller
MAX_REQUEST = 20_000_000
STOW_FOLDER = "incoming-stow"
GE_FMRI = "ge_fmri_epi_4d/dicom"


@dataclass
class Stow:
    dcmdb: Dcmdb
    keys: dict[str, str]  # lab -> key

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dcmdb.api_port}"

    def client(self, key: str) -> DICOMwebClient:
        return DICOMwebClient(f"{self.url}/dicomweb", headers={"Authorization": f"Bearer {key}"})

    def post(self, body: bytes, content_type: str, key: str | None = ADMIN_KEY) -> Any:
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.post(f"{self.url}/dicomweb/studies", content=body, headers=headers, timeout=60)

    def filed(self, sop_uid: str) -> Path | None:
        _, instances = catalog(self.dcmdb.database_url)
        found = [i.path for i in instances if i.sop_instance_uid == sop_uid]
        return self.dcmdb.data_dir / "archive" / found[0] if found else None

    def wait_until_filed(self, dataset: Dataset) -> Path:
        uid = str(dataset.SOPInstanceUID)
        return wait_for(lambda: self.filed(uid), 60, f"instance {uid} filed")


def start(root: Path, broker: str, command: str = "up", **env: str) -> Dcmdb:
    dcmdb = Dcmdb(
        root / "data",
        broker,
        f"sqlite:///{root / 'catalog.sqlite'}",
        extra_env={
            "DCMDB_STABLE_AGE": "1",
            "DCMDB_API_KEYS": f"{ADMIN_KEY}:admin,{READ_KEY}:read",
            "DCMDB_STOW_MAX_INSTANCE": str(MAX_INSTANCE),
            "DCMDB_STOW_MAX_REQUEST": str(MAX_REQUEST),
            **env,
        },
    )
    dcmdb.data_dir.mkdir(parents=True)
    dcmdb.start(command)
    return dcmdb


@pytest.fixture(scope="module")
def stow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stow]:
    root = tmp_path_factory.mktemp("stow")
    with vhost() as broker:
        dcmdb = start(root, broker)
        keys = {lab: add_key(dcmdb.data_dir / "keys.yaml", lab, [lab]) for lab in (LAB, OTHER_LAB)}
        try:
            dcmdb.wait_until_listening()
            dcmdb.wait_until_api_answers()
            yield Stow(dcmdb, keys)
        finally:
            dcmdb.stop()


def instances(folder: str) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in dicom_files(TESTDATA / folder)]


def encoded(dataset: Dataset) -> bytes:
    """The part-10 bytes the DICOMweb client sends for a data set."""
    with io.BytesIO() as buffer:
        pydicom.dcmwrite(buffer, dataset)
        return buffer.getvalue()


def multipart(*parts: bytes, boundary: str = "stow-boundary-0123") -> tuple[bytes, str]:
    body = b"".join(
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), part)
        for part in parts
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body + b"--%s--\r\n" % boundary.encode(), content_type


def path_of(url: str) -> str:
    return urlsplit(url).path


def reasons(answer: dict[str, Any]) -> dict[str, int]:
    """SOP Instance UID -> Failure Reason, from a DICOM JSON answer's FailedSOPSequence."""
    return {
        (item["00081155"].get("Value") or [""])[0]: item["00081197"]["Value"][0]
        for item in answer.get("00081198", {}).get("Value", [])
    }


def stored_uids(answer: Dataset) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])}


def with_new_uids(dataset: Dataset, study_uid: str | None = None) -> Dataset:
    """A copy of an instance under new UIDs (another study, unless one is given)."""
    copy = pydicom.dcmread(io.BytesIO(encoded(dataset)))
    copy.StudyInstanceUID = study_uid or pydicom.uid.generate_uid()
    copy.SeriesInstanceUID = pydicom.uid.generate_uid()
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    return copy


def test_a_study_stored_by_an_admin_is_filed_byte_for_byte_and_converted(stow: Stow) -> None:
    sent = instances("d2n_mr_4slice_uncompressed")
    study_uid = str(sent[0].StudyInstanceUID)
    answer = stow.client(ADMIN_KEY).store_instances(sent)
    assert stored_uids(answer) == {str(ds.SOPInstanceUID) for ds in sent}
    assert "FailedSOPSequence" not in answer
    # The URLs are the request's (this client names no port in its Host header).
    assert path_of(answer.RetrieveURL) == f"/dicomweb/studies/{study_uid}"
    assert {path_of(item.RetrieveURL) for item in answer.ReferencedSOPSequence} == {
        f"/dicomweb/studies/{study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        for ds in sent
    }
    for dataset in sent:
        path = stow.wait_until_filed(dataset)
        assert path.relative_to(stow.dcmdb.data_dir / "archive").parts[0] == "unknown"
        assert path.read_bytes() == encoded(dataset)
    study = wait_for(lambda: _converted(stow, study_uid), 120, "the study converted", SLOW_POLL)
    assert [series["nifti"]["status"] for series in study["series"]] == ["converted"]
    _, filed = catalog(stow.dcmdb.database_url)
    assert {i.calling_ae for i in filed if i.sop_instance_uid == str(sent[0].SOPInstanceUID)} == {
        "STOW-RS"
    }
    audit = httpx.get(
        f"{stow.url}/audit",
        params={"action": "study.store", "study_uid": study_uid},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ).json()
    assert [(r["key_name"], r["status"]) for r in audit["items"]] == [("DCMDB_API_KEYS #1", 200)]


def _converted(stow: Stow, study_uid: str) -> dict[str, Any] | None:
    answer = httpx.get(
        f"{stow.url}/studies/{study_uid}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    if answer.status_code != 200:
        return None
    study: dict[str, Any] = answer.json()
    pending = any(series["nifti"]["status"] == "pending" for series in study["series"])
    return None if pending else study


def test_a_lab_key_stores_its_own_lab_and_nothing_of_another(stow: Stow) -> None:
    own, other = instances(LAB_FOLDER), instances(OTHER_LAB_FOLDER)
    client = stow.client(stow.keys[LAB])
    with pytest.raises(requests.HTTPError) as refused:
        client.store_instances(other)
    assert refused.value.response.status_code == 409
    assert reasons(refused.value.response.json()) == {
        str(ds.SOPInstanceUID): 0x0124 for ds in other
    }
    # Some of its own, some of the other lab's: the lab's stored, the others not.
    answer = client.store_instances([own[0], other[0]])
    assert stored_uids(answer) == {str(own[0].SOPInstanceUID)}
    assert [item.FailureReason for item in answer.FailedSOPSequence] == [0x0124]
    path = stow.wait_until_filed(own[0])
    assert path.relative_to(stow.dcmdb.data_dir / "archive").parts[0] == LAB
    assert all(stow.filed(str(ds.SOPInstanceUID)) is None for ds in other)
    # The other lab's key stores them.
    assert stored_uids(stow.client(stow.keys[OTHER_LAB]).store_instances(other)) == {
        str(ds.SOPInstanceUID) for ds in other
    }


def test_a_lab_key_cannot_add_to_another_labs_study_whatever_its_physician(stow: Stow) -> None:
    """An instance of a study the catalog has is of that study's lab for STOW-RS (and the
    sorter keeps an instance naming another lab out of it): a lab's key may not add one of
    its own physician's instances to another lab's study."""
    theirs = instances(OTHER_LAB_FOLDER)[0]
    stow.client(stow.keys[OTHER_LAB]).store_instances([theirs])
    stow.wait_until_filed(theirs)
    intruder = with_new_uids(instances(LAB_FOLDER)[0], study_uid=str(theirs.StudyInstanceUID))
    with pytest.raises(requests.HTTPError) as refused:
        stow.client(stow.keys[LAB]).store_instances([intruder])
    assert reasons(refused.value.response.json()) == {str(intruder.SOPInstanceUID): 0x0124}


def test_an_instance_of_another_study_than_the_path_names_is_refused(stow: Stow) -> None:
    first, second = (with_new_uids(ds) for ds in instances(LAB_FOLDER)[:2])
    client = stow.client(ADMIN_KEY)
    answer = client.store_instances([first, second], study_instance_uid=first.StudyInstanceUID)
    assert stored_uids(answer) == {str(first.SOPInstanceUID)}
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in answer.FailedSOPSequence] == [
        (second.SOPInstanceUID, 0xC409)
    ]
    assert path_of(answer.RetrieveURL) == f"/dicomweb/studies/{first.StudyInstanceUID}"


def test_a_corrupt_part_is_refused_and_quarantined(stow: Stow) -> None:
    good, cut, anonymous = (with_new_uids(ds) for ds in instances(LAB_FOLDER)[:3])
    cut_bytes = encoded(cut)[:-5000]  # the pixel data stops short
    del anonymous.SeriesInstanceUID
    quarantine = stow.dcmdb.data_dir / "quarantine"
    before = set(quarantine.glob("*.dcm")) if quarantine.exists() else set()
    answer = stow.post(*multipart(encoded(good), cut_bytes, encoded(anonymous)))
    assert answer.status_code == 202, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    assert reasons(answer.json()) == {
        str(cut.SOPInstanceUID): 0xC210,
        str(anonymous.SOPInstanceUID): 0xC211,
    }
    kept = {path.read_bytes() for path in set(quarantine.glob("*.dcm")) - before}
    assert kept == {cut_bytes, encoded(anonymous)}
    notes = [json.loads(p.with_suffix(".json").read_text()) for p in quarantine.glob("*.dcm")]
    assert {note["calling_ae"] for note in notes} == {"STOW-RS"}
    stow.wait_until_filed(good)


def test_an_instance_over_the_size_limit_is_refused_and_a_body_over_it_is_413(stow: Stow) -> None:
    good = with_new_uids(instances(LAB_FOLDER)[0])
    answer = stow.post(*multipart(b"\0" * (MAX_INSTANCE + 1), encoded(good)))
    assert answer.status_code == 202, answer.text
    assert reasons(answer.json()) == {"": 0xA700}
    body, content_type = multipart(b"\0" * (MAX_REQUEST // 2), b"\0" * (MAX_REQUEST // 2))
    too_long = stow.post(body, content_type)
    assert too_long.status_code == 413 and "DCMDB_STOW_MAX_REQUEST" in too_long.text


def test_a_wrong_content_type_is_415_and_a_body_that_is_not_multipart_400(stow: Stow) -> None:
    one = encoded(instances(LAB_FOLDER)[0])
    for content_type in (
        "application/dicom",
        'multipart/related; type="application/dicom+json"; boundary=x',
        "application/json",
    ):
        answer = stow.post(one, content_type)
        assert answer.status_code == 415, (content_type, answer.text)
        assert "multipart/related" in answer.json()["detail"]
    _, content_type = multipart(one)
    for body in (b"this is no multipart body", multipart(one)[0][:-30], b""):
        answer = stow.post(body, content_type)
        assert answer.status_code == 400, answer.text
    assert stow.post(*multipart(one), key=None).status_code == 401
    # A key that reads every lab is no lab's key: it stores nothing.
    assert stow.post(*multipart(one), key=READ_KEY).status_code == 403


def test_stored_before_the_answer_and_announced_while_the_sorter_is_away(
    tmp_path: Path, broker_url: str
) -> None:
    """With only the API running: each instance is in the API's incoming folder, whole,
    when the answer comes, and announced to the sorter's queue; a sorter started later
    files it."""
    api = start(tmp_path, broker_url, "api")
    try:
        api.wait_until_api_answers()
        stow = Stow(api, {})
        sent = instances(LAB_FOLDER)
        answer = stow.client(ADMIN_KEY).store_instances(sent)
        assert stored_uids(answer) == {str(ds.SOPInstanceUID) for ds in sent}
        landed = {p.read_bytes() for p in (api.data_dir / STOW_FOLDER).glob("*.dcm")}
        assert landed == {encoded(ds) for ds in sent}
        wait_for(lambda: _waiting_for_the_sorter(broker_url) == len(sent), 60, "the events")
        api.start("sorter", name="sorter")
        for dataset in sent:
            stow.wait_until_filed(dataset)
        assert not list((api.data_dir / STOW_FOLDER).glob("*.dcm"))
    finally:
        api.stop()


def _waiting_for_the_sorter(broker_url: str) -> int:
    listed = subprocess.run(
        [require_tool("rabbitmqctl"), "-q", "list_queues", "-p", broker_url.rsplit("/", 1)[1],
         "name", "messages"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    counts = dict(line.split("\t") for line in listed.splitlines() if "\t" in line)
    return int(counts.get("dcmdb.sorter", "0"))


def test_below_the_free_space_floor_nothing_is_stored(tmp_path: Path, broker_url: str) -> None:
    api = start(tmp_path, broker_url, "api", DCMDB_MIN_FREE="99.999%")
    try:
        api.wait_until_api_answers()
        sent = instances(LAB_FOLDER)
        with pytest.raises(requests.HTTPError) as refused:
            Stow(api, {}).client(ADMIN_KEY).store_instances(sent)
        assert refused.value.response.status_code == 409
        assert reasons(refused.value.response.json()) == {
            str(ds.SOPInstanceUID): 0xA700 for ds in sent
        }
        assert not list((api.data_dir / STOW_FOLDER).glob("*.dcm"))
    finally:
        api.stop()


def test_stored_while_the_broker_is_away_and_announced_by_the_next_start(
    tmp_path: Path, broker_url: str
) -> None:
    """As the receiver: an instance is taken while RabbitMQ cannot be reached (it is on disk,
    so it is answered), and the sweep of the API's next start announces it."""
    sent = instances(LAB_FOLDER)
    with refused_port() as port:
        away = start(tmp_path, f"amqp://guest:guest@127.0.0.1:{port}/", "api")
        try:
            away.wait_until_api_answers()
            answer = Stow(away, {}).client(ADMIN_KEY).store_instances(sent)
            assert stored_uids(answer) == {str(ds.SOPInstanceUID) for ds in sent}
        finally:
            away.stop()
    assert len(list((away.data_dir / STOW_FOLDER).glob("*.dcm"))) == len(sent)
    back = Dcmdb(away.data_dir, broker_url, away.database_url, extra_env=away.extra_env)
    back.start("up")
    try:
        stow = Stow(back, {})
        for dataset in sent:
            assert stow.wait_until_filed(dataset).read_bytes() == encoded(dataset)
    finally:
        back.stop()


def test_a_copy_that_would_not_replace_the_filed_one_is_kept_aside_with_a_warning(
    stow: Stow,
) -> None:
    """DCMDB_OVERWRITE=better: the same slice again without its pixel data is kept in
    quarantine, listed with Warning Reason 0xB006 (elements discarded); the filed slice stays.
    A correction (same pixels, another header) replaces it."""
    good = with_new_uids(pydicom.dcmread(dicom_files(TESTDATA / GE_FMRI)[0]))
    stow.client(ADMIN_KEY).store_instances([good])
    filed = stow.wait_until_filed(good)
    worse = pydicom.dcmread(io.BytesIO(encoded(good)))
    del worse.PixelData
    quarantine = stow.dcmdb.data_dir / "quarantine"
    before = set(quarantine.glob("*.dcm")) if quarantine.exists() else set()

    answer = stow.post(*multipart(encoded(worse)))

    assert answer.status_code == 202, answer.text
    (item,) = Dataset.from_json(answer.json()).ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == good.SOPInstanceUID and item.WarningReason == 0xB006
    assert path_of(item.RetrieveURL).endswith(f"/instances/{good.SOPInstanceUID}")
    (kept,) = set(quarantine.glob("*.dcm")) - before
    assert kept.read_bytes() == encoded(worse)
    assert "no pixel data" in json.loads(kept.with_suffix(".json").read_text())["reason"]
    assert filed.read_bytes() == encoded(good)

    fixed = pydicom.dcmread(io.BytesIO(encoded(good)))
    fixed.ImageComments = "corrected"
    assert stow.post(*multipart(encoded(fixed))).status_code == 200
    wait_for(lambda: filed.read_bytes() == encoded(fixed), 60, "the correction filed")
    kept_in_history = list((stow.dcmdb.data_dir / "history").rglob(f"{good.SOPInstanceUID}.*"))
    assert [p.read_bytes() for p in kept_in_history] == [encoded(good)]
