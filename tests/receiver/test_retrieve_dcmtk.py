"""DCMTK's movescu and getscu retrieve from dcmdb as a desktop does: every instance arrives
as archived, byte for byte, within the desktop's labs only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pacs_peers import StoreScp
from tests.receiver.retrieve_archive import (
    DESK_A,
    FOLDER_A,
    RetrieveArchive,
    dcmtk_retrieve,
    received,
    retrieve_archive,
)

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> Iterator[RetrieveArchive]:
    with retrieve_archive(tmp_path_factory.mktemp("retrieve-dcmtk"), testdata) as filed:
        yield filed


@pytest.fixture
def desk_a(archive: RetrieveArchive, tmp_path: Path) -> Iterator[StoreScp]:
    """Lab A's desktop: a storescp listening as DESK_A."""
    with StoreScp(tmp_path / "desk_a", ae_title=DESK_A) as scp:
        archive.desktop(DESK_A, scp.port, [FOLDER_A])
        yield scp


def test_movescu_gets_a_study_byte_for_byte(
    archive: RetrieveArchive, desk_a: StoreScp, tmp_path: Path
) -> None:
    study = archive.uid("syntaxes")  # 9 transfer syntaxes, compressed ones too
    result = dcmtk_retrieve(
        "movescu", archive.port, DESK_A,
        ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
        "-S", "-aem", DESK_A, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert received(desk_a.folder) == archive.archived("syntaxes")
    assert len(received(desk_a.folder)) == 9


def test_getscu_gets_a_series_byte_for_byte(archive: RetrieveArchive, tmp_path: Path) -> None:
    archive.desktop(DESK_A, 104, [FOLDER_A])
    study = archive.studies["mr"]
    series = next(iter(study.series))
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk_retrieve(
        "getscu", archive.port, DESK_A,
        ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.uid}",
         f"SeriesInstanceUID={series}"],
        "-S", "+B", "-od", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert received(out) == archive.archived("mr")
    assert len(received(out)) == 96
