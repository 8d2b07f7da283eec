"""Settings shared by every service.

Every service builds its settings once in its ``main()`` and passes them down;
nothing reads the environment after start. Values come from ``DCMDB_*``
environment variables or a ``.env`` file in the working directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeVar

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.disk import Threshold
from shared.errors import ConfigurationError
from shared.messages import DEFAULT_INSTALLATION, Topology, installation_name
from shared.tls import check_pair, unset_if_empty

if TYPE_CHECKING:
    from shared.naming import PhysicianAliases

ENV_PREFIX = "DCMDB_"
# Each service's side port (shared.monitoring) by default, so that the services of one host
# never share one; `dcmdb up` hands each child its own (services.commands.up).
METRICS_PORTS = {
    "receiver": 9101,
    "sorter": 9102,
    "converter": 9103,
    "retriever": 9104,
    "retention": 9105,
    "notifier": 9106,
}


def broker_addresses(urls: str) -> list[str]:
    """The URLs in ``DCMDB_BROKER_URL``: one, or a cluster's nodes separated by commas."""
    return [url.strip() for url in urls.split(",") if url.strip()]


def incoming_folder_name(value: str) -> str:
    """``value`` if it may name an incoming folder in the data directory."""
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", value) or value in {
        "archive",
        "quarantine",
        "history",
    }:
        raise ValueError(
            "must be one folder name of letters, digits, '.', '-' and '_' (not archive,"
            " quarantine or history), not starting with '.'"
        )
    return value


class CommonSettings(BaseSettings):
    """What every service needs: where the data lives, the catalog and the broker."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # dcmdb's own AE title and DICOM port: the receiver answers to them, PACS move studies
    # to them, and the retriever hands on what it gets by C-GET.
    ae_title: str = "DCMDB"
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    data_dir: Path = Path("./data")
    archive_dir: Path | None = None
    # Who may see which lab (shared/keys.py); <data dir>/keys.yaml unless set.
    keys_file: Path | None = None
    # Variants of a physician's name that file into one lab folder (shared/naming.py): the
    # sorter files by them, and a lab's retrievals take what they name.
    physician_aliases: Path | None = None
    database_url: str | None = None
    # Where each lab's BIDS dataset lives (shared/bids): <bids dir>/<lab>; unset, beside the
    # lab's studies in <archive>/<lab>/bids. Its NIfTI files are hard links to the archive's
    # where both are on one filesystem, else symbolic links: never copies.
    bids_dir: Path | None = None
    # One URL, or the nodes of a RabbitMQ cluster separated by commas
    # (shared.broker_connection.connect tries them in turn and moves to the next when its node
    # goes away).
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Begins the name of each exchange and queue on the broker: installations sharing one
    # RabbitMQ virtual host never see each other's events.
    installation: str = DEFAULT_INSTALLATION
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # DICOM TLS on the receiver's port (see shared/tls.py); client certificates
    # signed by tls_client_ca are required when it is set.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Where the side port of a service without HTTP of its own listens (its port is the
    # service's `metrics_port`); 0.0.0.0 in a container, for Prometheus.
    metrics_host: str = "127.0.0.1"
    # The receiver's folder for arrivals, in the data directory. Events name files relative to
    # the data directory, so several receivers sharing one data directory each take their own.
    incoming_folder: str = "incoming"
    # Seconds without an arrival after which a series is complete (the sorter decides it;
    # retention leaves a study alone that received anything this recently).
    stable_age: float = Field(default=60.0, gt=0)
    # Whether a copy of an instance dcmdb holds replaces the filed one (shared/overwrite.py):
    # the receiver, STOW-RS and the sorter decide alike.
    overwrite: Literal["never", "better", "always"] = "better"

    @model_validator(mode="after")
    def _derive_paths(self) -> Self:
        data_dir = self.data_dir.expanduser().absolute()
        object.__setattr__(self, "data_dir", data_dir)
        archive = (self.archive_dir or data_dir / "archive").expanduser().absolute()
        object.__setattr__(self, "archive_dir", archive)
        keys = (self.keys_file or data_dir / "keys.yaml").expanduser().absolute()
        object.__setattr__(self, "keys_file", keys)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'catalog.sqlite'}")
        return self

    @model_validator(mode="after")
    def _valid_tls(self) -> Self:
        check_pair(self.tls_cert, self.tls_key, "TLS")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("DCMDB_TLS_CLIENT_CA needs DCMDB_TLS_CERT and DCMDB_TLS_KEY")
        return self

    empty_tls_is_unset = field_validator("tls_cert", "tls_key", "tls_client_ca", mode="before")(
        unset_if_empty
    )
    empty_file_is_unset = field_validator(
        "keys_file", "physician_aliases", "bids_dir", mode="before"
    )(unset_if_empty)

    @field_validator("physician_aliases")
    @classmethod
    def _aliases_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    def aliases(self) -> PhysicianAliases | None:
        from shared.naming import PhysicianAliases  # pydicom: only for who needs it

        return PhysicianAliases.load(self.physician_aliases) if self.physician_aliases else None

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        value = value.strip()
        if not value or len(value) > 16 or not value.isascii() or "\\" in value:
            raise ValueError("must be 1 to 16 ASCII characters without a backslash")
        return value

    valid_incoming_folder = field_validator("incoming_folder")(incoming_folder_name)

    @field_validator("broker_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        urls = broker_addresses(value)
        if not urls or not all(url.startswith(("amqp://", "amqps://")) for url in urls):
            raise ValueError(
                "must be one URL starting with amqp:// or amqps://, or several separated by commas"
            )
        return value

    valid_installation = field_validator("installation")(installation_name)

    @property
    def topology(self) -> Topology:
        return Topology(installation=self.installation)

    @property
    def incoming_dir(self) -> Path:
        return self.data_dir / self.incoming_folder

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def history_dir(self) -> Path:
        """Replaced copies of instances (shared/overwrite.py), evicted with their study."""
        return self.data_dir / "history"

    @property
    def keys_path(self) -> Path:
        assert self.keys_file is not None
        return self.keys_file

    @property
    def archive_root(self) -> Path:
        assert self.archive_dir is not None
        return self.archive_dir

    @property
    def catalog_url(self) -> str:
        assert self.database_url is not None
        return self.database_url


def metrics_port(service: str) -> Any:
    """The ``metrics_port`` field of a service's settings: its side port, 0 for none."""
    return Field(default=METRICS_PORTS[service], ge=0, le=65535)


