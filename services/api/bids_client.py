"""The client of the labs' BIDS datasets: a study's session (asked again only when it
changed, by its ETag) and a lab's naming rules.

    from services.api.bids_client import BidsClient

    with BidsClient() as dcmdb:
        with dcmdb.bids_session(study_uid, Path("work"), etag=None) as got:
            if got is not None:
                print(got.etag, got.archive)  # a ZIP, removed when the block ends
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from services.api.client import ApiError, Client, _detail, _segment

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class SessionArchive:
    archive: Path  # the session's ZIP, in the directory asked for
    etag: str | None  # to ask with next time


class BidsClient(Client):
    @contextmanager
    def bids_session(
        self, study_uid: str, directory: Path, *, etag: str | None = None
    ) -> Iterator[SessionArchive | None]:
        """The study's BIDS session as a ZIP in `directory`, or None when it is still the
        one of `etag`; `ApiError` (404) when the study has no session."""
        headers = {"If-None-Match": etag} if etag else {}
        directory.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".dcmdb-", suffix=".zip", dir=directory)
        download = Path(name)
        try:
            with os.fdopen(handle, "wb") as sink:
                got = self._fetch(f"/studies/{_segment(study_uid)}/bids", headers, sink, download)
            yield got
        finally:
            download.unlink(missing_ok=True)

    def _fetch(
        self, path: str, headers: dict[str, str], sink: BinaryIO, download: Path
    ) -> SessionArchive | None:
        try:
            with self._http.stream("GET", path, headers=headers) as response:
                if response.status_code == httpx.codes.NOT_MODIFIED:
                    return None
                if not response.is_success:
                    response.read()
                    raise ApiError(response.status_code, _detail(response))
                for chunk in response.iter_bytes(_CHUNK):
                    sink.write(chunk)
                return SessionArchive(download, response.headers.get("etag"))
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    def bids_rules(self, physician: str) -> Any:
        """The lab's BIDS naming rules, as JSON."""
        return self._rules("GET", physician, None)

    def set_bids_rules(self, physician: str, rules: Any) -> Any:
        """Replace the lab's rules; the rules as stored."""
        return self._rules("PUT", physician, rules)

    def _rules(self, method: str, physician: str, rules: Any) -> Any:
        content = None if rules is None else json.dumps(rules).encode()
        try:
            response = self._http.request(
                method,
                "/bids/rules",
                params={"physician": physician},
                content=content,
                headers={"Content-Type": "application/json"} if content else None,
            )
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if not response.is_success:
            raise ApiError(response.status_code, _detail(response))
        try:
            return response.json()
        except ValueError:
            raise ApiError(None, f"the answer of {self.url}/bids/rules is not JSON") from None
