"""Each lab sees only its own studies, by every route: the access matrix.

Callers: an admin key, a key of lab A, a key of lab B, a revoked key and none. Every route
of the API is in `ROUTES` with what it reads; `test_every_route_is_in_the_matrix` fails
when a route is added without joining it. Another lab's study, series or job answers 404
exactly as an unknown one does, and listings never name another lab's study.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared import keys, retrievals
from shared.bids.dataset import place_of
from shared.catalog.database import open_catalog
from shared.catalog.reconciliation import Difference
from shared.catalog.states import DifferenceKind, DifferenceState
from shared.catalog.types import now
from shared.naming import physician_folder
from tests.api.pipeline import ADMIN_KEY, Api, study_facts
from tests.support import add_key, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup("api", shared_by="tests.api.conftest.api")]


class Reads(Enum):
    NOTHING = "open to anyone: liveness and readiness"
    LISTING = "a listing, filtered to the caller's labs"
    STUDY = "one study, by its UID"
    LAB = "one lab's own thing (its BIDS rules), by its folder"
    SERIES = "one series, by its UID"
    JOB = "one retrieval job, by its id"
    REQUEST = "a retrieval request, refused here: this catalog has no PACS"
    ADMIN = "an admin's operation"
    STORE = "storing instances (STOW-RS); this matrix's JSON stand-in is no multipart body"
    SESSION = "signing in and out of the web page"
    PAGE_LISTING = "a web page listing, filtered to the signed-in key's labs"
    PAGE_STUDY = "a study's web page"
    PAGE_JOB = "a retrieval job's form on the web page"
    PAGE_ADMIN = "an admin's web page or form"


SERIES = "/dicomweb/studies/{study_uid}/series/{series_uid}"
INSTANCE = f"{SERIES}/instances/{{instance_uid}}"
ROUTES: dict[tuple[str, str], Reads] = {
    ("GET", "/healthz"): Reads.NOTHING,
    ("GET", "/readyz"): Reads.NOTHING,
    ("GET", "/metrics"): Reads.ADMIN,
    ("GET", "/studies"): Reads.LISTING,
    ("GET", "/physicians"): Reads.LISTING,
    ("GET", "/storage"): Reads.LISTING,
    ("GET", "/retrievals"): Reads.LISTING,
    ("GET", "/studies/{study_uid}"): Reads.STUDY,
    ("GET", "/studies/{study_uid}/archive"): Reads.STUDY,
    ("GET", "/studies/{study_uid}/bids"): Reads.STUDY,
    ("GET", "/bids/rules"): Reads.LAB,
    ("PUT", "/bids/rules"): Reads.LAB,
    ("GET", "/studies/{study_uid}/pacs-check"): Reads.STUDY,
    ("GET", "/series/{series_uid}"): Reads.SERIES,
    ("GET", "/series/{series_uid}/preview.png"): Reads.SERIES,
    ("GET", "/series/{series_uid}/nifti"): Reads.SERIES,
    ("GET", "/retrievals/{job_id}"): Reads.JOB,
    ("DELETE", "/retrievals/{job_id}"): Reads.JOB,
    ("POST", "/retrievals"): Reads.REQUEST,
    ("POST", "/studies/{study_uid}/pin"): Reads.ADMIN,
    ("DELETE", "/studies/{study_uid}/pin"): Reads.ADMIN,
    ("POST", "/studies/{study_uid}/repair"): Reads.ADMIN,
    ("GET", "/audit"): Reads.ADMIN,
    ("POST", "/webhooks"): Reads.ADMIN,
    ("GET", "/webhooks"): Reads.ADMIN,
    ("GET", "/webhooks/{webhook_id}"): Reads.ADMIN,
    ("GET", "/webhooks/{webhook_id}/deliveries"): Reads.ADMIN,
    ("DELETE", "/webhooks/{webhook_id}"): Reads.ADMIN,
    ("GET", "/reconciliation"): Reads.LISTING,
    ("POST", "/reconciliation/{difference_id}/forward"): Reads.ADMIN,
    # Which instances a lab's key may store: tests/api/test_stow.py.
    ("POST", "/dicomweb/studies"): Reads.STORE,
    ("POST", "/dicomweb/studies/{study_uid}"): Reads.STORE,
    # The web page: its own door, with a session cookie instead of a bearer key.
    ("GET", "/signin"): Reads.NOTHING,
    ("GET", "/docs"): Reads.NOTHING,
    ("GET", "/redoc"): Reads.NOTHING,
    ("POST", "/signin"): Reads.SESSION,
    ("POST", "/signout"): Reads.SESSION,
    ("GET", "/"): Reads.PAGE_LISTING,
    ("GET", "/web/retrievals"): Reads.PAGE_LISTING,
    ("GET", "/web/studies/{study_uid}"): Reads.PAGE_STUDY,
    ("POST", "/web/retrievals/{job_id}/cancel"): Reads.PAGE_JOB,
    ("GET", "/web/studies/{study_uid}/pacs-check"): Reads.PAGE_ADMIN,
    ("POST", "/web/studies/{study_uid}/repair"): Reads.PAGE_ADMIN,
    ("POST", "/web/studies/{study_uid}/pin"): Reads.PAGE_ADMIN,
    ("GET", "/web/storage"): Reads.PAGE_ADMIN,
    ("GET", "/web/pins"): Reads.PAGE_ADMIN,
    # DICOMweb: searches are listings; a study's resources are the study's.
    ("GET", "/dicomweb/studies"): Reads.LISTING,
    ("GET", "/dicomweb/series"): Reads.LISTING,
    ("GET", "/dicomweb/instances"): Reads.LISTING,
    ("GET", "/dicomweb/studies/{study_uid}/series"): Reads.STUDY,
    ("GET", f"{SERIES}/instances"): Reads.STUDY,
    **{
        ("GET", f"{resource}{view}"): Reads.STUDY
        for resource in ("/dicomweb/studies/{study_uid}", SERIES, INSTANCE)
        for view in ("", "/metadata", "/rendered", "/thumbnail")
    },
    ("GET", f"{INSTANCE}/frames/{{frames}}"): Reads.STUDY,
    ("GET", f"{INSTANCE}/frames/{{frames}}/rendered"): Reads.STUDY,
    ("GET", f"{INSTANCE}/frames/{{frames}}/thumbnail"): Reads.STUDY,
    ("GET", f"{INSTANCE}/bulk/{{tag}}"): Reads.STUDY,
}
PAGES = {Reads.PAGE_LISTING, Reads.PAGE_STUDY, Reads.PAGE_JOB, Reads.PAGE_ADMIN}


def api_routes() -> set[tuple[str, str]]:
    routes = list(create_app(ApiSettings()).routes)
    found = set()
    while routes:
        route = routes.pop()
        routes += getattr(getattr(route, "original_router", None), "routes", [])
        if isinstance(route, APIRoute):
            found |= {(method, route.path) for method in route.methods}
    return found


def test_every_route_is_in_the_matrix() -> None:
    assert api_routes() == set(ROUTES)


@dataclass(frozen=True)
class LabA:
    """What lab A holds: a study, a series with NIfTI and an instance of it, and a job its key
    asked for."""

    study_uid: str
    series_uid: str
    instance_uid: str
    job_id: int
    webhook_id: int = 0
    difference_id: int = 0


def lab_a(api: Api) -> LabA:
    folder = api.labs.lab_a
    candidates = [
        (uid, series)
        for uid, facts in sorted(study_facts().items())
        if physician_folder(next(iter(facts.physicians))) == folder
        for series in api.get(f"/studies/{uid}", key=ADMIN_KEY).json()["series"]
        if series["nifti"]["outputs"]
    ]

    def with_bids_session() -> tuple[str, dict[str, Any]] | None:
        """A study whose BIDS session the converter made (it does so after converting)."""
        with sessions() as session:
            return next((c for c in candidates if place_of(session, api.archive, None, c[0])), None)

    engine, sessions = open_catalog(api.dcmdb.database_url, writer=True)
    try:
        study, series = wait_for(with_bids_session, 120, "a BIDS session of lab A", 1.0)
        with sessions() as session, session.begin():
            job = retrievals.new_job(
                session,
                origin="request",
                pacs="NOWHERE",
                query={"study_uid": study},
                requested_by="lab-a",
                labs=frozenset({folder}),
            )
            job_id = job.id
            difference_id = _difference(session, study, folder)
    finally:
        engine.dispose()
    hook = api.client.post(
        "/webhooks",
        json={"lab": folder, "url": "http://127.0.0.1:9/hook", "events": ["study.ready"]},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert hook.status_code in (200, 201), hook.text
    instances = api.get(
        f"/dicomweb/studies/{study}/series/{series['series_uid']}/instances", key=ADMIN_KEY
    )
    instance = instances.json()[0]["00080018"]["Value"][0]
    return LabA(study, series["series_uid"], instance, job_id, hook.json()["id"], difference_id)


def _difference(session: Session, study_uid: str, lab: str) -> int:
    """A study of lab A that a scanner holds and the PACS lacks."""
    day = dt.date.today()
    row = Difference(
        scanner="console",
        study_uid=study_uid,
        series_uid="",
        kind=DifferenceKind.STUDY_MISSING,
        state=DifferenceState.OPEN,
        lab=lab,
        study_date=day,
        deadline=day + dt.timedelta(days=14),
        scanner_instances=1,
        pacs_instances=0,
        found_at=now(),
        checked_at=now(),
        resolution="",
    )
    session.add(row)
    session.flush()
    return row.id


def call(api: Api, method: str, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body: dict[str, Any] | None = {"study_uid": "1.2.3"} if method in ("POST", "PUT") else None
    return api.client.request(method, path, headers=headers, json=body)


def concrete(path: str, a: LabA) -> str:
    return path.format(
        study_uid=a.study_uid,
        series_uid=a.series_uid,
        instance_uid=a.instance_uid,
        job_id=a.job_id,
        webhook_id=a.webhook_id,
        difference_id=a.difference_id,
        frames="1",
        tag="7FE00010",
    )


def test_the_access_matrix(api: Api) -> None:
    a = lab_a(api)
    callers = {
        "admin": ADMIN_KEY,
        "lab A": api.labs.key_a,
        "lab B": api.labs.key_b,
        "revoked": api.labs.revoked,
        "no key": None,
    }
    for (method, template), reads in ROUTES.items():
        if reads is Reads.SESSION or reads in PAGES:
            continue  # test_the_access_matrix_of_the_web_page
        path = concrete(template, a)
        if reads is Reads.LAB:
            path += f"?physician={api.labs.lab_a}"
        for who, key in callers.items():
            answer = call(api, method, path, key)
            where = f"{who}: {method} {template} -> {answer.status_code} {answer.text[:200]}"
            assert answer.status_code < 500, where
            if reads is Reads.NOTHING:
                assert answer.status_code == 200, where
            elif key in (None, api.labs.revoked):
                assert answer.status_code == 401, where
                assert a.study_uid not in answer.text, where
            elif reads is Reads.ADMIN and who != "admin":
                assert answer.status_code == 403, where
            elif reads is Reads.ADMIN and (method, template) not in ASK_THE_PACS:
                # Through the door: a POST of this matrix's stand-in body may be a 422.
                assert answer.status_code in (200, 201, 202, 204, 422), where
            elif reads is Reads.STORE:
                # Past the key, refused for the body alike for every lab, another lab's
                # study word for word as an unknown one.
                unknown = call(api, method, concrete(template, UNKNOWN), key)
                assert answer.status_code == unknown.status_code == 415, where
                assert _as_unknown(answer.text, a) == unknown.text, where
            elif reads is Reads.LAB and who == "lab B":
                # Word for word what an unknown lab gets, before the body is looked at.
                unknown = call(api, method, f"{template}?physician={UNKNOWN_LAB}", key)
                assert answer.status_code == unknown.status_code == 404, where
                assert answer.text == unknown.text.replace(UNKNOWN_LAB, api.labs.lab_a), where
            elif reads is Reads.LAB and method == "PUT":
                # Through the door; this matrix's stand-in body is no rules.
                assert answer.status_code == 422, where
            elif (method, template) in ASK_THE_PACS:
                # Refused for the missing PACS before any study is looked at (a lab's
                # pacs-check with a PACS: tests/retriever/test_retrieval.py).
                expected = ASK_THE_PACS[(method, template)]
                assert answer.status_code == expected and "PACS" in answer.text, where
            elif who == "lab B" and reads is not Reads.LISTING:
                # Word for word what an unknown UID gets.
                unknown = call(api, method, concrete(template, UNKNOWN), key)
                assert answer.status_code == unknown.status_code == 404, where
                assert _as_unknown(answer.text, a) == unknown.text, where
            else:
                assert answer.status_code in (200, 202), where
            if who == "lab B" and reads is Reads.LISTING:
                assert a.study_uid not in answer.text, where


# The routes that ask the PACS, and what they answer when none is configured: a 422 naming
# the `pacs` parameter where there is one, a 409 where nothing in the request could be mended.
ASK_THE_PACS = {
    ("POST", "/retrievals"): 422,
    ("GET", "/studies/{study_uid}/pacs-check"): 422,
    ("POST", "/studies/{study_uid}/repair"): 422,
    ("POST", "/reconciliation/{difference_id}/forward"): 409,
}
UNKNOWN_LAB = "NO_SUCH_LAB"
UNKNOWN = LabA("1.2.3.999.1", "1.2.3.999.2", "1.2.3.999.3", 2**31 - 1, 2**31 - 1, 2**31 - 1)


def signed_in(api: Api, key: str | None) -> tuple[httpx.Client, str]:
    """A client of the web page signed in with `key` (None: not signed in), and the
    session's CSRF token."""
    client = httpx.Client(base_url=api.client.base_url, timeout=60)
    token = _csrf_token(client.get("/signin").text)
    if key is not None:
        client.post("/signin", data={"csrf_token": token, "key": key})
        token = _csrf_token(client.get("/signin").text)
    return client, token


