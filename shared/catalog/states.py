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
    """What a request did, as the audit trail records it (`AuditEvent`): the API's routes,
    and the desktops' retrieves from the receiver."""

    STUDIES_LIST = "studies.list"
    STUDY_READ = "study.read"
    STUDY_ARCHIVE = "study.archive"
    STUDY_BIDS = "study.bids"  # a study's BIDS session as a ZIP
    BIDS_RULES_CHANGE = "bids.rules_change"  # a lab's BIDS naming rules replaced
    SERIES_READ = "series.read"
    SERIES_PREVIEW = "series.preview"
    SERIES_NIFTI = "series.nifti"
    RETRIEVAL_START = "retrieval.start"
    RETRIEVAL_CANCEL = "retrieval.cancel"
    STUDY_PIN = "study.pin"
    STUDY_UNPIN = "study.unpin"
    STUDY_REPAIR = "study.repair"
    STUDY_PACS_CHECK = "study.pacs_check"
    STUDY_STORE = "study.store"  # instances stored into it (STOW-RS)
    RECONCILIATION_LIST = "reconciliation.list"  # what the PACS lacks of the scanners
    RECONCILIATION_FORWARD = "reconciliation.forward"  # a rescued study sent to the PACS
    MOVE = "dicom.move"  # a desktop's C-MOVE of a study
    GET = "dicom.get"  # a desktop's C-GET of a study
    # DICOMweb (services/api/dicomweb): searches, instances, metadata, frames and bulk data,
    # rendered images and thumbnails.
    DICOMWEB_SEARCH = "dicomweb.search"
    DICOMWEB_RETRIEVE = "dicomweb.retrieve"
    DICOMWEB_METADATA = "dicomweb.metadata"
    DICOMWEB_BULKDATA = "dicomweb.bulkdata"
    DICOMWEB_RENDERED = "dicomweb.rendered"


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
    # a scanner's check found studies of the lab the PACS lacks (shared/reconciliation.py)
    RECONCILIATION_MISSING = "reconciliation.missing"


class DifferenceKind(StrEnum):
    """What the reconciliation found the PACS lacks of a scanner's study."""

    STUDY_MISSING = "study missing"
    SERIES_MISSING = "series missing"
    INSTANCES_MISSING = "instances missing"  # fewer on the PACS than on the scanner


class DifferenceState(StrEnum):
    """Where a difference between a scanner and the PACS is."""

    OPEN = "open"
    RESCUING = "rescuing"  # a retrieval from the scanner is queued or running
    CLOSED = "closed"  # see `Resolution`


class Resolution(StrEnum):
    """How a difference was closed."""

    ON_PACS = "arrived on the PACS"
    RESCUED = "rescued from the scanner"  # dcmdb holds every instance the scanner listed
    GONE = "no longer on the scanner"


class CheckState(StrEnum):
    """How one scanner's reconciliation run went."""

    RUNNING = "running"
    CHECKED = "checked"
    FAILED = "failed"  # a peer down, refusing or slow: the reason says which; tried next night
