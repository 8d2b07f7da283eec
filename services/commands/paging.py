"""Listings of the API shown up to a limit, fetched a page at a time."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from services.commands.terminal import Columns, table

T = TypeVar("T")
C = TypeVar("C")  # where the next page starts: the API's cursor, of whatever type


class Pages(Generic[T, C]):
    """The items to show: `fetch(size, cursor)` gives a page and the next page's cursor
    (None on the last), asked for `limit` items in all (0: every one) in pages of at most
    `page_limit`; `more` says, once iterated, whether `limit` cut some off."""

    def __init__(
        self,
        fetch: Callable[[int, C | None], tuple[Sequence[T], C | None]],
        limit: int,
        page_limit: int,
    ) -> None:
        self._fetch = fetch
        self.limit = limit
        self._page_limit = page_limit
        self.more = False

    def __iter__(self) -> Iterator[T]:
        left = self.limit or None
        cursor: C | None = None
        while True:
            items, cursor = self._fetch(min(left or self._page_limit, self._page_limit), cursor)
            for item in items:
                if left == 0:
                    self.more = True
                    return
                yield item
                if left is not None:
                    left -= 1
            if cursor is None:
                return
            if left == 0:
                self.more = True
                return


def show(
    listing: Pages[T, C],
    *,
    json_lines: bool,
    row: Callable[[T], list[str]],
    columns: Columns,
    nothing: str,
) -> None:
    """Print a listing as a table (or JSON lines), and say when its limit cut some off."""
    if json_lines:
        for item in listing:
            print(item.model_dump_json())  # type: ignore[attr-defined]
    else:
        rows = [row(item) for item in listing]
        if rows:
            print(table(rows, columns))
        else:
            print(nothing, file=sys.stderr)
    if listing.more:
        print(f"({listing.limit} shown; more match: --limit 0 shows them all)", file=sys.stderr)
