"""multipart/related bodies (RFC 2387) sent as answers (STOW-RS reads requests in multipart.py),
streamed part by part as their content is read.

What is ready goes out in pieces of about 2 MiB: a body of many small instances is not sent
as many small writes (each a hop between threads and a send), nor held whole.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fastapi.responses import StreamingResponse

from services.api.dicomweb.media import MULTIPART

FLUSH_AT = 2 << 20


@dataclass(frozen=True)
class Part:
    content_type: str
    content: Iterable[bytes]  # read when the part's turn comes


def multipart_body(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body: each part's header and content, then the closing delimiter, in pieces of
    about `FLUSH_AT` bytes."""
    delimiter = f"--{boundary}".encode()
    pending: list[bytes] = []
    size = count = 0
    for part in parts:
        opening = b"\r\n" if count else b""
        header = b"%s%s\r\nContent-Type: %s\r\n\r\n" % (
            opening,
            delimiter,
            part.content_type.encode(),
        )
        pending.append(header)
        size, count = size + len(header), count + 1
        for chunk in part.content:
            pending.append(chunk)
            size += len(chunk)
            if size >= FLUSH_AT:
                yield b"".join(pending)
                pending, size = [], 0
    pending.append(b"%s%s--\r\n" % (b"\r\n" if count else b"", delimiter))
    yield b"".join(pending)


def multipart_response(parts: Iterable[Part], part_type: str) -> StreamingResponse:
    """A streamed ``multipart/related; type=...`` answer of `parts`."""
    boundary = uuid.uuid4().hex
    return StreamingResponse(
        multipart_body(parts, boundary),
        media_type=f'{MULTIPART}; type="{part_type}"; boundary={boundary}',
    )
