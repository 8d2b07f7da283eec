"""The DICOM peers dcmdb talks to, from `DCMDB_PACS` or `DCMDB_PACS_FILE`: the PACS it
retrieves from, and the scanners (``role: scanner``) whose studies the reconciliation
(`shared.reconciliation`) looks for on the PACS before the scanner deletes them."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Self, cast

import yaml
from pydantic import field_validator, model_validator

from shared.settings import CommonSettings
from shared.tls import check_pair, client_context, unset_if_empty

#: An AE title as dcmdb accepts one: 1 to 16 printable ASCII characters, no backslash, not
#: starting with a space (trailing spaces are padding, stripped before this check).
AE_TITLE_PATTERN = r"[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}"


@dataclass(frozen=True)
class Peer:
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae: str = "DCMDB"
    retrieve: Literal["move", "get"] = "move"
    tls: bool = False
    # "pacs": retrieved from; "scanner": a console that keeps its studies `keeps_days` days.
    role: Literal["pacs", "scanner"] = "pacs"
    keeps_days: int = 14
    # The AE title this peer knows dcmdb by as a move destination, when not DCMDB_AE_TITLE
    # (a console set up with one of DCMDB_AE_ALIASES, say).
    move_destination: str | None = None
    # Set by PacsSettings for a peer with tls: the context its associations use.
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        titles = [self.ae_title, self.calling_ae]
        if self.move_destination is not None:
            titles.append(self.move_destination)
        for title in titles:
            if not re.fullmatch(AE_TITLE_PATTERN, title):
                raise ValueError(f"{title!r} is not an AE title (1 to 16 characters)")
        if not self.host:
            raise ValueError("the host is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not between 1 and 65535")
        if self.retrieve not in ("move", "get"):
            raise ValueError(f"retrieve must be move or get, not {self.retrieve!r}")
        if self.role not in ("pacs", "scanner"):
            raise ValueError(f"role must be pacs or scanner, not {self.role!r}")
        if not 1 <= self.keeps_days <= 3650:
            raise ValueError(f"keeps_days {self.keeps_days} is not between 1 and 3650")

    @property
    def kind(self) -> str:
        """What it is, as a message names it: "PACS" or "scanner"."""
        return "scanner" if self.role == "scanner" else "PACS"

    def __str__(self) -> str:
        address = f"{self.ae_title}@{self.host}:{self.port}"
        return address if self.name == self.ae_title else f"{self.name} ({address})"


def parse_peers(text: str, calling_ae: str) -> list[Peer]:
    """``DCMDB_PACS``: ``AETITLE@host:port`` entries separated by commas, the default first."""
    peers = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        ae_title, _, address = entry.partition("@")
        host, _, port = address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [::1]:104
        try:
            if not (ae_title and host and port.isdigit()):
                raise ValueError("expected AETITLE@host:port")
            peers.append(Peer(ae_title, ae_title, host, int(port), calling_ae))
        except ValueError as error:
            raise ValueError(f"DCMDB_PACS entry {entry!r}: {error}") from None
    return _unique(peers, "DCMDB_PACS")


def load_peers_file(path: Path, calling_ae: str) -> list[Peer]:
    """A YAML list of ``{name, ae_title, host, port, calling_ae?, retrieve?: move|get, tls?,
    role?: pacs|scanner, keeps_days?, move_destination?}``."""
    entries = yaml.safe_load(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of PACS")
    peers = []
    for number, entry in enumerate(entries, 1):
        try:
            peers.append(_peer_entry(entry, calling_ae))
        except ValueError as error:
            raise ValueError(f"{path}: PACS {number}: {error}") from None
    return _unique(peers, str(path))


_PEER_KEYS = {
    "name",
    "ae_title",
    "host",
    "port",
    "calling_ae",
    "retrieve",
    "tls",
    "role",
    "keeps_days",
    "move_destination",
}


def _peer_entry(entry: object, calling_ae: str) -> Peer:
    if not isinstance(entry, dict) or not {"name", "ae_title", "host", "port"} <= set(entry):
        raise ValueError("needs name, ae_title, host and port")
    if unknown := set(entry) - _PEER_KEYS:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    if not isinstance(entry["port"], int):
        raise ValueError("port must be a number")
    if not isinstance(entry.get("keeps_days", 14), int):
        raise ValueError("keeps_days must be a number of days")
    if not isinstance(entry.get("tls", False), bool):
        raise ValueError("tls must be true or false")
    text = {key: str(value) for key, value in entry.items()}
    return Peer(
        name=text["name"],
        ae_title=text["ae_title"],
        host=text["host"],
        port=entry["port"],
        calling_ae=text.get("calling_ae", calling_ae),
        retrieve=cast(Literal["move", "get"], text.get("retrieve", "move")),
        tls=entry.get("tls", False),
        role=cast(Literal["pacs", "scanner"], text.get("role", "pacs")),
        keeps_days=entry.get("keeps_days", 14),
        move_destination=text.get("move_destination"),
    )


def _unique(peers: list[Peer], source: str) -> list[Peer]:
    names = [peer.name for peer in peers]
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"{source}: PACS named more than once: {', '.join(duplicates)}")
    return peers


class PacsSettings(CommonSettings):
    # Comma-separated AETITLE@host:port entries, the first being the default.
    pacs: str = ""
    # Or a YAML list of {name, ae_title, host, port, calling_ae, retrieve: move|get, tls,
    # role: pacs|scanner, keeps_days}.
    pacs_file: Path | None = None
    # For PACS reached over TLS: the CAs their certificates are checked against (default:
    # the system's), and dcmdb's own certificate for a PACS that asks for one.
    pacs_tls_ca: Path | None = None
    pacs_tls_cert: Path | None = None
    pacs_tls_key: Path | None = None

    empty_pacs_tls_is_unset = field_validator(
        "pacs_tls_ca", "pacs_tls_cert", "pacs_tls_key", mode="before"
    )(unset_if_empty)

    @model_validator(mode="after")
    def _valid_peers(self) -> Self:
        check_pair(self.pacs_tls_cert, self.pacs_tls_key, "PACS_TLS")
        self.all_peers  # noqa: B018 - parses, so that a bad entry stops the start
        return self

    def own_receiver_tls(self) -> ssl.SSLContext | None:
        """For associations to dcmdb's own receiver, when it speaks TLS: its own
        certificate is trusted as it is, whatever host name it was made for."""
        if self.tls_cert is None:
            return None
        return client_context(
            self.tls_cert, self.pacs_tls_cert, self.pacs_tls_key, check_hostname=False
        )

    @property
    def peers(self) -> list[Peer]:
        """Every configured PACS; the first is the default."""
        return [peer for peer in self.all_peers if peer.role == "pacs"]

    @property
    def scanners(self) -> list[Peer]:
        """The scanners the reconciliation checks against the PACS."""
        return [peer for peer in self.all_peers if peer.role == "scanner"]

    @property
    def all_peers(self) -> list[Peer]:
        """PACS and scanners alike, as configured."""
        peers = parse_peers(self.pacs, self.ae_title) if self.pacs.strip() else []
        if self.pacs_file is not None:
            try:
                peers += load_peers_file(self.pacs_file, self.ae_title)
            except OSError as exc:
                raise ValueError(f"DCMDB_PACS_FILE cannot be read: {exc.strerror}") from None
        if any(peer.tls for peer in peers):
            try:
                context = client_context(self.pacs_tls_ca, self.pacs_tls_cert, self.pacs_tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"DCMDB_PACS_TLS_CA cannot be loaded: {exc}") from None
            peers = [replace(p, tls_context=context) if p.tls else p for p in peers]
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

    def scanner(self, name: str) -> Peer:
        """The scanner called `name`; ValueError naming the known ones."""
        for peer in self.scanners:
            if peer.name == name:
                return peer
        known = ", ".join(p.name for p in self.scanners) or "none"
        raise ValueError(f"no scanner named {name!r}; configured: {known}")
