"""What C-STORE as SCU sends, made ready: files and datasets as instances.

A source (a path, a folder searched recursively, a pydicom Dataset) becomes
a :class:`PreparedInstance`: its SOP class and instance, its transfer
syntax, where its data set starts, and, for a small file about to be sent,
its bytes read once. What cannot be sent says why (:class:`StoreResult`'s
``skipped``), so a folder holding a README or a DICOMDIR sends the rest.
:mod:`adicom.storescu` sends what is prepared here.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.dataset import Dataset

from adicom.dimse import StatusCategory, status_category
from adicom.elements import scan_elements
from adicom.fileformat import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    read_file_meta,
)

__all__ = [
    "CONVERT_LIMIT",
    "PRELOAD_LIMIT",
    "PreparedInstance",
    "Skipped",
    "StoreResult",
    "context_keys",
    "expand_sources",
    "iter_files",
    "prepare",
    "prepare_source",
    "sop_instance_of",
    "storage_contexts",
]

log = logging.getLogger("adicom")

#: Why a source was not sent at all (see :attr:`StoreResult.skipped`).
Skipped = Literal["not-dicom", "unreadable"]

#: File names that say "DICOM": such a file that cannot be read is
#: unreadable, not merely some other kind of file.
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
_DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (PS3.10 7.2)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What happened to one instance sent by C-STORE.

    ``source`` is the file's path, or the SOP Instance UID of a dataset.
    ``status`` is the C-STORE-RSP status, None when nothing was sent or no
    response came (``error`` says why). ``skipped`` is set when the source
    was never offered to the peer because it is no instance to send:
    ``"not-dicom"`` for a file that is not DICOM at all (a README, a JSON
    file) or a DICOMDIR, ``"unreadable"`` for one that looks like DICOM (a
    ``DICM`` marker, a ``.dcm`` name) but cannot be read as an instance.
    """

    source: str
    sop_class_uid: str
    sop_instance_uid: str
    status: int | None
    error: str | None = None
    skipped: Skipped | None = None

    @property
    def ok(self) -> bool:
        """True for success and warning statuses."""
        return self.status is not None and status_category(self.status) in (
            StatusCategory.SUCCESS,
            StatusCategory.WARNING,
        )


@dataclass(slots=True)
class PreparedInstance:
    """An instance ready to send: where its data set is and how it is encoded.

    Made from a path or a Dataset when it is about to be sent (its file
    meta read, a small file read whole); :func:`send_instances` takes these
    or the paths and datasets themselves, and reports each with its result.
    ``error`` and ``skipped`` say why it cannot be sent at all.
    """

    source: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    transfer_syntax: str = ""
    path: str | None = None
    offset: int = 0
    dataset: Dataset | None = None
    error: str | None = None
    #: The data set's bytes, when the (small) file was read whole up front.
    data: memoryview | None = None
    #: Set with ``error`` when the source is no instance to send.
    skipped: Skipped | None = None

    def failed(self, reason: str, status: int | None = None) -> StoreResult:
        """Its result when it failed (or was never sent) for ``reason``."""
        return StoreResult(
            self.source, self.sop_class_uid, self.sop_instance_uid, status, reason, self.skipped
        )

    def skip(self, kind: Skipped, reason: str) -> PreparedInstance:
        """Mark it as no instance to send (a README, an unreadable file), and why."""
        self.error, self.skipped = reason, kind
        return self


#: Files up to this size are read whole while the peer works on the previous
#: instance; larger ones are read as they are sent, never held whole.
PRELOAD_LIMIT = 1 << 20
#: The largest file read and converted whole (decoded and encoded by pydicom,
#: on the event loop: ~40 ms); larger ones are converted only as ConvertedFile
#: streams them.
CONVERT_LIMIT = 16 << 20


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """The files named, with folders searched recursively (sorted, hidden ones skipped)."""
    for item in paths:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield path


