"""WADO-RS, through dicomweb-client, over the catalog the real pipeline filled from the whole
test data (SQLite and PostgreSQL): instances byte for byte as archived, transcoded to Explicit
VR Little Endian when that is what the client takes, metadata, frames, bulk data and rendered
images; a lab's key and the audit trail."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian
from requests import HTTPError

from tests.api.dicomweb import (
    ANY_SYNTAX,
    archived,
    dicomweb,
    lab_studies,
    stored_syntax,
    studies_by_syntax,
)
from tests.api.pipeline import ADMIN_KEY, Api, study_facts
from tests.conftest import TESTDATA
from tests.identifiers import leaks, patient_identifiers
from tests.support import wait_for
from tests.system import dicom_files

pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup("api", shared_by="tests.api.conftest.api")]


def _study_of(api: Api, wanted: Any) -> str:
    """The first test study whose stored transfer syntaxes satisfy `wanted`."""
    return next(uid for uid, syntaxes in studies_by_syntax(api) if wanted(syntaxes))


def _series_of(api: Api, study: str) -> list[tuple[str, list[str]]]:
    client = dicomweb(api).client
    return [
        (
            series["0020000E"]["Value"][0],
            [i["00080018"]["Value"][0] for i in client.search_for_instances(
                study, series["0020000E"]["Value"][0])],
        )
        for series in client.search_for_series(study)
    ]  # fmt: skip


def _sop(part: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID)


def test_every_study_in_its_stored_syntax_is_byte_equal_to_the_archive(api: Api) -> None:
    web = dicomweb(api)
    for uid, facts in sorted(study_facts().items()):
        parts = web.parts(web.raw(f"/studies/{uid}"))
        assert sorted(_sop(part) for part in parts) == sorted(facts.instances), uid
        for part in parts:
            assert part == archived(api, _sop(part)).read_bytes(), uid


def test_a_series_and_an_instance_by_dicomweb_client(api: Api) -> None:
    study = _study_of(api, lambda syntaxes: syntaxes == {ExplicitVRLittleEndian})
    series, sops = _series_of(api, study)[0]
    client = dicomweb(api).client
    datasets = client.retrieve_series(study, series)
    assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(sops)
    instance = client.retrieve_instance(study, series, sops[0])
    original = pydicom.dcmread(archived(api, sops[0]))
    assert instance.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert instance == original
    [one] = dicomweb(api).parts(
        dicomweb(api).raw(f"/studies/{study}/series/{series}/instances/{sops[0]}")
    )
    assert one == archived(api, sops[0]).read_bytes()


@pytest.mark.parametrize(
    "stored", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"]
)
@pytest.mark.parametrize(
    "asked", [("application/dicom",), (("application/dicom", ExplicitVRLittleEndian),)]
)
def test_uncompressed_instances_are_sent_as_explicit_vr_little_endian_when_asked(
    api: Api, stored: str, asked: tuple[Any, ...]
) -> None:
    """Without a transfer-syntax parameter, PS3.18's default: Explicit VR Little Endian."""
    sop = next(
        sop
        for facts in study_facts().values()
        for sop in sorted(facts.instances)
        if stored_syntax(api, sop) == stored
    )
    study, series = _where(api, sop)
    found = dicomweb(api).client.retrieve_instance(study, series, sop, media_types=asked)
    original = pydicom.dcmread(archived(api, sop))
    assert found.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert found.original_encoding == (False, True)
    assert np.array_equal(found.pixel_array, original.pixel_array)
    assert [e.tag for e in found] == [e.tag for e in original]
    assert found.PatientName == original.PatientName and found.Rows == original.Rows


def test_a_compressed_study_is_406_unless_its_syntax_is_accepted(api: Api) -> None:
    study = _study_of(api, lambda syntaxes: any(UID(s).is_compressed for s in syntaxes))
    client = dicomweb(api).client
    with pytest.raises(HTTPError) as refused:
        client.retrieve_study(study)
    assert refused.value.response.status_code == 406
    assert "transfer-syntax=" in refused.value.response.json()["detail"]
    datasets = client.retrieve_study(study, media_types=(("application/dicom", "*"),))
    assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(study_facts()[study].instances)


