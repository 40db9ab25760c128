"""DIMSE (PS3.7): command sets, statuses, message framing and the DIMSE connection.

Nothing in this package does I/O:

* :mod:`adicom.dimse.commands`: the command set codec (group 0000, PS3.7 E.1);
* :mod:`adicom.dimse.status`: status codes and their classes (PS3.7 Annex C);
* :mod:`adicom.dimse.framing`: messages split into PDVs and reassembled
  (PS3.8 Annex E);
* :mod:`adicom.dimse.connection`: :class:`DimseConnection`, which turns upper
  layer events into whole messages, routes responses by Message ID and keeps
  the asynchronous operations window.
"""

from adicom.dimse.commands import (
    DATASET_PRESENT,
    NO_DATASET,
    Command,
    CommandField,
    CountsTemplate,
    Priority,
    RequestTemplate,
    ResponseTemplate,
    c_store_rq,
    is_n,
    malformed,
)
from adicom.dimse.connection import (
    DatasetSink,
    DimseConnection,
    DimseEvent,
    Limits,
    Message,
    OutgoingMessage,
    RequestReceived,
    ResponseReceived,
    SinkFactory,
)
from adicom.dimse.framing import (
    MAX_SEND_PDU,
    CommandReceived,
    DataReceived,
    DatasetReader,
    MessageAssembler,
    fragment_message,
)
from adicom.dimse.status import Status, StatusCategory, describe_status, status_category

__all__ = [
    "DATASET_PRESENT",
    "MAX_SEND_PDU",
    "NO_DATASET",
    "Command",
    "CommandField",
    "CommandReceived",
    "CountsTemplate",
    "DataReceived",
    "DatasetReader",
    "DatasetSink",
    "DimseConnection",
    "DimseEvent",
    "Limits",
    "Message",
    "MessageAssembler",
    "OutgoingMessage",
    "Priority",
    "RequestReceived",
    "RequestTemplate",
    "ResponseTemplate",
    "ResponseReceived",
    "SinkFactory",
    "Status",
    "StatusCategory",
    "c_store_rq",
    "is_n",
    "describe_status",
    "fragment_message",
    "malformed",
    "status_category",
]
