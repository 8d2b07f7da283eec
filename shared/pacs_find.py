"""C-FIND at a PACS in the Study Root model: its studies, a study's series, a series' size.

Each query opens its own association (see `shared.pacs`); a PACS that answers with a
failure raises ``PacsError`` with the reason, as a retrieval would word it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from shared.dimse_status import SUCCESS, is_pending
from shared.pacs import FIND_MODEL, PacsError, associate, lost_association, query_identifier
from shared.pacs_retrieve import Progress, failure_reason
from shared.peers import Peer


@dataclass(frozen=True)
class StudyQuery:
    """C-FIND keys; each is left out of the match when None."""

    study_date: str | None = None  # "20240101", "20240101-20240131", "-20240131", "20240101-"
    patient_id: str | None = None
    accession_number: str | None = None
    study_uid: str | None = None
    modality: str | None = None  # matched against ModalitiesInStudy
    referring_physician: str | None = None  # wildcards * and ? allowed

    def __post_init__(self) -> None:
        date = self.study_date
        if date is not None and not re.fullmatch(r"\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8}", date):
            raise ValueError(f"study_date {date!r} is not YYYYMMDD or a range A-B")


@dataclass(frozen=True)
class StudyMatch:
    study_uid: str
    study_date: str
    study_time: str
    patient_id: str
    accession_number: str
    referring_physician: str
    modalities: tuple[str, ...]
    description: str
    series_count: int | None  # None when the PACS does not say
    instance_count: int | None


@dataclass(frozen=True)
class SeriesMatch:
    series_uid: str
    modality: str
    series_number: int | None
    description: str
    instance_count: int | None  # None when the PACS does not say: see count_instances


def find_studies(peer: Peer, query: StudyQuery, *, timeout: float = 30) -> list[StudyMatch]:
    keys = {
        "StudyDate": query.study_date,
        "PatientID": query.patient_id,
        "AccessionNumber": query.accession_number,
        "StudyInstanceUID": query.study_uid,
        "ModalitiesInStudy": query.modality,
        "ReferringPhysicianName": query.referring_physician,
        "StudyTime": None,
        "StudyDescription": None,
        "NumberOfStudyRelatedSeries": None,
        "NumberOfStudyRelatedInstances": None,
    }
    with associate(peer, FIND_MODEL, timeout) as assoc:
        studies = [_study(found) for found in _matches(assoc, peer, "STUDY", keys, timeout)]
        if query.modality is not None:
            # Some PACS (dcmqrscp) ignore ModalitiesInStudy: their series say it.
            studies = [_with_modalities(assoc, peer, study, timeout) for study in studies]
            studies = [study for study in studies if query.modality in study.modalities]
    return studies


def _study(found: Dataset) -> StudyMatch:
    return StudyMatch(
        study_uid=_text(found, "StudyInstanceUID"),
        study_date=_text(found, "StudyDate"),
        study_time=_text(found, "StudyTime"),
        patient_id=_text(found, "PatientID"),
        accession_number=_text(found, "AccessionNumber"),
        referring_physician=_text(found, "ReferringPhysicianName"),
        modalities=_texts(found, "ModalitiesInStudy"),
        description=_text(found, "StudyDescription"),
        series_count=_number(found, "NumberOfStudyRelatedSeries"),
        instance_count=_number(found, "NumberOfStudyRelatedInstances"),
    )


def _with_modalities(
    assoc: Association, peer: Peer, study: StudyMatch, timeout: float
) -> StudyMatch:
    if study.modalities:
        return study
    keys = {"StudyInstanceUID": study.study_uid, "SeriesInstanceUID": None, "Modality": None}
    series = _matches(assoc, peer, "SERIES", keys, timeout)
    return replace(study, modalities=tuple(sorted({_text(found, "Modality") for found in series})))


_SERIES_KEYS = {
    "SeriesInstanceUID": None,
    "Modality": None,
    "SeriesNumber": None,
    "SeriesDescription": None,
    "NumberOfSeriesRelatedInstances": None,
}


def find_series(peer: Peer, study_uid: str, *, timeout: float = 30) -> list[SeriesMatch]:
    keys = {"StudyInstanceUID": study_uid, **_SERIES_KEYS}
    return [_series(found) for found in _find(peer, "SERIES", keys, timeout)]


def counted_series(peer: Peer, study_uid: str, *, timeout: float = 30) -> list[SeriesMatch]:
    """A study's series, each with its instance count: counted one IMAGE-level match at a
    time where the PACS gives none (dcmqrscp), all over one association."""
    with associate(peer, FIND_MODEL, timeout) as assoc:
        keys = {"StudyInstanceUID": study_uid, **_SERIES_KEYS}
        series = [_series(found) for found in _matches(assoc, peer, "SERIES", keys, timeout)]
        return [
            found
            if found.instance_count is not None
            else replace(
                found,
                instance_count=len(
                    _matches(assoc, peer, "IMAGE", _instance_keys(study_uid, found), timeout)
                ),
            )
            for found in series
        ]


def studies_on(assoc: Association, peer: Peer, study_date: str, timeout: float) -> list[StudyMatch]:
    """The studies of a date range, on an association the caller holds (see ``associate``)."""
    keys = {
        "StudyDate": study_date,
        "StudyTime": None,
        "PatientID": None,
        "AccessionNumber": None,
        "ReferringPhysicianName": None,
        "StudyInstanceUID": None,
        "StudyDescription": None,
        "NumberOfStudyRelatedSeries": None,
        "NumberOfStudyRelatedInstances": None,
    }
    return [_study(found) for found in _matches(assoc, peer, "STUDY", keys, timeout)]


def series_counts_on(
    assoc: Association, peer: Peer, study_uid: str, timeout: float
) -> tuple[dict[str, int], bool]:
    """Instances per series of a study, on an association the caller holds, and whether
    the peer gave the counts: one SERIES query, and where a count is missing one IMAGE
    query for the whole study (not one per series), see ``image_counts_on``."""
    keys = {"StudyInstanceUID": study_uid, **_SERIES_KEYS}
    series = [_series(found) for found in _matches(assoc, peer, "SERIES", keys, timeout)]
    counts = {s.series_uid: s.instance_count for s in series}
    if all(count is not None for count in counts.values()):
        return {uid: count for uid, count in counts.items() if count is not None}, True
    return dict.fromkeys(counts, 0) | image_counts_on(assoc, peer, study_uid, timeout), False


def image_counts_on(
    assoc: Association, peer: Peer, study_uid: str, timeout: float
) -> dict[str, int]:
    """Instances per series of a study, counted from one IMAGE-level query: for a peer
    known to give no counts at series level (dcmqrscp)."""
    keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": None, "SOPInstanceUID": None}
    counted: dict[str, int] = {}
    for found in _matches(assoc, peer, "IMAGE", keys, timeout):
        uid = _text(found, "SeriesInstanceUID")
        counted[uid] = counted.get(uid, 0) + 1
    return counted


def _series(found: Dataset) -> SeriesMatch:
    return SeriesMatch(
        series_uid=_text(found, "SeriesInstanceUID"),
        modality=_text(found, "Modality"),
        series_number=_number(found, "SeriesNumber"),
        description=_text(found, "SeriesDescription"),
        instance_count=_number(found, "NumberOfSeriesRelatedInstances"),
    )


def _instance_keys(study_uid: str, series: SeriesMatch) -> dict[str, str | None]:
    return {
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series.series_uid,
        "SOPInstanceUID": None,
    }


def count_instances(peer: Peer, study_uid: str, series_uid: str, *, timeout: float = 30) -> int:
    """The instances of one series, counted one C-FIND match at a time."""
    keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": None}
    return len(_find(peer, "IMAGE", keys, timeout))


def _find(peer: Peer, level: str, keys: dict[str, str | None], timeout: float) -> list[Dataset]:
    with associate(peer, FIND_MODEL, timeout) as assoc:
        return _matches(assoc, peer, level, keys, timeout)


def _matches(
    assoc: Association, peer: Peer, level: str, keys: dict[str, str | None], timeout: float
) -> list[Dataset]:
    matches = []
    waiting_since = time.monotonic()
    for status, found in assoc.send_c_find(query_identifier(level, keys), FIND_MODEL):
        if "Status" not in status:
            raise lost_association(peer, "C-FIND", waiting_since, timeout)
        waiting_since = time.monotonic()
        if is_pending(status.Status) and found is not None:
            matches.append(found)
        elif status.Status != SUCCESS:
            code = int(status.Status)
            reason = failure_reason(code, Progress(), comment=status.get("ErrorComment"))
            raise PacsError(f"C-FIND at {peer.kind} {peer} failed: {reason}")
    return matches


def _text(found: Dataset, keyword: str) -> str:
    value = found.get(keyword)
    return "" if value is None else str(value).strip()


def _texts(found: Dataset, keyword: str) -> tuple[str, ...]:
    value = found.get(keyword)
    if value is None or value == "":
        return ()
    return tuple(str(item) for item in value) if not isinstance(value, str) else (value,)


def _number(found: Dataset, keyword: str) -> int | None:
    value = found.get(keyword)
    return None if value is None or value == "" else int(value)
