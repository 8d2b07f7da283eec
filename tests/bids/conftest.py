from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.bids.series import ConvertedSeries
from tests.bids.converted import Converted, convert


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Converted]:
    """A folder of the test data converted, once per test module (it takes seconds)."""
    made: dict[str, ConvertedSeries] = {}

    def get(folder: str) -> ConvertedSeries:
        if folder not in made:
            made[folder] = convert(folder, tmp_path_factory.mktemp(folder))
        return made[folder]

    yield get
