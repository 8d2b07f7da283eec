"""Instances answered before their sync, until a retrieval job makes them durable at its end.

An instance of a retrieval dcmdb asked for itself (the PACS keeps its copy) is answered
once written, without the disk sync every other arrival waits for (`shared.incoming`). The
receiver gives each such file a second name, a hard link, in ``<data dir>/.unsynced/``: the
sorter's link into the archive is the same file, so the name stays valid after filing.

Before a job reports ``completed`` the retriever takes the names there, syncs the
filesystems of the data directory and the archive in one call each (`sync_filesystem`),
then removes those names: all they named is durable. A name made meanwhile, by another
job, stays for that job's sync. So the names here are at any moment the files a power cut
may take; the job's completeness check looks on disk and fetches again what is gone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from shared.durable import sync_filesystem

log = logging.getLogger(__name__)

FOLDER = ".unsynced"  # not a valid incoming folder name (`incoming_folder_name`)


class UnsyncedFiles:
    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        self._prefix = f"{self.folder}{os.sep}"

    def mark(self, path: str, name: str) -> None:
        """Note `path` (as `name`, unique) as written but not yet durable; OSError if not."""
        os.link(path, self._prefix + name)

    def marked(self) -> list[Path]:
        return sorted(self.folder.iterdir())

    def make_durable(self, *others: Path) -> int:
        """Sync the data directory's filesystem and those of `others` (the archive), then
        forget the files marked before; how many they were. OSError if a sync fails."""
        marked = self.marked()
        synced: set[int] = set()
        for place in (self.folder, *others):
            device = place.stat().st_dev
            if device not in synced:
                sync_filesystem(place)
                synced.add(device)
        for path in marked:
            path.unlink(missing_ok=True)
        return len(marked)
