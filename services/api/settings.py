"""API settings: where it listens and who may call it."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Self

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator

from shared import keys as key_file
from shared.keys import Scope
from shared.peers import PacsSettings
from shared.settings import ArrivalSettings, incoming_folder_name


# GET /storage shows the thresholds; STOW-RS refuses instances below DCMDB_MIN_FREE.
class ApiSettings(PacsSettings, ArrivalSettings):
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    # Comma-separated KEY:SCOPE pairs, scope "read" or "admin": keys that see every lab,
    # beside those of the keys file (DCMDB_KEYS_FILE, `dcmdb keys`).
    api_keys: SecretStr = SecretStr("")
    # The same in a file (one pair per line or comma-separated), for docker secrets.
    api_keys_file: Path | None = None
    api_workers: int = Field(default=1, ge=1, le=64)
    # Days the audit trail (GET /audit) keeps what each key read or changed.
    audit_days: int = Field(default=365, ge=1)
    # Signs the web page's session cookies (services/api/web/session.py); without it, a
    # secret generated once into <data dir>/web-session.secret (mode 0600).
    session_secret: SecretStr | None = Field(default=None, min_length=32)
    # How long a sign-in on the web page lasts.
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # STOW-RS (services/api/dicomweb/stow.py): the API's incoming folder in the data
    # directory (with several workers, each takes the first free of it, <it>-2, <it>-3, ...),
    # the largest request body, and the largest instance, which is held in memory whole.
    stow_folder: str = "incoming-stow"
    stow_max_request: ByteSize = ByteSize(4_000_000_000)
    stow_max_instance: ByteSize = ByteSize(1_000_000_000)

    valid_stow_folder = field_validator("stow_folder")(incoming_folder_name)

    @field_validator("session_secret", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def stow_folders(self) -> list[str]:
        """The incoming folders of the API's worker processes, one each."""
        return [self.stow_folder] + [
            f"{self.stow_folder}-{n}" for n in range(2, self.api_workers + 1)
        ]

    @model_validator(mode="after")
    def _stow_folders_of_their_own(self) -> Self:
        if self.incoming_folder in self.stow_folders:
            raise ValueError(
                f"DCMDB_INCOMING_FOLDER ({self.incoming_folder}) is one of the API's STOW-RS "
                f"folders ({self.stow_folder}...): each process takes instances into a folder "
                "of its own"
            )
        return self

    @model_validator(mode="after")
    def _check_keys(self) -> Self:
        keys = self.keys  # parses: a malformed pair fails here, at start
        in_file = key_file.load(self.keys_path).keys  # and so does a malformed keys file
        if not keys and not in_file and not is_loopback(self.api_host):
            raise ValueError(
                f"DCMDB_API_HOST={self.api_host} is not a loopback address and no API key is "
                f"configured: add one with `dcmdb keys add` (into {self.keys_path}) or listen "
                "on 127.0.0.1"
            )
        return self

    @property
    def keys(self) -> dict[str, Scope]:
        """Each key and its scope."""
        text = self.api_keys.get_secret_value()
        if self.api_keys_file is not None:
            try:
                text += "," + self.api_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"DCMDB_API_KEYS_FILE cannot be read: {exc.strerror}") from None
        keys: dict[str, Scope] = {}
        for number, pair in enumerate(text.replace("\n", ",").split(","), start=1):
            pair = pair.strip()
            if not pair:
                continue
            key, _, scope = pair.rpartition(":")
            if not key or scope not in tuple(Scope):
                raise ValueError(
                    f"DCMDB_API_KEYS entry {number} is not KEY:read or KEY:admin (key not shown)"
                )
            if len(key) < 16:
                raise ValueError(
                    f"DCMDB_API_KEYS entry {number}: a key needs 16 characters or more"
                )
            keys[key] = Scope(scope)
        return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
