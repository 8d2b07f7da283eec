"""``dcmdb receiver``: the DICOM storage SCP that lands instances in ``incoming/``, and the
C-FIND SCP where the labs' desktops find their studies in the catalog."""

from __future__ import annotations

import logging
import ssl
import sys

import pydicom.config
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.receiver import metrics
from services.receiver.admission import Admission
from services.receiver.announcer import Announcer
from services.receiver.desktops import Desktops
from services.receiver.handlers import Receiver
from services.receiver.levels import Model
from services.receiver.query import FindService
from services.receiver.retrieve import RETRIEVE_MODELS, Retrieval, RetrieveSettings
from services.receiver.search import CatalogSearch
from services.receiver.settings import ReceiverSettings
from services.receiver.transport import start_storage_server
from shared.audit_trail import AuditTrail
from shared.catalog.database import create_catalog_engine, session_factory
from shared.headers import STORED_TRANSFER_SYNTAXES
from shared.incoming import IncomingStore
from shared.keys import KeysFile
from shared.monitoring import OK, SidePort
from shared.service import Stop, serve
from shared.tls import server_context

log = logging.getLogger("dcmdb.receiver")

# Each association runs two threads that hand every PDU to each other; the
# default 5 ms before a waiting thread gets the interpreter adds latency.
SWITCH_INTERVAL = 0.0005


def build_ae(settings: ReceiverSettings) -> AE:
    # pydicom checks every UID pynetdicom copies into a response against a
    # regular expression; the receiver reads data sets with its own walker.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        # Both roles as the requestor proposes them: a C-GET requestor takes the SCP role.
        ae.add_supported_context(
            context.abstract_syntax, STORED_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
        )
    for model in Model:  # the syntaxes the C-FIND fast path writes (transport/find_path)
        ae.add_supported_context(model.value, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for model in RETRIEVE_MODELS:
        ae.add_supported_context(model)
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.network_timeout
    ae.maximum_associations = settings.max_associations
    return ae


def _tls(settings: ReceiverSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return server_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def run(settings: ReceiverSettings, side: SidePort, stop: Stop) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)
    settings.warn_if_open()
    listener = side.dependency("dicom")
    broker = side.dependency("broker")
    store = IncomingStore(settings.incoming_dir, settings.quarantine_dir)
    metrics.watch_disks({"data": settings.data_dir, "archive": settings.archive_root})
    announcer = Announcer(settings)
    announcer.start()
    # Instances are accepted while RabbitMQ is away (the sweep announces them later), but
    # nothing moves on from incoming/ until it is back: not ready.
    broker.watch(lambda: OK if announcer.connected() else "unreachable: events wait in incoming/")
    side.before_scrape(announcer.export_counts)
    desktops = Desktops(KeysFile(settings.keys_path, tolerant=True))
    receiver = Receiver(settings, store, announcer, desktops)
    # Read only, never migrated here (the sorter does), nor waited for: C-STORE goes on
    # while the catalog is away, and a C-FIND or a retrieve then fails with the reason.
    catalog = session_factory(create_catalog_engine(settings.catalog_url))
    finder = FindService(CatalogSearch(catalog, settings.archive_root, settings.ae_title), desktops)
    # The desktops' retrieves go into the audit trail, written behind (the API prunes it).
    audit = AuditTrail(
        session_factory(create_catalog_engine(settings.catalog_url, writer=True)), None
    ).start()
    retrieval = Retrieval(RetrieveSettings.of(settings), desktops, catalog, audit)
    ae = build_ae(settings)
    start_storage_server(
        ae,
        (settings.dicom_host, settings.dicom_port),
        [*receiver.handlers(), *finder.handlers()],
        maximum_pdu_size=settings.maximum_pdu_size,
        admission=Admission(settings.max_associations, settings.max_associations_per_host),
        ssl_context=_tls(settings),
        services=retrieval.services(),
    )
    listener.watch(lambda: OK)
    log.info(
        "receiver %s listening on %s:%d%s",
        settings.ae_title,
        settings.dicom_host,
        settings.dicom_port,
        " (TLS)" if settings.tls_cert else "",
    )
    stop.running()
    try:
        stop.wait()
    finally:
        log.info("stopping: no new associations; finishing the open ones")
        ae.shutdown()
        announcer.stop()
        audit.close()  # writes what it holds


def main() -> None:
    serve("receiver", ReceiverSettings, run)
