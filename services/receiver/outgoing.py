"""What a retrieve sends of an archived instance: its data set as stored, where it lies in
the file, or, for a destination that takes no context in the stored transfer syntax,
re-encoded; and the presentation contexts to offer for it.

Each instance is offered in its stored transfer syntax; an uncompressed one also in
Explicit and Implicit VR Little Endian, in a context of their own, for a destination that
takes nothing else: only then is a data set decoded and re-encoded (by pydicom). A
compressed one goes as stored or not at all: dcmdb does not decompress.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode

from services.receiver.transport import StoreAnswer
from shared.dimse_status import OUT_OF_RESOURCES_SUBOPERATIONS
from shared.errors import UnreadableObject
from shared.headers import meta_places

# Uncompressed encodings pydicom can write again as Explicit or Implicit VR Little Endian.
RE_ENCODABLE = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
     DeflatedExplicitVRLittleEndian}
)  # fmt: skip
LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128  # odd context IDs 1 to 255
_HEAD = 8192  # bytes read to find where a file's data set starts


@dataclass(frozen=True)
class Outgoing:
    """An archived instance to send: what the catalog says of it, and its file."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path

    @property
    def kind(self) -> tuple[str, str]:
        return self.sop_class_uid, self.transfer_syntax_uid


def proposals(kinds: Iterable[tuple[str, str]]) -> list[tuple[str, tuple[str, ...]]]:
    """The presentation contexts to propose for instances of these (SOP class, transfer
    syntax) kinds: each kind as stored, then for each SOP class with uncompressed instances
    the little endian syntaxes no kind of it has, as a fallback. At most ``MAX_CONTEXTS``:
    fallbacks go first."""
    exact = sorted(set(kinds))
    stored = set(exact)
    fallbacks: list[tuple[str, tuple[str, ...]]] = []
    for sop_class in sorted({sop for sop, syntax in exact if syntax in RE_ENCODABLE}):
        missing = tuple(str(ts) for ts in LITTLE_ENDIAN if (sop_class, ts) not in stored)
        if missing:
            fallbacks.append((sop_class, missing))
    offered = [(sop, (syntax,)) for sop, syntax in exact] + fallbacks
    return offered[:MAX_CONTEXTS]


def what_to_send(
    instance: Outgoing,
    accepted: dict[tuple[str, str], int],
    ae_title: str,
    *,
    in_memory: bool = False,
) -> tuple[int, FileDataSet | bytes] | StoreAnswer:
    """The context to send `instance` on and its data set: as stored (where it lies in its
    file, open, or its bytes `in_memory`), else re-encoded for a fallback context; or the
    failure to count when neither can be."""
    data: FileDataSet | bytes | str
    if (context_id := accepted.get(instance.kind)) is not None:
        data = _stored_data_set(instance.path)
        if in_memory and isinstance(data, FileDataSet):
            data = data.read()
    else:
        fallbacks = [
            (accepted[(instance.sop_class_uid, syntax)], syntax)
            for syntax in LITTLE_ENDIAN
            if (instance.sop_class_uid, syntax) in accepted
        ]
        if instance.transfer_syntax_uid not in RE_ENCODABLE or not fallbacks:
            return _failed(f"no transfer syntax {ae_title} accepts")
        context_id, syntax = fallbacks[0]
        data = _re_encoded(instance.path, syntax)
    if isinstance(data, str):
        return _failed(data)
    return context_id, data


@dataclass(frozen=True)
class FileDataSet:
    """Where an archived file, open, holds its data set."""

    file: BinaryIO
    offset: int
    length: int

    def read(self) -> bytes:
        with self.file:
            self.file.seek(self.offset)
            return self.file.read(self.length)


def _stored_data_set(path: Path) -> FileDataSet | str:
    """The data set an archived file holds, the file open; a reason if it cannot be read."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        return "archived file gone (evicted?)"
    except OSError as exc:
        return f"archived file unreadable: {exc}"
    try:
        head = file.read(_HEAD)
        size = file.seek(0, 2)
        try:
            _, start = meta_places(head)
        except UnreadableObject:  # a long meta: read it all
            file.seek(0)
            _, start = meta_places(file.read())
    except (OSError, UnreadableObject) as exc:
        file.close()
        return f"archived file unreadable: {exc}"
    return FileDataSet(file, start, size - start)


def _re_encoded(path: Path, syntax: str) -> bytes | str:
    """The data set of an archived file in another little endian syntax; a reason if not."""
    try:
        dataset = dcmread(path)
        data = encode(dataset, syntax == ImplicitVRLittleEndian, True, False)
    except FileNotFoundError:
        return "archived file gone (evicted?)"
    except Exception as exc:  # whatever pydicom finds wrong with the file
        return f"cannot re-encode as {syntax}: {exc}"
    if data is None:
        return f"cannot re-encode as {syntax}"
    return data


def _failed(comment: str) -> StoreAnswer:
    """A sub-operation that failed on our side, before anything was sent: counted with the
    destination's failures (the code never goes on the wire)."""
    return StoreAnswer(None, OUT_OF_RESOURCES_SUBOPERATIONS, comment)
