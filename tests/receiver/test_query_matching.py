"""The C-FIND matching rules (services/receiver/matching.py), in SQL on each catalog backend
and on header values in Python: both must agree, as a key matches the same entities whether
the catalog or a file holds the value; and the identifiers written by hand, as pydicom
reads them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
)

from services.receiver.identifier import IdentifierWriter
from services.receiver.matching import KeyNotMatchable, match_of

VALUES = ["DOE^JANE", "doe^john", "DOE^J_NE", "MÜLLER^JÖRG", "O'BRIEN", "100%", "[x]", "", "D"]
DATES = ["20231231", "20240101", "20240115", "20240131", "20240201", ""]
TIMES = ["0959", "101500", "101559.999", "1016", "235959", ""]


@pytest.fixture
def table(catalog_url: str) -> Iterator[tuple[Engine, Table]]:
    engine = create_engine(catalog_url.replace("postgresql://", "postgresql+psycopg://"))
    metadata = MetaData()
    values = Table("values", metadata, Column("id", Integer, primary_key=True),
                   Column("value", String))  # fmt: skip
    metadata.create_all(engine)
    yield engine, values
    engine.dispose()


def sql_matches(table: tuple[Engine, Table], rows: list[str], vr: str, key: str) -> set[str]:
    engine, values = table
    with engine.begin() as db:
        db.execute(values.delete())
        db.execute(insert(values), [{"value": v} for v in rows])
        match = match_of("Key", vr, key, folded=vr == "PN")
        assert match is not None
        found = db.execute(
            select(values.c.value).where(match.sql(values.c.value, engine.dialect.name))
        )
        return {row[0] for row in found}


def python_matches(rows: list[str], vr: str, key: str) -> set[str]:
    match = match_of("Key", vr, key, folded=vr == "PN")
    assert match is not None
    return {value for value in rows if match.accepts([value])}


@pytest.mark.parametrize(
    ("vr", "rows", "key", "expected"),
    [
        ("PN", VALUES, "doe*", {"DOE^JANE", "doe^john", "DOE^J_NE"}),
        ("PN", VALUES, "DOE^J?NE", {"DOE^JANE", "DOE^J_NE"}),  # ? is one character, _ is not
        ("PN", VALUES, "DOE^J_NE", {"DOE^J_NE"}),
        ("PN", VALUES, "*%", {"100%"}),
        ("PN", VALUES, "[x]", {"[x]"}),
        ("PN", VALUES, "o'brien", {"O'BRIEN"}),
        ("LO", VALUES, "DOE*", {"DOE^JANE", "DOE^J_NE"}),  # not a name: case matters
        ("LO", VALUES, "doe^john", {"doe^john"}),
        ("LO", VALUES, "D", {"D"}),
        ("DA", DATES, "20240101-20240131", {"20240101", "20240115", "20240131"}),
        ("DA", DATES, "-20231231", {"20231231"}),
        ("DA", DATES, "20240131-", {"20240131", "20240201"}),
        ("DA", DATES, "20240115", {"20240115"}),
        ("TM", TIMES, "1015-1015", {"101500", "101559.999"}),  # the whole minute
        ("TM", TIMES, "-1000", {"0959"}),
        ("TM", TIMES, "1016-", {"1016", "235959"}),
    ],
)
def test_sql_and_python_agree(
    table: tuple[Engine, Table], vr: str, rows: list[str], key: str, expected: set[str]
) -> None:
    assert python_matches(rows, vr, key) == expected
    assert sql_matches(table, rows, vr, key) == expected


@pytest.mark.parametrize("value", ["", "*", "**", None])
def test_empty_and_star_match_everything(value: str | None) -> None:
    assert match_of("PatientName", "PN", value) is None
    assert match_of("StudyDate", "DA", value) is None


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "reason"),
    [
        ("StudyDate", "DA", "2024-01", "StudyDate '2024-01' is not a DA value or range"),
        ("StudyDate", "DA", "-", "StudyDate '-' is an empty range"),
        ("StudyTime", "TM", "10:15", "StudyTime '10:15' is not a TM value or range"),
        ("SeriesNumber", "IS", "x", "SeriesNumber 'x' is not a number"),
    ],
)
def test_values_no_rule_reads_are_refused_with_the_reason(
    keyword: str, vr: str, value: str, reason: str
) -> None:
    with pytest.raises(KeyNotMatchable, match="^" + reason.replace("(", r"\(")):
        match_of(keyword, vr, value)


def test_a_uid_list_matches_any_of_its_uids() -> None:
    match = match_of("StudyInstanceUID", "UI", ["1.2.3", "1.2.4"])
    assert match is not None
    assert match.accepts(["1.2.4"]) and not match.accepts(["1.2.5"])


def test_date_time_ranges_match_on_headers() -> None:
    match = match_of("AcquisitionDateTime", "DT", "20240101120000-20240101130000")
    assert match is not None
    assert match.accepts(["20240101123000.5"]) and not match.accepts(["20240101130001"])
    assert match.accepts(["202401011300"])  # the minute 13:00 is within the range's end


def read(encoded: bytes, explicit: bool) -> Dataset:
    buffer = DicomBytesIO(encoded)
    buffer.is_little_endian, buffer.is_implicit_VR = True, not explicit
    return read_dataset(buffer, not explicit, True)


@pytest.mark.parametrize("explicit", [True, False])
def test_identifiers_written_by_hand_read_as_pydicom_writes_them(explicit: bool) -> None:
    writer = IdentifierWriter(
        [(0x00100010, "PN"), (0x00080052, "CS"), (0x0020000D, "UI"), (0x00201208, "IS"),
         (0x00080061, "CS"), (0x00280010, "US"), (0x00200010, "SH")],
        explicit,
    )  # fmt: skip
    values = ["DOE^JANE", "STUDY", "1.2.345", 12, ["CT", "MR"], 512, ""]
    answer = read(writer.encode(values), explicit)
    assert [element.keyword for element in answer] == [
        "QueryRetrieveLevel", "ModalitiesInStudy", "PatientName", "StudyInstanceUID", "StudyID",
        "NumberOfStudyRelatedInstances", "Rows",
    ]  # fmt: skip
    assert str(answer.PatientName) == "DOE^JANE" and answer.StudyInstanceUID == "1.2.345"
    assert answer.NumberOfStudyRelatedInstances == 12 and answer.ModalitiesInStudy == ["CT", "MR"]
    assert answer.Rows == 512 and answer.StudyID == "" and "SpecificCharacterSet" not in answer


def test_text_that_is_not_ascii_is_utf_8_and_says_so() -> None:
    writer = IdentifierWriter([(0x00100010, "PN"), (0x00080052, "CS")], explicit=True)
    answer = read(writer.encode(["Müller^Jörg", "STUDY"]), explicit=True)
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "Müller^Jörg"
    asked = read(writer.encode(["DOE", "STUDY"], charset_asked=True), explicit=True)
    assert "SpecificCharacterSet" in asked and not asked.SpecificCharacterSet
