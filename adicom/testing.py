"""Pytest fixtures for code that talks DICOM: real SCPs on 127.0.0.1, in the test's own loop.

Installing adicom registers this module as a pytest plugin (the ``pytest11``
entry point ``adicom``), so a test suite gets these fixtures without a line
of configuration:

* ``dicom_archive``: starts query/retrieve archives (:class:`ArchiveSCP`),
  seeded from files, folders or pydicom datasets, answering C-FIND, C-GET,
  C-MOVE, C-STORE, Storage Commitment and MPPS as ``adicom serve --storage``
  does.
* ``dicom_storage_scp``: starts storage SCPs (:class:`StorageSCP`) that keep
  what they receive, with its :class:`~adicom.StoreContext`, and can wait for
  it.
* ``dicom_server``: starts any :class:`~adicom.Server` you configure.
* ``dicom_node``: the :class:`~adicom.DicomNode` that reaches one of them.

The fixtures are plain, synchronous ones that return factories: nothing runs
until an async test enters ``async with dicom_archive(...) as pacs``. The SCP
then runs on that test's event loop (whatever drives it: anyio's pytest
plugin on its asyncio backend, pytest-asyncio, or ``asyncio.run``) and is
stopped when the block ends, even when the test fails. So the fixtures have
no event loop of their own, no scope to match with ``anyio_backend``, and
start no thread. Each listens on 127.0.0.1 on a free port; archives live in
the test's ``tmp_path``; start-up is bounded by ``timeout`` and shutdown by
:meth:`adicom.Server.close`. A factory finds at teardown any SCP that was
started and never stopped, and fails the test for it.

The same async context managers work without pytest: :func:`archive_scp`,
:func:`storage_scp` and :func:`running_server`. See ``docs/testing.md``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import pydicom
import pytest
from pydicom.dataset import Dataset

from adicom.archive import Archive
from adicom.dimse import Status
from adicom.fileformat import EXPLICIT_VR_LITTLE_ENDIAN, encode_dataset, encode_file_meta
from adicom.models import DicomNode
from adicom.negotiation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from adicom.server import Server
from adicom.storage import CallbackStorage, StoreContext

__all__ = [
    "HOST",
    "ArchiveFactory",
    "ArchiveSCP",
    "ReceivedInstance",
    "Reachable",
    "Seed",
    "ServerFactory",
    "StatusFunction",
    "StorageSCP",
    "StorageSCPFactory",
    "archive_scp",
    "dicom_archive",
    "dicom_node",
    "dicom_server",
    "dicom_storage_scp",
    "node_of",
    "running_server",
    "storage_scp",
]

#: Where every SCP started here listens (on a free port).
HOST = "127.0.0.1"

#: What an archive is seeded from: a DICOM file, a folder of them, or a dataset.
Seed: TypeAlias = "str | os.PathLike[str] | Dataset"

#: The status a storage SCP answers for an instance: a function of it (None: success).
StatusFunction = Callable[[Dataset, StoreContext], "int | None"]

_T = TypeVar("_T")


# --------------------------------------------------------------------------
# Nodes


def node_of(target: Reachable, ae_title: str | None = None) -> DicomNode:
    """The :class:`~adicom.DicomNode` that reaches a running SCP.

    ``target`` is a listening :class:`~adicom.Server`, an :class:`ArchiveSCP`
    or :class:`StorageSCP`, or a node (returned as it is). ``ae_title``
    replaces the server's own AE title, to call it by another one (to see it
    rejected, say). A server on a wildcard address is reached on 127.0.0.1.
    """
    if isinstance(target, DicomNode):
        if ae_title is None:
            return target
        return DicomNode(aet=ae_title, host=target.host, port=target.port)
    server = target if isinstance(target, Server) else target.server
    host = HOST if server.host in ("", "0.0.0.0", "::") else server.host
    return DicomNode(aet=ae_title or server.ae_title, host=host, port=server.port)


@asynccontextmanager
async def running_server(server: Server, timeout: float = 30.0) -> AsyncIterator[Server]:
    """Start ``server`` (within ``timeout`` seconds), yield it, and always close it.

    Closing aborts what is still open and is bounded (see
    :meth:`adicom.Server.close`).
    """
    async with asyncio.timeout(timeout):
        await server.start()
    try:
        yield server
    finally:
        await server.close()


# --------------------------------------------------------------------------
# The archive


class ArchiveSCP:
    """A query/retrieve archive: an :class:`adicom.archive.Archive` behind a Server.

    The server gets the archive's handlers (:meth:`adicom.archive.Archive.handlers`:
    storage, C-FIND, C-GET, C-MOVE, Storage Commitment, MPPS), then
    ``server_options``, which win. :func:`archive_scp` starts and stops it.

    :attr:`destinations` is where C-MOVE sends instances and where Storage
    Commitment results go on a new association: AE title -> (host, port).
    It is read at each request, so destinations can be added while the
    archive runs (:meth:`add_destination`).
    """

    def __init__(self, archive: Archive, ae_title: str = "ARCHIVE", **server_options: Any) -> None:
        #: The archive: its folder (:attr:`root`), index and handlers.
        self.archive = archive
        #: C-MOVE destinations and Storage Commitment report addresses, by AE title.
        self.destinations: dict[str, tuple[str, int]] = {}
        self._added = 0
        options: dict[str, Any] = archive.handlers(self.lookup, ae_title=ae_title)
        options.update(server_options)
        #: The SCP serving it (not yet listening: :func:`archive_scp` starts it).
        self.server = Server(ae_title, HOST, 0, **options)

    @property
    def ae_title(self) -> str:
        """The archive's AE title (the one to call)."""
        return self.server.ae_title

    @property
    def port(self) -> int:
        """The port the archive listens on, on 127.0.0.1."""
        return self.server.port

    @property
    def root(self) -> Path:
        """The archive's folder."""
        return self.archive.root

    @property
    def node(self) -> DicomNode:
        """The node that reaches the archive, for :class:`~adicom.DicomClient` calls."""
        return node_of(self.server)

    def add_destination(self, target: Reachable, ae_title: str | None = None) -> None:
        """Let C-MOVE send to ``target`` (a node or running SCP), by its AE title or ``ae_title``.

        Storage Commitment results that cannot go back on the request's
        association go there too.
        """
        node = node_of(target, ae_title)
        self.destinations[node.aet] = (node.host, node.port)

    async def lookup(self, ae_title: str) -> tuple[str, int] | None:
        """Where the destination ``ae_title`` listens, None when unknown (then 0xA801)."""
        return self.destinations.get(ae_title.strip())

    async def add(self, sources: Iterable[Seed]) -> int:
        """Put instances in the archive, as files, and index them; return how many were indexed.

        ``sources`` are DICOM files, folders of them (searched recursively;
        files that are not DICOM are left out, as the archive does) and
        pydicom datasets (written in their file meta's transfer syntax,
        explicit VR little endian when they have none). Files are copied,
        never moved. A named file that is not a DICOM instance, or a dataset
        without SOP Class and SOP Instance UIDs, raises ValueError before
        anything is added. Works while the archive runs too.
        """
        jobs: list[Callable[[Path], None]] = []
        for source in sources:
            jobs.append(_seed_job(source))
        folder = self.root / "seed"
        for job in jobs:
            self._added += 1
            job(folder / f"{self._added:05d}")
            await asyncio.sleep(0)  # copying is short, but not all in one loop callback
        return await self.archive.open()


