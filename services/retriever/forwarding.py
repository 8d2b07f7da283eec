"""Instances a PACS sends by C-GET, handed on to dcmdb's own receiver by C-STORE.

They then take the path of every other arrival: made durable in ``incoming/``, announced,
filed, converted. The PACS is told 0x0000 for an instance only once the receiver said so;
anything else fails that sub-operation (see `shared.pacs`), so nothing is lost on the way.
The instance is sent exactly as the PACS encoded it: one association per SOP class and
transfer syntax, opened when first needed. Each C-STORE names dcmdb as its move originator,
as a PACS does for the sub-operations of dcmdb's C-MOVE: the receiver answers it once
written, and the job's sync at its end makes it durable (`shared.unsynced`).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association

from shared.dimse_status import SUCCESS
from shared.errors import PacsError
from shared.pacs import tuned_requestor

_OWN_GET = 1  # the Move Originator Message ID of what dcmdb retrieved by C-GET


class Forwarder:
    def __init__(
        self, ae_title: str, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> None:
        self._ae_title, self._host, self._port = ae_title, host, port
        self._tls_args = None if tls is None else (tls, host)
        self._associations: dict[tuple[str, str], Association] = {}
        self._scratch = Path(tempfile.mkdtemp(prefix="dcmdb-get-"))

    def store(self, dataset: bytes, syntax: str, sop_class: str, sop_instance: str) -> None:
        """Raises when the receiver did not store it (the PACS then hears a failure)."""
        association = self._association(sop_class, syntax)
        path = self._scratch / "instance.dcm"
        with open(path, "wb") as handle:
            handle.write(b"\x00" * 128 + b"DICM")
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = UID(sop_class)
            meta.MediaStorageSOPInstanceUID = UID(sop_instance)
            meta.TransferSyntaxUID = UID(syntax)
            write_file_meta_info(handle, meta, enforce_standard=True)  # type: ignore[arg-type]
            handle.write(dataset)
        try:
            status = association.send_c_store(
                path, originator_aet=self._ae_title, originator_id=_OWN_GET
            )
        finally:
            path.unlink(missing_ok=True)
        code = getattr(status, "Status", None)
        if code != SUCCESS:
            shown = "no answer" if code is None else f"0x{code:04X}"
            raise OSError(f"dcmdb's receiver did not store it ({shown})")

    def _association(self, sop_class: str, syntax: str) -> Association:
        key = (sop_class, syntax)
        association = self._associations.get(key)
        if association is not None and association.is_established:
            return association
        ae = AE(ae_title=self._ae_title)
        ae.add_requested_context(sop_class, syntax)
        association = ae.associate(
            self._host, self._port, ae_title=self._ae_title, tls_args=self._tls_args
        )
        if not association.is_established:
            raise PacsError(
                f"dcmdb's receiver at {self._host}:{self._port} refused the association"
            )
        self._associations[key] = tuned_requestor(association)
        return association

    def close(self) -> None:
        for association in self._associations.values():
            if association.is_established:
                association.release()
        self._associations.clear()
        for leftover in self._scratch.glob("*"):
            leftover.unlink(missing_ok=True)
        os.rmdir(self._scratch)
