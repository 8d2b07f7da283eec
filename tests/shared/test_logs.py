"""Log lines: JSON lines with the service, and the message and study a line concerns."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
import warnings

import pytest

from services.commands.up import Output
from shared.logs import about, configure_logging, log_context
from shared.messages import InstanceReceived, SeriesCompleted
from tests.conftest import JsonLog

COMPLETED = SeriesCompleted(
    study_instance_uid="1.2.3.4",
    series_instance_uid="1.2.3.4.5",
    generation=1,
    instances=3,
    reason="stable",
)


def test_every_line_names_its_service_and_level(
    json_log: JsonLog,
) -> None:
    json_log.logger.info("sorting into %s", "/archive")
    json_log.logger.warning("catalog away")
    first, second = json_log.lines()
    assert first["service"] == second["service"] == "sorter"
    assert (first["level"], first["message"], first["logger"]) == (
        "INFO",
        "sorting into /archive",
        "dcmdb.test",
    )
    assert second["level"] == "WARNING"
    assert first["time"].endswith("+00:00")
    assert "message_id" not in first and "study_uid" not in first


def test_a_line_about_a_message_carries_its_id_and_study(
    json_log: JsonLog,
) -> None:
    with about(COMPLETED):
        json_log.logger.info("converted")
    json_log.logger.info("between messages")
    inside, outside = json_log.lines()
    assert inside["message_id"] == str(COMPLETED.message_id)
    assert uuid.UUID(inside["message_id"])
    assert inside["study_uid"] == "1.2.3.4"
    assert "message_id" not in outside and "study_uid" not in outside


def test_the_context_follows_into_threads_and_stays_in_its_task(
    json_log: JsonLog,
) -> None:
    other = COMPLETED.model_copy(update={"message_id": uuid.uuid4(), "study_instance_uid": "9.9"})

    async def handle(event: SeriesCompleted) -> None:
        with about(event):
            await asyncio.sleep(0.01)  # the other task runs meanwhile, in its own context
            await asyncio.to_thread(json_log.logger.info, "in a thread")

    async def both() -> None:
        await asyncio.gather(handle(COMPLETED), handle(other))

    asyncio.run(both())
    lines = [line for line in json_log.lines() if line["logger"] == "dcmdb.test"]  # not asyncio's
    assert sorted((line["message_id"], line["study_uid"]) for line in lines) == sorted(
        [(str(COMPLETED.message_id), "1.2.3.4"), (str(other.message_id), "9.9")]
    )


def test_extra_fields_win_and_contexts_nest(
    json_log: JsonLog,
) -> None:
    with about(COMPLETED), log_context(study_uid="5.6.7"):
        json_log.logger.info("nested")
        json_log.logger.error("undecodable", extra={"message_id": "m-1"})
    nested, explicit = json_log.lines()
    assert (nested["message_id"], nested["study_uid"]) == (str(COMPLETED.message_id), "5.6.7")
    assert (explicit["message_id"], explicit["study_uid"]) == ("m-1", "5.6.7")


def test_an_event_without_a_study_gives_only_its_id(
    json_log: JsonLog,
) -> None:
    event = InstanceReceived.model_construct(message_id=uuid.uuid4())  # no study UID set
    with about(event):
        json_log.logger.info("x")
    [line] = json_log.lines()
    assert line["message_id"] == str(event.message_id) and "study_uid" not in line


def test_exceptions_and_warnings_are_json_lines_too(
    json_log: JsonLog,
) -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        json_log.logger.exception("failed")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an odd data set", UserWarning, stacklevel=1)
    failed, warned = json_log.lines()
    assert failed["level"] == "ERROR" and "ValueError: bad value" in failed["exception"]
    assert warned["level"] == "WARNING" and "an odd data set" in warned["message"]
    assert warned["service"] == "sorter"


def test_text_lines_stay_plain(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("sorter", "INFO", "text")
        with about(COMPLETED):
            logging.getLogger("dcmdb.test").info("converted")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith("INFO    dcmdb.test: converted")


def relayed(fmt: str, output: bytes) -> list[str]:
    sink = io.StringIO()
    printer = Output(fmt)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdout", sink)
        printer.relay("converter", io.BytesIO(output))
        printer.say("converter exited with code 1; restarting in 1 s", "WARNING")
    return sink.getvalue().splitlines()


def test_up_in_json_passes_json_lines_and_wraps_everything_else() -> None:
    line = json.dumps({"time": "t", "level": "INFO", "service": "converter", "message": "m"})
    output = f"{line}\nTraceback (most recent call last):\n{{not json\n".encode()
    passed, traceback, broken, supervisor = [json.loads(x) for x in relayed("json", output)]
    assert passed == json.loads(line)
    assert traceback["service"] == broken["service"] == "converter"
    assert traceback["level"] == "ERROR"
    assert traceback["message"] == "Traceback (most recent call last):"
    assert broken["message"] == "{not json"
    assert (supervisor["service"], supervisor["level"]) == ("up", "WARNING")


def test_up_in_text_prefixes_each_line_with_the_service() -> None:
    lines = relayed("text", b"2026-01-01 INFO converting\n")
    assert lines == [
        "converter| 2026-01-01 INFO converting",
        "up       | converter exited with code 1; restarting in 1 s",
    ]