def _csrf_token(page: str) -> str:
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def test_the_access_matrix_of_the_web_page(api: Api) -> None:
    a = lab_a(api)
    signed = {
        who: signed_in(api, key)
        for who, key in {
            "admin": ADMIN_KEY,
            "lab A": api.labs.key_a,
            "lab B": api.labs.key_b,
            "revoked": api.labs.revoked,  # its sign-in fails
            "no key": None,
        }.items()
    }
    for (method, template), reads in ROUTES.items():
        if reads not in PAGES:
            continue
        for who, (client, token) in signed.items():
            form = {"csrf_token": token, "pinned": "1"} if method == "POST" else None
            answer = client.request(method, concrete(template, a), data=form)
            where = f"{who}: {method} {template} -> {answer.status_code} {answer.text[:200]}"
            assert answer.status_code < 500, where
            if who in ("revoked", "no key"):
                assert answer.status_code in (303, 401, 403), where  # to the sign-in form
                assert a.study_uid not in answer.text, where
            elif reads is Reads.PAGE_ADMIN and who != "admin":
                assert answer.status_code == 403, where
            elif who == "lab B" and reads in (Reads.PAGE_STUDY, Reads.PAGE_JOB):
                unknown = client.request(method, concrete(template, UNKNOWN), data=form)
                assert answer.status_code == unknown.status_code == 404, where
                assert _as_unknown(answer.text, a) == unknown.text, where
            elif template.endswith("pacs-check") or template.endswith("repair"):
                assert answer.status_code == 409 and "PACS" in answer.text, where  # none here
            else:
                assert answer.status_code in (200, 303), where
            if who == "lab B" and reads is Reads.PAGE_LISTING:
                assert a.study_uid not in answer.text, where


