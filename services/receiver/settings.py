"""Receiver settings: who may send to us, and where we listen."""

from __future__ import annotations

import logging
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.settings import ArrivalSettings, metrics_port

log = logging.getLogger(__name__)

CommaList = Annotated[tuple[str, ...], NoDecode]


class ReceiverSettings(ArrivalSettings):  # DCMDB_MIN_FREE, DCMDB_SWEEP_INTERVAL
    dicom_host: str = "0.0.0.0"
    # Other AE titles dcmdb answers to, besides DCMDB_AE_TITLE (a renamed node's old title).
    ae_aliases: CommaList = ()
    allowed_calling_aes: CommaList = ()
    allowed_hosts: CommaList = ()
    maximum_pdu_size: int = Field(default=1_048_576, ge=4096, le=64 * 1_048_576)
    network_timeout: float = Field(default=60.0, gt=0)
    # From connecting to a complete association request (and a TLS handshake).
    acse_timeout: float = Field(default=30.0, gt=0)
    # Open connections at once, in all and from any one host; more are refused.
    max_associations: int = Field(default=32, ge=1, le=1000)
    max_associations_per_host: int = Field(default=16, ge=1, le=1000)
    metrics_port: int = metrics_port("receiver")

    @field_validator("ae_aliases", "allowed_calling_aes", "allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def own_ae_titles(self) -> frozenset[str]:
        """The called AE titles dcmdb accepts associations for."""
        return frozenset({self.ae_title, *self.ae_aliases})

    def warn_if_open(self) -> None:
        if not self.allowed_calling_aes:
            log.warning("DCMDB_ALLOWED_CALLING_AES is empty: any calling AE title is accepted")
        if not self.allowed_hosts:
            log.warning("DCMDB_ALLOWED_HOSTS is empty: associations from any host are accepted")
