"""A study's BIDS session on disk, for the tests of the doors to it (the API's ZIP, the
export, the web page's link)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.bids.dataset import SessionPlace, dataset_root, place_of
from shared.catalog.models import Series, Study


def build_session(sessions: sessionmaker[Session], archive: Path, study_uid: str) -> SessionPlace:
    """The study's session in its lab's dataset, made from its converted NIfTI."""
    with sessions() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        lab = study.physician_folder
        outputs = sorted(
            (output.path, output.sidecar_path)
            for series in session.scalars(select(Series).where(Series.study_pk == study.id))
            for output in series.outputs
        )
    root = dataset_root(archive, None, lab)
    folder = root / "sub-01" / "ses-01" / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": lab, "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\tn/a\nsub-02\tn/a\n")
    assert outputs, "the study has no NIfTI"
    for run, (nifti, sidecar) in enumerate(outputs, start=1):
        name = f"sub-01_ses-01_run-{run}_T1w"
        os.link(archive / nifti, folder / f"{name}.nii.gz")
        os.link(archive / sidecar, folder / f"{name}.json")
    (root / ".standin-sessions.json").write_text(json.dumps({study_uid: ["01", "01"]}))
    with sessions() as session:
        place = place_of(session, archive, None, study_uid)
    assert place is not None
    return place
