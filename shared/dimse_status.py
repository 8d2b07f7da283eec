"""The DIMSE status codes dcmdb sends or reads (PS3.7 Annex C, PS3.4 B.2.3 and C.4).

One table, so a code is spelt once: the receiver answers C-STORE with them, the
retriever reads the PACS's answers to C-FIND, C-MOVE and C-GET, the C-GET
forwarder passes the receiver's answer on, and STOW-RS gives them as the Failure
Reason (0008,1197) of an instance it did not store (PS3.18 Table I.2-2).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

SUCCESS = 0x0000  # the operation completed
WARNING = 0xB000  # C-MOVE/C-GET: sub-operations complete, one or more failed or warned
CANCEL = 0xFE00  # the operation ended because of a C-CANCEL
PENDING = 0xFF00  # C-FIND/C-MOVE/C-GET: matches or sub-operations are continuing
# C-STORE warning "elements discarded" (PS3.4 B.2.3), and STOW-RS's Warning Reason: dcmdb
# holds a copy of this SOP instance that the one sent does not replace (DCMDB_OVERWRITE); the
# copy sent is kept in quarantine/, the filed one stays.
ELEMENTS_DISCARDED = 0xB006
PENDING_WITH_WARNING = 0xFF01  # C-FIND: matching continues, optional keys were not supported

SOP_CLASS_NOT_SUPPORTED = 0x0122  # refused: the peer does not support the SOP class
NOT_AUTHORIZED = 0x0124  # refused: the caller is not authorized
OUT_OF_RESOURCES = 0xA700  # C-STORE refused: out of resources (dcmdb: disk too full)
OUT_OF_RESOURCES_MATCHES = 0xA701  # refused: out of resources to count the matches
OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702  # refused: out of resources for the sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801  # C-MOVE refused: the destination AE title is unknown
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # the identifier does not fit the SOP class
# Unable to process (first code of C000-CFFF): a C-FIND, C-MOVE or C-GET that cannot be served
# now (dcmdb: the catalog cannot be read; a move destination cannot be reached)
UNABLE_TO_PROCESS = 0xC000
CANNOT_UNDERSTAND = 0xC210  # the data set cannot be decoded (first code of C000-CFFF)
# Cannot understand, the range's next code: pynetdicom answers it when a C-STORE
# handler raises, dcmdb's receiver when an identifying UID is missing or invalid.
CANNOT_UNDERSTAND_OTHER = 0xC211
# STOW-RS: an instance of another study than the request's path names (PS3.18 10.5.3: "Study
# Instance UID mismatch"); the code dcm4chee gives it, in the "cannot understand" range.
STUDY_UID_MISMATCH = 0xC409

_PENDING = frozenset({PENDING, PENDING_WITH_WARNING})


def is_pending(status: int) -> bool:
    """More answers follow this one (a match, or progress of the sub-operations)."""
    return status in _PENDING


def is_warning(status: int) -> bool:
    """A C-STORE warning (0001, Bxxx): the instance was stored, with a remark."""
    return status == 0x0001 or 0xB000 <= status <= 0xBFFF


def is_cannot_understand(status: int) -> bool:
    """A failure in the "cannot understand" range C000-CFFF, whose codes vary by peer."""
    return 0xC000 <= status <= 0xCFFF


def with_comment(status: int, comment: str) -> Dataset:
    """A failure or warning status with its Error Comment (0000,0902): why, in at most 64
    characters."""
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = error_comment(comment)
    return answer


def error_comment(text: str) -> str:
    """An Error Comment (0000,0902), an LO: one line of at most 64 characters, without the
    backslash that would split it into values."""
    return " ".join(text.replace("\\", "/").split())[:64]
