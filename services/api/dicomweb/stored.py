"""The instances a WADO-RS path names, as the catalog lists them for the caller's labs.

A study, series or instance that is not there, or is another lab's, answers 404 naming the
first UID of the path that was not found, with the words of every other route for an
unknown UID, so that a key cannot tell another lab's study from one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api.dependencies import archive_file, not_found
from services.api.settings import ApiSettings
from services.api.studies import find_study, of_labs
from shared.catalog.models import Instance, Series, Study


@dataclass(frozen=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    transfer_syntax: str
    path: Path  # resolved under the archive root

    def uri(self, base: str) -> str:
        """Its WADO-RS address under `base` (the service's /dicomweb)."""
        return f"{base}/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}"


def stored_instances(
    session: Session,
    settings: ApiSettings,
    labs: frozenset[str] | None,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[StoredInstance]:
    """The instances of the study (its series, or one instance of it), in series and
    instance order; a 404 when there are none."""
    statement = (
        select(
            Study.study_instance_uid,
            Series.series_instance_uid,
            Instance.sop_instance_uid,
            Instance.transfer_syntax_uid,
            Instance.path,
        )
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Study.study_instance_uid == study_uid, *of_labs(labs))
    )
    if series_uid is not None:
        statement = statement.where(Series.series_instance_uid == series_uid)
    if sop_uid is not None:
        statement = statement.where(Instance.sop_instance_uid == sop_uid)
    rows = session.execute(
        statement.order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    ).all()
    if not rows:
        require_visible(session, labs, study_uid, series_uid)
        if sop_uid is not None:
            raise not_found("instance", sop_uid)
        raise not_found("series", series_uid) if series_uid else not_found("study", study_uid)
    return [
        StoredInstance(study, series, sop, syntax, archive_file(settings, path))
        for study, series, sop, syntax, path in rows
    ]


def require_visible(
    session: Session, labs: frozenset[str] | None, study_uid: str, series_uid: str | None = None
) -> None:
    """A 404 unless the study (and the series, in it) is there for `labs`."""
    if find_study(session, study_uid, labs) is None:
        raise not_found("study", study_uid)
    if series_uid is None:
        return
    in_study = session.scalar(
        select(Series.id)
        .join(Study, Study.id == Series.study_pk)
        .where(Series.series_instance_uid == series_uid, Study.study_instance_uid == study_uid)
    )
    if in_study is None:
        raise not_found("series", series_uid)
