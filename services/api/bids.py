"""A lab's BIDS dataset as the API hands it out: one study's session, and the lab's rules.

The dataset itself is written by the converter (`shared.bids.dataset`); the API reads it.
A session's ETag is made from the names, sizes and modification times of what its ZIP
holds (the made participants row by its bytes), so that an export asking again learns
"unchanged" without a byte of the session read. The rules file is the lab's, in its
dataset (`RULES_FILE`): checked by `Rules.parse`, replaced durably, and the converter told
(`BidsRulesChanged`) to name the lab's sessions again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.bids import pseudonyms
from shared.bids.dataset import LEFTOVERS_FOLDER, RULES_FILE, dataset_root, make_dataset
from shared.broker import Publisher
from shared.broker_connection import connect
from shared.durable import fsync_directory, replace_durably
from shared.messages import BidsRulesChanged
from shared.settings import CommonSettings
from shared.share import make_folder

log = logging.getLogger("dcmdb.api")

NO_RULES: dict[str, Any] = {"descriptions": []}
# The broker's answer to one rules change; past it the change stays stored, untold.
TELLING_TIMEOUT = 15.0

Member = tuple[str, Path | bytes]


def session_etag(members: list[Member]) -> str:
    """A weak ETag of a session's ZIP: the ZIP's own bytes differ by the time it is made."""
    digest = hashlib.sha256()
    for name, source in members:
        digest.update(name.encode() + b"\0")
        if isinstance(source, bytes):
            digest.update(hashlib.sha256(source).digest())
        else:
            stat = source.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        digest.update(b"\n")
    return f'W/"{digest.hexdigest()[:32]}"'


def unchanged(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (compared weakly, as RFC 9110 says)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in if_none_match.split(","))


def leftovers_hint(session: Session, study_uid: str) -> str:
    """Where the study's series without a BIDS name are listed, with the reason, if it
    was given labels: its converted series were looked at."""
    found = pseudonyms.existing(session, study_uid)
    if found is None:
        return " (none of its series is converted yet)"
    name = f"sub-{found.subject}_ses-{found.session}_leftovers.tsv"
    return f" in {LEFTOVERS_FOLDER}/{name} of the lab's BIDS dataset"


def rules_path(settings: CommonSettings, lab: str) -> Path:
    return dataset_root(settings.archive_root, settings.bids_dir, lab) / RULES_FILE


def read_rules(path: Path) -> Any:
    """The lab's rules as stored (`NO_RULES` when it has none); ValueError when the file
    is not JSON (an edit by hand gone wrong)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return NO_RULES
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the lab's rules file is not JSON ({exc})") from None


def store_rules(settings: CommonSettings, lab: str, rules: Any) -> None:
    """Replace the lab's rules file by `rules` (checked already), durably; its dataset
    folder made, where missing, in the lab's group, as the converter makes it."""
    make_dataset(settings.archive_root, settings.bids_dir, lab, settings.keys_path)
    path = rules_path(settings, lab)
    make_folder(path.parent)  # setgid, in the lab's group: so is the file then
    content = (json.dumps(rules, indent=2, ensure_ascii=False) + "\n").encode()
    replace_durably(path, path.with_name(f".{path.name}.tmp"), content)
    fsync_directory(path.parent)


async def tell_converter(settings: CommonSettings, lab: str) -> None:
    """Publish `BidsRulesChanged` for `lab` and wait for the broker's confirm; TimeoutError
    or the broker's error when it does not come."""
    connection = await asyncio.wait_for(connect(settings.broker_url, name="dcmdb-api-bids"), 10)
    try:
        publisher = Publisher(connection, settings.topology)
        await asyncio.wait_for(publisher.start(), TELLING_TIMEOUT)
        await asyncio.wait_for(publisher.publish(BidsRulesChanged(lab=lab)), TELLING_TIMEOUT)
    finally:
        await connection.close()