def test_metadata_of_a_study_names_its_bulk_data(api: Api) -> None:
    study = next(
        uid
        for uid, syntaxes in studies_by_syntax(api)
        if syntaxes == {ExplicitVRLittleEndian} and "MR" in study_facts()[uid].modalities
    )
    client = dicomweb(api).client
    metadata = client.retrieve_study_metadata(study)
    assert sorted(m["00080018"]["Value"][0] for m in metadata) == sorted(
        study_facts()[study].instances
    )
    item = next(m for m in metadata if "7FE00010" in m)
    sop = item["00080018"]["Value"][0]
    original = pydicom.dcmread(archived(api, sop))
    found = pydicom.Dataset.from_json({k: v for k, v in item.items() if k != "7FE00010"})
    assert found.PatientName == original.PatientName and found.Rows == original.Rows
    assert item["00083002"]["Value"] == [ExplicitVRLittleEndian]
    [pixels] = client.retrieve_bulkdata(item["7FE00010"]["BulkDataURI"])
    assert pixels == original.PixelData
    series = str(original.SeriesInstanceUID)
    assert client.retrieve_series_metadata(study, series)
    alone = client.retrieve_instance_metadata(study, series, sop)
    assert alone["0020000D"]["Value"] == [study] and alone["7FE00010"] == item["7FE00010"]


def _frames(api: Api, sop: str) -> int:
    header = pydicom.dcmread(archived(api, sop), stop_before_pixels=True)
    return int(header.get("NumberOfFrames") or 1)


def _multi_frame(api: Api) -> str:
    """An uncompressed instance of three frames or more."""
    return next(
        sop
        for facts in study_facts().values()
        for sop in sorted(facts.instances)
        if stored_syntax(api, sop) == ExplicitVRLittleEndian and _frames(api, sop) > 2
    )


def _where(api: Api, sop: str) -> tuple[str, str]:
    header = pydicom.dcmread(archived(api, sop), stop_before_pixels=True)
    return str(header.StudyInstanceUID), str(header.SeriesInstanceUID)


def test_frames_of_an_uncompressed_multi_frame_instance(api: Api) -> None:
    sop = _multi_frame(api)
    study, series = _where(api, sop)
    frames = dicomweb(api).client.retrieve_instance_frames(study, series, sop, [1, 3])
    original = pydicom.dcmread(archived(api, sop))
    expected = original.pixel_array.astype(original.pixel_array.dtype.newbyteorder("<"))
    assert frames == [expected[0].tobytes(), expected[2].tobytes()]
    web, count = dicomweb(api), int(original.NumberOfFrames)
    beyond = f"/studies/{study}/series/{series}/instances/{sop}/frames/{count + 1}"
    for path, accept in ((beyond, "*/*"), (f"{beyond}/rendered", "image/png")):
        refused = web.raw(path, accept=accept)
        assert refused.status_code == 400, path
        assert refused.json()["detail"] == (
            f"there is no frame {count + 1}: the instance has frames 1 to {count}"
        )


def test_frames_of_compressed_instances_are_their_own_bitstreams(api: Api) -> None:
    web = dicomweb(api)
    for sop in sorted(s for f in study_facts().values() for s in f.instances):
        syntax = stored_syntax(api, sop)
        if not UID(syntax).is_compressed:
            continue
        study, series = _where(api, sop)
        original = pydicom.dcmread(archived(api, sop))
        frames = int(original.get("NumberOfFrames") or 1)
        expected = list(generate_frames(original.PixelData, number_of_frames=frames))
        path = f"/studies/{study}/series/{series}/instances/{sop}/frames/1"
        accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'  # OHIF
        answer = web.raw(path, accept=accept)
        assert web.parts(answer) == [expected[0]], sop
        assert f"transfer-syntax={syntax}" in answer.text[:400]
        refused = web.raw(path, accept='multipart/related; type="application/octet-stream"')
        assert refused.status_code == 406, sop  # not decompressed


