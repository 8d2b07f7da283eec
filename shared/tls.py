"""DICOM over TLS: the contexts for dcmdb's receiver and for its associations to a PACS.

The receiver speaks TLS on its DICOM port when ``DCMDB_TLS_CERT`` and
``DCMDB_TLS_KEY`` are set (PS3.15 B.1: TLS with server authentication); with
``DCMDB_TLS_CLIENT_CA`` it also requires a client certificate signed by that CA.
A PACS marked ``tls: true`` in ``DCMDB_PACS_FILE`` is reached over TLS, its
certificate checked against ``DCMDB_PACS_TLS_CA`` (or the system's CAs), with
``DCMDB_PACS_TLS_CERT``/``KEY`` as dcmdb's own certificate where a PACS asks for
one.
"""

from __future__ import annotations

import ssl
from pathlib import Path

#: TLS 1.2 at least, as the DICOM BCP 195 profiles require.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The receiver's context; client certificates are required when ``client_ca`` is set."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: Path | None,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A context that checks the server's certificate against ``ca`` (or the system's
    CAs) and presents ``cert`` when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = MINIMUM_VERSION
    if not check_hostname:
        context.check_hostname = False
        # The certificate itself is the trust anchor (dcmdb's own, self-signed or not).
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def unset_if_empty(value: object) -> object:
    """An empty variable (as a copied .env.example leaves it) means no file."""
    return None if value == "" else value


def check_pair(cert: Path | None, key: Path | None, name: str) -> None:
    """Both or neither, and both readable as a certificate and its key."""
    if (cert is None) != (key is None):
        raise ValueError(f"set both DCMDB_{name}_CERT and DCMDB_{name}_KEY, or neither")
    if cert is not None and key is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"DCMDB_{name}_CERT/KEY cannot be loaded: {exc}") from None
