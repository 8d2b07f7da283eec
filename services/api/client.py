"""A client of the dcmdb API for lab scripts: find studies, read them, download them.

    from pathlib import Path
    from services.api.client import Client

    with Client() as dcmdb:  # DCMDB_API_URL and DCMDB_API_KEY from the environment
        for study in dcmdb.iter_studies(physician="Smith^John", study_date="20240101-"):
            dcmdb.download_study(study.study_uid, Path("downloads"))

Answers are the pydantic models of `services.api.schemas`. Every error answer raises
`ApiError` with the HTTP `status` and the server's `detail`; an API that cannot be reached
raises `ApiUnreachable`, an `ApiError` whose status is None.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Literal, Self, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from services.api.schemas import (
    AuditPage,
    PacsCheck,
    Physician,
    Retrieval,
    SeriesSummary,
    StudyDetail,
    StudyPage,
    StudySummary,
)
from shared.naming import resolve_under

DEFAULT_URL = "http://127.0.0.1:8000"
ArchiveFormat = Literal["dicom", "nifti", "all"]
_CHUNK = 256 * 1024
_T = TypeVar("_T")


class StudyQuery(TypedDict, total=False):
    """The filters and paging of ``GET /studies`` (see /docs for what each accepts)."""

    physician: str  # lab folder (SMITH_JOHN) or name as sent (Smith^John), any case
    patient_id: str
    patient_name: str  # DICOM name, * as wildcard: SMITH*
    study_date: str | dt.date  # YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD-, -YYYYMMDD, today
    modality: str
    accession_number: str
    description: str  # substring, any case
    received_since: str | dt.datetime  # naive times are UTC
    sort: Literal["received", "study_date"]
    order: Literal["desc", "asc"]
    limit: int  # studies per page, 1 to 1000
    cursor: str  # the `next` of the page before


class ApiError(Exception):
    """The API answered with an error (`status`, and the server's `detail`), or gave no
    usable answer at all (`status` None)."""

    def __init__(self, status: int | None, detail: str) -> None:
        self.status = status
        self.detail = detail
        message = detail if status is None else f"{status}: {detail}{_hint(status, detail)}"
        super().__init__(message)


class ApiUnreachable(ApiError):
    """No answer: nothing listens at the URL, or the API took longer than the timeout."""

    def __init__(self, detail: str) -> None:
        super().__init__(None, detail)


def _hint(status: int, detail: str) -> str:
    if status == 401 and "required" in detail:
        return "; set DCMDB_API_KEY to a key of the server's DCMDB_API_KEYS"
    if status == 401:
        return "; check DCMDB_API_KEY"
    if status == 403:
        return "; ask the dcmdb administrator for a key with that scope"
    if status >= 500:
        return " (the server failed; its log says why)"
    return ""


class Client:
    """A connection to the dcmdb API; use it as a context manager, or call `close`."""

    def __init__(
        self, url: str | None = None, key: str | None = None, *, timeout: float = 30
    ) -> None:
        self.url = (url or os.environ.get("DCMDB_API_URL") or DEFAULT_URL).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"the API URL must start with http:// or https://: {self.url!r}")
        key = key if key is not None else os.environ.get("DCMDB_API_KEY")
        headers = {"User-Agent": "dcmdb-client"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- reading the catalog -------------------------------------------------------------

    def studies(self, **filters: Unpack[StudyQuery]) -> StudyPage:
        """One page of the studies that match; pass its `next` as `cursor` for the next."""
        return self._read(StudyPage, "/studies", _query(filters))

    def iter_studies(self, **filters: Unpack[StudyQuery]) -> Iterator[StudySummary]:
        """Every study that matches, fetched page by page (`limit` studies a page)."""
        query = _query(filters)
        while True:
            page = self._read(StudyPage, "/studies", query)
            yield from page.items
            if page.next is None:
                return
            query["cursor"] = page.next

    def study(self, uid: str) -> StudyDetail:
        return self._read(StudyDetail, f"/studies/{_segment(uid)}")

    def series(self, uid: str) -> SeriesSummary:
        return self._read(SeriesSummary, f"/series/{_segment(uid)}")

    def physicians(self) -> list[Physician]:
        return self._read(list[Physician], "/physicians")

    def preview(self, series_uid: str) -> bytes:
        """The PNG of the middle image of a series."""
        with self._request(f"/series/{_segment(series_uid)}/preview.png") as response:
            return response.read()

    # --- downloads -----------------------------------------------------------------------

    def download_study(
        self,
        uid: str,
        directory: Path,
        *,
        format: ArchiveFormat = "dicom",  # noqa: A002 - the API's parameter name
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """The study's DICOM files, NIfTI files or both, unpacked under `directory` (as
        ``<study folder>/<series folder>/...``); `progress` gets the bytes of each chunk."""
        path = f"/studies/{_segment(uid)}/archive"
        with self._download(path, {"format": format}, directory, progress) as (archive, _):
            return extract_zip(archive, directory)

    def series_nifti(
        self, series_uid: str, directory: Path, *, sidecar: bool = False
    ) -> list[Path]:
        """The series' NIfTI volume(s) in `directory`, with their JSON sidecars if asked."""
        path = f"/series/{_segment(series_uid)}/nifti"
        params = {"sidecar": "true" if sidecar else "false"}
        with self._download(path, params, directory, None) as (download, response):
            if response.headers.get("content-type", "").startswith("application/zip"):
                return extract_zip(download, directory)
            name = _attachment_name(response) or f"{series_uid}.nii.gz"
            target = resolve_under(directory, name)
            os.replace(download, target)
            return [target]

    # --- retrievals from the PACS --------------------------------------------------------

    def retrieve(self, *, pacs: str | None = None, **query: str) -> Retrieval:
        """Queue a retrieval (admin key): C-FIND with `query` (study_date, patient_id,
        accession_number, study_uid, modality, referring_physician), C-MOVE of each match."""
        body: dict[str, str] = {**query, **({"pacs": pacs} if pacs else {})}
        return self._call("POST", Retrieval, "/retrievals", body=body)

    def retrieval(self, job_id: int) -> Retrieval:
        return self._read(Retrieval, f"/retrievals/{int(job_id)}")

    def cancel_retrieval(self, job_id: int) -> Retrieval:
        return self._call("DELETE", Retrieval, f"/retrievals/{int(job_id)}")

    def pacs_check(self, study_uid: str, pacs: str | None = None) -> PacsCheck:
        """The PACS's series and instance counts beside the catalog's."""
        params = {"pacs": pacs} if pacs else None
        return self._read(PacsCheck, f"/studies/{_segment(study_uid)}/pacs-check", params)

    def repair(self, study_uid: str, pacs: str | None = None) -> Retrieval:
        """Queue a move of the series the check finds incomplete (admin key)."""
        params = {"pacs": pacs} if pacs else None
        path = f"/studies/{_segment(study_uid)}/repair"
        return self._call("POST", Retrieval, path, params=params)

    def audit(self, **filters: str | int) -> AuditPage:
        """A page of the audit trail, newest first (admin key); the filters of GET /audit."""
        return self._read(AuditPage, "/audit", {name: str(v) for name, v in filters.items()})

    # --- HTTP ----------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        shape: type[_T],
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, str] | None = None,
    ) -> _T:
        try:
            response = self._http.request(method, path, params=params, json=body)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if not response.is_success:
            raise ApiError(response.status_code, _detail(response))
        try:
            return TypeAdapter(shape).validate_json(response.content)
        except ValidationError as exc:
            raise ApiError(
                None, f"the answer of {self.url}{path} does not fit this client ({exc})"
            ) from None

    def _read(self, shape: type[_T], path: str, params: dict[str, str] | None = None) -> _T:
        with self._request(path, params) as response:
            body = response.read()
        try:
            return TypeAdapter(shape).validate_json(body)
        except ValidationError as exc:
            raise ApiError(
                None,
                f"the answer of {self.url}{path} does not fit this client "
                f"({exc.error_count()} problem(s)); is the server another version of dcmdb?",
            ) from None

    @contextmanager
    def _request(self, path: str, params: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """A streamed GET that raises `ApiError` for any answer but 2xx, and for a transport
        failure on the way (including one while the body is read)."""
        try:
            with self._http.stream("GET", path, params=params) as response:
                if not response.is_success:
                    response.read()
                    raise ApiError(response.status_code, _detail(response))
                yield response
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    @contextmanager
    def _download(
        self,
        path: str,
        params: dict[str, str],
        directory: Path,
        progress: Callable[[int], None] | None,
    ) -> Iterator[tuple[Path, httpx.Response]]:
        """The body written chunk by chunk to a temporary file in `directory` (so that
        moving it is a rename), removed at the end whatever happens."""
        directory.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".dcmdb-", suffix=".part", dir=directory)
        download = Path(name)
        try:
            with os.fdopen(handle, "wb") as sink, self._request(path, params) as response:
                for chunk in response.iter_bytes(_CHUNK):
                    sink.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            yield download, response
        finally:
            download.unlink(missing_ok=True)

    def _transport_error(self, exc: httpx.TransportError) -> ApiError:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError):
            return ApiUnreachable(
                f"cannot reach the dcmdb API at {self.url} ({reason}): is it running "
                "(start it with 'dcmdb api')? Check DCMDB_API_URL"
            )
        if isinstance(exc, httpx.TimeoutException):
            return ApiUnreachable(
                f"the dcmdb API at {self.url} did not answer within {self._timeout:g} s"
            )
        return ApiError(None, f"the connection to the dcmdb API at {self.url} failed: {reason}")


