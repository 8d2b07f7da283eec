"""What the API answers: the JSON shapes of studies, series, physicians and pages.

These models are the contract with lab scripts (and `services.api.client` reads them
back); the OpenAPI document at /docs is generated from them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StrictBool

from shared.catalog.states import (
    AuditAction,
    Completion,
    ConversionState,
    DeliveryState,
    EvictionReason,
    JobState,
    StudyRetrievalState,
    WebhookEvent,
)
from shared.keys import LAB_PATTERN


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ConversionSummary(_Model):
    """How many of a study's series are in each conversion state."""

    converted: int = 0
    skipped: int = 0
    failed: int = 0
    pending: int = 0


class StudySummary(_Model):
    study_uid: str
    physician_name: str = Field(description="Referring physician as sent, '' when none")
    physician_folder: str = Field(description="The lab folder the study is filed under")
    folder: str = Field(description="Study folder, relative to the archive root")
    patient_id: str
    patient_name: str
    study_date: str | None = Field(description="YYYYMMDD as sent")
    study_time: str | None
    description: str
    accession_number: str
    modalities: list[str]
    series_count: int
    instance_count: int
    size_bytes: int
    received_at: datetime
    pinned: bool = Field(default=False, description="Pinned studies are never evicted")
    conversion: ConversionSummary


class StudyPage(_Model):
    items: list[StudySummary]
    next: str | None = Field(description="Cursor of the next page; null on the last page")


class NiftiFile(_Model):
    path: str = Field(description="The .nii.gz, relative to the archive root")
    sidecar_path: str = Field(description="Its JSON sidecar, relative to the archive root")
    bval_path: str | None = Field(
        default=None, description="Diffusion: b-values (FSL), relative to the archive root"
    )
    bvec_path: str | None = Field(
        default=None, description="Diffusion: gradient directions (FSL, image space)"
    )
    engine: str
    size_bytes: int


class Nifti(_Model):
    status: ConversionState
    reason: str = Field(description="Why skipped or failed; '' otherwise")
    outputs: list[NiftiFile]


class SeriesSummary(_Model):
    series_uid: str
    study_uid: str
    number: int | None
    description: str
    modality: str
    instance_count: int
    size_bytes: int
    folder: str = Field(description="Series folder, relative to the archive root")
    completion: Completion
    received_at: datetime
    last_received_at: datetime
    nifti: Nifti


class ReplacedCopy(_Model):
    """A filed copy of one of the study's instances that a newer copy replaced
    (DCMDB_OVERWRITE), kept under history/ in the data directory until the study is evicted."""

    sop_instance_uid: str
    replaced_at: datetime
    reason: str = Field(description="Why the other copy replaced it")
    kept_path: str = Field(description="The replaced copy, relative to history/")
    old_received_at: datetime
    old_calling_ae: str = Field(description="Who sent the replaced copy")
    old_size_bytes: int
    new_received_at: datetime
    new_calling_ae: str = Field(description="Who sent the copy filed in its place")
    new_size_bytes: int


class StudyDetail(StudySummary):
    series: list[SeriesSummary]
    replaced: list[ReplacedCopy] = Field(
        default_factory=list, description="Copies of its instances replaced by others, oldest first"
    )


class Physician(_Model):
    folder: str
    names: list[str] = Field(description="Referring physician names filed under this folder")
    study_count: int
    size_bytes: int
    latest_study_date: str | None


class DiskSpace(_Model):
    total_bytes: int
    used_bytes: int
    free_bytes: int = Field(description="What dcmdb may still write (not root's reserve)")


class StorageThresholds(_Model):
    low_free: str | None = Field(description="DCMDB_RETENTION_LOW_FREE: eviction starts below")
    low_free_bytes: int | None = Field(description="The same in bytes on the archive's disk")
    target_free: str | None = Field(description="DCMDB_RETENTION_TARGET_FREE: eviction stops")
    target_free_bytes: int | None
    max_age_days: float | None = Field(description="Older studies go whatever the space")
    min_free: str = Field(description="DCMDB_MIN_FREE: below it the receiver refuses")
    min_free_bytes: int = Field(description="The same in bytes on incoming/'s disk")


class CatalogUsage(_Model):
    studies: int
    size_bytes: int = Field(description="DICOM files and NIfTI volumes")
    pinned: int
    evicting: int = Field(description="Studies being removed now")


class PlannedEviction(_Model):
    study_uid: str
    physician_folder: str
    folder: str = Field(description="Study folder, relative to the archive root")
    study_date: str | None
    received_at: datetime
    size_bytes: int
    reason: EvictionReason = Field(
        description="Free space below the low mark, or older than the maximum age"
    )


class NextEviction(_Model):
    """A dry run: what retention would evict if it ran now, oldest first."""

    study_count: int
    size_bytes: int
    free_after_bytes: int = Field(description="Free space once they are gone")
    studies: list[PlannedEviction] = Field(description="The first `limit` of them")


class Storage(_Model):
    archive: DiskSpace
    incoming: DiskSpace
    receiving: bool = Field(description="Whether incoming/ has the receiver's minimum free space")
    catalog: CatalogUsage
    thresholds: StorageThresholds
    next_eviction: NextEviction


