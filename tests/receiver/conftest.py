"""The archive of two labs' studies that the C-FIND tests query (`query_archive`): filed and
served by `dcmdb receiver` once per test worker and catalog backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import TESTDATA, fresh_postgres_database, fresh_vhost
from tests.receiver.query_archive import QueryArchive, query_archive


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QueryArchive]:
    root = tmp_path_factory.mktemp(f"query-{request.param}")
    for broker in fresh_vhost():
        if request.param == "sqlite":
            with query_archive(root, f"sqlite:///{root / 'catalog.sqlite'}", broker, TESTDATA) as a:
                yield a
        else:
            for url in fresh_postgres_database():
                with query_archive(root, url, broker, TESTDATA) as a:
                    yield a