def _seed_job(source: Seed) -> Callable[[Path], None]:
    """Check one seed now; return what writes it under a path prefix later."""
    if isinstance(source, Dataset):
        sop_class = str(source.get("SOPClassUID", "") or "")
        sop_instance = str(source.get("SOPInstanceUID", "") or "")
        if not sop_class or not sop_instance:
            raise ValueError("a seed dataset needs SOPClassUID and SOPInstanceUID")
        meta = getattr(source, "file_meta", None)
        syntax = str((meta.get("TransferSyntaxUID") if meta is not None else None) or "")
        syntax = syntax or EXPLICIT_VR_LITTLE_ENDIAN
        # adicom's own file writer: the caller's dataset is only read, never changed.
        data = encode_file_meta(
            sop_class,
            sop_instance,
            syntax,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        ) + encode_dataset(source, syntax)

        def write_dataset(prefix: Path) -> None:
            prefix.parent.mkdir(parents=True, exist_ok=True)
            prefix.with_name(prefix.name + ".dcm").write_bytes(data)

        return write_dataset
    path = Path(source)
    if path.is_dir():

        def copy_folder(prefix: Path) -> None:
            shutil.copytree(path, prefix.with_name(f"{prefix.name}-{path.name}"))

        return copy_folder
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except Exception as exc:  # missing, unreadable, not DICOM, truncated: all the same here
        raise ValueError(f"seed {path}: not a DICOM instance ({exc})") from None
    if not dataset.get("SOPInstanceUID"):
        raise ValueError(f"seed {path}: not a DICOM instance (no SOP Instance UID)")

    def copy_file(prefix: Path) -> None:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, prefix.with_name(f"{prefix.name}-{path.name}"))

    return copy_file


