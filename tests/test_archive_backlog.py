"""The archive's SQLite index when it cannot be written for a while: bounded work, bounded memory.

While another process holds the index's write lock (or its disk is full)
stored instances wait in memory as pending changes; past ``max_pending``
C-STOREs are refused with 0xA700 and nothing of them is kept. When the
index can be written again, the backlog goes in chunks of at most
``Index.chunk`` changes, other callbacks running between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import pathlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom import archive as archive_module
from adicom.archive import Archive
from adicom.archive.index import Index
from adicom.archive.matching import ATTRIBUTES, ROW_COLUMNS, make_row
from adicom.dimse import Status
from tests.test_archive import INDEX_NAME, TREE, _file_directly, filed_at, serving

pytestmark = pytest.mark.anyio


def instances(count: int) -> list[Dataset]:
    """``count`` instances of one series, each with a SOP Instance UID of its own."""
    series = generate_uid()
    made = []
    for number in range(count):
        ds = copy.deepcopy(TREE.instances[0])
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number + 1
        made.append(ds)
    return made


@contextlib.contextmanager
def locked(database: pathlib.Path) -> Iterator[sqlite3.Connection]:
    """Another process's connection holding the index's write lock (until the block ends)."""
    other = sqlite3.connect(database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
        other.execute("ROLLBACK")
    finally:
        other.close()


def committed(database: pathlib.Path) -> set[str]:
    """The SOP Instance UIDs another reader of the index sees."""
    with contextlib.closing(sqlite3.connect(database)) as other:
        return {uid for (uid,) in other.execute("SELECT sop_instance_uid FROM instances")}


def commits_of(index: Index, turn: Callable[[], int] = lambda: 0) -> list[tuple[int, int, int]]:
    """Each transaction the index writes from now on: (changes pending before, after, turn())."""
    commits: list[tuple[int, int, int]] = []
    commit = index.commit

    def counted(limit: int | None = None) -> None:
        before = index.pending
        commit(limit)
        commits.append((before, index.pending, turn()))

    index.commit = counted  # type: ignore[method-assign]
    return commits


async def written(archive: Archive) -> None:
    """Wait (bounded) until the archive's index has nothing pending."""
    assert archive._sqlite is not None
    with anyio.fail_after(20):
        while archive._sqlite.pending:
            await archive.wait_committed()
            await asyncio.sleep(0)


