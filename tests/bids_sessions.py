"""A study's BIDS session made on disk as the converter makes it, for the tests of the doors
to it (the API's ZIP, the export, the web page's link)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from shared.bids.dataset import SessionPlace, place_of
from shared.bids.views import BidsViews


def build_session(
    sessions: sessionmaker[Session], archive: Path, study_uid: str
) -> SessionPlace | None:
    """The study's session in its lab's dataset, as its converted series name it; None
    where none of them has a BIDS name."""
    BidsViews(sessions, archive, None, "shift").refresh(study_uid)
    with sessions() as session:
        return place_of(session, archive, None, study_uid)


def session_of(sessions: sessionmaker[Session], archive: Path, study_uid: str) -> SessionPlace:
    place = build_session(sessions, archive, study_uid)
    assert place is not None, f"study {study_uid} has no BIDS session"
    return place
