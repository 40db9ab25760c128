"""What an SCP does with the instances it receives by C-STORE.

A :class:`StorageHandler` opens an :class:`IncomingInstance` when a
C-STORE-RQ's command arrives; the instance takes the data set's fragments as
their PDVs come in (``write``, from the transport's callback) and, once the
last one is in, ``finish`` decides the status the SCP answers with. So the
status goes out only after the data is where it belongs.

Handlers:

* :class:`DiskStorage` streams each instance into a temporary file in the
  storage folder (preamble, ``DICM``, file meta, then the data set as
  received, never decoded) and renames it into place when complete; a file
  under its final name is always whole.
* :class:`MemoryStorage` keeps pydicom datasets for the caller.
* :class:`CallbackStorage` hands each dataset (or its file) to an async
  function of yours that returns the status.
* :class:`ForwardStorage` sends each instance on to another node over one
  association that it reuses, and answers with that node's status.

Statuses (PS3.4 B.2.3): 0x0000 success; 0xA700 out of resources (the disk is
full or not writable); 0xC000 cannot understand (the data set does not
parse); a forwarded instance gets the destination's status, or 0xA700 when
the destination cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import io
import logging
import os
import re
import string
import uuid
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from adicom.association import Association
from adicom.client import open_association
from adicom.dimse import Command, CommandField, DatasetSink, SinkFactory, Status
from adicom.errors import DicomError
from adicom.fileformat import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    Inflater,
    encode_file_meta,
    scan_elements,
)
from adicom.negotiation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = [
    "CallbackStorage",
    "DiskStorage",
    "ForwardStorage",
    "IncomingInstance",
    "MemoryStorage",
    "StorageHandler",
    "StoreContext",
    "sink_factory",
]

log = logging.getLogger("adicom")


#: The default folder layout of :class:`DiskStorage`.
DEFAULT_LAYOUT = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"

# How much of the start of a data set is kept to find the layout's attributes.
_HEAD = 1 << 16
# How much is read (or inflated) at most when they are not in the head: a
# data set's top-level attributes before its pixel data fit easily, and no
# instance makes the event loop parse or inflate more than this.
_DEEP_HEAD = 4 << 20


@dataclass(frozen=True, slots=True)
class StoreContext:
    """Who sent an instance and what the C-STORE-RQ said about it."""

    calling_ae: str
    called_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    address: tuple[str, int] | None = None
    message_id: int = 0


class IncomingInstance:
    """One instance as it arrives; subclasses decide where its bytes go.

    ``write`` must not raise: a failure is kept in ``error`` and reported by
    ``finish`` as a status, so the association goes on and the next
    instance is received normally.
    """

    def __init__(self, context: StoreContext) -> None:
        self.context = context
        self.error: str | None = None
        #: Where the instance ended up, when it went to a file.
        self.path: Path | None = None

    def write(self, data: memoryview, /) -> None:
        """Take the next fragment of the data set."""
        raise NotImplementedError

    def abort(self) -> None:
        """The association ended before the last fragment: drop everything."""

    async def finish(self) -> int:
        """The last fragment is in: store the instance and return the status."""
        raise NotImplementedError


class StorageHandler:
    """Decides where received instances go (base class)."""

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance (called from the transport callback)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the handler holds (connections, files)."""


def sink_factory(association: Association, storage: StorageHandler) -> SinkFactory:
    """Route the data sets of C-STORE-RQs on ``association`` to ``storage``.

    Used by the SCP and by a C-GET's requestor, which receives its
    sub-operations on its own association.
    """

    def open_sink(context_id: int, command: Command) -> DatasetSink | None:
        if command.command_field != CommandField.C_STORE_RQ:
            return None  # identifiers of queries are small: keep them in memory
        context = association.contexts[context_id]
        # The sender: the requestor on an SCP, the called peer for the
        # sub-operations of our own C-GET.
        sender = association.called_ae if association.requestor else association.calling_ae
        return storage.open(
            StoreContext(
                calling_ae=sender,
                called_ae=association.called_ae,
                sop_class_uid=command.affected_sop_class_uid or str(context.abstract_syntax),
                sop_instance_uid=command.affected_sop_instance_uid or "",
                transfer_syntax=str(context.transfer_syntax),
                address=association.peer_address,
                message_id=command.message_id or 0,
            )
        )

    return open_sink