@pytest.mark.parametrize("failure", ["locked", "full"])
async def test_stores_past_max_pending_are_refused_and_nothing_acknowledged_is_lost(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    caplog.set_level(logging.INFO, "adicom")
    monkeypatch.setattr(archive_module, "COMMIT_RETRY", 0.05)
    root = tmp_path / "archive"
    archive = Archive(root, max_pending=5)
    await archive.open()
    database = root / INDEX_NAME
    sent = instances(12)
    try:
        async with serving(archive) as node:
            with contextlib.ExitStack() as failing:
                if failure == "locked":
                    failing.enter_context(locked(database))
                else:
                    index = archive._sqlite
                    assert index is not None

                    def full(limit: int | None = None) -> None:
                        raise sqlite3.OperationalError("database or disk is full")

                    failing.enter_context(monkeypatch.context()).setattr(index, "commit", full)
                results = await adicom.store(node.host, node.port, sent, called_ae=node.aet)
            # The first five (and those the client had in flight meanwhile:
            # its asynchronous operations window) wait in memory; the rest are
            # refused, not stored.
            stored = sum(r.status == Status.SUCCESS for r in results)
            assert 5 <= stored < 9
            assert [r.status for r in results] == [Status.SUCCESS] * stored + [
                Status.OUT_OF_RESOURCES
            ] * (12 - stored)
            assert all("index is behind" in (r.error or "") for r in results[stored:])
            for ds in sent[stored:]:
                assert not filed_at(root, ds).exists()
            assert not list((root / ".incoming").iterdir())
            refusals = [r for r in caplog.records if "C-STOREs are refused" in r.getMessage()]
            assert len(refusals) == 1  # one line, not one per instance

            # The index is written again: everything acknowledged is indexed
            # and found, and stores are accepted again.
            await written(archive)
            accepted = {str(ds.SOPInstanceUID) for ds in sent[:stored]}
            assert committed(database) == accepted
            images = await adicom.DicomClient().find_images(
                adicom.ImageQuery(
                    study_instance_uid=str(sent[0].StudyInstanceUID),
                    series_instance_uid=str(sent[0].SeriesInstanceUID),
                ),
                node,
            )
            assert {i.sop_instance_uid for i in images} == accepted
            # (Three: the commit comes within COMMIT_DELAY, after the burst.)
            again = sent[stored : stored + 3]
            results = await adicom.store(node.host, node.port, again, called_ae=node.aet)
            assert all(r.ok for r in results)
            assert "C-STOREs are accepted again" in caplog.text
            await written(archive)
            assert committed(database) == accepted | {str(ds.SOPInstanceUID) for ds in again}
    finally:
        archive.close()


async def test_a_backlog_is_written_in_chunks_with_other_callbacks_between(
    tmp_path: pathlib.Path,
) -> None:
    archive = Archive(tmp_path)
    await archive.open()
    index = archive._sqlite
    assert index is not None
    index.chunk = 8
    database = tmp_path / INDEX_NAME
    loop = asyncio.get_running_loop()
    # A callback that runs at every turn of the loop: how many turns passed.
    turns = 0
    ticking = True

    def tick() -> None:
        nonlocal turns
        turns += 1
        if ticking:
            loop.call_soon(tick)

    # Each transaction written, and the turn it ran in.
    commits = commits_of(index, lambda: turns)
    sent = instances(50)
    try:
        with locked(database):
            for ds in sent:
                assert _file_directly(archive, ds) == Status.SUCCESS
            assert index.pending == 50
            await asyncio.sleep(archive_module.COMMIT_DELAY * 3)  # tries, all busy
            assert not commits
        loop.call_soon(tick)
        # One wait: every chunk of what was changed before it.
        with anyio.fail_after(20):
            await archive.wait_committed()
        ticking = False
        assert index.pending == 0
        assert committed(database) == {str(ds.SOPInstanceUID) for ds in sent}
        # Seven transactions of at most 8 changes, other callbacks between each.
        assert [(before - after) for before, after, _ in commits] == [8] * 6 + [2]
        ran_at = [at for _, _, at in commits]
        assert all(later > earlier for earlier, later in itertools.pairwise(ran_at))
    finally:
        ticking = False
        archive.close()


async def test_a_query_commits_one_chunk_of_a_backlog(tmp_path: pathlib.Path) -> None:
    # A query's flush is bounded too: it sees what is committed and one chunk more.
    archive = Archive(tmp_path)
    await archive.open()
    index = archive._sqlite
    assert index is not None
    index.chunk = 4
    try:
        with locked(tmp_path / INDEX_NAME):
            for ds in instances(10):
                assert _file_directly(archive, ds) == Status.SUCCESS
        assert index.count() == 4
        assert index.pending == 6
        archive.flush()  # everything, at once
        assert index.pending == 0 and index.count() == 10
    finally:
        archive.close()


def _values(uid: str) -> dict[str, str]:
    return {"SOPInstanceUID": uid, "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"}


def _touch(path: pathlib.Path) -> str:
    path.write_bytes(b"x")
    return str(path)


_UID, _PATH = ROW_COLUMNS.index("sop_instance_uid"), ROW_COLUMNS.index("path")


def _committed_paths(index: Index) -> dict[str, str]:
    """SOP Instance UID -> path of the committed rows."""
    return {str(row[_UID]): str(row[_PATH]) for rows in index.rows() for row in rows}


def test_displaced_copies_and_removals_across_chunks(tmp_path: pathlib.Path) -> None:
    index = Index(tmp_path / "index.sqlite", chunk=2)
    try:
        a, b, c = (_touch(tmp_path / name) for name in ("a", "b", "c"))
        index.add(_values("X"), a, "")
        index.commit()
        # X again at b (displacing its copy at a), after two others; then a
        # new instance Y at a, in a later chunk: a's file is Y's now, kept.
        index.add(_values("P"), _touch(tmp_path / "p"), "")
        index.add(_values("Q"), _touch(tmp_path / "q"), "")
        index.add(_values("X"), b, "", displace=True)
        index.add(_values("Y"), a, "")
        # A removal of a path a pending row holds drops that row.
        index.add(_values("Z"), c, "")
        index.remove_path(c)
        assert index.pending == 5  # P, Q, X, Y and c's removal
        serial = index.serial
        index.commit(2)  # the removal first, then P
        assert not index.written(serial)
        assert _committed_paths(index) == {"X": a, "P": str(tmp_path / "p")}
        index.commit(2)  # Q and X (at b): a is held by Y, pending
        assert _committed_paths(index)["X"] == b
        assert pathlib.Path(a).exists()
        # P stored again between chunks keeps no place in the queue: pending anew.
        index.add(_values("P"), _touch(tmp_path / "p2"), "", displace=True)
        index.commit(2)  # Y at a, and P at p2 (its committed copy at p goes)
        assert index.written(serial) and index.pending == 0
        assert _committed_paths(index) == {
            "X": b,
            "P": str(tmp_path / "p2"),
            "Q": str(tmp_path / "q"),
            "Y": a,
        }
        assert pathlib.Path(a).exists() and pathlib.Path(b).exists()
        assert not (tmp_path / "p").exists()
    finally:
        index.close()


def test_add_tells_the_pending_copy_a_displacing_row_replaces(tmp_path: pathlib.Path) -> None:
    # Archive._stored removes that file with no lookup of its own (add's answer).
    index = Index(tmp_path / "index.sqlite")
    try:
        assert index.add(_values("A"), tmp_path / "a", "", displace=True) is None
        # Stored again elsewhere while pending: the first copy's path.
        assert index.add(_values("A"), tmp_path / "a2", "", displace=True) == str(tmp_path / "a")
        # Again at the same path: nothing to remove (the rename replaced it).
        assert index.add(_values("A"), tmp_path / "a2", "", displace=True) is None
        # Without displace the caller keeps the other copy: nothing told.
        assert index.add(_values("A"), tmp_path / "a3", "") is None
        index.commit()
        # Committed: the commit finds the copy elsewhere, not add().
        assert index.add(_values("A"), tmp_path / "a4", "", displace=True) is None
        assert index.pending_path("A") == str(tmp_path / "a4")
    finally:
        index.close()


def test_a_row_changed_again_keeps_its_first_number(tmp_path: pathlib.Path) -> None:
    # What wait_committed() relies on: a change is written only when the row
    # it made pending is, whatever came after.
    index = Index(tmp_path / "index.sqlite", chunk=1)
    try:
        index.add(_values("A"), tmp_path / "a", "")
        index.add(_values("B"), tmp_path / "b", "")
        first = index.serial
        index.add(_values("A"), tmp_path / "a2", "")  # A changed again: still first
        assert not index.written(first)
        index.commit(1)
        assert _committed_paths(index) == {"A": str(tmp_path / "a2")}
        assert not index.written(first)  # B waits
        index.add(_values("A"), tmp_path / "a3", "")  # pending anew, after B
        index.commit(1)
        assert index.written(first) and not index.written(index.serial)
        index.commit(1)
        assert index.written(index.serial)
    finally:
        index.close()


def test_serve_takes_index_max_pending(capsys: pytest.CaptureFixture[str]) -> None:
    from adicom.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["serve", "--storage", "x", "--index-max-pending", "7"])
    assert args.index_max_pending == 7
    assert parser.parse_args(["serve"]).index_max_pending == archive_module.DEFAULT_MAX_PENDING
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--index-max-pending", "0"])
    assert "--index-max-pending" in capsys.readouterr().err