def test_rendered_images_and_thumbnails(api: Api) -> None:
    sop = _multi_frame(api)
    study, series = _where(api, sop)
    header = pydicom.dcmread(archived(api, sop), stop_before_pixels=True)
    client = dicomweb(api).client
    png = Image.open(io.BytesIO(client.retrieve_instance_rendered(
        study, series, sop, media_types=("image/png",))))  # fmt: skip
    assert png.format == "PNG" and png.size == (header.Columns, header.Rows)
    jpeg = Image.open(io.BytesIO(client.retrieve_instance_frames_rendered(study, series, sop, [2])))
    assert jpeg.format == "JPEG" and jpeg.size == (header.Columns, header.Rows)
    assert Image.open(io.BytesIO(client.retrieve_series_rendered(study, series))).format == "JPEG"
    web = dicomweb(api)
    thumbnail = web.raw(f"/studies/{study}/thumbnail", accept="image/png")
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 128
    assert web.raw(f"/studies/{study}/rendered", accept="application/pdf").status_code == 406


def test_a_lab_key_retrieves_its_labs_studies_only(api: Api) -> None:
    mine, other = (sorted(lab_studies(lab))[0] for lab in (api.labs.lab_a, api.labs.lab_b))
    web = dicomweb(api, api.labs.key_a)
    assert web.raw(f"/studies/{mine}").status_code == 200
    for path in ("", "/metadata", "/rendered", "/series"):
        refused, unknown = (
            web.raw(f"/studies/{uid}{path}", accept="*/*") for uid in (other, "1.2.3.999.1")
        )
        assert refused.status_code == unknown.status_code == 404, path
        assert refused.text.replace(other, "1.2.3.999.1") == unknown.text, path


def test_every_dicomweb_read_is_audited_with_its_study_and_bytes(api: Api) -> None:
    study = next(
        uid for uid in sorted(lab_studies(api.labs.lab_a)) if "MR" in study_facts()[uid].modalities
    )
    web = dicomweb(api, api.labs.key_a)
    reads = {
        "dicomweb.search": (f"/studies/{study}/series", "application/dicom+json"),
        "dicomweb.retrieve": (f"/studies/{study}", ANY_SYNTAX),
        "dicomweb.metadata": (f"/studies/{study}/metadata", "application/dicom+json"),
        "dicomweb.rendered": (f"/studies/{study}/thumbnail", "image/jpeg"),
    }
    for action, (path, accept) in reads.items():
        answer = web.raw(path, accept=accept)
        assert answer.status_code == 200, answer.text
        filters = {"action": action, "study_uid": study, "key_name": "lab-a"}

        def recorded(filters: dict[str, str] = filters, size: int = len(answer.content)) -> bool:
            items = api.get("/audit", key=ADMIN_KEY, **filters).json()["items"]
            return any(item["bytes_sent"] == size for item in items)

        wait_for(recorded, 30, f"{action} in the audit trail")


def test_reading_every_study_puts_no_patient_in_the_log(api: Api) -> None:
    web = dicomweb(api)
    for uid in sorted(study_facts()):
        assert web.raw(f"/studies/{uid}/metadata", accept="application/dicom+json").ok
        transcoded = web.raw(
            f"/studies/{uid}", accept='multipart/related; type="application/dicom"'
        )
        assert transcoded.status_code in (200, 406)
        assert web.raw(f"/studies/{uid}/rendered", accept="image/png").status_code in (200, 404)
        assert web.raw("/instances", accept="application/json", StudyInstanceUID=uid).ok
    identifiers = patient_identifiers(dicom_files(TESTDATA))
    assert leaks(api.dcmdb.log(), identifiers) == []
