"""adicom: a DICOM network stack for Python, native on asyncio.

The PS3.8 upper layer (PDU codec and state machine, sans-I/O), DIMSE services
on asyncio, and no threads anywhere.
"""

from adicom.association import Association, Message
from adicom.client import connect, open_association
from adicom.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    ConnectionClosed,
    DicomError,
    DicomTimeout,
    DimseError,
    PeerUnreachable,
    ProtocolError,
)
from adicom.server import Server
from adicom.storage import (
    CallbackStorage,
    DiskStorage,
    ForwardStorage,
    MemoryStorage,
    StorageHandler,
    StoreContext,
)
from adicom.storescu import StoreResult, store

__version__ = "0.1.0"

__all__ = [
    "Association",
    "CallbackStorage",
    "DiskStorage",
    "ForwardStorage",
    "MemoryStorage",
    "StorageHandler",
    "StoreContext",
    "StoreResult",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "ConnectionClosed",
    "DicomError",
    "DicomTimeout",
    "DimseError",
    "Message",
    "PeerUnreachable",
    "ProtocolError",
    "Server",
    "__version__",
    "connect",
    "open_association",
    "store",
]