async def test_a_working_index_refuses_nothing_however_small_max_pending(
    tmp_path: pathlib.Path,
) -> None:
    # max_pending far below a chunk: a working index is brought forward to
    # the next loop turn as changes pile up, and no store is refused.
    archive = Archive(tmp_path, max_pending=4)
    await archive.open()
    index = archive._sqlite
    assert index is not None
    storage = archive.storage
    peak = 0
    try:
        for ds in instances(60):
            assert _file_directly(archive, ds) == Status.SUCCESS
            assert not getattr(storage, "refusing", False)
            peak = max(peak, index.pending)
            await asyncio.sleep(0)  # the next turn: the commit brought forward
            await asyncio.sleep(0)
        assert peak <= 2
        await written(archive)
    finally:
        archive.close()


async def test_past_twice_max_pending_stores_are_refused_even_with_a_working_index(
    tmp_path: pathlib.Path,
) -> None:
    # The memory bound holds whatever the reason: changes made faster than
    # the loop turns (here, all in one callback) are refused past twice
    # max_pending, and accepted again once half are written.
    archive = Archive(tmp_path, max_pending=4)
    await archive.open()
    sent = instances(12)
    try:
        statuses = [_file_directly(archive, ds) for ds in sent]
        assert statuses == [Status.SUCCESS] * 8 + [Status.OUT_OF_RESOURCES] * 4
        for ds in sent[8:]:
            assert not filed_at(tmp_path, ds).exists()
        await written(archive)
        assert _file_directly(archive, sent[8]) == Status.SUCCESS
    finally:
        archive.close()


