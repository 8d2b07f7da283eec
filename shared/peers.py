"""The PACS peers dcmdb talks to, from `DCMDB_PACS` or `DCMDB_PACS_FILE`."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import model_validator

from services.retriever.pacs import Peer, load_peers_file, parse_peers
from shared.settings import CommonSettings


class PacsSettings(CommonSettings):
    # Comma-separated AETITLE@host:port entries, the first being the default.
    pacs: str = ""
    # Or a YAML list of {name, ae_title, host, port, calling_ae, retrieve: move|get}.
    pacs_file: Path | None = None

    @model_validator(mode="after")
    def _valid_peers(self) -> Self:
        self.peers  # noqa: B018 - parses, so that a bad entry stops the start
        return self

    @property
    def peers(self) -> list[Peer]:
        """Every configured PACS; the first is the default."""
        peers = parse_peers(self.pacs, self.ae_title) if self.pacs.strip() else []
        if self.pacs_file is not None:
            try:
                peers += load_peers_file(self.pacs_file, self.ae_title)
            except OSError as exc:
                raise ValueError(f"DCMDB_PACS_FILE cannot be read: {exc.strerror}") from None
        return peers

    def peer(self, name: str | None) -> Peer:
        """The PACS called `name`, or the default; ValueError naming the known ones."""
        peers = self.peers
        if not peers:
            raise ValueError("no PACS is configured: set DCMDB_PACS (AETITLE@host:port)")
        if name is None:
            return peers[0]
        for peer in peers:
            if peer.name == name:
                return peer
        known = ", ".join(p.name for p in peers)
        raise ValueError(f"no PACS named {name!r}; configured: {known}")
