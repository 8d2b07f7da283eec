"""A study's BIDS session as a ZIP and a lab's BIDS naming rules, over HTTP: what the ZIP
holds and its headers, the ETag that spares an unchanged session, the 404s that say why,
the rules checked, stored and announced to the converter, and each lab kept to its own."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from shared.bids.dataset import RULES_FILE, SessionPlace
from shared.bids.rules import Rules, RulesError
from shared.broker import declare_topology
from shared.messages import BidsRulesChanged, Topology
from tests.api.pipeline import vhost
from tests.bids_sessions import build_session, session_of
from tests.support import wait_for
from tests.web.site import LAB_A, LAB_B, Site, fill, serving, study_of

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]

T1W = "siemens_xa30_t1w_3d_classic"  # converted, and given a BIDS session
CT = "d2n_ct_gantry_tilt"  # converted, no BIDS name: no session
LABS = {LAB_A: [T1W, CT], LAB_B: ["d2n_hitachi_mr"]}
RULES = {
    "descriptions": [
        {
            "datatype": "anat",
            "suffix": "T2w",
            "criteria": {"SeriesDescription": "t2_spc*"},
        }
    ]
}


@dataclass
class Bids:
    site: Site
    place: SessionPlace
    study: str  # lab A's study with a session
    bare: str  # lab A's study without one
    broker: str

    def get(self, path: str, key: str = "lab-a", **headers: str) -> httpx.Response:
        headers["Authorization"] = f"Bearer {self.site.key(key)}"
        return httpx.get(f"{self.site.url}{path}", headers=headers, timeout=60)

    def put_rules(
        self, lab: str, body: Any, key: str = "lab-a", content: bytes = b"", kind: str = ""
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.site.key(key)}"}
        if body is None:
            headers["Content-Type"] = kind
            sent: dict[str, Any] = {"content": content}
        else:
            sent = {"json": body}
        return httpx.put(
            f"{self.site.url}/bids/rules",
            params={"physician": lab},
            headers=headers,
            timeout=60,
            **sent,
        )


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bids]:
    root = tmp_path_factory.mktemp("bids")
    url = fill(root / "data", LABS)
    with vhost() as broker, serving(root / "data", url, broker_url=broker) as site:
        archive = site.settings.archive_root
        assert build_session(site.sessions, archive, study_of(CT)) is None  # left over
        place = session_of(site.sessions, archive, study_of(T1W))
        yield Bids(site, place, study_of(T1W), study_of(CT), broker)


def _members(answer: httpx.Response) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def test_a_session_is_a_small_dataset_of_its_own(bids: Bids) -> None:
    answer = bids.get(f"/studies/{bids.study}/bids")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    place = bids.place
    name = f"{LAB_A}_sub-{place.subject}_ses-{place.session}_bids.zip"
    assert answer.headers["content-disposition"] == f'attachment; filename="{name}"'
    assert answer.headers["etag"].startswith('W/"')
    members = _members(answer)
    on_disk = {
        path.relative_to(place.root).as_posix(): path.read_bytes()
        for path in sorted(place.folder.rglob("*"))
        if path.is_file()
    }
    assert on_disk and {n: members[n] for n in on_disk} == on_disk
    assert any(n.endswith(".nii.gz") for n in on_disk)
    description = json.loads(members["dataset_description.json"])
    assert description["BIDSVersion"] and description["Name"]
    # The subject's row only: other subjects of the lab are not in the session's ZIP.
    rows = members["participants.tsv"].decode().splitlines()
    assert rows[0].split("\t")[0] == "participant_id"
    assert [row.split("\t")[0] for row in rows[1:]] == [f"sub-{place.subject}"]
    extra = set(members) - set(on_disk) - {"dataset_description.json", "participants.tsv"}
    assert extra <= {"README", "participants.json"}


def test_an_unchanged_session_is_not_sent_again(bids: Bids) -> None:
    path = f"/studies/{bids.study}/bids"
    etag = bids.get(path).headers["etag"]
    again = bids.get(path, **{"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert bids.get(path, **{"If-None-Match": 'W/"other", ' + etag}).status_code == 304
    assert bids.get(path, **{"If-None-Match": 'W/"other"'}).status_code == 200
    # A file added to the session changes it.
    added = bids.place.folder / "anat" / "added.txt"
    added.write_text("a file more\n")
    try:
        changed = bids.get(path, **{"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert added.relative_to(bids.place.root).as_posix() in _members(changed)
    finally:
        added.unlink()
    assert bids.get(path, **{"If-None-Match": etag}).status_code == 304


def test_a_study_without_a_session_or_unseen_is_not_found_with_why(bids: Bids) -> None:
    bare = bids.get(f"/studies/{bids.bare}/bids")
    assert bare.status_code == 404
    assert "no series of this study has a BIDS name yet" in bare.json()["detail"]
    # Where its series are listed with the reason each has no BIDS name.
    listed = bare.json()["detail"].split(" in ", 1)[1].split(" of the lab's")[0]
    assert listed.startswith("sourcedata/dcmdb/sub-") and listed.endswith("_leftovers.tsv")
    assert (bids.place.root / listed).is_file()
    unknown = bids.get("/studies/1.2.3.999/bids")
    other_lab = bids.get(f"/studies/{bids.study}/bids", key="lab-b")
    assert unknown.status_code == other_lab.status_code == 404
    assert other_lab.text == unknown.text.replace("1.2.3.999", bids.study)
    assert bids.get(f"/studies/{bids.study}/bids", key="admin").status_code == 200


def _announced(broker: str, topology: Topology, action: Any) -> tuple[Any, list[str]]:
    """What `action` returned, and the labs of the rules-changed events sent meanwhile."""

    async def listening() -> tuple[Any, list[str]]:
        connection = await aio_pika.connect_robust(broker)
        channel = await connection.channel()
        await declare_topology(channel, topology)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(topology.events_exchange, routing_key=BidsRulesChanged.routing_key)
        result = await asyncio.to_thread(action)
        labs = []
        while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            labs.append(BidsRulesChanged.model_validate_json(message.body).lab)
        await connection.close()
        return result, labs

    return asyncio.run(listening())


def test_rules_are_read_checked_stored_and_announced(bids: Bids) -> None:
    stored = bids.place.root / RULES_FILE
    stored.unlink(missing_ok=True)
    first = bids.get(f"/bids/rules?physician={LAB_A}")
    assert first.status_code == 200 and first.json() == {"descriptions": []}

    answer, told = _announced(
        bids.broker, bids.site.settings.topology, lambda: bids.put_rules(LAB_A, RULES)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == RULES
    assert told == [LAB_A]
    assert json.loads(stored.read_text()) == RULES
    assert bids.get(f"/bids/rules?physician={LAB_A}").json() == RULES
    # The admin reads and writes any lab's; by its folder or the physician's name.
    assert bids.get(f"/bids/rules?physician={LAB_A}", key="admin").json() == RULES
    assert bids.get("/bids/rules?physician=Smith^John", key="admin").json() == RULES
    assert bids.put_rules(LAB_B, {"descriptions": []}, key="admin").status_code == 200


BAD_RULES: list[Any] = [
    [],
    "descriptions",
    {"descriptions": "anat"},
    {"descriptions": [{"suffix": "T1w"}], "more": 1},
    {"descriptions": [42]},
]


@pytest.mark.parametrize("body", BAD_RULES, ids=range(len(BAD_RULES)))
def test_bad_rules_are_refused_with_why_and_change_nothing(bids: Bids, body: Any) -> None:
    before = bids.get(f"/bids/rules?physician={LAB_A}").json()
    with pytest.raises(RulesError) as expected:
        Rules.parse(body)
    answer = bids.put_rules(LAB_A, body)
    assert answer.status_code == 422, answer.text
    assert [problem["msg"] for problem in answer.json()["detail"]] == [str(expected.value)]
    assert bids.get(f"/bids/rules?physician={LAB_A}").json() == before


def test_a_body_that_is_no_json_object_is_refused(bids: Bids) -> None:
    for content, kind in (
        (b"{not json", "application/json"),
        (b"descriptions", "text/plain"),
        (b"", "application/json"),
    ):
        answer = bids.put_rules(LAB_A, None, content=content, kind=kind)
        assert answer.status_code == 422, (content, answer.text)
    huge = json.dumps({"descriptions": [{"datatype": "x" * 2_000_000}]}).encode()
    assert bids.put_rules(LAB_A, None, content=huge, kind="application/json").status_code == 413


def test_a_rules_file_broken_on_disk_is_named_and_mended_by_a_put(bids: Bids) -> None:
    stored = bids.place.root / RULES_FILE
    stored.parent.mkdir(parents=True, exist_ok=True)
    for broken in ("{", '{"descriptions": {}}'):
        stored.write_text(broken)
        answer = bids.get(f"/bids/rules?physician={LAB_A}")
        assert answer.status_code == 409 and "PUT new rules" in answer.json()["detail"]
    assert bids.put_rules(LAB_A, RULES).status_code == 200
    assert bids.get(f"/bids/rules?physician={LAB_A}").json() == RULES


def test_a_lab_reads_and_writes_only_its_own_rules(bids: Bids) -> None:
    unknown = bids.get("/bids/rules?physician=NOBODY_HERE")
    assert unknown.status_code == 404
    for method in ("GET", "PUT"):
        other = (
            bids.get(f"/bids/rules?physician={LAB_B}")
            if method == "GET"
            else bids.put_rules(LAB_B, {"descriptions": []})
        )
        assert other.status_code == 404, other.text
        assert other.text == unknown.text.replace("NOBODY_HERE", LAB_B)
    for hostile in ("../x", "..", f"{LAB_A}/../{LAB_B}", "/etc", "%00", "a" * 256):
        answer = httpx.get(
            f"{bids.site.url}/bids/rules",
            params={"physician": hostile},
            headers={"Authorization": f"Bearer {bids.site.key('admin')}"},
        )
        assert 400 <= answer.status_code < 500, (hostile, answer.text)
        assert bids.put_rules(hostile, RULES, key="admin").status_code in (404, 422)
    assert bids.get("/bids/rules").status_code == 422  # which lab?
    no_key = httpx.get(f"{bids.site.url}/bids/rules", params={"physician": LAB_A})
    assert no_key.status_code == 401


def test_downloads_and_rule_changes_are_in_the_audit_trail(bids: Bids) -> None:
    sent = bids.get(f"/studies/{bids.study}/bids")
    assert sent.status_code == 200
    assert bids.put_rules(LAB_A, {"descriptions": []}).status_code == 200

    def recorded(action: str) -> list[dict[str, Any]]:
        answer = bids.get(f"/audit?action={action}&key_name=lab-a", key="admin")
        return answer.json()["items"]  # type: ignore[no-any-return]

    wait_for(lambda: recorded("study.bids") and recorded("bids.rules_change"), 30, "the trail")
    download = recorded("study.bids")[0]  # the newest first
    assert (download["study_uid"], download["status"]) == (bids.study, 200)
    assert download["bytes_sent"] == len(sent.content)
    assert recorded("bids.rules_change")[0]["status"] == 200


def test_rules_stored_while_the_broker_is_away_say_the_converter_was_not_told(
    bids: Bids, tmp_path: Path
) -> None:
    """A second API on the same catalog and archive, with no broker where it looks."""
    catalog = bids.site.settings.database_url
    assert catalog is not None
    with serving(tmp_path, catalog, archive_dir=bids.site.settings.archive_root) as away:
        answer = httpx.put(
            f"{away.url}/bids/rules",
            params={"physician": LAB_A},
            json=RULES,
            headers={"Authorization": f"Bearer {away.key('lab-a')}"},
            timeout=120,
        )
    assert answer.status_code == 503, answer.text
    assert "the rules are stored" in answer.json()["detail"]
    assert json.loads((bids.place.root / RULES_FILE).read_text()) == RULES
