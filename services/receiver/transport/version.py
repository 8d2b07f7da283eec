"""The one pynetdicom release whose private internals this package overrides.

Its classes subclass pynetdicom's DUL, DIMSE provider, association and request
handler and reimplement private methods of theirs; another release may rename
or reorder what they rely on and fail in ways no test of ours would show. So
the receiver refuses to start on any other version rather than guess.
"""

from __future__ import annotations

from shared.errors import ConfigurationError

#: The pynetdicom release the overrides were written and tested against; pinned
#: in pyproject.toml. Changing either means re-reading every override's note.
PYNETDICOM_VERSION = "3.0.4"


def check_pynetdicom_version(installed: str) -> None:
    """Raise ``ConfigurationError`` unless `installed` is ``PYNETDICOM_VERSION``."""
    if installed != PYNETDICOM_VERSION:
        raise ConfigurationError(
            f"pynetdicom {installed} is installed, but the receiver's transport "
            f"(services/receiver/transport) overrides internals of pynetdicom "
            f"{PYNETDICOM_VERSION} only: install pynetdicom=={PYNETDICOM_VERSION} "
            "(uv sync --locked), or port the overrides to the new version and update "
            "PYNETDICOM_VERSION and the pin in pyproject.toml together"
        )
