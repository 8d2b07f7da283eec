"""``dcmdb api`` run as a process of its own over an archive of filed studies, for the audit
tests that need a real server: a download cut by its client, a shutdown, the command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from tests.audit_site import write_keys
from tests.filed_studies import Archive
from tests.support import refused_port
from tests.system import Dcmdb


@dataclass
class Server:
    dcmdb: Dcmdb
    url: str


@contextmanager
def api_server(archive: Archive) -> Iterator[Server]:
    """The API alone (no broker: only /readyz would miss it), with the audit keys."""
    write_keys(archive.sorter.data / "keys.yaml")
    with refused_port() as away:
        dcmdb = Dcmdb(archive.sorter.data, f"amqp://guest:guest@127.0.0.1:{away}/", archive.url)
        dcmdb.start("api", name="api")
        try:
            dcmdb.wait_until_api_answers()
            yield Server(dcmdb, f"http://127.0.0.1:{dcmdb.api_port}")
        finally:
            dcmdb.stop()


def answered(server: Server, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(server.url + path, headers=headers, timeout=30)
