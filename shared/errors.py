"""The one exception vocabulary of dcmdb.

A failure is either *transient* (the same work may succeed later: a database
or disk that is briefly unavailable) or *permanent* (the input itself is bad
and retrying cannot help). The broker layer maps them to requeue and
dead-letter; the DICOM edge maps them to status codes.
"""


class DcmdbError(Exception):
    """Base of every error dcmdb raises on purpose."""


class TransientError(DcmdbError):
    """Retry later: a dependency is unavailable or busy."""


class PermanentError(DcmdbError):
    """Do not retry: the input cannot be processed as it is."""


class UnreadableObject(PermanentError):
    """A DICOM object whose header or identifying UIDs cannot be read."""


class MissingIdentifier(UnreadableObject):
    """A DICOM object that parses but lacks a UID dcmdb files it by."""