@asynccontextmanager
async def archive_scp(
    root: str | os.PathLike[str],
    seed: Iterable[Seed] = (),
    *,
    ae_title: str = "ARCHIVE",
    destinations: Iterable[Reachable] = (),
    timeout: float = 30.0,
    **server_options: Any,
) -> AsyncIterator[ArchiveSCP]:
    """Run a seeded archive on 127.0.0.1, on a free port, for the block's duration.

    ``root`` is the archive's folder (made if missing). ``seed`` is put in it
    before the server starts (see :meth:`ArchiveSCP.add`); ``destinations``
    are nodes or running SCPs C-MOVE may send to, by their AE titles.
    ``server_options`` go to :class:`~adicom.Server` (``allowed_calling_aes``,
    ``ssl``, ``audit``, limits...) and win over the archive's handlers.
    Seeding and start-up are bounded by ``timeout`` seconds. The server is
    closed and the index committed and closed when the block ends.
    """
    archive = Archive(root)
    try:
        scp = ArchiveSCP(archive, ae_title, **server_options)
        for target in destinations:
            scp.add_destination(target)
        async with asyncio.timeout(timeout):
            await scp.add(seed)
        async with running_server(scp.server, timeout):
            yield scp
    finally:
        archive.close()


# --------------------------------------------------------------------------
# The storage SCP


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """One instance a :class:`StorageSCP` received, and what it answered."""

    #: The data set as received, with a ``file_meta`` built from the C-STORE.
    dataset: Dataset
    #: Who sent it, its SOP class and instance, the transfer syntax of its context.
    context: StoreContext
    #: The C-STORE status answered.
    status: int


class StorageSCP:
    """A storage SCP that keeps every instance it receives, in memory.

    It accepts every storage SOP class in any transfer syntax pydicom knows
    (C-ECHO too), and answers ``status`` for each instance: success by
    default, an int, or a function of the dataset and its context (returning
    None for success). Instances are kept whatever the status, in arrival
    order, in :attr:`received`.
    """

    def __init__(
        self,
        ae_title: str = "STORESCP",
        *,
        status: int | StatusFunction | None = None,
        **server_options: Any,
    ) -> None:
        #: Every instance received so far, in arrival order.
        self.received: list[ReceivedInstance] = []
        self.status = status
        self._arrived = asyncio.Event()
        #: The SCP; ``server_options`` go to it.
        self.server = Server(
            ae_title, HOST, 0, storage=CallbackStorage(self._receive), **server_options
        )

    async def _receive(self, dataset: Dataset, context: StoreContext) -> int:
        status = self.status(dataset, context) if callable(self.status) else self.status
        answered = Status.SUCCESS if status is None else status
        self.received.append(ReceivedInstance(dataset, context, answered))
        self._arrived.set()
        return answered

    @property
    def ae_title(self) -> str:
        """The SCP's AE title (the one to call, or name as a C-MOVE destination)."""
        return self.server.ae_title

    @property
    def port(self) -> int:
        """The port it listens on, on 127.0.0.1."""
        return self.server.port

    @property
    def node(self) -> DicomNode:
        """The node that reaches it."""
        return node_of(self.server)

    @property
    def datasets(self) -> list[Dataset]:
        """The datasets received so far, in arrival order."""
        return [item.dataset for item in self.received]

    @property
    def contexts(self) -> list[StoreContext]:
        """The context of each instance received so far, in arrival order."""
        return [item.context for item in self.received]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedInstance]:
        """Wait until ``count`` instances have arrived; return all received so far.

        For instances sent without the test awaiting their responses (a
        C-MOVE started elsewhere, a forwarder). Raises TimeoutError, saying
        how many came, when they have not within ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                while len(self.received) < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.ae_title}: {len(self.received)} of {count} instances"
                f" arrived within {timeout} s"
            ) from None
        return list(self.received)


@asynccontextmanager
async def storage_scp(
    ae_title: str = "STORESCP",
    *,
    status: int | StatusFunction | None = None,
    timeout: float = 30.0,
    **server_options: Any,
) -> AsyncIterator[StorageSCP]:
    """Run a :class:`StorageSCP` on 127.0.0.1, on a free port, for the block's duration."""
    scp = StorageSCP(ae_title, status=status, **server_options)
    async with running_server(scp.server, timeout):
        yield scp


#: Anything :func:`node_of` turns into a node.
Reachable: TypeAlias = "DicomNode | Server | ArchiveSCP | StorageSCP"


# --------------------------------------------------------------------------
# Fixture factories


