"""The labs' DICOM desktops as the receiver meets them: who may query and retrieve, and
where a C-MOVE sends (the ``desktops`` of the keys file, shared/keys.py).

A desktop is known by its calling AE title *and* its host: the AE title alone is a name
anyone can type. Host names are resolved when the keys file is read again, and on each
miss, so that a desktop whose address changed is found without a restart.
"""

from __future__ import annotations

import socket
from functools import lru_cache

from shared.keys import DesktopEntry, KeysFile


class Desktops:
    def __init__(self, keys_file: KeysFile) -> None:
        self._file = keys_file

    def calling(self, ae_title: str, host: str) -> DesktopEntry | None:
        """The desktop that calls as `ae_title` from `host`; None for any other peer."""
        entry = self._file.document.desktop(ae_title)
        if entry is None:
            return None
        if host in _addresses(entry.host):
            return entry
        _addresses.cache_clear()
        return entry if host in _addresses(entry.host) else None

    def destination(self, ae_title: str) -> DesktopEntry | None:
        """Where a C-MOVE to `ae_title` sends, None when no desktop has that AE title."""
        return self._file.document.desktop(ae_title)

    def known(self, ae_title: str) -> bool:
        return self._file.document.desktop(ae_title) is not None


@lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return frozenset({host})
    found = {str(info[4][0]) for info in infos}
    # An IPv4 peer on a dual-stack socket reads as ::ffff:a.b.c.d.
    return frozenset(found | {f"::ffff:{address}" for address in found if "." in address})
