"""Several processes over one archive folder and its SQLite index (``serve --workers``).

Real processes: two ``adicom serve`` on one folder, started at once over
files they both index, each then storing its own instances; and a process
that holds the index's write lock while an archive in this process stores.
"""

from __future__ import annotations

import asyncio
import copy
import pathlib
import sqlite3
import subprocess
import sys
import time

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom import archive as archive_module
from adicom import qrscu
from adicom.archive import Archive
from adicom.archive.index import IndexBusy
from tests.test_archive import INDEX_NAME, TREE, serving
from tests.test_cli import environment, free_port

pytestmark = pytest.mark.anyio


def fresh(count: int, study: str) -> list[Dataset]:
    """``count`` instances of one new study, copies of the tree's first instance."""
    made = []
    for number in range(count):
        ds = copy.deepcopy(TREE.instances[0])
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number + 1
        made.append(ds)
    return made


async def start_serve(root: pathlib.Path, port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--storage", str(root), env=environment(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


async def found_images(port: int, study: str) -> set[str]:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study
    query.SeriesInstanceUID = str(TREE.instances[0].SeriesInstanceUID)
    query.SOPInstanceUID = ""
    contexts = qrscu.find_contexts("study")
    async with (
        adicom.connect("127.0.0.1", port, called_ae="ADICOM", contexts=contexts) as assoc,
        qrscu.find(assoc, query) as results,
    ):
        found = {str(ds.SOPInstanceUID) async for ds in results}
    assert results.status == 0x0000
    return found


async def test_two_serve_processes_open_and_store_into_one_archive(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "archive"
    study = generate_uid()
    before = fresh(60, study)
    for ds in before:
        path = root / "old" / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    ports = [free_port(), free_port()]
    processes = [await start_serve(root, port) for port in ports]
    try:
        for process in processes:
            assert process.stdout is not None
            async with asyncio.timeout(60):
                line = (await process.stdout.readline()).decode()
            assert "listening" in line, line + (await process.stderr.read()).decode()  # type: ignore[union-attr]
        # Each stores its own instances, both at once, into the same index.
        mine = [fresh(30, study), fresh(30, study)]
        results = await asyncio.gather(
            *(
                adicom.store("127.0.0.1", port, batch, called_ae="ADICOM")
                for port, batch in zip(ports, mine, strict=True)
            )
        )
        assert all(r.ok for batch in results for r in batch)
        everything = {str(ds.SOPInstanceUID) for ds in before + mine[0] + mine[1]}
        # Each process commits within COMMIT_DELAY (retrying while the other
        # writes): both then see every instance, their own and the other's.
        async with asyncio.timeout(30):
            for port in ports:
                while (seen := await found_images(port, study)) != everything:
                    assert seen <= everything
                    await asyncio.sleep(0.05)
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            async with asyncio.timeout(30):
                _, err = await process.communicate()
            assert "Traceback" not in err.decode(), err.decode()
            assert "could not be written" not in err.decode(), err.decode()
    with sqlite3.connect(root / INDEX_NAME) as db:
        (count,) = db.execute("SELECT count(*) FROM instances").fetchone()
    assert count == len(everything)


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


async def test_a_store_does_not_wait_for_another_process_holding_the_index(
    tmp_path: pathlib.Path,
) -> None:
    # Another process holds the write lock for as long as it likes: this
    # archive answers the C-STORE at once, does not block its loop waiting
    # (a commit gives up after the busy timeout and is retried from the
    # loop), sees the instance itself meanwhile, and writes it once the
    # lock is free.
    archive = Archive(tmp_path / "archive")
    await archive.open()
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_LOCK, str(tmp_path / "archive" / INDEX_NAME),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    try:
        async with asyncio.timeout(30):
            assert await holder.stdout.readline() == b"locked\n"
        db = archive._sqlite
        assert db is not None
        started = time.monotonic()
        with pytest.raises(IndexBusy):
            db.add({"SOPInstanceUID": "1.2.3"}, tmp_path / "x.dcm", "")
            db.commit()
        # The busy timeout is short (20 ms), far from sqlite3's default of 5 s
        # (a wall-clock bound, generous for a loaded machine).
        assert time.monotonic() - started < 2.5
        db.remove_path(tmp_path / "x.dcm")
        instance = TREE.instances[1]
        async with serving(archive) as node:
            (result,) = await adicom.store(node.host, node.port, [instance], called_ae=node.aet)
            assert result.ok
            uid = str(instance.SOPInstanceUID)
            assert await archive.index.path_of(uid) is not None  # seen by this process
            await asyncio.sleep(archive_module.COMMIT_DELAY * 4)  # tries, all busy
            assert db.pending
            assert await adicom.DicomClient().echo(node)  # the loop is free
            holder.stdin.write(b"go\n")
            async with asyncio.timeout(30):
                await holder.wait()
                await archive.wait_committed()
        assert db.pending == 0
        with sqlite3.connect(tmp_path / "archive" / INDEX_NAME) as raw:
            rows = raw.execute("SELECT sop_instance_uid FROM instances").fetchall()
        assert rows == [(uid,)]
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        archive.close()


def test_many_processes_opening_one_new_index_at_once_all_succeed(tmp_path: pathlib.Path) -> None:
    # SQLite can say "database is locked" at once, busy timeout or not,
    # while another process switches a new file to WAL: opening tries again.
    index = tmp_path / ".adicom-index.sqlite"
    code = (
        "import sys; from adicom.archive.index import Index; "
        "Index(sys.argv[1]).close(); print('opened')"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0 and out.strip() == "opened", err