class _Factory:
    """Default AE titles numbered per test, and a check that everything started stopped."""

    def __init__(self, fixture: str, default_title: str) -> None:
        self._fixture = fixture
        self._default_title = default_title
        self._made = 0
        self._running: list[str] = []

    def _title(self, ae_title: str | None) -> str:
        self._made += 1
        if ae_title is not None:
            return ae_title
        return self._default_title + (str(self._made) if self._made > 1 else "")

    @asynccontextmanager
    async def _tracked(
        self, title: str, manager: AbstractAsyncContextManager[_T]
    ) -> AsyncIterator[_T]:
        self._running.append(title)
        try:
            async with manager as value:
                yield value
        finally:
            self._running.remove(title)

    def _check_stopped(self) -> None:
        if self._running:
            pytest.fail(
                f"{self._fixture}: {', '.join(self._running)} still running at teardown;"
                " start them with `async with`, inside the test",
                pytrace=False,
            )


class ServerFactory(_Factory):
    """What the ``dicom_server`` fixture gives: call it to run an :class:`~adicom.Server`."""

    def __init__(self) -> None:
        super().__init__("dicom_server", "SCP")

    def __call__(
        self, ae_title: str | None = None, *, timeout: float = 30.0, **server_options: Any
    ) -> AbstractAsyncContextManager[Server]:
        """``async with`` it: a Server on 127.0.0.1, a free port, with ``server_options``.

        AE titles default to SCP, SCP2, SCP3... in the order made.
        """
        title = self._title(ae_title)
        server = Server(title, HOST, 0, **server_options)
        return self._tracked(title, running_server(server, timeout))


class ArchiveFactory(_Factory):
    """What the ``dicom_archive`` fixture gives: call it to run an :class:`ArchiveSCP`."""

    def __init__(self, folder: Path) -> None:
        super().__init__("dicom_archive", "ARCHIVE")
        self._folder = folder

    def __call__(
        self,
        seed: Iterable[Seed] = (),
        *,
        ae_title: str | None = None,
        destinations: Iterable[Reachable] = (),
        root: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        **server_options: Any,
    ) -> AbstractAsyncContextManager[ArchiveSCP]:
        """``async with`` it: an archive seeded with ``seed`` (see :func:`archive_scp`).

        AE titles default to ARCHIVE, ARCHIVE2... in the order made; the
        folder to ``tmp_path/archive1``, ``archive2``... unless ``root`` is given.
        """
        title = self._title(ae_title)
        # Not named after the AE title: "A/B" is a valid one.
        folder = Path(root) if root is not None else self._folder / f"archive{self._made}"
        return self._tracked(
            title,
            archive_scp(
                folder,
                seed,
                ae_title=title,
                destinations=destinations,
                timeout=timeout,
                **server_options,
            ),
        )


class StorageSCPFactory(_Factory):
    """What the ``dicom_storage_scp`` fixture gives: call it to run a :class:`StorageSCP`."""

    def __init__(self) -> None:
        super().__init__("dicom_storage_scp", "STORESCP")

    def __call__(
        self,
        ae_title: str | None = None,
        *,
        status: int | StatusFunction | None = None,
        timeout: float = 30.0,
        **server_options: Any,
    ) -> AbstractAsyncContextManager[StorageSCP]:
        """``async with`` it: a storage SCP keeping what it receives (see :class:`StorageSCP`).

        AE titles default to STORESCP, STORESCP2... in the order made.
        """
        title = self._title(ae_title)
        return self._tracked(
            title, storage_scp(title, status=status, timeout=timeout, **server_options)
        )


# --------------------------------------------------------------------------
# The fixtures


@pytest.fixture
def dicom_server() -> Iterator[ServerFactory]:
    """Factory of adicom Servers configured as you like.

    ``async with dicom_server("MY-SCP", on_find=...) as server:`` (see :class:`ServerFactory`).
    """
    factory = ServerFactory()
    yield factory
    factory._check_stopped()


@pytest.fixture
def dicom_archive(tmp_path: Path) -> Iterator[ArchiveFactory]:
    """Factory of seeded query/retrieve archives, in ``tmp_path``.

    ``async with dicom_archive([path, dataset]) as pacs:``, then call ``pacs.node``
    (see :class:`ArchiveFactory`).
    """
    factory = ArchiveFactory(tmp_path)
    yield factory
    factory._check_stopped()


@pytest.fixture
def dicom_storage_scp() -> Iterator[StorageSCPFactory]:
    """Factory of storage SCPs that keep what they receive.

    ``async with dicom_storage_scp() as scp:``, then read ``scp.received``
    (see :class:`StorageSCPFactory`).
    """
    factory = StorageSCPFactory()
    yield factory
    factory._check_stopped()


@pytest.fixture
def dicom_node() -> Callable[..., DicomNode]:
    """The node factory :func:`node_of`: ``dicom_node(server)`` is the node reaching a server."""
    return node_of