# --------------------------------------------------------------------------
# Memory


class _InMemory(IncomingInstance):
    def __init__(self, context: StoreContext) -> None:
        super().__init__(context)
        self._parts: list[bytes] = []

    def write(self, data: memoryview, /) -> None:
        self._parts.append(bytes(data))

    def abort(self) -> None:
        self._parts = []

    def dataset(self) -> Dataset:
        """Decode what arrived, with a file meta group built from the command."""
        ctx = self.context
        meta = encode_file_meta(
            ctx.sop_class_uid,
            ctx.sop_instance_uid,
            ctx.transfer_syntax,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            source_ae=ctx.calling_ae,
        )
        raw = meta + b"".join(self._parts)
        self._parts = []
        return pydicom.dcmread(io.BytesIO(raw))

    def encoded(self) -> bytes:
        """The data set as received."""
        return b"".join(self._parts)


class MemoryStorage(StorageHandler):
    """Keeps every received instance as a pydicom Dataset in :attr:`datasets`."""

    def __init__(self) -> None:
        #: The datasets received so far, in arrival order, with ``file_meta``.
        self.datasets: list[Dataset] = []

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance into memory."""
        return _MemoryInstance(context, self.datasets)


class _MemoryInstance(_InMemory):
    def __init__(self, context: StoreContext, into: list[Dataset]) -> None:
        super().__init__(context)
        self._into = into

    async def finish(self) -> int:
        try:
            dataset = self.dataset()
        except Exception as exc:
            log.warning("cannot decode %s: %s", self.context.sop_instance_uid, exc)
            return Status.CANNOT_UNDERSTAND
        self._into.append(dataset)
        return Status.SUCCESS


# --------------------------------------------------------------------------
# Disk


_UNSAFE = re.compile(r"[^A-Za-z0-9._^=+-]")


def _path_component(value: str) -> str:
    """Make an attribute value safe as one path component (no separators, no '..')."""
    cleaned = _UNSAFE.sub("_", value.strip()) or "unknown"
    return "_" + cleaned if cleaned in (".", "..") else cleaned


class DiskStorage(StorageHandler):
    """Streams received instances to files under ``root``.

    ``layout`` names each file from the instance's attributes (any keyword
    of the data set, plus those of the C-STORE command); values are made
    safe as path components. An instance received twice replaces the
    earlier file when ``on_duplicate`` is "overwrite" (the default: the
    rename is atomic, so a reader sees one whole file or the other); with
    "keep" the first copy stays and the new one is dropped, answered with
    success all the same. ``fsync`` makes each file durable before the
    success status is sent (slower; off by default, like DCMTK).

    ``on_stored(path, values, context)`` is called once a file is in place,
    with the values of the layout's attributes and of ``extra_keywords``
    (text, "" when absent), read from the data set as it streamed in: an
    index can take them without reading the file again.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        layout: str = DEFAULT_LAYOUT,
        *,
        on_duplicate: Literal["overwrite", "keep"] = "overwrite",
        fsync: bool = False,
        extra_keywords: Iterable[str] = (),
        on_stored: Callable[[Path, dict[str, str], StoreContext], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.layout = layout
        self.on_duplicate = on_duplicate
        self.fsync = fsync
        self.on_stored = on_stored
        layout_keywords = {name for _, name, _, _ in string.Formatter().parse(layout) if name}
        tags = {}
        for keyword in sorted(layout_keywords | set(extra_keywords) | {"SpecificCharacterSet"}):
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise ValueError(f"{keyword!r} (in the layout) is no DICOM keyword")
            tags[keyword] = tag
        self._tags = tags
        self._wanted = frozenset(tags.values())
        self._layout_keywords = tuple(sorted(layout_keywords))
        self._incoming = self.root / ".incoming"
        #: The most recent files stored (up to 1024), newest last.
        self.stored: deque[Path] = deque(maxlen=1024)
        # Folders known to exist: one mkdir per folder, not per instance.
        self._folders: set[Path] = set()
        # Temporary names: this process, this storage, a serial number.
        self._serial = 0
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def _ensure_folder(self, folder: Path) -> None:
        if folder not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            if len(self._folders) > 100_000:
                self._folders.clear()
            self._folders.add(folder)

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance into a temporary file."""
        return _DiskInstance(self, context)

    def final_path(self, values: dict[str, str]) -> Path:
        """Where an instance with these attribute values is stored."""
        # Only the layout's own keywords: an archive's on_stored hook wants
        # some twenty more values, which never become part of a path.
        safe = {key: _path_component(values.get(key) or "unknown") for key in self._layout_keywords}
        return self.root / self.layout.format(**safe)

    def _temp_file(self) -> tuple[str, int]:
        """A new empty temporary file under ``.incoming`` (raises OSError)."""
        self._ensure_folder(self._incoming)
        self._serial += 1
        path = f"{self._incoming}{os.sep}{self._prefix}-{self._serial}.part"
        # A raw descriptor: Python's buffered file costs three more system
        # calls per instance, and the data arrives in large pieces anyway.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return path, os.open(path, flags, 0o644)
        except FileNotFoundError:
            # .incoming was removed behind our back: make it again, once.
            self._folders.discard(self._incoming)
            self._ensure_folder(self._incoming)
            return path, os.open(path, flags, 0o644)


class _DiskInstance(IncomingInstance):
    def __init__(self, storage: DiskStorage, context: StoreContext) -> None:
        super().__init__(context)
        self._storage = storage
        self._head = bytearray()
        # A deflated data set's head is inflated as it arrives, never more
        # of it than the layout needs (PS3.5 A.5; a small "deflate bomb"
        # would otherwise inflate to gigabytes on the event loop).
        self._inflater = (
            Inflater(_HEAD)
            if context.transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
            else None
        )
        self._inflate_error: str | None = None
        self._size = 0  # of the data set received so far
        self._temp: str | None = None
        self._fd: int | None = None
        meta = encode_file_meta(
            context.sop_class_uid,
            context.sop_instance_uid,
            context.transfer_syntax,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            source_ae=context.calling_ae,
        )
        self._meta_length = len(meta)
        try:
            self._temp, self._fd = storage._temp_file()
            self._write(meta)
        except OSError as exc:
            self._fail(f"cannot write ({exc.strerror or exc}) to {storage.root}")

    def _write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            if not written:
                raise OSError(errno.ENOSPC, "the file system took no more bytes")
            view = view[written:]

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
            log.warning("storing %s failed: %s", self.context.sop_instance_uid, reason)
        self._discard()

    def _discard(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)
            self._temp = None

    def write(self, data: memoryview, /) -> None:
        if self._fd is None:
            return
        inflater = self._inflater
        if inflater is not None:
            if not inflater.full and self._inflate_error is None:
                try:
                    inflater.feed(data)
                except ValueError as exc:
                    self._inflate_error = str(exc)
        elif len(self._head) < _HEAD:
            self._head += data[: _HEAD - len(self._head)]
        self._size += len(data)
        try:
            self._write(data)
        except OSError as exc:
            self._fail(f"cannot write ({exc.strerror or exc}) to {self._temp}")

    def abort(self) -> None:
        self._discard()

    async def finish(self) -> int:
        storage = self._storage
        if self.error is not None or self._fd is None or self._temp is None:
            self._discard()
            return Status.OUT_OF_RESOURCES
        temp = self._temp
        try:
            if storage.fsync:
                os.fsync(self._fd)
            fd, self._fd = self._fd, None
            os.close(fd)
        except OSError as exc:
            self._fail(f"cannot write ({exc.strerror or exc}) to {temp}")
            return Status.OUT_OF_RESOURCES
        try:
            values = self._layout_values()
        except Exception as exc:  # pydicom raises many kinds on bad data
            self._fail(f"the data set does not parse: {exc}")
            return Status.CANNOT_UNDERSTAND
        final = storage.final_path(values)
        try:
            if storage.on_duplicate == "keep" and final.exists():
                log.info("%s already stored at %s; keeping the first copy", values, final)
                self._discard()
                self.path = final
                return Status.SUCCESS
            storage._ensure_folder(final.parent)
            try:
                os.replace(temp, final)
            except FileNotFoundError:
                # The folder went away behind our back: make it again, once.
                storage._folders.discard(final.parent)
                storage._ensure_folder(final.parent)
                os.replace(temp, final)
        except OSError as exc:
            self._fail(f"cannot store ({exc.strerror or exc}) at {final}")
            return Status.OUT_OF_RESOURCES
        self._temp = None
        self.path = final
        storage.stored.append(final)
        if storage.on_stored is not None:
            try:
                storage.on_stored(final, values, self.context)
            except Exception:
                # The file is stored; a failing hook (an index) must not
                # turn that into a failure status.
                log.exception("on_stored failed for %s", final)
        return Status.SUCCESS

    def _layout_values(self) -> dict[str, str]:
        """The layout's attributes, from the data set's first bytes (or pydicom)."""
        storage = self._storage
        ctx = self.context
        transfer = ctx.transfer_syntax
        found: dict[int, bytes] | None = None
        if self._inflater is not None:
            if self._inflate_error is not None:
                raise ValueError(self._inflate_error)
            head = self._inflater
            found = self._scan(head.out, implicit=False, complete=not head.full)
            if found is None:
                deeper = self._inflated_deeper()
                found = self._scan(deeper.out, implicit=False, complete=not deeper.full)
            if found is None:
                raise ValueError(
                    f"the layout's attributes are not within its first {_DEEP_HEAD} inflated bytes"
                )
        elif transfer.startswith("1.2.840.10008.1.2"):
            # Every standard transfer syntax but deflate encodes the top
            # level of the data set plainly; only the pixel data differs.
            try:
                found = self._scan(
                    self._head,
                    implicit=transfer == IMPLICIT_VR_LITTLE_ENDIAN,
                    little=transfer != EXPLICIT_VR_BIG_ENDIAN,
                    complete=self._size <= _HEAD,
                )
            except ValueError:
                # Not encoded as its transfer syntax says (implicit VR sent
                # as explicit is met in the wild): pydicom may still read it.
                found = None
        if found is None:
            found = self._read_with_pydicom()
        charset = found.get(0x00080005, b"").decode("ascii", "replace").strip(" \0")
        encodings = _encodings(charset)
        values = {}
        for keyword, tag in storage._tags.items():
            raw = found.get(tag)
            if raw is None and keyword == "SOPInstanceUID":
                values[keyword] = ctx.sop_instance_uid
            elif raw is None and keyword == "SOPClassUID":
                values[keyword] = ctx.sop_class_uid
            else:
                values[keyword] = _decode_text(raw, encodings) if raw else ""
        return values

    def _scan(
        self, head: bytes | bytearray, *, implicit: bool, little: bool = True, complete: bool
    ) -> dict[int, bytes] | None:
        return scan_elements(
            bytes(head), self._storage._wanted, implicit=implicit, little=little, complete=complete
        )

    def _data_set_head(self, size: int) -> bytes:
        """The first ``size`` bytes of the data set, read back from the temporary file."""
        assert self._temp is not None
        with open(self._temp, "rb") as fp:
            fp.seek(self._meta_length)
            return fp.read(size)

    def _inflated_deeper(self) -> Inflater:
        """Up to _DEEP_HEAD inflated bytes, from the file: for attributes past the head."""
        inflater = Inflater(_DEEP_HEAD)
        assert self._temp is not None
        with open(self._temp, "rb") as fp:
            fp.seek(self._meta_length)
            while not inflater.full and (chunk := fp.read(1 << 16)):
                inflater.feed(chunk)
        return inflater

    def _read_with_pydicom(self) -> dict[int, bytes]:
        """The layout's attributes as pydicom reads them from the data set's first bytes."""
        storage = self._storage
        ctx = self.context
        syntax = UID(ctx.transfer_syntax)
        head = io.BytesIO(self._data_set_head(_DEEP_HEAD))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = read_dataset(
                head,
                is_implicit_VR=syntax.is_implicit_VR if syntax.is_transfer_syntax else True,
                is_little_endian=syntax.is_little_endian if syntax.is_transfer_syntax else True,
                stop_when=_stop_after(max(storage._wanted)),
            )
            found = {
                tag: str(dataset[tag].value).encode() for tag in storage._wanted if tag in dataset
            }
        for warning in caught:
            log.warning("instance %s: %s", ctx.sop_instance_uid, warning.message)
        # pydicom decoded the text already; carry it as UTF-8.
        found[0x00080005] = b"ISO_IR 192"
        return found


def _stop_after(last: int) -> Callable[[BaseTag, str | None, int], bool]:
    """A pydicom ``stop_when``: stop once past tag ``last`` (tags ascend, PS3.5 7.1)."""

    def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
        return int(tag) > last

    return stop


@functools.lru_cache(maxsize=64)
def _encodings(charset: str) -> tuple[str, ...]:
    """Python codecs for a Specific Character Set value (0008,0005)."""
    return tuple(convert_encodings([c.strip() for c in charset.split("\\")] or None))


def _decode_text(raw: bytes, encodings: Sequence[str]) -> str:
    """An element's text value in its character set (PS3.5 6.1), without padding."""
    if raw.isascii() and b"\x1b" not in raw:
        # Every character set DICOM allows reads these bytes as ASCII; only
        # ISO 2022 escape sequences (ESC) switch to something else.
        return raw.decode("ascii").strip(" \0")
    try:
        text = decode_bytes(raw, encodings, {0x5E, 0x3D})
    except Exception:
        text = raw.decode("latin-1")
    return text.strip(" \0")


# --------------------------------------------------------------------------
# Callback

#: An async function given each received dataset (or path) and its context,
#: returning the status to answer (None means success).
StoreCallback = Callable[[Dataset, StoreContext], Awaitable[int | None]]
PathCallback = Callable[[Path, StoreContext], Awaitable[int | None]]


class CallbackStorage(StorageHandler):
    """Calls ``callback(dataset, context)`` for each received instance.

    With ``storage`` (a :class:`DiskStorage`), the instance is first stored
    as a file and ``callback(path, context)`` gets its path instead. The
    callback's return value is the status (None: success); an exception in
    it answers 0xC000 and is logged.
    """

    def __init__(
        self, callback: StoreCallback | PathCallback, *, storage: DiskStorage | None = None
    ) -> None:
        self.callback = callback
        self.storage = storage

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance."""
        inner = self.storage.open(context) if self.storage else None
        return _CallbackInstance(context, self.callback, inner)


class _CallbackInstance(_InMemory):
    def __init__(
        self,
        context: StoreContext,
        callback: StoreCallback | PathCallback,
        inner: IncomingInstance | None,
    ) -> None:
        super().__init__(context)
        self._callback = callback
        self._inner = inner

    def write(self, data: memoryview, /) -> None:
        if self._inner is not None:
            self._inner.write(data)
        else:
            super().write(data)

    def abort(self) -> None:
        if self._inner is not None:
            self._inner.abort()
        super().abort()

    async def finish(self) -> int:
        if self._inner is not None:
            status = await self._inner.finish()
            if status != Status.SUCCESS or self._inner.path is None:
                return status
            self.path = self._inner.path
            argument: object = self.path
        else:
            try:
                argument = self.dataset()
            except Exception as exc:
                log.warning("cannot decode %s: %s", self.context.sop_instance_uid, exc)
                return Status.CANNOT_UNDERSTAND
        try:
            result = await self._callback(argument, self.context)  # type: ignore[arg-type]
        except Exception:
            log.exception("the storage callback failed for %s", self.context.sop_instance_uid)
            return Status.CANNOT_UNDERSTAND
        return Status.SUCCESS if result is None else result


# --------------------------------------------------------------------------
# Forward


class ForwardStorage(StorageHandler):
    """Sends each received instance on to ``host:port`` and answers with its status.

    One association to the destination is opened when first needed and
    reused; when an instance needs a presentation context it lacks, a new
    association proposing everything seen so far replaces it. Instances
    forwarded from several incoming associations take turns on it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        called_ae: str = "ANY-SCP",
        calling_ae: str = "ADICOM",
        timeout: float = 30.0,
    ) -> None:
        self.host, self.port = host, port
        self.called_ae, self.calling_ae = called_ae, calling_ae
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._association: Association | None = None
        self._wanted: dict[tuple[str, str], None] = {}

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance into memory, to forward when complete."""
        return _ForwardInstance(context, self)

    async def forward(self, context: StoreContext, encoded: bytes) -> int:
        """Send one encoded instance on; return the destination's status."""
        key = (context.sop_class_uid, context.transfer_syntax)
        async with self._lock:
            association = self._association
            if association is not None and (
                not association.is_established or _context_id(association, key) is None
            ):
                await _close(association)
                association = self._association = None
            if association is None:
                self._wanted[key] = None
                try:
                    association = await open_association(
                        self.host,
                        self.port,
                        calling_ae=self.calling_ae,
                        called_ae=self.called_ae,
                        contexts=[(sop, [ts]) for sop, ts in list(self._wanted)[-128:]],
                        timeout=self.timeout,
                    )
                except DicomError as exc:
                    log.warning("cannot forward to %s:%d: %s", self.host, self.port, exc)
                    return Status.OUT_OF_RESOURCES
                self._association = association
            context_id = _context_id(association, key)
            if context_id is None:
                log.warning("%s:%d does not accept %s in %s", self.host, self.port, *key)
                return Status.OUT_OF_RESOURCES
            try:
                response = await association.send_c_store(
                    context_id, context.sop_class_uid, context.sop_instance_uid, encoded
                )
            except DicomError as exc:
                log.warning("forwarding %s failed: %s", context.sop_instance_uid, exc)
                self._association = None
                return Status.OUT_OF_RESOURCES
            return response.status if response.status is not None else Status.OUT_OF_RESOURCES

    async def aclose(self) -> None:
        """Release the association to the destination."""
        async with self._lock:
            if self._association is not None:
                await _close(self._association)
                self._association = None


def _context_id(association: Association, key: tuple[str, str]) -> int | None:
    for context in association.contexts.values():
        if context.accepted and (context.abstract_syntax, context.transfer_syntax) == key:
            return context.context_id
    return None


async def _close(association: Association) -> None:
    try:
        await association.release()
    except DicomError:
        association.abort()


class _ForwardInstance(_InMemory):
    def __init__(self, context: StoreContext, forwarder: ForwardStorage) -> None:
        super().__init__(context)
        self._forwarder = forwarder

    async def finish(self) -> int:
        return await self._forwarder.forward(self.context, self.encoded())
