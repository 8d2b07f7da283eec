"""C-STORE of instances dcmdb holds to a PACS: a rescued study sent on to the clinical
archive (``POST /reconciliation/{id}/forward``), never automatically.

One association for the whole lot, with a presentation context for each SOP class and
transfer syntax the files carry; each file is sent as it is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from shared.dimse_status import SUCCESS, is_warning
from shared.errors import PacsError
from shared.pacs import CONNECT_TIMEOUT, tuned_requestor
from shared.peers import Peer


@dataclass(frozen=True)
class Stored:
    sent: int
    failed: int
    reason: str = ""  # the first failure's status, when any failed


def store_files(peer: Peer, paths: list[Path], *, timeout: float = 60) -> Stored:
    contexts = sorted({_context(path) for path in paths})
    if not contexts:
        return Stored(0, 0)
    if len(contexts) > 128:
        raise PacsError("more than 128 kinds of SOP class and transfer syntax to send")
    ae = AE(ae_title=peer.calling_ae)
    ae.connection_timeout = ae.acse_timeout = min(timeout, CONNECT_TIMEOUT)
    ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    tls_args = None if peer.tls_context is None else (peer.tls_context, peer.host)
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    except OSError as error:
        raise PacsError(f"PACS {peer} unreachable: {error}") from None
    if not assoc.is_established:
        raise PacsError(f"PACS {peer} refused or did not answer the association for C-STORE")
    tuned_requestor(assoc)
    sent = failed = 0
    reason = ""
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            code = getattr(status, "Status", None)
            if code == SUCCESS or (code is not None and is_warning(code)):
                sent += 1
                continue
            failed += 1
            reason = reason or ("no answer" if code is None else f"status 0x{code:04X}")
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return Stored(sent, failed + len(paths) - sent - failed, reason)


def _context(path: Path) -> tuple[str, str]:
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
