"""The one exception vocabulary of dcmdb.

A failure is either *transient* (the same work may succeed later: a database
or disk that is briefly unavailable) or *permanent* (the input itself is bad
and retrying cannot help). The broker layer maps them to requeue and
dead-letter; the DICOM edge maps them to status codes. A service that cannot
start as configured raises neither: no work is involved to retry or reject.
"""


class DcmdbError(Exception):
    """Base of every error dcmdb raises on purpose."""


class ConfigurationError(DcmdbError):
    """A setting has a value the service cannot run with."""


class TransientError(DcmdbError):
    """Retry later: a dependency is unavailable or busy."""


class PacsError(TransientError):
    """The PACS could not be asked: unreachable, rejected, aborted or silent."""


class StorageFailed(TransientError, OSError):
    """A received instance could not be made durable (disk full, I/O error).

    Still an `OSError` carrying the errno, as the receiver's callers expect; the sender
    is answered "out of resources" and may send it again later.
    """


class PermanentError(DcmdbError):
    """Do not retry: the input cannot be processed as it is."""


class UnreadableObject(PermanentError):
    """A DICOM object whose header or identifying UIDs cannot be read."""


class MissingIdentifier(UnreadableObject):
    """A DICOM object that parses but lacks a UID dcmdb files it by."""
