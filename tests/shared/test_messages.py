"""Tests for shared.messages: the events on the bus and the queues that consume them.

Every ``Event`` subclass is found by walking the class tree, so that a new event
is covered by these tests (and by the privacy guard) without anyone having to
remember to add it here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.messages import (
    ALL_QUEUES,
    SCHEMA_VERSION,
    SORTER_QUEUE,
    AssociationClosed,
    BidsRulesChanged,
    Event,
    InstanceFiled,
    InstanceReceived,
    SeriesCompleted,
    SeriesConverted,
    SeriesFailed,
    SeriesSkipped,
    StudyEvicted,
    Topology,
)


def all_event_classes() -> list[type[Event]]:
    """Every concrete subclass of Event, however deep."""
    found: list[type[Event]] = []
    pending = list(Event.__subclasses__())
    while pending:
        cls = pending.pop()
        if "routing_key" in vars(cls):  # bases such as SeriesEvent are not sent themselves
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__name__)


EVENT_CLASSES = all_event_classes()

NOW = dt.datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=dt.UTC)

# One hand-written, realistic instance of each event (the hypothesis test below
# covers arbitrary values).
SAMPLES: dict[type[Event], Event] = {
    InstanceReceived: InstanceReceived(
        sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        study_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_instance_uid="1.2.826.0.1.3680043.8.498.3",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        incoming_path="incoming/ab/1.2.826.0.1.3680043.8.498.1.dcm",
        size=524_288,
        received_at=NOW,
        calling_ae="PACS01",
        peer_host="10.0.0.7",
        association_id="assoc-1",
    ),
    AssociationClosed: AssociationClosed(
        association_id="assoc-1",
        calling_ae="PACS01",
        peer_host="10.0.0.7",
        started_at=NOW - dt.timedelta(seconds=40),
        ended_at=NOW,
        released=False,
        instances_stored=120,
        instances_failed=1,
        bytes_stored=62_914_560,
        study_instance_uids=["1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.9"],
    ),
    InstanceFiled: InstanceFiled(
        sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        study_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_instance_uid="1.2.826.0.1.3680043.8.498.3",
        archive_path="smith/20240517_brain/003_t1/1.2.826.0.1.3680043.8.498.1.dcm",
        physician_folder="smith",
        replaced=True,
    ),
    SeriesCompleted: SeriesCompleted(
        study_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_instance_uid="1.2.826.0.1.3680043.8.498.3",
        generation=2,
        instances=176,
        reason="stable",
    ),
    SeriesConverted: SeriesConverted(
        study_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_instance_uid="1.2.826.0.1.3680043.8.498.3",
        generation=2,
        outputs=("smith/20240517_brain/nifti/003_t1.nii.gz",),
        engines=("dicom2nifti 2.6.2",),
    ),
    SeriesSkipped: SeriesSkipped(
        study_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_instance_uid="1.2.826.0.1.3680043.8.498.4",
        generation=1,
        reason="localizer",
    ),
    SeriesFailed: SeriesFailed(
        study_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_instance_uid="1.2.826.0.1.3680043.8.498.5",
        generation=1,
        reason="conversion timed out after 600 s",
    ),
    StudyEvicted: StudyEvicted(
        eviction_id=17,
        study_instance_uid="1.2.826.0.1.3680043.8.498.2",
        physician_folder="smith",
        folder="smith/20240517_P001_brain",
        reason="space",
        series=12,
        instances=1_804,
        size_bytes=945_815_552,
        received_at=NOW - dt.timedelta(days=400),
        evicted_at=NOW,
    ),
    BidsRulesChanged: BidsRulesChanged(lab="smith"),
}


@pytest.fixture(params=EVENT_CLASSES, ids=lambda cls: cls.__name__)
def sample(request: pytest.FixtureRequest) -> Event:
    return SAMPLES[request.param]


def test_every_event_class_has_a_sample() -> None:
    """A new event must get a sample here, or the tests below would silently skip it."""
    assert set(SAMPLES) == set(EVENT_CLASSES)
    assert EVENT_CLASSES, "no Event subclass found"


# -- serialization ----------------------------------------------------------------------


def test_sample_round_trips_unchanged(sample: Event) -> None:
    body = sample.to_bytes()
    assert isinstance(body, bytes)
    again = type(sample).model_validate_json(body)
    assert again == sample
    assert type(again) is type(sample)
    assert again.to_bytes() == body  # byte for byte, not only equal after parsing
    assert type(sample).from_bytes(body) == sample


def test_serialized_form_is_plain_json_with_the_envelope(sample: Event) -> None:
    payload = json.loads(sample.to_bytes())
    assert payload["schema_version"] == SCHEMA_VERSION
    assert uuid.UUID(payload["message_id"]) == sample.message_id
    assert dt.datetime.fromisoformat(payload["occurred_at"]) == sample.occurred_at
    assert set(payload) == set(type(sample).model_fields)


_datetimes = st.datetimes(
    min_value=dt.datetime(1900, 1, 1),
    max_value=dt.datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [dt.UTC, dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=-5))]
    ),
)


def _arbitrary(cls: type[Event]) -> st.SearchStrategy[Event]:
    """Any instance of ``cls``: every field drawn from its annotation, datetimes aware."""
    overrides: dict[str, Any] = {
        name: _datetimes
        for name, field in cls.model_fields.items()
        if field.annotation is dt.datetime
    }
    return st.builds(cls, **overrides)


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_arbitrary_event_round_trips_unchanged(cls: type[Event], data: st.DataObject) -> None:
    event = data.draw(_arbitrary(cls))
    body = event.to_bytes()
    again = cls.model_validate_json(body)
    assert again == event
    assert again.to_bytes() == body


def test_an_event_does_not_decode_as_another(sample: Event) -> None:
    """A message routed to the wrong consumer is refused, not half-read."""
    for other in EVENT_CLASSES:
        if other is not type(sample):
            with pytest.raises(pydantic.ValidationError):
                other.model_validate_json(sample.to_bytes())


# -- strictness -------------------------------------------------------------------------


def test_extra_fields_are_refused_when_decoding(sample: Event) -> None:
    payload = sample.model_dump(mode="json")
    payload["unexpected"] = "x"
    with pytest.raises(pydantic.ValidationError, match="unexpected"):
        type(sample).model_validate(payload)
    with pytest.raises(pydantic.ValidationError, match="unexpected"):
        type(sample).model_validate_json(pydantic.TypeAdapter(dict).dump_json(payload))


def test_extra_fields_are_refused_when_constructing(sample: Event) -> None:
    with pytest.raises(pydantic.ValidationError, match="unexpected"):
        type(sample)(**sample.model_dump(), unexpected="x")


def test_missing_fields_are_refused(sample: Event) -> None:
    payload = sample.model_dump(mode="json")
    required = [name for name, field in type(sample).model_fields.items() if field.is_required()]
    assert required
    for name in required:
        incomplete = {key: value for key, value in payload.items() if key != name}
        with pytest.raises(pydantic.ValidationError, match=name):
            type(sample).model_validate(incomplete)


def test_models_are_frozen(sample: Event) -> None:
    for name in type(sample).model_fields:
        with pytest.raises(pydantic.ValidationError, match="frozen"):
            setattr(sample, name, getattr(sample, name))
    assert sample == SAMPLES[type(sample)]


# -- the envelope -----------------------------------------------------------------------


def test_message_id_is_unique_per_event(sample: Event) -> None:
    fields = sample.model_dump(exclude={"message_id", "occurred_at"})
    ids = {type(sample)(**fields).message_id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(isinstance(message_id, uuid.UUID) for message_id in ids)


def test_occurred_at_is_timezone_aware_utc_and_now(sample: Event) -> None:
    fields = sample.model_dump(exclude={"message_id", "occurred_at"})
    before = dt.datetime.now(dt.UTC)
    event = type(sample)(**fields)
    after = dt.datetime.now(dt.UTC)
    assert event.occurred_at.tzinfo is not None
    assert event.occurred_at.utcoffset() == dt.timedelta(0)
    assert before <= event.occurred_at <= after
    # and it stays UTC on the far side of the wire
    decoded = type(event).model_validate_json(event.to_bytes())
    assert decoded.occurred_at.utcoffset() == dt.timedelta(0)
    assert decoded.occurred_at == event.occurred_at


def test_schema_version_defaults_to_the_current_one(sample: Event) -> None:
    assert sample.schema_version == SCHEMA_VERSION


# -- routing ----------------------------------------------------------------------------


def test_routing_keys_are_unique_across_event_classes() -> None:
    keys = [cls.routing_key for cls in EVENT_CLASSES]
    assert all(isinstance(key, str) and key for key in keys)
    assert len(set(keys)) == len(keys), keys


def test_routing_key_is_not_a_field(sample: Event) -> None:
    """It is a class constant: it must not travel in (or be settable from) the payload."""
    assert "routing_key" not in type(sample).model_fields
    assert "routing_key" not in sample.model_dump()


def test_every_queue_listens_to_existing_events_only() -> None:
    known = {cls.routing_key for cls in EVENT_CLASSES}
    for queue in ALL_QUEUES:
        assert queue.routing_keys, queue.consumer
        assert set(queue.routing_keys) <= known, queue


def test_queue_names_and_dead_letter_names_are_distinct() -> None:
    topology = Topology()
    names = [topology.queue_name(q) for q in ALL_QUEUES] + list(topology.dead_letter_names)
    assert len(set(names)) == len(names), names
    assert SORTER_QUEUE in ALL_QUEUES
    assert topology.dead_letter_name(SORTER_QUEUE) == "dcmdb.sorter.dead"
    assert InstanceReceived.routing_key in SORTER_QUEUE.routing_keys
    assert SORTER_QUEUE.delivery_limit > 0


# -- privacy guard ----------------------------------------------------------------------

# Normalised (lower case, letters and digits only) fragments of DICOM attributes that
# identify a patient: PatientName, PatientID, PatientBirthDate, PatientSex, PatientAge,
# OtherPatientIDs, IssuerOfPatientID, PatientAddress, PatientTelephoneNumbers, ...
PATIENT_IDENTIFIER_FRAGMENTS = ("patient", "birth", "mrn", "socialsecurity", "ssn")


def _property_names(schema: dict[str, Any]) -> set[str]:
    """Every property name in a JSON schema, nested models included."""
    names: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                names.update(node["properties"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


def patient_identifier_fields(model: type[pydantic.BaseModel]) -> set[str]:
    names = _property_names(model.model_json_schema()) | set(model.model_fields)
    return {
        name
        for name in names
        if any(
            frag in re.sub(r"[^a-z0-9]", "", name.lower()) for frag in PATIENT_IDENTIFIER_FRAGMENTS
        )
    }


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
def test_no_event_carries_a_patient_identifier(cls: type[Event]) -> None:
    assert patient_identifier_fields(cls) == set()


def test_the_privacy_guard_recognises_patient_identifiers() -> None:
    """The guard above would catch each spelling, even in a nested model."""

    class Nested(pydantic.BaseModel):
        Patient_Birth_Date: str

    class Leaky(pydantic.BaseModel):  # not an Event: it must not join all_event_classes()
        PatientName: str
        patient_id: str
        other: Nested

    assert patient_identifier_fields(Leaky) == {"PatientName", "patient_id", "Patient_Birth_Date"}