def _as_unknown(text: str, a: LabA) -> str:
    text = text.replace(a.study_uid, UNKNOWN.study_uid).replace(a.series_uid, UNKNOWN.series_uid)
    text = text.replace(a.instance_uid, UNKNOWN.instance_uid)
    return text.replace(f"job {a.job_id}", f"job {UNKNOWN.job_id}")


def _studies_of(lab: str) -> set[str]:
    return {
        uid
        for uid, facts in study_facts().items()
        if physician_folder(next(iter(facts.physicians))) == lab
    }


def test_a_lab_lists_only_its_own(api: Api) -> None:
    labs = {api.labs.lab_a: api.labs.key_a, api.labs.lab_b: api.labs.key_b}
    for lab, key in labs.items():
        listed = api.get("/studies", key=key, limit=1000).json()["items"]
        assert {item["study_uid"] for item in listed} == _studies_of(lab)
        # A physician filter naming another lab finds nothing, as for an unknown lab.
        other = next(other for other in labs if other != lab)
        assert api.get("/studies", key=key, physician=other).json()["items"] == []
        assert [p["folder"] for p in api.get("/physicians", key=key).json()] == [lab]
        storage = api.get("/storage", key=key).json()
        assert storage["catalog"]["studies"] == len(_studies_of(lab))
        assert {p["physician_folder"] for p in storage["next_eviction"]["studies"]} <= {lab}
    admin = api.get("/physicians", key=ADMIN_KEY).json()
    assert set(labs) <= {p["folder"] for p in admin}


def test_a_lab_follows_only_its_own_jobs(api: Api) -> None:
    a = lab_a(api)
    assert a.job_id in [job["id"] for job in api.get("/retrievals", key=api.labs.key_a).json()]
    assert a.job_id not in [job["id"] for job in api.get("/retrievals", key=api.labs.key_b).json()]
    assert a.job_id in [job["id"] for job in api.get("/retrievals", key=ADMIN_KEY).json()]
    job = api.get(f"/retrievals/{a.job_id}", key=api.labs.key_a).json()
    assert job["query"] == {"study_uid": a.study_uid}


def test_a_key_revoked_or_added_takes_effect_without_a_restart(api: Api) -> None:
    keys_file = api.dcmdb.data_dir / "keys.yaml"
    key = add_key(keys_file, "newcomer", [api.labs.lab_b])
    assert api.get("/physicians", key=key).json()[0]["folder"] == api.labs.lab_b
    with keys.editing(keys_file) as document:
        document.keys.remove(next(e for e in document.keys if e.name == "newcomer"))
    assert api.get("/physicians", key=key).status_code == 401