def _read_all(fd: int, size: int) -> bytes:
    """The file's first ``size`` bytes (fewer if it is shorter now)."""
    parts: list[bytes] = []
    got = 0
    while got < size and (more := os.read(fd, size - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)  # one part (the usual case) is returned as it is


def _text(raw: bytes | None) -> str:
    return raw.decode("ascii", "replace").strip(" \0") if raw else ""


def prepare_source(
    source: str | os.PathLike[str] | Dataset, preload: bool = False
) -> PreparedInstance:
    """What is to be sent: SOP class and instance, transfer syntax, where the data set is.

    With ``preload``, a file of up to PRELOAD_LIMIT bytes is read whole, once
    (an instance about to be sent); otherwise only its meta information.
    """
    if isinstance(source, Dataset):
        return _prepare_dataset(source, None)
    path = os.fspath(source)
    instance = PreparedInstance(path, path=path)
    try:
        if preload:
            # Raw reads: an archive sending 1000 small files pays for every
            # layer of Python's file objects a thousand times.
            fd = os.open(path, os.O_RDONLY)  # non-inheritable, as every fd Python opens
            try:
                size = os.fstat(fd).st_size
                whole = _read_all(fd, size) if size <= PRELOAD_LIMIT else None
            finally:
                os.close(fd)
        else:
            whole = None
        if whole is not None:
            meta, instance.offset = read_file_meta(io.BytesIO(whole))
            instance.data = memoryview(whole)[instance.offset :]
            head = bytes(instance.data[:_UID_HEAD])
        else:
            with open(path, "rb") as fp:
                meta, instance.offset = read_file_meta(fp)
                fp.seek(instance.offset)
                head = fp.read(_UID_HEAD)
    except OSError as exc:
        return instance.skip("unreadable", f"cannot read: {exc.strerror or exc}")
    except (ValueError, struct.error) as exc:
        if _has_dicm_marker(path):
            return instance.skip(
                "unreadable", f"a DICOM file whose file meta information is malformed ({exc})"
            )
        # Not a Part 10 file; pydicom may still make a data set of it, if it
        # is small enough to read whole without holding the event loop.
        try:
            if os.path.getsize(path) > CONVERT_LIMIT:
                raise ValueError("too large to read whole")
            dataset = pydicom.dcmread(path, force=True)
            if "SOPClassUID" not in dataset:
                raise ValueError("no SOP Class UID")
        except Exception:
            if Path(path).suffix.lower() in _DICOM_SUFFIXES:
                return instance.skip(
                    "unreadable",
                    "not a DICOM file, although named like one (no DICM marker, "
                    "no data set with a SOP Class UID)",
                )
            return instance.skip("not-dicom", "not a DICOM file")
        return _prepare_dataset(dataset, str(path))
    instance.sop_class_uid = _text(meta.get(0x00020002))
    instance.sop_instance_uid = _text(meta.get(0x00020003))
    instance.transfer_syntax = _text(meta.get(0x00020010))
    if instance.sop_class_uid == _DICOMDIR:
        return instance.skip("not-dicom", "a DICOMDIR (a media directory, not an instance)")
    _take_data_set_uids(instance, head)
    if not (instance.sop_class_uid and instance.sop_instance_uid and instance.transfer_syntax):
        instance.skip(
            "unreadable",
            "the file meta information lacks the SOP class, instance or transfer syntax",
        )
    return instance


def _has_dicm_marker(path: str) -> bool:
    try:
        with open(path, "rb") as fp:
            return fp.read(132)[128:] == b"DICM"
    except OSError:
        return False


#: How much of a file's data set is read to find its SOP Class and Instance UIDs.
_UID_HEAD = 1 << 16
_UID_TAGS = frozenset({0x00080016, 0x00080018})


def _take_data_set_uids(instance: PreparedInstance, head: bytes) -> None:
    """Name the instance by its data set's SOP Class and Instance UIDs, not its file meta's.

    The C-STORE-RQ must name what the data set says (an SCP refuses a
    mismatch, PS3.4 B.2.3), and files are met whose meta information
    disagrees with their data set (pydicom's rtplan.dcm is one).
    """
    syntax = instance.transfer_syntax
    if not syntax.startswith("1.2.840.10008.1.2") or syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return
    try:
        found = scan_elements(
            head,
            _UID_TAGS,
            implicit=syntax == IMPLICIT_VR_LITTLE_ENDIAN,
            little=syntax != EXPLICIT_VR_BIG_ENDIAN,
            complete=len(head) < _UID_HEAD,
        )
    except ValueError:
        return  # not encoded as its syntax says: the file meta's word stands
    if not found:
        return
    for tag, name in ((0x00080016, "sop_class_uid"), (0x00080018, "sop_instance_uid")):
        value = _text(found.get(tag))
        if value and value != getattr(instance, name):
            if getattr(instance, name):
                log.warning(
                    "%s: the file meta's %s differs from the data set's; sending the data set's",
                    instance.source,
                    name.replace("_", " "),
                )
            setattr(instance, name, value)


def _prepare_dataset(dataset: Dataset, label: str | None) -> PreparedInstance:
    sop_instance = str(dataset.get("SOPInstanceUID", ""))
    instance = PreparedInstance(label or sop_instance, dataset=dataset)
    instance.sop_class_uid = str(dataset.get("SOPClassUID", ""))
    instance.sop_instance_uid = sop_instance
    meta = getattr(dataset, "file_meta", None)
    transfer = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    instance.transfer_syntax = transfer or EXPLICIT_VR_LITTLE_ENDIAN
    if not instance.sop_class_uid or not instance.sop_instance_uid:
        instance.error = "the dataset has no SOP Class UID or SOP Instance UID"
    return instance


def context_keys(instance: PreparedInstance) -> list[tuple[str, tuple[str, ...]]]:
    """The (SOP class, transfer syntaxes) contexts that let ``instance`` go as it is."""
    sop, syntax = instance.sop_class_uid, instance.transfer_syntax
    if syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        # Two contexts, not one listing both: an acceptor that prefers
        # implicit (pynetdicom does) would otherwise make us convert.
        return [(sop, (syntax,)), (sop, (IMPLICIT_VR_LITTLE_ENDIAN,))]
    if syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        # Every SCP takes implicit little endian (PS3.5 10.1): a context of
        # its own lets the file go as it is, whatever the acceptor prefers.
        return [(sop, (syntax,))]
    if syntax == EXPLICIT_VR_BIG_ENDIAN:
        return [(sop, (syntax,)), (sop, (EXPLICIT_VR_LITTLE_ENDIAN,))]
    return [(sop, (syntax,))]


def storage_contexts(instances: Iterable[PreparedInstance]) -> list[tuple[str, list[str]]]:
    """The presentation contexts to propose for these instances.

    Per SOP class and transfer syntax found, one context with that syntax
    alone, so each file can go as it is whatever the acceptor prefers;
    explicit little endian instances add an implicit context to fall back
    on (every SCP takes implicit, PS3.5 10.1), big endian ones an explicit
    little endian one.
    """
    keys: dict[tuple[str, tuple[str, ...]], None] = {}
    for instance in instances:
        if not instance.error:
            keys.update(dict.fromkeys(context_keys(instance)))
    return [(sop, list(syntaxes)) for sop, syntaxes in keys]


def sop_instance_of(source: str | os.PathLike[str] | Dataset) -> str:
    """The SOP Instance UID of a file or dataset ("" if it cannot be read)."""
    return prepare_source(source).sop_instance_uid


def expand_sources(
    sources: Iterable[str | os.PathLike[str] | Dataset],
) -> Iterator[str | os.PathLike[str] | Dataset]:
    """Datasets as they are, files, and the files of folders (recursively)."""
    for source in sources:
        if isinstance(source, Dataset):
            yield source
        else:
            yield from iter_files([source])


def prepare(sources: Iterable[str | os.PathLike[str] | Dataset]) -> list[PreparedInstance]:
    """The instances ``sources`` name (files, folders searched recursively, datasets).

    Only the meta information of each file is read; what cannot be sent (not
    DICOM, unreadable, no UIDs) says why in its ``error``.
    """
    return [prepare_source(source) for source in expand_sources(sources)]
