"""adicom: a DICOM network stack for Python, native on asyncio.

The PS3.8 upper layer (PDU codec and state machine, sans-I/O), DIMSE services
on asyncio, and no threads anywhere.
"""

from typing import TYPE_CHECKING

from adicom.version import __version__

if TYPE_CHECKING:
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

#: Where each public name lives; imported on first use (PEP 562), so that
#: ``import adicom.pdu`` or ``adicom serve`` loads only what it needs (the
#: client, pydantic's models and settings are large).
_LAZY: dict[str, str] = {
    "Association": "adicom.association",
    "Message": "adicom.association",
    "connect": "adicom.client",
    "open_association": "adicom.client",
    "DicomClient": "adicom.dicomclient",
    "DiskStorage": "adicom.diskstorage",
    "AssociationAborted": "adicom.errors",
    "AssociationError": "adicom.errors",
    "AssociationRejected": "adicom.errors",
    "ConnectionClosed": "adicom.errors",
    "DicomError": "adicom.errors",
    "DicomTimeout": "adicom.errors",
    "DimseError": "adicom.errors",
    "PeerUnreachable": "adicom.errors",
    "ProtocolError": "adicom.errors",
    "DicomNode": "adicom.models",
    "ImageQuery": "adicom.models",
    "ImageResult": "adicom.models",
    "PatientQuery": "adicom.models",
    "PatientResult": "adicom.models",
    "RetrieveResult": "adicom.models",
    "SeriesQuery": "adicom.models",
    "SeriesResult": "adicom.models",
    "StudyQuery": "adicom.models",
    "StudyResult": "adicom.models",
    "WorklistQuery": "adicom.models",
    "WorklistResult": "adicom.models",
    "QRContext": "adicom.qrscp",
    "QueryFailed": "adicom.qrscp",
    "RetrieveCancelled": "adicom.qrscu",
    "RetrieveProgress": "adicom.qrscu",
    "Server": "adicom.server",
    "DicomSettings": "adicom.settings",
    "CallbackStorage": "adicom.storage",
    "ForwardStorage": "adicom.storage",
    "MemoryStorage": "adicom.storage",
    "StorageHandler": "adicom.storage",
    "StoreContext": "adicom.storage",
    "StoreResult": "adicom.storescu",
    "store": "adicom.storescu",
    "store_instance": "adicom.storescu",
}


if not TYPE_CHECKING:
    # At run time only: mypy reads the imports above, and a module
    # __getattr__ would make it accept any name as ``adicom.X``.

    def __getattr__(name: str) -> object:
        """Import a public name's module when the name is first used (PEP 562)."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'adicom' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # the next use is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
