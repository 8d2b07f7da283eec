"""What a DICOMweb answer is sent as: the Accept header read (RFC 9110 media ranges with their
parameters and q values) and the choice of media type and transfer syntax it allows.

Instances go out as stored whenever the client allows the stored transfer syntax
(``transfer-syntax=*`` or its UID); without a transfer-syntax parameter PS3.18 means Explicit VR
Little Endian, which an uncompressed instance is rewritten to (`transcoding`). A compressed
instance is never decompressed: a client that cannot take its syntax gets a 406 that says
which it is. Frames go out as their raw bytes: uncompressed ones as application/octet-stream,
compressed ones in the media type of their syntax (image/jpeg, image/jls, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi import HTTPException, status
from pydicom.uid import UID, ExplicitVRLittleEndian

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"
ANY_SYNTAX = "*"

# The media type of a compressed frame, by its transfer syntax (PS3.18 Table 8.7.3-4).
_FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
RENDERED = ("image/jpeg", "image/png")  # the first is the default


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``type/subtype`` and its parameters (names in lower
    case, values unquoted), without q."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)

    def matches(self, media_type: str) -> bool:
        """Whether this range covers `media_type` (``*/*``, ``image/*`` or the type itself)."""
        kind, _, sub = self.media_type.partition("/")
        other_kind, _, other_sub = media_type.partition("/")
        return kind == "*" or (kind == other_kind and sub in ("*", other_sub))

    @property
    def part_type(self) -> str | None:
        """The media type of a multipart range's parts (its ``type`` parameter)."""
        return self.params.get("type")

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def accepted(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, the preferred first; ``*/*`` when there is none.
    Ranges with q=0 are left out."""
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    weighted: list[tuple[float, int, MediaRange]] = []
    for position, entry in enumerate(_split(header, ",")):
        pieces = _split(entry, ";")
        media_type = pieces[0].strip().lower() if pieces else ""
        if "/" not in media_type:
            continue  # not a media range: ignored, as HTTP servers do
        params, q = {}, 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 1.0
            elif name:
                params[name] = value
        if q > 0:
            weighted.append((-q, position, MediaRange(media_type, params)))
    return [entry for _, _, entry in sorted(weighted, key=lambda w: (w[0], w[1]))]


def _split(text: str, separator: str) -> list[str]:
    """`text` split at `separator` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def not_acceptable(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_406_NOT_ACCEPTABLE, reason)


def is_uncompressed(syntax: str) -> bool:
    return not UID(syntax).is_encapsulated


def _allowing(ranges: list[MediaRange], media: str) -> Iterator[str | None]:
    """The transfer-syntax parameter (None: none given) of each range, in the client's order,
    that allows ``multipart/related`` with parts of `media`; a multipart range without a
    type parameter means the resource's own."""
    for entry in ranges:
        if entry.media_type in ("*/*", "multipart/*"):
            yield None
        elif entry.media_type == MULTIPART and MediaRange(entry.part_type or media).matches(media):
            yield entry.transfer_syntax


# Instances ------------------------------------------------------------------------------


def instance_syntax(ranges: list[MediaRange], stored: str) -> str | None:
    """The transfer syntax to send an instance stored in `stored` in, or None when the
    ranges allow none that dcmdb can make of it."""
    for wanted in _allowing(ranges, DICOM):
        if wanted in (ANY_SYNTAX, stored) or (wanted is None and stored == ExplicitVRLittleEndian):
            return stored
        if wanted in (None, ExplicitVRLittleEndian) and is_uncompressed(stored):
            return ExplicitVRLittleEndian
    return None


def instance_syntaxes(ranges: list[MediaRange], stored: list[str]) -> dict[str, str]:
    """The syntax each stored syntax goes out in; a 406 naming what cannot be sent."""
    if not any(True for _ in _allowing(ranges, DICOM)):
        raise not_acceptable(
            'instances are sent as multipart/related; type="application/dicom" '
            "(with an optional transfer-syntax parameter)"
        )
    chosen: dict[str, str] = {}
    for syntax in sorted(set(stored)):
        found = instance_syntax(ranges, syntax)
        if found is None:
            how = (
                f"which dcmdb sends as it is or as Explicit VR Little Endian, never compressed: "
                f"ask for transfer-syntax={ExplicitVRLittleEndian}"
                if is_uncompressed(syntax)
                else f"which dcmdb does not decompress: ask for transfer-syntax={syntax}"
            )
            raise not_acceptable(
                f"an instance is stored as {UID(syntax).name} ({syntax}), {how} "
                "or transfer-syntax=*"
            )
        chosen[syntax] = found
    return chosen


# Frames and bulk data -------------------------------------------------------------------


def frame_media(syntax: str) -> str:
    """The media type of a frame stored in `syntax`."""
    return OCTET_STREAM if is_uncompressed(syntax) else _FRAME_MEDIA.get(syntax, OCTET_STREAM)


def frame_choice(ranges: list[MediaRange], stored: str) -> str:
    """The media type the frames of an instance stored in `stored` go out in: their own
    (uncompressed frames as Explicit VR Little Endian bytes); a 406 when the ranges allow
    none of it. ``type="application/octet-stream"; transfer-syntax=*`` (what OHIF asks)
    takes compressed frames too, each part saying its syntax."""
    media = frame_media(stored)
    for wanted in _allowing(ranges, media):
        if wanted in (None, ANY_SYNTAX, stored):
            return media
        if wanted == ExplicitVRLittleEndian and is_uncompressed(stored):
            return media
    if any(wanted in (ANY_SYNTAX, stored) for wanted in _allowing(ranges, OCTET_STREAM)):
        return media
    raise not_acceptable(
        f"the frames are stored as {UID(stored).name} ({stored}): ask for "
        f'multipart/related; type="{media}"'
        + (f"; transfer-syntax={stored}" if media != OCTET_STREAM else "")
        + ' or type="application/octet-stream"; transfer-syntax=*'
    )


def frame_part_type(stored: str) -> str:
    """The Content-Type of one frame's part."""
    syntax = ExplicitVRLittleEndian if is_uncompressed(stored) else stored
    return f"{frame_media(stored)}; transfer-syntax={syntax}"


def require_octet_stream(ranges: list[MediaRange]) -> None:
    """A 406 unless the client takes ``multipart/related; type="application/octet-stream"``."""
    if not any(True for _ in _allowing(ranges, OCTET_STREAM)):
        raise not_acceptable(f'bulk data is sent as multipart/related; type="{OCTET_STREAM}"')


# Rendered images and JSON ---------------------------------------------------------------


def rendered_type(ranges: list[MediaRange]) -> str:
    """image/jpeg or image/png, as the client prefers; a 406 for anything else."""
    for entry in ranges:
        for media_type in RENDERED:
            if entry.matches(media_type):
                return media_type
    raise not_acceptable(f"rendered images are sent as {' or '.join(RENDERED)}")


def require_json(ranges: list[MediaRange]) -> None:
    """A 406 unless the client takes application/dicom+json (or application/json)."""
    if not any(entry.matches(DICOM_JSON) or entry.matches("application/json") for entry in ranges):
        raise not_acceptable(f"this resource is sent as {DICOM_JSON}")
