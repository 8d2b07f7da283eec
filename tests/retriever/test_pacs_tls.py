"""DICOM TLS end to end: Orthanc as a PACS that speaks only TLS, and ``dcmdb up`` whose
receiver speaks only TLS. dcmdb finds over TLS, Orthanc moves to dcmdb over TLS, and a
C-GET over TLS is handed on to dcmdb's own receiver over TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from shared.errors import PacsError
from shared.pacs_find import StudyQuery, find_studies
from shared.peers import PacsSettings, Peer
from tests.conftest import TESTDATA, fresh_vhost
from tests.pacs_peers import Orthanc
from tests.support import finished_job, wait_for
from tests.system import Dcmdb, dicom_files, self_signed

pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup()]

ADMIN = "admin-key-for-tls-tests-0123456789"
BY_MOVE, BY_GET = "d2n_ct_missing_slice", "d2n_mr_4slice_jpeg"


class TlsOrthanc(Orthanc):
    """Orthanc whose DICOM port speaks TLS only, and that moves to dcmdb over TLS."""

    def __init__(self, folder: Path, destination: tuple[str, str, int], certs: Path) -> None:
        super().__init__(folder, destination)
        self.certs = certs

    def config(self) -> dict[str, object]:
        ae_title, host, port = self.destination
        return {
            **super().config(),
            "DicomModalities": {
                "dcmdb": {"AET": ae_title, "Host": host, "Port": port, "UseDicomTls": True}
            },
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(self.certs / "orthanc" / "cert.pem"),
            "DicomTlsPrivateKey": str(self.certs / "orthanc" / "key.pem"),
            "DicomTlsTrustedCertificates": str(self.certs / "trusted.pem"),
            "DicomTlsRemoteCertificateRequired": False,
        }


def study_of(folder: str) -> tuple[str, list[Path]]:
    files = dicom_files(TESTDATA / folder)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    assert len(uids) == 1
    return uids.pop(), files


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dcmdb, TlsOrthanc, Path]]:
    root = tmp_path_factory.mktemp("tls")
    certs = root / "certs"
    dcmdb_cert, dcmdb_key = self_signed(certs / "dcmdb")
    orthanc_cert, _ = self_signed(certs / "orthanc")
    (certs / "trusted.pem").write_text(dcmdb_cert.read_text() + orthanc_cert.read_text())
    vhosts = fresh_vhost()
    dcmdb = Dcmdb(root / "data", next(vhosts), f"sqlite:///{root / 'catalog.sqlite'}")
    orthanc = TlsOrthanc(root / "orthanc", ("DCMDB", "127.0.0.1", dcmdb.port), certs)
    with orthanc:
        orthanc.fill(study_of(BY_MOVE)[1] + study_of(BY_GET)[1])
        peers = root / "peers.yaml"
        peers.write_text(
            f"- {{name: SECURE, ae_title: ORTHANC, host: 127.0.0.1, port: {orthanc.port},"
            " tls: true}\n"
            f"- {{name: SECURE-GET, ae_title: ORTHANC, host: 127.0.0.1, port: {orthanc.port},"
            " tls: true, retrieve: get}\n"
        )
        dcmdb.extra_env.update(
            {
                "DCMDB_TLS_CERT": str(dcmdb_cert),
                "DCMDB_TLS_KEY": str(dcmdb_key),
                "DCMDB_PACS_FILE": str(peers),
                "DCMDB_PACS_TLS_CA": str(orthanc_cert),
                "DCMDB_NIGHTLY_RETRIEVE": "",
                "DCMDB_STABLE_AGE": "600",
                "DCMDB_POLL_INTERVAL": "0.3",
                "DCMDB_API_KEYS": f"{ADMIN}:admin",
            }
        )
        dcmdb.start("up")
        try:
            wait_for(lambda: "(TLS)" in dcmdb.log(), 60, "the TLS receiver")
            yield dcmdb, orthanc, root
        finally:
            dcmdb.stop()
            next(vhosts, None)


def retrieve(dcmdb: Dcmdb, **body: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{dcmdb.api_port}", timeout=60) as client:
        dcmdb.wait_until_api_answers()
        answer = client.post("/retrievals", json=body, headers=headers)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        return finished_job(
            lambda: client.get(f"/retrievals/{job_id}", headers=headers).json(), 180
        )


def filed(dcmdb: Dcmdb, study_uid: str) -> int:
    """Instances of the study in the catalog, as the API lists them."""
    answer = httpx.get(
        f"http://127.0.0.1:{dcmdb.api_port}/studies/{study_uid}",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    return int(answer.json()["instance_count"]) if answer.status_code == 200 else 0


def test_finds_over_tls_and_refuses_an_untrusted_pacs(
    site: tuple[Dcmdb, TlsOrthanc, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, orthanc, root = site
    uid, _ = study_of(BY_MOVE)
    monkeypatch.setenv("DCMDB_PACS_FILE", str(root / "peers.yaml"))
    monkeypatch.setenv("DCMDB_PACS_TLS_CA", str(root / "certs" / "orthanc" / "cert.pem"))
    peer = PacsSettings().peer("SECURE")
    assert peer.tls_context is not None
    assert [s.study_uid for s in find_studies(peer, StudyQuery(study_uid=uid))] == [uid]

    # The same PACS checked against a CA that did not sign its certificate.
    other, _ = self_signed(tmp_path / "other")
    monkeypatch.setenv("DCMDB_PACS_TLS_CA", str(other))
    with pytest.raises(PacsError):
        find_studies(PacsSettings().peer("SECURE"), StudyQuery(study_uid=uid))
    # And without TLS at all: Orthanc's port does not speak plain DICOM.
    plain = Peer("PLAIN", "ORTHANC", "127.0.0.1", orthanc.port)
    with pytest.raises(PacsError):
        find_studies(plain, StudyQuery(study_uid=uid), timeout=5)


def test_moves_over_tls_into_the_tls_receiver(site: tuple[Dcmdb, TlsOrthanc, Path]) -> None:
    dcmdb, _, _ = site
    uid, files = study_of(BY_MOVE)
    job = retrieve(dcmdb, study_uid=uid, pacs="SECURE")
    assert job["state"] == "completed", job
    wait_for(lambda: filed(dcmdb, uid) == len(files), 60, "every moved instance to be filed")


def test_gets_over_tls_and_hands_on_to_the_tls_receiver(
    site: tuple[Dcmdb, TlsOrthanc, Path],
) -> None:
    dcmdb, _, _ = site
    uid, files = study_of(BY_GET)
    job = retrieve(dcmdb, study_uid=uid, pacs="SECURE-GET")
    assert job["state"] == "completed", job
    wait_for(lambda: filed(dcmdb, uid) == len(files), 60, "every instance got to be filed")
