"""The C-STORE sub-operations of a C-GET: archived instances sent back to the requestor on
its own association, on the storage contexts where it took the SCP role."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import cast

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from services.receiver.outgoing import Outgoing, what_to_send
from services.receiver.sending import AssociationLost
from services.receiver.transport import StoreAnswer


class SendingBack:
    """C-STOREs to the requestor of a C-GET, on its own association, where it took the SCP
    role: through pynetdicom's DIMSE provider, since the association's DUL thread owns the
    socket, from the thread serving the C-GET (which takes the answers off the queue)."""

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self.ae_title = str(assoc.requestor.ae_title).strip()
        self._accepted = {
            (str(context.abstract_syntax), str(context.transfer_syntax[0])): cast(
                int, context.context_id
            )
            for context in assoc.accepted_contexts
            if context.as_scu  # dcmdb may send on it: the requestor took the SCP role
        }

    def send(
        self, instance: Outgoing, message_id: int, meanwhile: Callable[[], None] = lambda: None
    ) -> StoreAnswer:
        """C-STORE one instance and wait for its answer, as `StoreAssociation.send`."""
        chosen = what_to_send(instance, self._accepted, self.ae_title, in_memory=True)
        if isinstance(chosen, StoreAnswer):
            return chosen
        context_id, data = chosen
        request = C_STORE()
        request.MessageID = message_id
        request.AffectedSOPClassUID = instance.sop_class_uid
        request.AffectedSOPInstanceUID = instance.sop_instance_uid
        request.Priority = 0  # medium
        request.DataSet = BytesIO(cast(bytes, data))
        dimse = self._assoc.dimse
        dimse.send_msg(request, context_id)
        meanwhile()
        _, answer = dimse.get_msg(block=True)
        if not isinstance(answer, C_STORE) or answer.MessageIDBeingRespondedTo != message_id:
            self._assoc.abort()
            raise AssociationLost(f"{self.ae_title} did not answer the C-STORE")
        return StoreAnswer(message_id, cast(int, answer.Status), answer.ErrorComment)
