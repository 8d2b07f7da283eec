"""The study browser: the studies of the visitor's labs, searched, sorted and paged, and
one study with its series, previews, NIfTI and downloads.

The queries are the API's own (`services.api.studies`), with the visitor's labs; the
previews and downloads are links to the API's routes, which the session's key opens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api.dependencies import PhysiciansDep, SessionDep, SettingsDep, StudyUid
from services.api.parameters import Cursor, date_range, like_pattern
from services.api.schemas import StudyDetail
from services.api.studies import PhysicianDirectory, StudyFilters, list_studies, study_detail
from services.api.web.pages import PageError, Visitor, VisitorDep, audited_page, render
from shared.bids.dataset import place_of
from shared.catalog.models import LISTED, Study
from shared.catalog.reconciliation import Difference, ReconciliationRun
from shared.catalog.states import AuditAction, CheckState, DifferenceState
from shared.keys import Caller
from shared.reconciliation_report import Filters, differences, latest_runs

PANEL_ROWS = 20

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 25
MAX_PAGE = 200
SORTS = {"received": "Received", "study_date": "Study date"}
ORDERS = {"desc": "newest first", "asc": "oldest first"}


@dataclass(frozen=True)
class Search:
    """The search form as the browser sends it (every field text, '' when left empty)."""

    physician: str = ""
    patient_name: str = ""
    patient_id: str = ""
    date_from: str = ""  # YYYY-MM-DD, as a date field sends it
    date_to: str = ""
    modality: str = ""
    accession: str = ""
    description: str = ""
    sort: str = "received"
    order: str = "desc"
    limit: str = ""  # studies a page, PAGE_SIZE when empty

    @classmethod
    def of(cls, request: Request) -> Search:
        given = request.query_params
        defaults = cls()
        return cls(
            **{
                f.name: given.get(f.name, getattr(defaults, f.name)).strip()[:256]
                for f in fields(cls)
            }
        )

    def query(self, **extra: str) -> str:
        """This search as a query string, without its empty fields."""
        pairs = {f.name: getattr(self, f.name) for f in fields(self)}
        return urlencode({k: v for k, v in {**pairs, **extra}.items() if v})

    def filters(self, caller: Caller, directory: PhysicianDirectory) -> StudyFilters:
        """What the catalog compares; ValueError saying what is wrong with a field."""
        if self.sort not in SORTS or self.order not in ORDERS:
            raise ValueError("sort by received or study_date, desc or asc")
        if self.limit and not (self.limit.isdigit() and 1 <= int(self.limit) <= MAX_PAGE):
            raise ValueError(f"a page shows 1 to {MAX_PAGE} studies")
        days = None
        if self.date_from or self.date_to:
            text = f"{self.date_from.replace('-', '')}-{self.date_to.replace('-', '')}"
            days = date_range(text)
        name = self.patient_name if "*" in self.patient_name else f"*{self.patient_name}*"
        return StudyFilters(
            labs=caller.labs,
            physician_folders=directory.folders_for(self.physician) if self.physician else None,
            patient_id=self.patient_id or None,
            patient_name=like_pattern(name, wildcards=True) if self.patient_name else None,
            study_date=days,
            modality=self.modality.upper() or None,
            accession_number=self.accession or None,
            description=like_pattern(self.description, wildcards=False)
            if self.description
            else None,
        )


@router.get("/", dependencies=[audited_page(AuditAction.STUDIES_LIST)])
def studies_page(
    request: Request, visitor: VisitorDep, session: SessionDep, directory: PhysiciansDep
) -> Response:
    search = Search.of(request)
    cursor_text = request.query_params.get("cursor", "")
    try:
        filters = search.filters(visitor.caller, directory)
        cursor = Cursor.decode(cursor_text) if cursor_text else None
        if cursor is not None and (cursor.sort, cursor.order) != (search.sort, search.order):
            raise ValueError("this page link belongs to another order: start again")
        items, following = list_studies(
            session,
            filters,
            sort=search.sort,
            order=search.order,
            limit=int(search.limit or PAGE_SIZE),
            cursor=cursor,
        )
    except ValueError as exc:
        return _studies(
            request, visitor, session, directory, search, status.HTTP_400_BAD_REQUEST, str(exc)
        )
    return _studies(
        request,
        visitor,
        session,
        directory,
        search,
        status.HTTP_200_OK,
        "",
        items=items,
        next=following,
    )


def _studies(
    request: Request,
    visitor: Visitor,
    session: Session,
    directory: PhysicianDirectory,
    search: Search,
    status_code: int,
    problem: str,
    **page: Any,
) -> Response:
    return render(
        request,
        "studies.html",
        visitor,
        status_code,
        search=search,
        problem=problem,
        labs=_lab_choices(session, visitor.caller),
        sorts=SORTS,
        orders=ORDERS,
        paged=bool(request.query_params.get("cursor")),
        items=page.get("items", []),
        next_page=search.query(cursor=page["next"]) if page.get("next") else None,
        first_page=search.query(),
        at_risk=at_risk(session, visitor.caller),
        export_lab=_lab_in_view(visitor.caller, search, directory),
        api_url=str(request.base_url).rstrip("/"),
    )


def _lab_in_view(caller: Caller, search: Search, directory: PhysicianDirectory) -> str | None:
    """The one lab the page shows, if it shows one: its BIDS export is offered."""
    if search.physician:
        labs = {lab for lab in directory.folders_for(search.physician) if caller.sees(lab)}
    else:
        labs = set(caller.labs or ())
    return labs.pop() if len(labs) == 1 else None


def at_risk(session: Session, caller: Caller) -> AtRisk:
    """The panel of what the PACS lacks of the scanners' studies, of the caller's labs."""
    rows = differences(session, Filters(labs=caller.labs, limit=PANEL_ROWS + 1))
    open_rows = [row for row in rows if row.state != DifferenceState.CLOSED]
    failed = [run for run in latest_runs(session) if run.state == CheckState.FAILED]
    return AtRisk(open_rows[:PANEL_ROWS], len(open_rows) > PANEL_ROWS, failed)


@dataclass(frozen=True)
class AtRisk:
    differences: list[Difference]
    more: bool
    unchecked: list[ReconciliationRun]  # scanners whose latest check failed


def _lab_choices(session: Session, caller: Caller) -> list[str]:
    if caller.labs is not None:
        return sorted(caller.labs)
    return sorted(session.scalars(select(Study.physician_folder).where(LISTED).distinct()))


@router.get("/web/studies/{study_uid}", dependencies=[audited_page(AuditAction.STUDY_READ)])
def study_page(
    request: Request,
    visitor: VisitorDep,
    session: SessionDep,
    settings: SettingsDep,
    study_uid: StudyUid,
) -> Response:
    study = visible_study(session, visitor.caller, study_uid)
    place = place_of(session, settings.archive_root, settings.bids_dir, study_uid)
    bids = place is not None and place.folder.is_dir()
    return render(request, "study.html", visitor, study=study, bids=bids)


def visible_study(session: Session, caller: Caller, study_uid: str) -> StudyDetail:
    """The study, if the caller sees its lab: another lab's study is not found, exactly as
    a UID the catalog does not know."""
    detail = study_detail(session, study_uid, caller.labs)
    if detail is None:
        raise PageError(status.HTTP_404_NOT_FOUND, f"No study with UID {study_uid!r} here.")
    return detail
