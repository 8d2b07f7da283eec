"""The states of what the catalog tracks, in one place.

Each is a `StrEnum`: its members are the very strings stored in the catalog, sent in
JSON and used as metric labels, so naming them here changes no byte anywhere.
"""

from __future__ import annotations

from enum import StrEnum


class Completion(StrEnum):
    """Whether a series may still grow (see services/sorter/completion.py)."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class ConversionState(StrEnum):
    """How the conversion to NIfTI of a series' newest complete generation went."""

    PENDING = "pending"
    CONVERTED = "converted"
    SKIPPED = "skipped"  # nothing to convert (a localizer, a report)
    FAILED = "failed"


class JobState(StrEnum):
    """Where a retrieval job from the PACS is."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"  # some of its studies failed
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class StudyRetrievalState(StrEnum):
    """Where the move of one study of a retrieval job is."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ALREADY_COMPLETE = "already complete"  # the catalog held all the PACS lists: nothing moved

    @property
    def finished(self) -> bool:
        return self not in (StudyRetrievalState.QUEUED, StudyRetrievalState.RUNNING)


class EvictionReason(StrEnum):
    """Why retention removes a study."""

    SPACE = "space"  # free space below the low mark
    AGE = "age"  # older than the maximum age


class AuditAction(StrEnum):
    """What a request did, as the API's audit trail records it (`AuditEvent`)."""

    STUDIES_LIST = "studies.list"
    STUDY_READ = "study.read"
    STUDY_ARCHIVE = "study.archive"
    SERIES_READ = "series.read"
    SERIES_PREVIEW = "series.preview"
    SERIES_NIFTI = "series.nifti"
    RETRIEVAL_START = "retrieval.start"
    RETRIEVAL_CANCEL = "retrieval.cancel"
    STUDY_PIN = "study.pin"
    STUDY_UNPIN = "study.unpin"
    STUDY_REPAIR = "study.repair"
    STUDY_PACS_CHECK = "study.pacs_check"


class DeliveryState(StrEnum):
    """Where one webhook delivery is (see services/notifier/delivery.py)."""

    PENDING = "pending"  # not yet answered 2xx: tried again with backoff
    DELIVERED = "delivered"
    ABANDONED = "abandoned"  # given up after DCMDB_WEBHOOK_GIVE_UP_AFTER; the next one goes on


class WebhookEvent(StrEnum):
    """What a lab's webhook may be told of."""

    STUDY_READY = "study.ready"  # every series of a study converted or skipped
    SERIES_FAILED = "series.failed"  # a series' conversion failed
    RETRIEVAL_FINISHED = "retrieval.finished"  # a retrieval job with the lab's studies ended