def _threshold(value: object) -> object:
    return Threshold.parse(value) if isinstance(value, str) else value


def _optional_threshold(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else _threshold(value)


# "10%" or "50GB" in the environment; for an optional one, empty means unset.
ThresholdSetting = Annotated[Threshold, NoDecode, BeforeValidator(_threshold)]
OptionalThreshold = Annotated[Threshold | None, NoDecode, BeforeValidator(_optional_threshold)]


class StorageSettings(CommonSettings):
    """Free-space thresholds: where retention starts and stops evicting, and the floor below
    which the receiver refuses instances. What retention, the receiver and GET /storage read."""

    # Eviction of the oldest studies starts when the archive's free space falls below this
    # and stops once it is back at the target; unset: no eviction for space.
    retention_low_free: OptionalThreshold = None
    retention_target_free: OptionalThreshold = None  # unset: the low mark
    retention_max_age_days: float | None = Field(default=None, gt=0)  # older ones go anyway
    # Below this free space on incoming/'s filesystem the receiver answers 0xA700.
    min_free: ThresholdSetting = Threshold.parse("1GB")

    @field_validator("retention_max_age_days", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _target_above_low(self) -> Self:
        low, target = self.retention_low_free, self.retention_target_free
        if target is not None and low is None:
            raise ValueError(
                "DCMDB_RETENTION_TARGET_FREE is set but DCMDB_RETENTION_LOW_FREE is not: "
                "set the free space at which eviction starts"
            )
        if low and target and low.comparable(target) and target.amount < low.amount:
            raise ValueError(
                f"DCMDB_RETENTION_TARGET_FREE ({target}) must be at least "
                f"DCMDB_RETENTION_LOW_FREE ({low}): eviction stops at the target"
            )
        return self


class ArrivalSettings(StorageSettings):
    """What a process that takes instances into an incoming folder needs (the receiver by
    C-STORE, the API by STOW-RS): the free-space floor, and how often it sweeps the folder
    for instances not yet announced (`shared.announcing`)."""

    sweep_interval: float = Field(default=60.0, gt=0)


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Build settings, turning a validation error into one line per bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) if error["loc"] else ""
        name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        problems.append(f"{name}: {error['msg']}")
    return "; ".join(problems)
