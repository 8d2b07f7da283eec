"""The labs' BIDS datasets kept in step with the catalog: a study's session made again when
one of its series converts (or converts again, or fails), removed when the study is evicted,
and every session of a lab named again when its rules change."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from shared.bids import dataset, pseudonyms
from shared.bids.rules import Rules, RulesError
from shared.bids.session import DatePolicy, plan_session
from shared.catalog.bids import BidsSession
from shared.catalog.models import LISTED, Series, Study
from shared.catalog.states import ConversionState

log = logging.getLogger("dcmdb.bids")


class BidsViews:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        archive: Path,
        bids_dir: Path | None,
        dates: DatePolicy,
        keys_file: Path | None = None,
    ) -> None:
        """`keys_file` names each lab's group; by default the data directory's keys.yaml."""
        self._sessions = sessions
        self._keys_file = keys_file or archive.parent / "keys.yaml"
        self._archive = archive
        self._bids_dir = bids_dir
        self._dates = dates

    def refresh(self, study_uid: str) -> dataset.SessionPlace | None:
        """The study's session made as the catalog says now; None for a study not filed, or
        being evicted (its session goes with the eviction's event).

        A file read or linked may go between the catalog read and the link: the study
        evicted, or a series converted again. The catalog is then read again, once: a
        study evicted meanwhile is None, a series converted again has its new files."""
        try:
            return self._refresh(study_uid)
        except FileNotFoundError:
            log.info("BIDS: a study's files changed while its session was made; again")
            return self._refresh(study_uid)

    def _refresh(self, study_uid: str) -> dataset.SessionPlace | None:
        with self._sessions() as session:
            study = session.scalar(
                select(Study)
                .where(Study.study_instance_uid == study_uid, LISTED)
                .options(
                    selectinload(Study.series).selectinload(Series.outputs),
                    selectinload(Study.patient),
                )
            )
            if study is None:
                return None
            if all(s.conversion == ConversionState.PENDING for s in study.series):
                return None  # nothing of it decided yet: no subject or session to give
        # Transactions short and apart, none while the files are written: on SQLite a writer's
        # transaction holds the write lock, which the sorter and the converters wait for.
        with self._sessions() as session:
            pseudonym = pseudonyms.for_study(
                session, study_uid, study.physician_folder, study.patient.patient_id
            )
        spot = dataset.place(self._archive, self._bids_dir, pseudonym)
        dataset.make_dataset(self._archive, self._bids_dir, spot.lab, self._keys_file)
        with dataset.locked(spot.root):
            plan = plan_session(
                study,
                self._archive,
                self._rules(spot.root, spot.lab),
                subject=spot.subject,
                session=spot.session,
                dates=self._dates,
                shift_days=pseudonym.date_shift_days,
            )
            dataset.write_session(spot, plan, self._archive)
        log.info(
            "BIDS %s sub-%s ses-%s: %d file(s), %d series left over",
            spot.lab,
            spot.subject,
            spot.session,
            len(plan.files),
            len(plan.leftovers),
        )
        return spot

    def remove(self, study_uid: str) -> None:
        """The evicted study's session goes; its labels stay, for the study fetched again."""
        with self._sessions() as session:
            found = pseudonyms.existing(session, study_uid)
        spot = dataset.remove_study(self._archive, self._bids_dir, found) if found else None
        if spot is not None:
            log.info("BIDS %s sub-%s ses-%s removed", spot.lab, spot.subject, spot.session)

    def refresh_lab(self, lab: str) -> int:
        """Every study of the lab named again (its rules changed); how many."""
        with self._sessions() as session:
            uids = list(
                session.scalars(
                    select(Study.study_instance_uid).where(Study.physician_folder == lab)
                )
            )
        for uid in uids:
            self.refresh(uid)
        return len(uids)

    def backfill(self, stopping: threading.Event) -> int:
        """Sessions for the studies converted before there were BIDS views (an upgrade):
        each study with an outcome and no labels yet, until `stopping` is set; how many."""
        with self._sessions() as session:
            uids = list(
                session.scalars(
                    select(Study.study_instance_uid)
                    .where(
                        Study.series.any(Series.conversion != ConversionState.PENDING),
                        Study.study_instance_uid.not_in(select(BidsSession.study_instance_uid)),
                    )
                    .order_by(Study.id)
                )
            )
        for uid in uids:
            if stopping.is_set():
                break
            self.refresh(uid)
        if uids:
            log.info("BIDS sessions made for %d studies converted before", len(uids))
        return len(uids)

    def _rules(self, root: Path, lab: str) -> Rules:
        try:
            return Rules.load(root / dataset.RULES_FILE)
        except RulesError as exc:  # an edit on disk gone wrong: named, and no rules meanwhile
            log.warning("BIDS rules of %s not used: %s", lab, exc)
            return Rules.parse({"descriptions": []})
