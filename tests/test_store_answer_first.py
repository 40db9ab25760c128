"""A C-STORE answered in the transport callback: the response leaves before the filing's hooks.

PS3.4 B.2.2 wants the status only once the instance is stored; the storage's
hooks (``on_filed``, ``on_stored``: an archive's index row) only follow the
filing, so they run right after the response is written, in the same
callback (no await between: nobody sees an acknowledged but unindexed
instance), exactly once, and a failing one still answers Success.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import struct
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

import adicom
from adicom.archive import Archive
from adicom.association import Message
from adicom.dimse import Command, CommandField
from adicom.diskinstance import DiskInstance
from adicom.driver import Driver
from adicom.fileformat import encode_dataset
from adicom.serverrequests import RequestServing
from adicom.storage import IncomingInstance, StoreContext, answer_store

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


class FakeAssociation:
    """What _answer_now and answer_store use of an association, noting the order."""

    def __init__(
        self, order: list[str], *, can_send_now: bool = True, watched: bool = False
    ) -> None:
        self.order = order
        self.can_send_now = can_send_now
        self.watched = watched  # hooks or protocol logging listen to its events
        self.responses: list[int] = []

    def respond_now(self, message: Message, status: int, *, write: bool = False) -> bool:
        if not self.can_send_now:
            self.order.append("cannot send now")
            return False
        self.order.append("respond")
        self.responses.append(status)
        if write:
            self.order.append("written")
        return True

    async def respond(self, message: Message, status: int, **fields: Any) -> None:
        self.order.append("respond (task)")
        self.responses.append(status)


def _serving() -> RequestServing:
    serving = RequestServing.__new__(RequestServing)
    serving.audit = None
    return serving


def _received(storage: adicom.DiskStorage) -> tuple[Message, pydicom.Dataset]:
    """A whole C-STORE-RQ whose data set went into ``storage``, as the driver hands it on."""
    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    uid = str(dataset.SOPInstanceUID)
    instance = storage.open(StoreContext("A", "B", CT, uid, EXPLICIT))
    instance.write(memoryview(encode_dataset(dataset, EXPLICIT)))
    command = Command(
        CommandField.C_STORE_RQ,
        message_id=7,
        affected_sop_class_uid=CT,
        affected_sop_instance_uid=uid,
    )
    return Message(1, command, sink=instance), dataset


def _hooked_storage(root: pathlib.Path, order: list[str], calls: list[tuple[Any, ...]]) -> Any:
    def on_filed(
        name: str,
        values: dict[str, str],
        context: StoreContext,
        raw: dict[str, bytes],
        stat: os.stat_result,
    ) -> None:
        order.append("filed")
        # Filed and durable before the response: the file is in place.
        assert os.path.exists(name)
        calls.append((name, dict(values), context, dict(raw), stat.st_size))

    def on_stored(
        path: pathlib.Path, values: dict[str, str], context: StoreContext, raw: dict[str, bytes]
    ) -> None:
        order.append("stored")

    return adicom.DiskStorage(root, on_filed=on_filed, on_stored=on_stored)


def _hooked(
    root: pathlib.Path,
) -> tuple[list[str], list[tuple[Any, ...]], Message, pydicom.Dataset]:
    """A whole C-STORE-RQ received into a storage whose hooks note what they see."""
    order: list[str] = []
    calls: list[tuple[Any, ...]] = []
    message, dataset = _received(_hooked_storage(root, order, calls))
    return order, calls, message, dataset


def test_the_response_is_written_before_the_hooks_which_run_once(tmp_path: pathlib.Path) -> None:
    order, calls, message, dataset = _hooked(tmp_path)
    association = FakeAssociation(order)
    assert _serving()._answer_now(association, message)  # type: ignore[arg-type]
    # Answered, written, then the hooks, all in this one call.
    assert order == ["respond", "written", "filed", "stored"]
    assert association.responses == [0]
    ((name, values, context, raw, size),) = calls
    assert isinstance(raw, dict)
    where = tmp_path / dataset.StudyInstanceUID / dataset.SeriesInstanceUID
    assert name == str(where / f"{dataset.SOPInstanceUID}.dcm")
    assert values["SOPInstanceUID"] == dataset.SOPInstanceUID
    assert context.sop_instance_uid == dataset.SOPInstanceUID
    assert size == os.stat(name).st_size
    # Nothing runs them again: the task's path nor finish_now.
    sink = message.sink
    assert isinstance(sink, IncomingInstance)
    assert sink.finish_now() == 0
    assert asyncio.run(sink.finish()) == 0
    sink.after_answer()
    assert len(calls) == 1 and order.count("stored") == 1


def test_with_event_hooks_listening_the_hooks_run_before_the_response(
    tmp_path: pathlib.Path,
) -> None:
    # A handler of the response's MessageSent (told as it is sent) must not
    # see the instance acknowledged but not indexed: the storage's hooks first.
    order, calls, message, _ = _hooked(tmp_path)
    association = FakeAssociation(order, watched=True)
    assert _serving()._answer_now(association, message)  # type: ignore[arg-type]
    assert order == ["filed", "stored", "respond", "written"]
    assert len(calls) == 1


def test_finish_after_store_now_runs_the_hooks_left(tmp_path: pathlib.Path) -> None:
    # store_now filed it and left the hooks; a finish() (the task's way)
    # that comes next runs them, once.
    order, calls, message, _ = _hooked(tmp_path)
    sink = message.sink
    assert isinstance(sink, IncomingInstance)
    assert sink.store_now() == 0 and order == []
    assert asyncio.run(sink.finish()) == 0
    assert order == ["filed", "stored"]
    sink.after_answer()
    assert sink.finish_now() == 0 and len(calls) == 1


def test_a_finish_now_of_its_own_still_decides(tmp_path: pathlib.Path) -> None:
    # A DiskInstance whose finish_now says None (to be finished by finish(),
    # e.g. after an asynchronous check) is not stored in the callback.
    order, calls, message, _ = _hooked(tmp_path)
    sink = message.sink
    assert isinstance(sink, DiskInstance)
    sink.finish_now = lambda: None  # type: ignore[method-assign]
    association = FakeAssociation(order)
    assert not _serving()._answer_now(association, message)  # type: ignore[arg-type]
    assert order == [] and sink.status is None
    # One that hands on to DiskInstance's (a subclass's super()): stored,
    # the hooks run by it, once, and no loop between the two methods.
    sink.finish_now = lambda: DiskInstance.finish_now(sink)  # type: ignore[method-assign]
    assert _serving()._answer_now(association, message)  # type: ignore[arg-type]
    assert order == ["filed", "stored", "respond", "written"] and len(calls) == 1


def test_hooks_run_in_the_callback_when_the_response_must_wait(tmp_path: pathlib.Path) -> None:
    # Another message is on its way: the status waits for the task, but the
    # instance is filed and its hooks run in the callback all the same.
    order, calls, message, _ = _hooked(tmp_path)
    association = FakeAssociation(order, can_send_now=False)
    assert not _serving()._answer_now(association, message)  # type: ignore[arg-type]
    assert order == ["cannot send now", "filed", "stored"]
    sink = asyncio.run(answer_store(association, message))  # type: ignore[arg-type]
    assert sink is not None and sink.status == 0
    assert order == ["cannot send now", "filed", "stored", "respond (task)"]
    assert association.responses == [0] and len(calls) == 1


def test_a_failing_hook_still_answers_success(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    order: list[str] = []

    def on_filed(*args: object) -> None:
        order.append("filed")
        raise RuntimeError("the index is gone")

    storage = adicom.DiskStorage(tmp_path, on_filed=on_filed)
    message, dataset = _received(storage)
    association = FakeAssociation(order)
    with caplog.at_level(logging.ERROR, logger="adicom"):
        assert _serving()._answer_now(association, message)  # type: ignore[arg-type]
    assert order == ["respond", "written", "filed"]
    assert association.responses == [0]
    assert "the index is gone" in caplog.text
    assert (
        tmp_path
        / dataset.StudyInstanceUID
        / dataset.SeriesInstanceUID
        / f"{dataset.SOPInstanceUID}.dcm"
    ).exists()


@pytest.mark.anyio
async def test_the_archive_has_the_row_right_after_the_callback(tmp_path: pathlib.Path) -> None:
    archive = Archive(tmp_path)
    await archive.open()
    try:
        index = archive._sqlite
        assert index is not None
        order: list[str] = []
        association = FakeAssociation(order)
        message, dataset = _received(archive.storage)
        uid = str(dataset.SOPInstanceUID)
        responded = association.respond_now

        def respond_now(message: Message, status: int, *, write: bool = False) -> bool:
            # When the response is made, the row is not there yet...
            assert index.pending_path(uid) is None
            return responded(message, status, write=write)

        association.respond_now = respond_now  # type: ignore[method-assign]
        assert _serving()._answer_now(association, message)  # type: ignore[arg-type]
        # ... and right after the callback it is.
        sink = message.sink
        assert isinstance(sink, IncomingInstance) and sink.path is not None
        assert index.pending_path(uid) == str(sink.path)
        assert order == ["respond", "written"]
    finally:
        await archive.aclose()
    reopened = Archive(tmp_path)
    await reopened.open()
    try:
        assert reopened._sqlite is not None
        assert reopened._sqlite.path_of(uid) == sink.path
    finally:
        await reopened.aclose()


@pytest.mark.anyio
async def test_a_server_writes_each_response_before_the_hooks(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real path: the server's association writes the C-STORE-RSP
    # (Driver._write_now) before on_filed runs, instance after instance.
    order: list[str] = []
    write_now = Driver._write_now

    def recorded(self: Driver) -> None:
        write_now(self)
        order.append("written")

    monkeypatch.setattr(Driver, "_write_now", recorded)
    storage = adicom.DiskStorage(
        tmp_path, on_filed=lambda name, values, context, raw, stat: order.append("filed")
    )
    source = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    contexts = [(CT, [EXPLICIT])]
    async with adicom.Server(port=0, ae_title="ANY-SCP", storage=storage) as scp:
        async with adicom.connect("127.0.0.1", scp.port, contexts=contexts) as assoc:
            for number in range(3):
                source.SOPInstanceUID = f"1.2.3.4.{number}"
                result = await adicom.store_instance(assoc, source)
                assert result.status == 0
        async with asyncio.timeout(10):
            await scp.wait_idle()
    assert order == ["written", "filed"] * 3


def test_a_warning_goes_the_task_s_way_with_the_hooks_run_once(tmp_path: pathlib.Path) -> None:
    # A group 0002 inside the data set is dropped: stored, with a warning
    # (0xB006) whose comment the task's response carries. The hooks still
    # run in the callback, once, before the task answers.
    order: list[str] = []
    calls: list[tuple[Any, ...]] = []
    storage = _hooked_storage(tmp_path, order, calls)
    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    uid = str(dataset.SOPInstanceUID)
    value = EXPLICIT.encode() + b"\0"
    meta = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(value)) + value
    instance = storage.open(StoreContext("A", "B", CT, uid, EXPLICIT))
    instance.write(memoryview(meta + encode_dataset(dataset, EXPLICIT)))
    command = Command(
        CommandField.C_STORE_RQ,
        message_id=3,
        affected_sop_class_uid=CT,
        affected_sop_instance_uid=uid,
    )
    message = Message(1, command, sink=instance)
    association = FakeAssociation(order)
    assert not _serving()._answer_now(association, message)  # type: ignore[arg-type]
    assert order == ["filed", "stored"] and instance.status == 0xB006
    assert asyncio.run(answer_store(association, message)) is instance  # type: ignore[arg-type]
    assert order == ["filed", "stored", "respond (task)"]
    assert association.responses == [0xB006] and len(calls) == 1
