"""A multipart/related request body (RFC 2387), read as it arrives, one part at a time.

python-multipart parses the stream; each part is held in memory only until it is handed
over, so a request of any size costs at most one instance in memory (`max_part`). The body
is counted as it comes: past `max_body` the request ends with `BodyTooLarge`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request


class MalformedBody(ValueError):
    """The body is not the multipart/related its Content-Type says."""


class BodyTooLarge(ValueError):
    """The body is longer than the API takes."""


@dataclass
class Part:
    """One body part: its media type (lower case, no parameters; '' when it names none) and
    its bytes, or None when it was longer than ``max_part`` (its size is still counted)."""

    media_type: str = ""
    content: bytes | None = None
    size: int = 0


@dataclass
class _Reading:
    """What the parser's callbacks build up."""

    max_part: int
    done: deque[Part] = field(default_factory=deque)
    part: Part = field(default_factory=Part)
    buffer: bytearray | None = field(default_factory=bytearray)
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    ended: bool = False

    def begin(self) -> None:
        self.part, self.buffer = Part(), bytearray()

    def data(self, data: bytes, start: int, end: int) -> None:
        self.part.size += end - start
        if self.buffer is not None and self.part.size > self.max_part:
            self.buffer = None  # too large: counted, not kept
        if self.buffer is not None:
            self.buffer += data[start:end]

    def header_end(self) -> None:
        if bytes(self.header_name).strip().lower() == b"content-type":
            media_type, _ = parse_options_header(bytes(self.header_value))
            self.part.media_type = media_type.decode("latin-1").strip().lower()
        self.header_name.clear()
        self.header_value.clear()

    def end(self) -> None:
        if self.buffer is not None:
            self.part.content = bytes(self.buffer)
        self.buffer = None
        self.done.append(self.part)

    def parser(self, boundary: bytes) -> MultipartParser:
        return MultipartParser(
            boundary,
            {
                "on_part_begin": self.begin,
                "on_part_data": self.data,
                "on_part_end": self.end,
                "on_header_field": lambda d, s, e: self.header_name.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self.header_value.extend(d[s:e]),
                "on_header_end": self.header_end,
                "on_end": self._ended,
            },
        )

    def _ended(self) -> None:
        self.ended = True


async def body_parts(
    request: Request, boundary: bytes, *, max_body: int, max_part: int
) -> AsyncIterator[Part]:
    """The parts of the request's body, each as soon as it is whole."""
    reading = _Reading(max_part)
    parser = reading.parser(boundary)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:
                raise BodyTooLarge(f"the body is longer than {max_body} bytes")
            parser.write(chunk)
            while reading.done:
                yield reading.done.popleft()
        parser.finalize()
    except MultipartParseError as exc:
        raise MalformedBody(f"the body is not multipart/related: {exc}") from None
    while reading.done:
        yield reading.done.popleft()
    if not reading.ended or parser.state != MultipartState.END:
        raise MalformedBody("the body ends before its closing boundary")