class Pin(_Model):
    study_uid: str
    pinned: bool


class Problem(_Model):
    """The body of every error answer."""

    detail: str


# A UID as the PACS must get it: a C-FIND key where a backslash would make a list and
# some PACS match * as a wildcard.
UID_PATTERN = r"^[0-9.]{1,64}$"


class RetrievalRequest(_Model):
    """What to fetch from the PACS: a C-FIND at study level with these keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_date: str | None = Field(
        default=None,
        description="YYYYMMDD, a range YYYYMMDD-YYYYMMDD (open ends allowed), today, yesterday",
    )
    patient_id: str | None = Field(default=None, min_length=1, max_length=64)
    accession_number: str | None = Field(default=None, min_length=1, max_length=16)
    study_uid: str | None = Field(default=None, pattern=UID_PATTERN)
    modality: str | None = Field(default=None, min_length=1, max_length=16)
    referring_physician: str | None = Field(
        default=None, min_length=1, max_length=64, description="DICOM name, * wildcards"
    )
    pacs: str | None = Field(default=None, description="A configured PACS; the default if none")


class RetrievalStudyProgress(_Model):
    study_uid: str
    state: StudyRetrievalState
    series_uids: list[str] = Field(description="Only these series (a repair); [] = the study")
    expected_series: int | None
    expected_instances: int | None
    completed: int
    failed: int
    warning: int
    remaining: int | None
    filed: int = Field(description="Instances of the study in the catalog now")
    reason: str


class Retrieval(_Model):
    id: int
    state: JobState
    origin: Literal["request", "nightly", "repair"]
    pacs: str
    query: dict[str, str]
    nightly_slot: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    cancel_requested: bool
    reason: str
    gaps: list[dict[str, object]] = Field(description="What the end-of-night check found missing")
    studies: list[RetrievalStudyProgress]


class SeriesComparison(_Model):
    series_uid: str
    number: int | None
    modality: str
    description: str
    pacs_instances: int
    catalog_instances: int
    missing: int


class PacsCheck(_Model):
    study_uid: str
    pacs: str
    complete: bool
    missing_series: list[str]
    missing_instances: int
    series: list[SeriesComparison]
    only_in_catalog: list[str] = Field(description="Series the catalog has and the PACS lists not")


class AuditEntry(_Model):
    """One answer of the API that read patient data or changed something, or a desktop's
    C-MOVE or C-GET of a study."""

    id: int
    at: datetime = Field(description="When the answer ended (or was cut)")
    key_name: str = Field(description="The name of the API key, or desktop:<AE title>")
    action: AuditAction
    study_uid: str | None
    series_uid: str | None
    job_id: int | None = Field(description="The retrieval job queued or cancelled")
    status: int = Field(description="The HTTP status answered; the final DIMSE status")
    bytes_sent: int = Field(description="Body bytes handed to the server, fewer when cut")
    client: str | None = Field(description="The client's address")
    instances: int | None = Field(default=None, description="Instances a C-MOVE or C-GET sent")
    destination: str | None = Field(default=None, description="The AE title a C-MOVE sent to")


class AuditPage(_Model):
    items: list[AuditEntry]
    next: int | None = Field(description="`before` of the next page; null on the last page")


class WebhookRequest(_Model):
    """A lab's webhook: where to post which of the lab's events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lab: str = Field(pattern=LAB_PATTERN, description="The lab: a physician folder")
    url: HttpUrl = Field(description="The http:// or https:// URL each delivery is posted to")
    events: list[WebhookEvent] = Field(min_length=1, max_length=16)
    include_patient: StrictBool = Field(
        default=False, description="Put the patient's name and ID (and study folder) in bodies"
    )


class Webhook(_Model):
    id: int
    lab: str
    url: str
    events: list[WebhookEvent]
    include_patient: bool
    created_at: datetime
    created_by: str = Field(description="The name of the API key that registered it")


class NewWebhook(Webhook):
    secret: str = Field(
        description="The HMAC-SHA256 key of each delivery's X-Dcmdb-Signature; shown only here"
    )


class WebhookDelivery(_Model):
    delivery_id: str = Field(description="The X-Dcmdb-Delivery header, the same for each attempt")
    event: WebhookEvent
    state: DeliveryState
    study_uid: str | None
    series_uid: str | None
    retrieval_id: int | None
    attempts: int
    last_status: int | None = Field(description="The HTTP status of the last attempt's answer")
    last_error: str = Field(description="Why the last attempt failed; '' when it did not")
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="When it is tried again, if pending")
    delivered_at: datetime | None


class BidsRules(BaseModel):
    """A lab's BIDS naming rules, in the shape of a dcm2bids configuration: each description
    names the converted series whose sidecar meets its criteria (shared/bids/rules.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    descriptions: list[dict[str, Any]] = Field(
        examples=[
            [
                {
                    "datatype": "anat",
                    "suffix": "T1w",
                    "criteria": {"SeriesDescription": "*mprage*"},
                    "custom_entities": "acq-highres",
                }
            ]
        ]
    )
    case_sensitive: bool = True
