"""A scanner and a PACS (dcmqrscp, or Orthanc as the scanner) with overlapping content, and
the settings that name them, for the reconciliation tests.

The scanner holds five studies; the PACS holds:
- `complete`: all of it (nothing to report);
- `missing`: nothing of it (the study is missing);
- `partial`: its first series only (the second series is missing);
- `short`: its series with 2 of its 4 instances (instances missing);
- `old`: nothing, but the study is older than the scanner's 14 days (not reported).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from shared.reconciliation import ReconcileSettings
from tests.pacs_peers import Dcmqrscp, Orthanc
from tests.scanner_studies import SyntheticStudy

DESTINATION = ("DCMDB", "127.0.0.1", 11112)  # replaced where dcmdb runs


@dataclass
class Studies:
    complete: SyntheticStudy = field(default_factory=lambda: SyntheticStudy(3, [2, 2]))
    missing: SyntheticStudy = field(
        default_factory=lambda: SyntheticStudy(2, [2, 3], physician="JONES^ANN")
    )
    partial: SyntheticStudy = field(default_factory=lambda: SyntheticStudy(5, [2, 3]))
    short: SyntheticStudy = field(default_factory=lambda: SyntheticStudy(1, [4]))
    old: SyntheticStudy = field(default_factory=lambda: SyntheticStudy(20, [2]))

    def scanner_files(self, folder: Path) -> list[Path]:
        studies = (self.complete, self.missing, self.partial, self.short, self.old)
        return [path for study in studies for path in study.write(folder)]

    def pacs_files(self, folder: Path) -> list[Path]:
        return (
            self.complete.write(folder)
            + self.partial.write(folder, [2, 0])
            + self.short.write(folder, [2])
        )


@dataclass
class Site:
    scanner: Dcmqrscp | Orthanc
    pacs: Dcmqrscp
    studies: Studies
    peers_file: Path

    def settings(self, database_url: str, **values: object) -> ReconcileSettings:
        return ReconcileSettings(
            pacs_file=self.peers_file,
            database_url=database_url,
            data_dir=self.peers_file.parent / "data",
            **values,  # type: ignore[arg-type]
        )


def peers_file(folder: Path, scanner: tuple[str, int], pacs: tuple[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "peers.yaml"
    entries = [
        {"name": "pacs", "ae_title": pacs[0], "host": "127.0.0.1", "port": pacs[1]},
        {
            "name": "console",
            "ae_title": scanner[0],
            "host": "127.0.0.1",
            "port": scanner[1],
            "role": "scanner",
            "keeps_days": 14,
        },
    ]
    path.write_text(yaml.safe_dump(entries))
    return path


@contextmanager
def site(
    folder: Path,
    *,
    scanner_kind: type[Dcmqrscp] | type[Orthanc] = Dcmqrscp,
    destination: tuple[str, str, int] = DESTINATION,
) -> Iterator[Site]:
    studies = Studies()
    with ExitStack() as stack:
        scanner = stack.enter_context(scanner_kind(folder / "scanner", destination, "CONSOLE"))
        pacs = stack.enter_context(Dcmqrscp(folder / "pacs", destination, "PACS"))
        scanner.fill(studies.scanner_files(folder / "scanner-files"))
        pacs.fill(studies.pacs_files(folder / "pacs-files"))
        path = peers_file(folder, (scanner.ae_title, scanner.port), (pacs.ae_title, pacs.port))
        yield Site(scanner, pacs, studies, path)
