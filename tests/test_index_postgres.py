"""The archive's index in PostgreSQL: the CLI, faults of the database, several nodes.

A real server every time (tests/postgres.py): the session's for what does
not disturb it, a cluster of its own for a test that stops and starts it.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from typing import Literal

import asyncpg
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom import qrscu
from adicom.archive import Archive
from adicom.archive.backends import open_index
from adicom.archive.matching import make_row
from adicom.errors import DimseError
from tests.interop.peers import dcmtk_binary
from tests.postgres import BACKENDS, Cluster, cluster
from tests.test_archive import TREE, identifier, serving, write_tree
from tests.test_cli import environment, free_port

pytestmark = pytest.mark.anyio


def fresh(count: int) -> list[Dataset]:
    """``count`` new instances of one new study (copies of the tree's first)."""
    study = generate_uid()
    made = []
    for number in range(count):
        ds = copy.deepcopy(TREE.instances[0])
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number + 1
        made.append(ds)
    return made


def adicom_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adicom", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=environment(),
    )


async def find_uids(port: int, query: Dataset, aet: str = "ADICOM") -> tuple[set[str], int]:
    """The SOP Instance UIDs a C-FIND answers, and its final status."""
    try:
        async with (
            adicom.connect(
                "127.0.0.1", port, called_ae=aet, contexts=qrscu.find_contexts("study")
            ) as assoc,
            qrscu.find(assoc, query) as results,
        ):
            found = {str(ds.SOPInstanceUID) async for ds in results}
    except DimseError as exc:
        return set(), exc.status
    assert results.status is not None
    return found, results.status


