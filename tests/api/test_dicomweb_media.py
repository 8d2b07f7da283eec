"""Which media type and transfer syntax a DICOMweb answer is sent in, for the Accept headers
that dicomweb-client, OHIF and browsers send."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from services.api.dicomweb.media import (
    accepted,
    frame_choice,
    instance_syntaxes,
    rendered_type,
    require_json,
)
from services.api.dicomweb.sending import Part, multipart_body

ELE, ILE, EBE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
DEFLATED, JPEG_LS, RLE = "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"
DICOM = 'multipart/related; type="application/dicom"'


@pytest.mark.parametrize(
    ("accept", "stored", "sent"),
    [
        (DICOM, ELE, ELE),  # no transfer-syntax: Explicit VR Little Endian
        (DICOM, ILE, ELE),
        (DICOM, EBE, ELE),
        (DICOM, DEFLATED, ELE),
        (f"{DICOM}; transfer-syntax=*", ILE, ILE),  # as stored
        (f"{DICOM}; transfer-syntax=*", JPEG_LS, JPEG_LS),
        (f"{DICOM}; transfer-syntax={JPEG_LS}", JPEG_LS, JPEG_LS),
        (f"{DICOM}; transfer-syntax={ELE}", ILE, ELE),
        (f"{DICOM}; transfer-syntax={RLE}, {DICOM}; transfer-syntax={ELE}", ILE, ELE),
        (f"{DICOM}; transfer-syntax={ELE}; q=0.5, {DICOM}; transfer-syntax=*", ILE, ILE),
        (None, ILE, ELE),  # no Accept header: the default
        ("*/*", ELE, ELE),
        ('multipart/related; type="*/*"', DEFLATED, ELE),
    ],
)
def test_the_syntax_an_instance_is_sent_in(accept: str | None, stored: str, sent: str) -> None:
    assert instance_syntaxes(accepted(accept), [stored]) == {stored: sent}


@pytest.mark.parametrize("accept", [DICOM, f"{DICOM}; transfer-syntax={ELE}", "*/*"])
def test_a_compressed_instance_is_never_decompressed(accept: str) -> None:
    with pytest.raises(HTTPException) as refused:
        instance_syntaxes(accepted(accept), [ELE, JPEG_LS])
    assert refused.value.status_code == 406
    assert f"transfer-syntax={JPEG_LS} or transfer-syntax=*" in str(refused.value.detail)


def test_an_uncompressed_instance_is_never_compressed() -> None:
    with pytest.raises(HTTPException) as refused:
        instance_syntaxes(accepted(f"{DICOM}; transfer-syntax={RLE}"), [ILE])
    assert refused.value.status_code == 406
    assert f"transfer-syntax={ELE} or transfer-syntax=*" in str(refused.value.detail)


def test_instances_are_only_sent_as_dicom() -> None:
    for accept in ("application/dicom+json", "image/jpeg", f"{DICOM}; q=0"):
        with pytest.raises(HTTPException) as refused:
            instance_syntaxes(accepted(accept), [ELE])
        assert refused.value.status_code == 406


@pytest.mark.parametrize(
    ("accept", "stored", "media"),
    [
        ('multipart/related; type="application/octet-stream"', ELE, "application/octet-stream"),
        ('multipart/related; type="application/octet-stream"', EBE, "application/octet-stream"),
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            JPEG_LS,
            "image/jls",
        ),  # OHIF's Accept  # fmt: skip
        (f'multipart/related; type="image/jls"; transfer-syntax={JPEG_LS}', JPEG_LS, "image/jls"),
        ('multipart/related; type="image/*"', RLE, "image/dicom-rle"),
        ('multipart/related; type="*/*"', JPEG_LS, "image/jls"),  # dicomweb-client's default
        (None, ILE, "application/octet-stream"),
    ],
)
def test_the_media_type_of_frames(accept: str | None, stored: str, media: str) -> None:
    assert frame_choice(accepted(accept), stored) == media


def test_compressed_frames_are_not_sent_as_uncompressed_bytes() -> None:
    with pytest.raises(HTTPException) as refused:
        frame_choice(accepted('multipart/related; type="application/octet-stream"'), JPEG_LS)
    assert refused.value.status_code == 406 and "image/jls" in str(refused.value.detail)


def test_rendered_images_and_json() -> None:
    assert rendered_type(accepted(None)) == "image/jpeg"
    assert rendered_type(accepted("image/png, image/jpeg; q=0.5")) == "image/png"
    assert rendered_type(accepted("image/*")) == "image/jpeg"
    with pytest.raises(HTTPException):
        rendered_type(accepted("application/pdf"))
    require_json(accepted("application/dicom+json, application/json"))  # dicomweb-client's
    require_json(accepted("application/json"))
    with pytest.raises(HTTPException):
        require_json(accepted("image/png"))


def test_a_multipart_body_as_rfc_2387_has_it() -> None:
    parts = [Part("application/dicom", [b"ab", b"c"]), Part("application/dicom", [b""])]
    body = b"".join(multipart_body(parts, "B"))
    assert body == (
        b"--B\r\nContent-Type: application/dicom\r\n\r\nabc"
        b"\r\n--B\r\nContent-Type: application/dicom\r\n\r\n"
        b"\r\n--B--\r\n"
    )
