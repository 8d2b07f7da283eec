"""Where the instances of STOW-RS requests land: the API's incoming folder, taken as the
receiver takes a C-STORE's.

Each instance is checked, written to the folder and fsynced before the request is answered
(`shared.incoming`), and announced as ``instance.received`` afterwards, with publisher
confirms (`shared.announcing`): the sorter files it as it files what the receiver got. While
RabbitMQ is away the instance waits in the folder, and the sweep announces it once the
broker is back, or at the API's next start.

Each API process holds a folder of its own (``DCMDB_STOW_FOLDER``; with several workers,
each the first free of it, ``<it>-2``, ...). It is opened at the first request, or at start
when one is there already: an API that never stores never touches the broker, and a second
API on the same data directory (another installation's) starts, and refuses STOW-RS until
given a folder of its own.

The Failure Reason of an instance not stored, decided here and nowhere else:

======  ===================================================================================
0xA700  out of resources: free space for the folder is below DCMDB_MIN_FREE, the instance is
        larger than DCMDB_STOW_MAX_INSTANCE, or it could not be written
0xC210  cannot understand: the part is not DICOM (PS3.10), or does not parse; kept in
        quarantine/ when it was sent as application/dicom
0xC211  cannot understand: a UID it is filed by is missing or invalid; kept in quarantine/
0xC409  the instance belongs to another study than the one the request's path names
0x0124  not authorized: the instance files into a lab the caller's key does not see
======  ===================================================================================

and the Warning Reason of one kept, but not filed:

======  ===================================================================================
0xB006  elements discarded: dcmdb has filed this SOP Instance UID already and this copy does
        not replace it (DCMDB_OVERWRITE, `shared.overwrite`): it is kept in quarantine/ with
        the reason, the filed copy stays (the receiver answers a C-STORE alike)
======  ===================================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from dataclasses import dataclass, field, replace

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.api.dicomweb.multipart import Part
from services.api.schemas import UID_PATTERN
from services.api.settings import ApiSettings
from shared.announcing import TRANSFER_SYNTAX, Announcements, IncomingFolder
from shared.catalog.models import Study
from shared.dimse_status import (
    CANNOT_UNDERSTAND,
    CANNOT_UNDERSTAND_OTHER,
    ELEMENTS_DISCARDED,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    STUDY_UID_MISMATCH,
)
from shared.errors import MissingIdentifier, StorageFailed, UnreadableObject
from shared.filed_copies import FiledCopies
from shared.headers import Header, Identifiers, meta_places
from shared.incoming import FolderTaken, IncomingStore, SpaceFloor
from shared.keys import Caller
from shared.messages import InstanceReceived
from shared.naming import physician_folder

log = logging.getLogger("dcmdb.api.stow")

SOURCE = "STOW-RS"  # the calling AE title the catalog records for these instances
DICOM = "application/dicom"
_MEDIA_STORAGE_SOP_CLASS, _MEDIA_STORAGE_SOP_INSTANCE = 0x00020002, 0x00020003


@dataclass(frozen=True)
class Outcome:
    """What became of one part: stored (``failure`` None) or not, and why; stored with a
    ``warning`` when kept aside, not filed."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    failure: int | None = None
    warning: int | None = None


@dataclass
class StowRequest:
    """One request's caller and what it learnt: the lab each study files into."""

    caller: Caller
    study_uid: str | None  # of the path: every instance must be of this study
    peer_host: str
    association_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    labs: dict[str, str] = field(default_factory=dict)