def extract_zip(archive: Path, directory: Path) -> list[Path]:
    """Unpack the files of `archive` under `directory` and name them, in archive order.

    A name that is absolute or climbs out of `directory` (``..``, or a symbolic link in
    `directory`) refuses the whole archive before anything is written.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [
                (info, _member_path(directory, info.filename))
                for info in bundle.infolist()
                if not info.is_dir()
            ]
            for info, target in members:
                target.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK)
    except zipfile.BadZipFile as exc:
        raise ApiError(None, f"the downloaded archive is damaged: {exc}") from None
    return [target for _, target in members]


def _member_path(directory: Path, name: str) -> Path:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    unsafe = (
        not parts
        or name.startswith(("/", "\\"))
        or ":" in parts[0]  # a Windows drive
        or ".." in parts
        or "\x00" in name
    )
    try:
        if unsafe:
            raise ValueError(name)
        return resolve_under(directory, *parts)
    except ValueError:
        raise ApiError(
            None, f"the archive holds an unsafe file name {name!r}; nothing was extracted"
        ) from None


def _query(filters: StudyQuery) -> dict[str, str]:
    unknown = set(filters) - set(StudyQuery.__annotations__)
    if unknown:
        known = ", ".join(StudyQuery.__annotations__)
        raise TypeError(f"unknown study filter(s) {', '.join(sorted(unknown))}; known: {known}")
    params: dict[str, str] = {}
    for name, value in filters.items():
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            params[name] = value.isoformat()
        elif isinstance(value, dt.date):
            params[name] = value.strftime("%Y%m%d")
        else:
            params[name] = str(value)
    return params


def _segment(uid: str) -> str:
    return quote(uid.strip(), safe="")


def _detail(response: httpx.Response) -> str:
    """The server's message: FastAPI's ``{"detail": "..."}``, or its 422 list of problems."""
    try:
        detail: Any = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        return "; ".join(_problem(item) for item in detail)
    text = response.text.strip().splitlines()
    return text[0][:200] if text else response.reason_phrase or "error"


def _problem(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = [str(p) for p in item.get("loc", []) if p not in ("query", "path", "body")]
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{'.'.join(where)}: {message}" if where else message


def _attachment_name(response: httpx.Response) -> str | None:
    """The bare file name of the Content-Disposition header, if it has a usable one."""
    header = response.headers.get("content-disposition")
    if not header:
        return None
    message = Message()
    message["content-disposition"] = header
    name = PurePosixPath((message.get_filename() or "").replace("\\", "/")).name
    return name if name not in ("", ".", "..") else None