def test_stores_are_admitted_again_once_half_are_written(tmp_path: pathlib.Path) -> None:
    archive = Archive(tmp_path, max_pending=10)
    index = archive._sqlite
    assert index is not None
    try:
        for number in range(6):
            index.add(_values(f"1.2.{number}"), tmp_path / f"f{number}", "")
        assert not archive._admit()  # 6 of 10 waiting: more than half
        index.commit(1)
        assert archive._admit()  # 5: half
    finally:
        archive.close()


async def test_open_writes_a_backlog_a_chunk_per_loop_turn(tmp_path: pathlib.Path) -> None:
    # adicom serve opens (scans) the archive while it serves: what piled up
    # meanwhile is written in chunks there too, not in one transaction.
    archive = Archive(tmp_path)
    await archive.open()
    index = archive._sqlite
    assert index is not None
    index.chunk = 16
    commits = commits_of(index)
    try:
        with locked(tmp_path / INDEX_NAME):
            for ds in instances(100):
                assert _file_directly(archive, ds) == Status.SUCCESS
        await archive.open()  # (it reads the files not committed yet again: harmless)
        await written(archive)
        written_per_commit = [before - after for before, after, _ in commits]
        assert len(committed(tmp_path / INDEX_NAME)) == 100
        assert len(written_per_commit) > 100 // 16
        assert max(written_per_commit) <= 16
    finally:
        archive.close()


def test_a_commit_of_no_change_still_writes_one(tmp_path: pathlib.Path) -> None:
    # A limit below 1 (a chunk set to 0) would otherwise write nothing and
    # schedule itself again at every loop turn.
    index = Index(tmp_path / "index.sqlite")
    try:
        index.add(_values("1.2"), tmp_path / "x", "")
        index.commit(0)
        assert index.pending == 0
    finally:
        index.close()


def test_a_superseded_change_is_not_written_until_what_superseded_it_is(
    tmp_path: pathlib.Path,
) -> None:
    # wait_committed() must not return while another reader still sees the
    # row a pending change replaced.
    index = Index(tmp_path / "index.sqlite", chunk=1)
    try:
        index.add(_values("A"), tmp_path / "shared", "")
        index.add(_values("Q"), tmp_path / "q", "")
        first = index.serial - 1  # A's
        index.add(_values("B"), tmp_path / "shared", "")  # B takes A's file
        assert not index.written(first)
        index.commit(1)  # Q (A's place in the queue is gone)
        assert not index.written(first)
        index.commit(1)  # B
        assert index.written(first)
        # A removal of a pending row's path inherits that row's number.
        index.add(_values("C"), tmp_path / "c", "")
        index.add(_values("R"), tmp_path / "r", "")
        mark = index.serial - 1  # C's
        index.remove_path(tmp_path / "c")
        index.commit(1)  # the removal (removals go first)
        assert index.written(mark)
        assert not index.written(index.serial)  # R
    finally:
        index.close()


async def test_an_instance_filed_after_close_schedules_no_commit(tmp_path: pathlib.Path) -> None:
    # One in flight as the server closes: its row is not retried forever
    # against the closed index (opening the archive again indexes its file).
    archive = Archive(tmp_path)
    await archive.open()
    archive.close()
    assert _file_directly(archive, instances(1)[0]) == Status.SUCCESS
    assert archive._commit_timer is None


def test_a_row_has_no_none_where_a_value_is_none() -> None:
    # Every keyword given (a receiver's values), one of them None: "" in the row.
    values: dict[str, str | None] = dict.fromkeys(ATTRIBUTES, "1")
    values["PatientName"] = None
    row = make_row(values, "/a.dcm", "1.2.840.10008.1.2")  # type: ignore[arg-type]
    assert None not in row
    assert row[ROW_COLUMNS.index("patient_name")] == ""
    assert row[ROW_COLUMNS.index("patient_id")] == "1"


def test_the_lookup_of_displaced_copies_takes_few_statements(tmp_path: pathlib.Path) -> None:
    # A commit's size is whatever came meanwhile: one statement text per size
    # would churn the connection's statement cache (128 places), the INSERT's too.
    index = Index(tmp_path / "index.sqlite")
    seen: set[str] = set()
    try:
        index._db.set_trace_callback(
            lambda sql: seen.add(sql) if sql.startswith("SELECT sop_instance_uid, path") else None
        )
        for size in range(1, 21):
            for n in range(size):
                index.add(_values(f"{size}.{n}"), tmp_path / f"{size}-{n}", "", displace=True)
            index.commit()
        assert index.add(_values("1.0"), tmp_path / "again", "", displace=True) is None
        (tmp_path / "1-0").write_bytes(b"x")
        index.commit()  # the committed copy of 1.0 is found (padding matches it once)
        assert not (tmp_path / "1-0").exists()
        assert _committed_paths(index)["1.0"] == str(tmp_path / "again")
    finally:
        index.close()
    # The traced text has the values bound: 8, 16 and 32 UIDs.
    assert sorted({sql.count("', '") + 1 for sql in seen}) == [8, 16, 32]