def images(study: str, series: str) -> Dataset:
    return identifier("IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID="")


# --------------------------------------------------------------------------
# adicom index migrate / copy


def test_asyncpg_is_imported_only_for_a_postgresql_index(tmp_path: pathlib.Path) -> None:
    code = (
        "import sys; from adicom.archive import Archive; "
        f"Archive({str(tmp_path)!r}).close(); print('asyncpg' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_migrate_says_a_database_that_does_not_answer_and_exits_3() -> None:
    from tests.test_cli import free_port

    done = adicom_cli("index", "migrate", f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    assert done.returncode == 3, done.stderr
    assert "does not answer" in done.stderr and "Traceback" not in done.stderr


async def test_migrate_then_copy_sqlite_to_postgresql_and_back(
    postgres: Cluster, tmp_path: pathlib.Path
) -> None:
    url = postgres.new_database()
    result = adicom_cli("index", "migrate", url)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    assert "adicom@" in result.stdout  # the URL, said back
    again = adicom_cli("index", "migrate", url)  # nothing to do the second time
    assert again.returncode == 0, again.stderr
    connection = await asyncpg.connect(url)
    try:
        version = await connection.fetchval("SELECT value FROM adicom_meta WHERE key='version'")
        assert version == "1"
    finally:
        await connection.close()

    # An SQLite archive's index, copied into PostgreSQL, answers the same.
    root = tmp_path / "archive"
    write_tree(root)
    archive = Archive(root)
    await archive.open()
    await archive.aclose()
    source = f"sqlite:{root / '.adicom-index.sqlite'}"
    copied = adicom_cli("index", "copy", "--batch", "3", source, url)
    assert copied.returncode == 0, copied.stderr
    assert f"{len(TREE.instances)} instances copied" in copied.stdout
    shared = Archive(root, index=url)
    await shared.open()
    try:
        found = await shared.index.find("STUDY", {"PatientName": "doe^*"})
        assert {f["StudyInstanceUID"] for f in found} == {TREE.uid["A"], TREE.uid["B"]}
        rows = await shared.index.instances("STUDY", {"StudyInstanceUID": TREE.uid["A"]})
        assert {r.sop_instance_uid for r in rows} == TREE.under("A")
        assert all(pathlib.Path(r.path).is_file() for r in rows)
    finally:
        await shared.aclose()
    # ... and back into a new SQLite file, row for row.
    back = tmp_path / "back.sqlite"
    result = adicom_cli("index", "copy", url, f"sqlite:{back}")
    assert result.returncode == 0, result.stderr
    index = open_index(f"sqlite:{back}")
    try:
        assert await index.count() == len(TREE.instances)
        original = open_index(source)
        try:
            assert [r async for r in index.rows()] == [r async for r in original.rows()]
        finally:
            original.close()
    finally:
        index.close()
    bad = adicom_cli("index", "copy", "mysql://x", url)
    assert bad.returncode != 0 and "not sqlite:PATH nor postgresql://" in bad.stderr


# --------------------------------------------------------------------------
# Faults: the database down, slow, and back


@pytest.fixture
async def own_cluster() -> AsyncIterator[Cluster]:
    """A cluster of this test's own, which it may stop and start."""
    with cluster() as server:
        yield server


def files_of(root: pathlib.Path) -> set[str]:
    """The instance files in the archive's folder (its own dot folders aside)."""
    return {
        p.name
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


async def test_a_database_down_refuses_stores_and_queries_then_recovers(
    own_cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    root = tmp_path / "archive"
    archive = Archive(root, index=own_cluster.new_database(), index_timeout=2.0)
    await archive.open()
    first, second = fresh(2)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    try:
        async with serving(archive) as node:
            (result,) = await adicom.store(node.host, node.port, [first], called_ae=node.aet)
            assert result.ok
            stored = files_of(root)
            assert len(stored) == 1

            own_cluster.stop()
            # PS3.4 B.2.3: refused, out of resources; nothing kept of it.
            async with asyncio.timeout(30):  # the index call gives up after 2 s
                (result,) = await adicom.store(node.host, node.port, [second], called_ae=node.aet)
            assert result.status == 0xA700, result
            assert files_of(root) == stored
            assert not list((root / ".incoming").rglob("*.part"))
            async with asyncio.timeout(30):
                found, status = await find_uids(node.port, images(study, series), node.aet)
            assert (found, status) == (set(), 0xA700)
            contexts, roles = qrscu.get_contexts()
            async with (
                asyncio.timeout(30),
                adicom.connect(
                    node.host, node.port, called_ae=node.aet, contexts=contexts, roles=roles
                ) as assoc,
            ):
                memory = adicom.MemoryStorage()
                query = identifier("STUDY", StudyInstanceUID=study)
                got = await qrscu.get(assoc, query, memory)
            assert got.status == 0xA701 and memory.datasets == []
            assert await adicom.DicomClient().echo(node)  # the node serves on

            # The database comes back: the node uses it again by itself.
            own_cluster.start()
            async with asyncio.timeout(30):
                (result,) = await adicom.store(node.host, node.port, [second], called_ae=node.aet)
                assert result.ok, result
                found, status = await find_uids(node.port, images(study, series), node.aet)
            assert status == 0x0000
            assert found == {str(first.SOPInstanceUID), str(second.SOPInstanceUID)}
    finally:
        await archive.aclose()


async def test_a_node_started_while_the_database_is_down_begins_when_it_answers(
    own_cluster: Cluster, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_cluster.new_database()
    own_cluster.stop()
    root = tmp_path / "archive"
    archive = Archive(root, index=url, index_timeout=2.0)
    assert await archive.open() == 0  # serves, and says why nothing works yet
    assert "operations fail until it answers" in caplog.text
    (instance,) = fresh(1)
    try:
        async with serving(archive) as node:
            (result,) = await adicom.store(node.host, node.port, [instance], called_ae=node.aet)
            assert result.status == 0xA700
            assert files_of(root) == set()
            own_cluster.start()
            # The first operation that reaches the database makes the schema.
            (result,) = await adicom.store(node.host, node.port, [instance], called_ae=node.aet)
            assert result.ok, result
            assert await archive.index.path_of(str(instance.SOPInstanceUID)) is not None
    finally:
        await archive.aclose()
    assert threading.active_count() == 1  # asyncpg started no thread


async def test_a_host_name_is_looked_up_without_a_thread(
    postgres: Cluster, tmp_path: pathlib.Path
) -> None:
    # asyncio looks names up in a thread; the index looks "localhost" up
    # itself and gives asyncpg its addresses.
    url = postgres.new_database().replace("@127.0.0.1:", "@localhost:")
    assert "@localhost:" in url
    archive = Archive(tmp_path / "archive", index=url, index_timeout=5.0)
    await archive.open()
    (instance,) = fresh(1)
    try:
        async with serving(archive) as node:
            (result,) = await adicom.store(node.host, node.port, [instance], called_ae=node.aet)
            assert result.ok, result
        assert await archive.index.path_of(str(instance.SOPInstanceUID)) is not None
    finally:
        await archive.aclose()
    assert threading.active_count() == 1


async def test_a_slow_database_refuses_a_store_in_bounded_time_and_keeps_nothing(
    postgres: Cluster, tmp_path: pathlib.Path
) -> None:
    # Another client holds the table locked: the store's INSERT waits, the
    # index timeout ends the wait (the statement is cancelled in the server),
    # the peer gets 0xA700, and neither a file nor a row remains.
    url = postgres.new_database()
    root = tmp_path / "archive"
    archive = Archive(root, index=url, index_timeout=1.0)
    await archive.open()
    (instance,) = fresh(1)
    locker = await asyncpg.connect(url)
    try:
        async with serving(archive) as node:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
            async with asyncio.timeout(30):
                (result,) = await adicom.store(node.host, node.port, [instance], called_ae=node.aet)
            await transaction.rollback()
            assert result.status == 0xA700, result
            assert files_of(root) == set()
            async with asyncio.timeout(30):
                # Once the database answers again, so does the node.
                found, status = await find_uids(
                    node.port,
                    images(str(instance.StudyInstanceUID), str(instance.SeriesInstanceUID)),
                    node.aet,
                )
            assert (found, status) == (set(), 0x0000)
            assert await archive.index.count() == 0
    finally:
        await locker.close()
        await archive.aclose()


# --------------------------------------------------------------------------
# Several nodes: two adicom serve processes, one database, one folder


async def start_node(root: pathlib.Path, url: str, port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--storage", str(root), "--index", url, env=environment(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    async with asyncio.timeout(60):
        line = (await process.stdout.readline()).decode()
    if "listening" not in line:
        process.kill()
        _, err = await process.communicate()
        raise AssertionError(f"serve did not start: {line} {err.decode()}")
    return process


async def test_two_nodes_share_one_archive(postgres: Cluster, tmp_path: pathlib.Path) -> None:
    url = postgres.new_database()
    root = tmp_path / "shared"
    ports = [free_port(), free_port()]
    nodes = [await start_node(root, url, port) for port in ports]
    try:
        # Stored through one, found and retrieved through the other at once
        # (the row is in the database before the store's success).
        batch = fresh(5)
        study, series = str(batch[0].StudyInstanceUID), str(batch[0].SeriesInstanceUID)
        results = await adicom.store("127.0.0.1", ports[0], batch, called_ae="ADICOM")
        assert all(r.ok for r in results)
        found, status = await find_uids(ports[1], images(study, series))
        assert status == 0 and found == {str(ds.SOPInstanceUID) for ds in batch}
        contexts, roles = qrscu.get_contexts()
        async with adicom.connect(
            "127.0.0.1", ports[1], called_ae="ADICOM", contexts=contexts, roles=roles
        ) as assoc:
            memory = adicom.MemoryStorage()
            got = await qrscu.get(assoc, identifier("STUDY", StudyInstanceUID=study), memory)
        assert (got.status, got.completed) == (0x0000, 5)
        assert {ds.PixelData for ds in memory.datasets} == {ds.PixelData for ds in batch}

        # The same SOP Instance UIDs through both nodes at once, two copies
        # that differ: each ends as one instance, one file, the row's.
        same = fresh(12)
        variants = []
        for ds in same:
            other = copy.deepcopy(ds)
            pixels = bytearray(other.PixelData)
            pixels[-1] ^= 0xFF
            other.PixelData = bytes(pixels)
            variants.append(other)
        both = await asyncio.gather(
            adicom.store("127.0.0.1", ports[0], same, called_ae="ADICOM"),
            adicom.store("127.0.0.1", ports[1], variants, called_ae="ADICOM"),
        )
        assert all(r.ok for results in both for r in results)
        connection = await asyncpg.connect(url)
        try:
            rows = dict(
                await connection.fetch(
                    "SELECT sop_instance_uid, path FROM instances WHERE study_instance_uid = $1",
                    str(same[0].StudyInstanceUID),
                )
            )
        finally:
            await connection.close()
        assert set(rows) == {str(ds.SOPInstanceUID) for ds in same}
        folder = root / str(same[0].StudyInstanceUID)
        on_disk = sorted(p for p in folder.rglob("*") if p.is_file())
        assert sorted(map(str, on_disk)) == sorted(rows.values())  # the losers' files went
        for uid, path in rows.items():
            held = pydicom.dcmread(path)
            assert held.SOPInstanceUID == uid
            # One of the two copies, whole.
            sent = {d.PixelData for d in (*same, *variants) if str(d.SOPInstanceUID) == uid}
            assert held.PixelData in sent
    finally:
        for node in nodes:
            if node.returncode is None:
                node.terminate()
        for node in nodes:
            async with asyncio.timeout(30):
                _, err = await node.communicate()
            assert "Traceback" not in err.decode(), err.decode()


@pytest.mark.parametrize("policy", ["keep", "reject"])
async def test_keep_and_reject_keep_the_first_copy_in_the_database(
    postgres: Cluster, tmp_path: pathlib.Path, policy: Literal["keep", "reject"]
) -> None:
    root = tmp_path / "archive"
    archive = Archive(root, index=postgres.new_database(), on_duplicate=policy)
    await archive.open()
    (first,) = fresh(1)
    second = copy.deepcopy(first)
    second.PixelData = bytes(len(first.PixelData))  # another copy, told apart
    try:
        async with serving(archive) as node:
            (result,) = await adicom.store(node.host, node.port, [first], called_ae=node.aet)
            assert result.ok
            (result,) = await adicom.store(node.host, node.port, [second], called_ae=node.aet)
            assert result.status == (0x0000 if policy == "keep" else 0x0111)
        (kept,) = (root / str(first.StudyInstanceUID)).rglob("*.dcm")  # the loser's file went
        assert pydicom.dcmread(kept).PixelData == first.PixelData
        assert await archive.index.path_of(str(first.SOPInstanceUID)) == kept
    finally:
        await archive.aclose()


async def test_a_file_system_without_hard_links_gets_unique_names(
    postgres: Cluster, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, target: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    root = tmp_path / "archive"
    archive = Archive(root, index=postgres.new_database())
    await archive.open()
    (instance,) = fresh(1)
    try:
        async with serving(archive) as node:
            for _ in range(2):  # the second replaces the first
                (result,) = await adicom.store(node.host, node.port, [instance], called_ae=node.aet)
                assert result.ok, result
        (held,) = (root / str(instance.StudyInstanceUID)).rglob("*.dcm")
        uid = str(instance.SOPInstanceUID)
        assert held.name.startswith(uid + ".") and held.name != uid + ".dcm"
        assert await archive.index.path_of(uid) == held
        assert pydicom.dcmread(held).SOPInstanceUID == uid
    finally:
        await archive.aclose()


async def test_a_node_killed_mid_store_loses_nothing_acknowledged(
    postgres: Cluster, tmp_path: pathlib.Path
) -> None:
    # DCMTK's storescu sends one instance at a time and says which were
    # acknowledged; the node is killed (SIGKILL) in the middle. Every
    # acknowledged instance is in the database with its file; every row
    # names a file that is there; at most the one instance in flight is held
    # without having been acknowledged (the peer sends it again).
    storescu = dcmtk_binary("storescu")
    assert storescu is not None, "DCMTK storescu is needed (apt-get install dcmtk)"
    url = postgres.new_database()
    root = tmp_path / "archive"
    batch = fresh(400)
    sources = tmp_path / "sources"
    sources.mkdir()
    for number, ds in enumerate(batch):
        ds.save_as(sources / f"{number:04}.dcm", enforce_file_format=True)
    port = free_port()
    node = await start_node(root, url, port)
    sender = await asyncio.create_subprocess_exec(
        storescu, "-v", "-aec", "ADICOM", "127.0.0.1", str(port),
        *sorted(map(str, sources.iterdir())),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={"TCP_NODELAY": "1"},
    )  # fmt: skip
    assert sender.stdout is not None
    acknowledged: set[str] = set()
    current = ""
    try:
        async with asyncio.timeout(120):
            while line := (await sender.stdout.readline()).decode():
                if "Sending file:" in line:
                    current = line.rsplit("/", 1)[-1].strip()
                elif "Received Store Response (Success)" in line:
                    acknowledged.add(str(batch[int(current.split(".")[0])].SOPInstanceUID))
                    if len(acknowledged) == 50:
                        node.kill()
            await sender.wait()
    finally:
        if node.returncode is None:
            node.kill()
        await node.wait()
    assert 50 <= len(acknowledged) < len(batch)
    connection = await asyncpg.connect(url)
    try:
        rows = dict(await connection.fetch("SELECT sop_instance_uid, path FROM instances"))
    finally:
        await connection.close()
    assert acknowledged <= set(rows)
    assert len(set(rows) - acknowledged) <= 1
    assert all(pathlib.Path(path).is_file() for path in rows.values())


@pytest.mark.parametrize("backend", BACKENDS)
async def test_put_settles_one_uid_alike_on_both_backends(
    backend: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:{tmp_path / 'index.sqlite'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres").new_database()
    )
    index = open_index(url)
    await index.connect()
    values = {"SOPInstanceUID": "1.2.3", "StudyInstanceUID": "1.2", "SOPClassUID": "1.2.840"}
    try:
        assert await index.put(make_row(values, "/a.dcm", "1.2.840.10008.1.2"), True) == (
            True,
            None,
        )
        # replace: stored, and the path it displaced said back
        assert await index.put(make_row(values, "/b.dcm", "1.2.840.10008.1.2"), True) == (
            True,
            "/a.dcm",
        )
        # keep or reject: not stored, the path held said back
        assert await index.put(make_row(values, "/c.dcm", "1.2.840.10008.1.2"), False) == (
            False,
            "/b.dcm",
        )
        assert await index.sop_class_of("1.2.3") == ("1.2.840", pathlib.Path("/b.dcm"))
        assert await index.count() == 1
    finally:
        await index.aclose()
