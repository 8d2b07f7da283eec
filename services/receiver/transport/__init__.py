"""Event-driven transport for pynetdicom's storage SCP: a contained fork of its internals.

pynetdicom 3.0.4 polls: its DUL reactor sleeps 1 ms when idle, the acceptor's
reactor 1 ms per loop; it reads PDUs in 4 KiB pieces and round-trips every
command set through pydicom (~0.7 ms per C-STORE). C-STORE being strictly
request/response, that caps a receiver near 300 instances/s. We keep its state
machine, ACSE, service classes and event handlers and replace only, one module
per layer:

- ``reactor``: the association and its acceptor wait on an Event, not a sleep
  (``EventDrivenAssociation``, ``StorageRequestHandler``, ``start_storage_server``);
- ``dul``: the DUL waits in ``select()`` on the socket and a wake-up socketpair
  (``EventDrivenDUL``);
- ``pdu_socket``: whole PDUs read with ``recv_into`` into one preallocated buffer,
  PDUs longer than negotiated refused before they are read (``PDUSocket``);
- ``store_path``: C-STORE requests and responses without pydicom (``FastStoreDIMSE``);
- ``find_path``: C-FIND responses written by hand, many to a send (``serve_find``): a
  study-level C-FIND answers thousands of matches, each over 1 ms through pynetdicom.

C-STORE requests take the fast path in; C-FIND responses take it out (the request is
decoded by pynetdicom, its handler runs in the association thread as upstream's would).
Every other DIMSE message (C-ECHO, C-MOVE, C-GET, C-CANCEL) is replayed unchanged to
pynetdicom's own DIMSE provider and served by its service classes: adding a service
means binding its handler in ``evt_handlers``, nothing here.

The overrides rely on pynetdicom 3.0.4 internals: the DUL's queues,
``_read_pdu_data``, ``_is_transport_event``, ``_decode_pdu``;
``Association._run_reactor``, ``_reactor_checkpoint``, ``_is_paused``, ``_kill``,
``_serve_request``, ``_sent_release``, ``_accepted_cx``; ``DIMSEServiceProvider``
``message``/``msg_queue``/``cancel_req``; ``evt._c_find_handler``, the DUL's ``_idle_timer``;
``RequestHandler._create_association``; ``PresentationContext._transfer_syntax``;
``AE._servers``. Hence ``version.PYNETDICOM_VERSION``: the receiver refuses to
start on any other release.
"""

from __future__ import annotations

import pynetdicom

from services.receiver.transport.version import PYNETDICOM_VERSION, check_pynetdicom_version

try:
    from services.receiver.transport.pdu_socket import DEFAULT_MAXIMUM_PDU_SIZE
    from services.receiver.transport.reactor import start_storage_server
    from services.receiver.transport.store_path import (
        StoreAnswer,
        decode_c_store_rq,
        decode_c_store_rsp,
        encode_c_store_rq,
        encode_c_store_rsp,
        encode_retrieve_rsp,
    )
except ImportError:
    # Another pynetdicom may lack the internals imported above: say so, not which name.
    check_pynetdicom_version(pynetdicom.__version__)
    raise

__all__ = [
    "DEFAULT_MAXIMUM_PDU_SIZE",
    "PYNETDICOM_VERSION",
    "StoreAnswer",
    "check_pynetdicom_version",
    "decode_c_store_rq",
    "decode_c_store_rsp",
    "encode_c_store_rq",
    "encode_c_store_rsp",
    "encode_retrieve_rsp",
    "start_storage_server",
]