class Landing:
    def __init__(self, settings: ApiSettings, sessions: sessionmaker[Session]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._aliases = settings.aliases()
        self._filed_copies = FiledCopies.of(settings)
        self._store: IncomingStore | None = None
        self._floor: SpaceFloor | None = None
        self._announcements: Announcements | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()

    async def start(self) -> None:
        """Open the folder now if the API took instances before (there may be some to
        announce)."""
        data = self._settings.data_dir
        if any((data / folder).is_dir() for folder in self._settings.stow_folders):
            try:
                await self._open()
            except FolderTaken as exc:
                log.warning("%s; STOW-RS requests are refused until one is free", exc)

    async def stop(self) -> None:
        if self._announcements is not None:
            await self._announcements.stop()
        if self._announcing is not None:
            self._announcing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcing

    async def take(self, part: Part, request: StowRequest) -> Outcome:
        """Check one part and land it durably; announce it if it was stored. FolderTaken
        when every folder the API may use is another process's."""
        store = await self._open()
        outcome, event = await asyncio.to_thread(self._take, store, part, request)
        if event is not None:
            assert self._announcements is not None
            self._announcements.enqueue(event)
        return outcome

    async def _open(self) -> IncomingStore:
        async with self._opening:
            if self._store is None:
                self._store = await asyncio.to_thread(self._first_free_folder)
                self._floor = SpaceFloor(self._store.incoming, self._settings.min_free)
                self._announcements = Announcements(
                    self._settings.broker_url,
                    self._settings.topology,
                    IncomingFolder(
                        self._settings.data_dir,
                        self._store.incoming.name,
                        self._settings.quarantine_dir,
                        source=SOURCE,
                    ),
                    self._settings.sweep_interval,
                    connection_name="dcmdb-api",
                )
                self._announcing = asyncio.create_task(self._announce(self._announcements))
            return self._store

    async def _announce(self, announcements: Announcements) -> None:
        while True:
            try:
                await announcements.run()
            except Exception as exc:  # the instances wait on disk meanwhile
                log.error("announcing STOW-RS arrivals failed (%s); connecting again", exc)
                await asyncio.sleep(5.0)

    def _first_free_folder(self) -> IncomingStore:
        settings = self._settings
        for folder in settings.stow_folders:
            try:
                return IncomingStore(
                    settings.data_dir / folder, settings.quarantine_dir, "DCMDB_STOW_FOLDER"
                )
            except FolderTaken:
                continue
        raise FolderTaken(
            f"every STOW-RS folder ({', '.join(settings.stow_folders)}) is taken by another "
            "process: give each API sharing the data directory its own DCMDB_STOW_FOLDER"
        )

    def _take(
        self, store: IncomingStore, part: Part, request: StowRequest
    ) -> tuple[Outcome, InstanceReceived | None]:
        assert self._floor is not None
        if part.content is None:
            log.warning("refusing an instance of %d bytes: over DCMDB_STOW_MAX_INSTANCE", part.size)
            return Outcome(failure=OUT_OF_RESOURCES), None
        if part.media_type not in ("", DICOM):
            log.warning("refusing a part of type %s: not %s", part.media_type, DICOM)
            return Outcome(failure=CANNOT_UNDERSTAND), None
        content = part.content
        try:
            header = Header.from_part10(content)
            uids = header.identifiers()
        except UnreadableObject as exc:
            return self._unreadable(store, content, exc), None

        def refused(reason: int) -> tuple[Outcome, None]:
            return Outcome(uids.sop_class_uid, uids.sop_instance_uid, failure=reason), None

        if self._floor.reached():
            return refused(OUT_OF_RESOURCES)
        if request.study_uid is not None and uids.study_instance_uid != request.study_uid:
            log.warning("refusing an instance of another study than the request's path names")
            return refused(STUDY_UID_MISMATCH)
        if not request.caller.sees(self._lab_of(header, uids, request)):
            log.warning("refusing an instance: it files into a lab key %s does not see",
                        request.caller.name)  # fmt: skip
            return refused(NOT_AUTHORIZED)
        outcome = Outcome(
            uids.sop_class_uid,
            uids.sop_instance_uid,
            uids.study_instance_uid,
            uids.series_instance_uid,
        )
        if self._filed_copies.refuse_file(store, uids.sop_instance_uid, content, SOURCE):
            return replace(outcome, warning=ELEMENTS_DISCARDED), None
        try:
            stored = store.store_file(content)
        except StorageFailed as exc:
            log.error("answering 0x%04X: %s", OUT_OF_RESOURCES, exc,
                      extra={"study_uid": uids.study_instance_uid})  # fmt: skip
            return refused(OUT_OF_RESOURCES)
        event = InstanceReceived(
            sop_instance_uid=uids.sop_instance_uid,
            sop_class_uid=uids.sop_class_uid,
            study_instance_uid=uids.study_instance_uid,
            series_instance_uid=uids.series_instance_uid,
            transfer_syntax_uid=header.meta_text(TRANSFER_SYNTAX),
            incoming_path=f"{store.incoming.name}/{stored.name}",
            size=stored.size,
            received_at=stored.received_at,
            calling_ae=SOURCE,
            peer_host=request.peer_host,
            association_id=request.association_id,
        )
        return outcome, event

    def _unreadable(self, store: IncomingStore, content: bytes, exc: UnreadableObject) -> Outcome:
        sop_class, sop_instance = _meta_uids(content)
        assert self._floor is not None
        if self._floor.reached():  # nothing written, not even to quarantine
            return Outcome(sop_class, sop_instance, failure=OUT_OF_RESOURCES)
        kept = store.quarantine_file(str(exc), SOURCE, content)
        log.warning("unreadable instance quarantined as %s: %s",
                    kept.name if kept else "(not kept)", exc)  # fmt: skip
        reason = (
            CANNOT_UNDERSTAND_OTHER if isinstance(exc, MissingIdentifier) else CANNOT_UNDERSTAND
        )
        return Outcome(sop_class, sop_instance, failure=reason)

    def _lab_of(self, header: Header, uids: Identifiers, request: StowRequest) -> str:
        """The lab folder the sorter files this instance into: its study's, when the catalog
        has the study, else its Referring Physician's (services/sorter/rows.py)."""
        if request.caller.labs is None:
            return ""  # seen by every lab's key: no need to ask
        study = uids.study_instance_uid
        if study not in request.labs:
            with self._sessions() as session:
                filed = session.scalar(
                    select(Study.physician_folder).where(Study.study_instance_uid == study)
                )
            referring = header.text("ReferringPhysicianName")
            request.labs[study] = filed or physician_folder(referring, self._aliases)
        return request.labs[study]


def _meta_uids(content: bytes) -> tuple[str, str]:
    """The SOP class and instance UIDs the file meta information names, for the answer
    about a part whose data set does not read; '' where it names none."""
    try:
        places, _ = meta_places(content)
    except UnreadableObject:
        return "", ""
    found = {tag: content[start:end] for tag, _, _, start, end in places}

    def uid(tag: int) -> str:
        text = found.get(tag, b"").rstrip(b"\x00 ").decode("ascii", "replace")
        return text if re.fullmatch(UID_PATTERN, text) else ""  # never garbage in the answer

    return uid(_MEDIA_STORAGE_SOP_CLASS), uid(_MEDIA_STORAGE_SOP_INSTANCE)
