"""The JSON bodies of webhook deliveries: what a lab is told of a study, a series or a
retrieval job.

Every body has ``event``, ``delivery`` (the ``X-Dcmdb-Delivery`` id), ``occurred_at``
and ``lab`` (the physician folder), then the UIDs, counts and API links of what it is
about. No patient name or ID unless the webhook includes them (``include_patient``): then
a study has ``patient`` ({id, name}) and its ``folder``, whose name carries the patient
ID. Without them, free text that could quote them (descriptions, failure reasons) has
the patient's ID and the parts of the name masked where they stand as words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.catalog.models import Patient, RetrievalJob, RetrievalStudy, Series, Study
from shared.catalog.states import ConversionState, WebhookEvent

MASK = "***"
_SHORTEST_MASKED = 3  # a one- or two-character ID would mask digits of every UID


@dataclass(frozen=True)
class Links:
    """The API's URLs of what a body names: paths, or under ``base`` when it is set."""

    base: str = ""

    def study(self, uid: str) -> str:
        return f"{self.base.rstrip('/')}/studies/{uid}"

    def series(self, uid: str) -> str:
        return f"{self.base.rstrip('/')}/series/{uid}"

    def retrieval(self, job_id: int) -> str:
        return f"{self.base.rstrip('/')}/retrievals/{job_id}"


@dataclass(frozen=True)
class Privacy:
    """What of the patient a body may carry."""

    include_patient: bool
    identifiers: tuple[str, ...]  # longest first

    @classmethod
    def of(cls, patient: Patient, include_patient: bool) -> Privacy:
        name = patient.patient_name or ""
        parts = {patient.patient_id, name, *re.split(r"[\^ =]+", name)}
        kept = sorted((p.strip() for p in parts if len(p.strip()) >= _SHORTEST_MASKED), key=len)
        return cls(include_patient, tuple(reversed(kept)))

    def text(self, value: str) -> str:
        """Free text as the body may carry it."""
        if self.include_patient:
            return value
        for identifier in self.identifiers:  # as a whole word: "Ada" stays in "readable"
            pattern = rf"(?<![^\W_]){re.escape(identifier)}(?![^\W_])"
            value = re.sub(pattern, MASK, value, flags=re.IGNORECASE)
        return value


def body(
    event: WebhookEvent, delivery: str, occurred_at: datetime, lab: str, **content: Any
) -> str:
    return json.dumps(
        {
            "event": str(event),
            "delivery": delivery,
            "occurred_at": occurred_at.isoformat(),
            "lab": lab,
            **content,
        },
        ensure_ascii=False,
    )


def counts(series: Sequence[Series]) -> dict[str, int]:
    """A study's series and instances, and its series by conversion state."""
    states = [s.conversion for s in series]
    return {
        "series": len(series),
        "instances": sum(s.instance_count for s in series),
        "converted": states.count(ConversionState.CONVERTED),
        "skipped": states.count(ConversionState.SKIPPED),
        "failed": states.count(ConversionState.FAILED),
        "pending": states.count(ConversionState.PENDING),
    }


def study_facts(
    study: Study, series: Sequence[Series], links: Links, privacy: Privacy
) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "study_uid": study.study_instance_uid,
        "study_date": study.study_date or None,
        "description": privacy.text(study.description),
        "received_at": study.received_at.isoformat(),
        "counts": counts(series),
        "link": links.study(study.study_instance_uid),
    }
    if privacy.include_patient:
        facts["patient"] = {"id": study.patient.patient_id, "name": study.patient.patient_name}
        facts["folder"] = study.relative_folder
    return facts


def series_facts(series: Series, links: Links, privacy: Privacy) -> dict[str, Any]:
    return {
        "series_uid": series.series_instance_uid,
        "number": series.series_number,
        "modality": series.modality,
        "description": privacy.text(series.description),
        "instances": series.instance_count,
        "generation": series.generation,
        "conversion": str(series.conversion),
        "reason": privacy.text(series.conversion_reason),
        "link": links.series(series.series_instance_uid),
    }


def retrieval_facts(job: RetrievalJob, links: Links) -> dict[str, Any]:
    """The job without its query or reason: both may name other labs' studies or
    patients."""
    return {
        "id": job.id,
        "state": str(job.state),
        "origin": job.origin,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "link": links.retrieval(job.id),
    }


def retrieved_study(
    moved: RetrievalStudy,
    study: Study,
    series: Sequence[Series],
    links: Links,
    privacy: Privacy,
) -> dict[str, Any]:
    return {
        **study_facts(study, series, links, privacy),
        "retrieval": {
            "state": str(moved.state),
            "completed": moved.completed,
            "failed": moved.failed,
            "warning": moved.warning,
            "reason": privacy.text(moved.reason),
        },
    }
