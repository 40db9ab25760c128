"""adicom: a DICOM network stack for Python, native on asyncio.

The PS3.8 upper layer (PDU codec and state machine, sans-I/O), DIMSE services
on asyncio, and no threads anywhere.
"""

from adicom.association import Association, Message
from adicom.client import connect, open_association
from adicom.dicomclient import DicomClient
from adicom.diskstorage import DiskStorage
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
from adicom.models import (
    DicomNode,
    ImageQuery,
    ImageResult,
    PatientQuery,
    PatientResult,
    RetrieveResult,
    SeriesQuery,
    SeriesResult,
    StudyQuery,
    StudyResult,
    WorklistQuery,
    WorklistResult,
)
from adicom.qrscp import QRContext, QueryFailed
from adicom.qrscu import RetrieveCancelled, RetrieveProgress
from adicom.server import Server
from adicom.settings import DicomSettings
from adicom.storage import (
    CallbackStorage,
    ForwardStorage,
    MemoryStorage,
    StorageHandler,
    StoreContext,
)
from adicom.storescu import StoreResult, store, store_instance
from adicom.version import __version__

__all__ = [
    "Association",
    "CallbackStorage",
    "DiskStorage",
    "ForwardStorage",
    "ImageQuery",
    "ImageResult",
    "MemoryStorage",
    "StorageHandler",
    "StoreContext",
    "StoreResult",
    "StudyQuery",
    "StudyResult",
    "WorklistQuery",
    "WorklistResult",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "ConnectionClosed",
    "DicomClient",
    "DicomNode",
    "DicomSettings",
    "DicomError",
    "DicomTimeout",
    "DimseError",
    "Message",
    "PatientQuery",
    "PatientResult",
    "PeerUnreachable",
    "ProtocolError",
    "QRContext",
    "QueryFailed",
    "RetrieveCancelled",
    "RetrieveProgress",
    "RetrieveResult",
    "SeriesQuery",
    "SeriesResult",
    "Server",
    "__version__",
    "connect",
    "open_association",
    "store",
    "store_instance",
]
