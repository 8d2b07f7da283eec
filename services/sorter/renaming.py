"""Instance files an older dcmdb named by a hash, renamed to ``<SOPInstanceUID>.dcm``.

dcmdb once gave a shortened, hashed name to every SOP Instance UID of 61 to 64 characters,
as if a file name had a folder's 64-character limit; a user looking for an instance by its
UID did not find it. At start the sorter renames those files (`shared.naming` names an
instance now). Each file is first linked under its new name, then the catalog points there,
then the old name goes: a crash at any step leaves the catalog pointing at a file that
exists, and the next start finishes the rename. Several sorters may do it at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.models import Instance
from shared.naming import instance_file_name

_HASHED_FROM = 61  # shorter UIDs always named their file


def rename_hashed_instance_files(sessions: sessionmaker[Session], archive: Path) -> int:
    """Rename the files of valid UIDs still under a hashed name; how many were renamed."""
    with sessions() as session:
        rows = session.execute(
            select(Instance.id, Instance.sop_instance_uid, Instance.path).where(
                func.length(Instance.sop_instance_uid) >= _HASHED_FROM,
                # Only files not named after their UID: once renamed, a start reads nothing.
                ~Instance.path.endswith(Instance.sop_instance_uid + ".dcm"),
            )
        ).all()
    renamed = 0
    for pk, uid, path in rows:
        old = Path(path)
        name = instance_file_name(uid)
        if old.name == name:
            continue
        new = old.with_name(name)
        try:
            os.link(archive / old, archive / new)
        except FileExistsError:
            pass  # linked by an earlier start, or by another sorter
        except FileNotFoundError:
            continue  # renamed meanwhile by another sorter
        with sessions.begin() as session:
            session.execute(
                update(Instance)
                .where(Instance.id == pk, Instance.path == path)
                .values(path=str(new))
                .execution_options(synchronize_session=False)
            )
        (archive / old).unlink(missing_ok=True)
        renamed += 1
    return renamed