def test_a_commit_of_any_size_writes_every_row_as_made(tmp_path: pathlib.Path) -> None:
    # Rows go in INSERT statements of several rows (32, then powers of two):
    # every size from 1 to past two full statements writes each row whole,
    # its values in their columns, none left out and none twice.
    index = Index(tmp_path / "index.sqlite")
    made: dict[str, list[str | int]] = {}
    try:
        for size in range(1, 2 * 32 + 8):
            for n in range(size):
                uid = f"{size}.{n}"
                values = dict.fromkeys(ATTRIBUTES, "")
                values.update(_values(uid), PatientName=f"P^{n}", InstanceNumber=str(n))
                where = tmp_path / f"{size}-{n}"
                index.add(values, where, "1.2.840.10008.1.2", n, size)
                made[uid] = make_row(values, where, "1.2.840.10008.1.2", n, size)
            index.commit()
            assert index.pending == 0
        committed = {str(row[_UID]): row for rows in index.rows() for row in rows}
        assert committed == made
    finally:
        index.close()


def test_rows_of_one_commit_replace_committed_ones_by_uid_and_by_path(
    tmp_path: pathlib.Path,
) -> None:
    # Each row of a multi-row INSERT resolves its own conflicts, as a
    # statement per row did: the same UID elsewhere, another UID's path.
    index = Index(tmp_path / "index.sqlite")
    try:
        for n in range(40):
            index.add(_values(f"old.{n}"), tmp_path / f"old-{n}", "")
        index.commit()
        for n in range(40):
            if n % 2:
                index.add(_values(f"old.{n}"), tmp_path / f"moved-{n}", "")  # its UID again
            else:
                index.add(_values(f"new.{n}"), tmp_path / f"old-{n}", "")  # another's file
        index.commit()
        paths = _committed_paths(index)
        assert len(paths) == 40
        for n in range(40):
            if n % 2:
                assert paths[f"old.{n}"] == str(tmp_path / f"moved-{n}")
            else:
                assert f"old.{n}" not in paths
                assert paths[f"new.{n}"] == str(tmp_path / f"old-{n}")
    finally:
        index.close()


def test_inserts_take_a_handful_of_statements(tmp_path: pathlib.Path) -> None:
    # One statement text per commit size would churn the connection's cache.
    index = Index(tmp_path / "index.sqlite")
    seen: set[int] = set()
    try:
        index._db.set_trace_callback(
            lambda sql: seen.add(sql.count("), (") + 1) if sql.startswith("INSERT") else None
        )
        for size in range(1, 100):
            for n in range(size):
                index.add(_values(f"{size}.{n}"), tmp_path / f"{size}-{n}", "")
            index.commit()
    finally:
        index.close()
    assert seen == {1, 2, 4, 8, 16, 32}


class _FailingCommit:
    """An index's connection whose next COMMIT fails (a full disk), the rest passed on."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.fail = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.fail:
            self.fail = False
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def test_rows_of_a_failed_commit_are_written_whole_by_the_next(tmp_path: pathlib.Path) -> None:
    # The INSERTs went in and the COMMIT failed: the pending rows, which the
    # INSERTs' parameters were gathered from, are written unchanged next time.
    index = Index(tmp_path / "index.sqlite")
    made: dict[str, list[str | int]] = {}
    try:
        for n in range(45):
            values = _values(f"1.{n}")
            index.add(values, tmp_path / f"{n}", "1.2.840.10008.1.2", n, n)
            made[f"1.{n}"] = make_row(values, tmp_path / f"{n}", "1.2.840.10008.1.2", n, n)
        real = index._db
        index._db = _FailingCommit(real)  # type: ignore[assignment]
        with pytest.raises(sqlite3.OperationalError):
            index.commit()
        assert index.pending == 45
        index.commit()
        index._db = real
        assert {str(row[_UID]): row for rows in index.rows() for row in rows} == made
    finally:
        index.close()
