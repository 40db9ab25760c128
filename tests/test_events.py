"""Event hooks (adicom.events) and the protocol logging built on them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import adicom
from adicom import events, qrscu
from adicom.events import Event, Hooks
from adicom.pdu import AAbort, AAssociateRJ, UserIdentityRQ
from adicom.qrscp import QRContext
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"
CT_FILE = str(get_testdata_file("CT_small.dcm"))


def describe(event: Event) -> str:
    """One short word per event, enough to check the order."""
    if isinstance(event, events.MessageSent):
        return "sent " + event.command.name
    if isinstance(event, events.MessageReceived):
        return "received " + event.message.command.name
    if isinstance(event, events.PduSent | events.PduReceived):
        name = events.describe_pdu(event.pdu).split(",")[0]
        return ("pdu sent " if isinstance(event, events.PduSent) else "pdu received ") + name
    return type(event).__name__


class Recorder:
    """Hooks that write down what they see."""

    def __init__(self, kind: type[Event] = Event) -> None:
        self.hooks = Hooks()
        self.events: list[Event] = []
        self.hooks.subscribe(kind, self.events.append)

    @property
    def names(self) -> list[str]:
        return [describe(e) for e in self.events]


async def find_handler(identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
    for number in (1, 2):
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = f"1.2.3.{number}"
        match.PatientID = f"PAT{number}"
        yield match


@contextlib.asynccontextmanager
async def server(**options: Any) -> AsyncIterator[adicom.Server]:
    options.setdefault("ae_title", "ANY-SCP")
    async with adicom.Server(port=0, **options) as scp:
        yield scp


def study_query() -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientID = ""
    return identifier


# -- order ---------------------------------------------------------------------


async def test_an_echo_is_seen_in_order_on_both_sides_pdus_included() -> None:
    ours, theirs = Recorder(), Recorder()
    async with server(hooks=theirs.hooks) as scp:
        async with adicom.connect("127.0.0.1", scp.port, hooks=ours.hooks) as assoc:
            await assoc.echo()
        async with asyncio.timeout(10):
            await scp.wait_idle()
    assert ours.names == [
        "Requested",
        "pdu sent A-ASSOCIATE-RQ",
        "pdu received A-ASSOCIATE-AC",
        "Accepted",
        "pdu sent P-DATA-TF",
        "sent C-ECHO-RQ",
        "pdu received P-DATA-TF",
        "received C-ECHO-RSP",
        "pdu sent A-RELEASE-RQ",
        "pdu received A-RELEASE-RP",
        "Released",
    ]
    assert theirs.names == [
        "pdu received A-ASSOCIATE-RQ",
        "Requested",
        "pdu sent A-ASSOCIATE-AC",
        "Accepted",
        "pdu received P-DATA-TF",
        "received C-ECHO-RQ",
        "pdu sent P-DATA-TF",
        "sent C-ECHO-RSP",
        "pdu received A-RELEASE-RQ",
        "pdu sent A-RELEASE-RP",
        "Released",
    ]
    assert all(e.association is assoc for e in ours.events)
    released = ours.events[-1]
    assert isinstance(released, events.Released) and not released.by_peer
    served = theirs.events[-1]
    assert isinstance(served, events.Released) and served.by_peer
    assert served.association.requestor is False


async def test_a_store_and_a_find_are_seen_message_by_message() -> None:
    ours, theirs = Recorder(events.Lifecycle), Recorder(events.Lifecycle)
    for recorder in (ours, theirs):
        recorder.hooks.subscribe(events.MessageSent, recorder.events.append)
        recorder.hooks.subscribe(events.MessageReceived, recorder.events.append)
    storage = adicom.MemoryStorage()
    contexts = [(CT, [EXPLICIT, IMPLICIT]), *qrscu.find_contexts()]
    async with server(hooks=theirs.hooks, storage=storage, on_find=find_handler) as scp:
        async with adicom.connect(
            "127.0.0.1", scp.port, contexts=contexts, hooks=ours.hooks
        ) as assoc:
            result = await adicom.store_instance(assoc, CT_FILE)
            assert result.status == 0
            async with qrscu.find(assoc, study_query()) as matches:
                found = [m.PatientID async for m in matches]
        async with asyncio.timeout(10):
            await scp.wait_idle()
    assert found == ["PAT1", "PAT2"] and len(storage.datasets) == 1
    assert ours.names == [
        "Requested",
        "Accepted",
        "sent C-STORE-RQ",
        "received C-STORE-RSP",
        "sent C-FIND-RQ",
        "received C-FIND-RSP",
        "received C-FIND-RSP",
        "received C-FIND-RSP",
        "Released",
    ]
    assert theirs.names == [
        "Requested",
        "Accepted",
        "received C-STORE-RQ",
        "sent C-STORE-RSP",
        "received C-FIND-RQ",
        "sent C-FIND-RSP",
        "sent C-FIND-RSP",
        "sent C-FIND-RSP",
        "Released",
    ]
    store = ours.events[2]
    assert isinstance(store, events.MessageSent) and store.dataset is not None
    stored = theirs.events[2]
    # The SCP streams the data set into its storage: the message says so.
    assert isinstance(stored, events.MessageReceived) and stored.message.sink is not None
    statuses = [
        e.message.command.status for e in ours.events if isinstance(e, events.MessageReceived)
    ]
    assert statuses == [0x0000, 0xFF00, 0xFF00, 0x0000]


async def test_an_abort_is_seen_by_both_sides_with_its_source() -> None:
    ours, theirs = Recorder(events.Lifecycle), Recorder(events.Lifecycle)
    async with server(hooks=theirs.hooks) as scp:
        assoc = await adicom.open_association("127.0.0.1", scp.port, hooks=ours.hooks)
        await assoc.echo()
        assoc.abort()
        await assoc.wait_closed()
        async with asyncio.timeout(10):
            await scp.wait_idle()
    assert ours.names == theirs.names == ["Requested", "Accepted", "Aborted"]
    mine, peers = ours.events[-1], theirs.events[-1]
    assert isinstance(mine, events.Aborted) and isinstance(peers, events.Aborted)
    assert (mine.local, mine.source, mine.reason) == (True, 0, 0)
    assert (peers.local, peers.source, peers.reason) == (False, 0, 0)
    assert isinstance(peers.error, adicom.AssociationAborted)


async def test_a_connection_lost_under_a_request_is_an_abort_without_a_pdu() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)
        writer.close()

    ours = Recorder(events.Lifecycle)
    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        with pytest.raises(adicom.ConnectionClosed):
            await adicom.open_association("127.0.0.1", port, hooks=ours.hooks)
    assert ours.names == ["Requested", "Aborted"]
    aborted = ours.events[-1]
    assert isinstance(aborted, events.Aborted)
    assert (aborted.local, aborted.source, aborted.reason) == (False, None, None)
    assert isinstance(aborted.error, adicom.ConnectionClosed)


async def test_a_rejection_is_seen_by_both_sides_with_its_reason() -> None:
    ours, theirs = Recorder(events.Lifecycle), Recorder(events.Lifecycle)
    async with server(hooks=theirs.hooks) as scp:
        with pytest.raises(adicom.AssociationRejected):
            await adicom.open_association(
                "127.0.0.1", scp.port, called_ae="NOBODY", hooks=ours.hooks
            )
        async with asyncio.timeout(10):
            await scp.wait_idle()
    assert ours.names == theirs.names == ["Requested", "Rejected"]  # and no abort after
    for rejected in (ours.events[-1], theirs.events[-1]):
        assert isinstance(rejected, events.Rejected)
        assert rejected.response == AAssociateRJ(1, 1, 7)
        assert rejected.reason.startswith("called-AE-title-not-recognized")


# -- handlers that misbehave, or await ---------------------------------------------


async def test_a_raising_hook_is_logged_and_the_association_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def broken(event: Event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("hook bug")

    hooks = Hooks()
    hooks.subscribe(Event, broken)
    async with server(hooks=hooks) as scp:
        async with adicom.connect("127.0.0.1", scp.port, hooks=hooks) as assoc:
            for _ in range(3):
                assert await assoc.echo() == 0
        async with asyncio.timeout(10):
            await scp.wait_idle()
        assert scp.stats["released"] == 1
    assert calls >= 2 * (3 + 2 * 3 + 3 + 3)  # every lifecycle, message and PDU, both sides
    failures = [r for r in caplog.records if r.name == "adicom.events"]
    assert len(failures) == calls
    assert all(r.levelno == logging.ERROR and r.exc_info for r in failures)
    assert any(r.getMessage().startswith("the Accepted hook <function") for r in failures)


async def test_a_coroutine_hook_runs_as_a_task_and_its_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    ran = asyncio.Event()

    async def slow(event: Event) -> None:
        await asyncio.sleep(0.01)  # a hook that awaits holds nothing up
        seen.append(type(event).__name__)
        if isinstance(event, events.Released):
            ran.set()

    async def broken(event: events.Accepted) -> None:
        await asyncio.sleep(0)
        raise ValueError("async hook bug")

    hooks = Hooks()
    hooks.subscribe(events.Lifecycle, slow)
    hooks.on(events.Accepted)(broken)
    async with server() as scp:
        async with adicom.connect("127.0.0.1", scp.port, hooks=hooks) as assoc:
            await assoc.echo()
            assert seen == []  # still sleeping: the protocol did not wait for them
    async with asyncio.timeout(10):
        await ran.wait()
    assert seen == ["Requested", "Accepted", "Released"]
    failed = [r for r in caplog.records if r.name == "adicom.events"]
    assert len(failed) == 1 and "the Accepted hook" in failed[0].getMessage()
    assert failed[0].exc_info is not None and "async hook bug" in str(failed[0].exc_info[1])


def test_hooks_subscribe_unsubscribe_and_refuse_what_is_no_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="adicom")
    hooks = Hooks()
    with pytest.raises(TypeError):
        hooks.subscribe(int, print)  # type: ignore[type-var]

    def handler(event: Event) -> None:
        pass

    assert hooks.subscribe(events.Lifecycle, handler) is handler
    assert hooks.handlers(events.Aborted) == [handler]
    assert hooks.handlers(events.MessageSent) == []
    emitter = events.emitter(hooks)
    assert emitter is not None and emitter.wants(events.Requested)
    assert not emitter.wants(events.MessageSent) and not emitter.pdus
    hooks.unsubscribe(events.Lifecycle, handler)
    assert len(hooks) == 0 and events.emitter(hooks) is None


# -- nothing subscribed costs nothing ------------------------------------------------


def forbid(monkeypatch: pytest.MonkeyPatch, *kinds: type[Event]) -> None:
    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"a {type(self).__name__} event was made")

    for kind in kinds:
        monkeypatch.setattr(kind, "__init__", refuse)


async def test_without_hooks_or_logging_no_event_is_made(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="adicom")
    forbid(monkeypatch, *events.KINDS)
    with pytest.raises(AssertionError):
        events.Released(None, True)  # type: ignore[arg-type]  # the trap is set
    storage = adicom.MemoryStorage()
    contexts = [(VERIFICATION, [IMPLICIT]), (CT, [EXPLICIT]), *qrscu.find_contexts()]
    async with server(storage=storage, on_find=find_handler) as scp:
        async with adicom.connect("127.0.0.1", scp.port, contexts=contexts) as assoc:
            assert assoc._emitter is None and assoc._ul.trace is None
            assert await assoc.echo() == 0
            assert (await adicom.store_instance(assoc, CT_FILE)).status == 0
            async with qrscu.find(assoc, study_query()) as matches:
                assert len([m async for m in matches]) == 2
        async with asyncio.timeout(10):
            await scp.wait_idle()
        assert scp.stats["released"] == 1 and scp.stats["aborted"] == 0


async def test_lifecycle_hooks_alone_make_no_message_or_pdu_event(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="adicom")
    forbid(
        monkeypatch, events.MessageSent, events.MessageReceived, events.PduSent, events.PduReceived
    )
    ours = Recorder(events.Lifecycle)
    async with server() as scp:
        async with adicom.connect("127.0.0.1", scp.port, hooks=ours.hooks) as assoc:
            assert assoc._ul.trace is None
            assert await assoc.echo() == 0
    assert ours.names == ["Requested", "Accepted", "Released"]


# -- protocol logging --------------------------------------------------------------


async def test_info_logging_tells_the_lifecycle_and_each_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="adicom")
    async with server() as scp:
        address = f"127.0.0.1:{scp.port}"
        async with adicom.connect("127.0.0.1", scp.port, calling_ae="CLARINET") as assoc:
            await assoc.echo()
        with pytest.raises(adicom.AssociationRejected):
            await adicom.open_association("127.0.0.1", scp.port, called_ae="NOBODY")
        assoc = await adicom.open_association("127.0.0.1", scp.port)
        assoc.abort()
        await assoc.wait_closed()
        async with asyncio.timeout(10):
            await scp.wait_idle()
    lines = [r.getMessage() for r in caplog.records if r.name == "adicom.association"]
    assert f"requesting an association from CLARINET to ANY-SCP at {address}" in lines[0]
    assert any(
        line.startswith(f"association accepted by ANY-SCP at {address}: 1 of 1 presentation")
        for line in lines
    )
    assert any(line.startswith("association requested by CLARINET at 127.0.0.1:") for line in lines)
    assert f"association with ANY-SCP at {address} released (asked by us)" in lines
    assert any(
        line.startswith(f"association rejected by NOBODY at {address}: called-AE-title")
        and "[result 1, source 1, reason 7]" in line
        for line in lines
    )
    assert any(
        line.startswith("rejected the association of ADICOM at 127.0.0.1:") for line in lines
    )
    assert any(
        line.startswith(f"association with ANY-SCP at {address} aborted by us [source 0")
        for line in lines
    )
    assert any("aborted by the peer [source 0, reason 0]" in line for line in lines)
    outcomes = [r.getMessage() for r in caplog.records if r.name == "adicom.dimse"]
    assert f"C-ECHO answered by ANY-SCP at {address}: Success [0x0000]" in outcomes
    assert any(o.startswith("C-ECHO from CLARINET at 127.0.0.1:") for o in outcomes)
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name.startswith("adicom."))
    assert "P-DATA-TF" not in caplog.text  # dumps are DEBUG


async def test_debug_logging_dumps_every_pdu_and_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="adicom")
    identity = UserIdentityRQ(2, b"alice", b"s3cret-passcode")
    async with server(on_find=find_handler) as scp:
        async with adicom.connect(
            "127.0.0.1",
            scp.port,
            contexts=qrscu.find_contexts(),
            user_identity=identity,
        ) as assoc:
            async with qrscu.find(assoc, study_query()) as matches:
                assert len([m async for m in matches]) == 2
    pdus = "\n".join(r.getMessage() for r in caplog.records if r.name == "adicom.pdu")
    assert "A-ASSOCIATE-RQ sent, PDU length " in pdus
    assert "A-ASSOCIATE-AC received, PDU length " in pdus
    assert "calling AE 'ADICOM'" in pdus
    assert "1.2.840.10008.5.1.4.1.2.2.1)" in pdus  # Study Root FIND, named
    assert "user identity: username and passcode, positive response not requested" in pdus
    assert "PDV context 1, command, last fragment" in pdus
    assert "A-RELEASE-RP received, PDU length 4" in pdus
    assert "s3cret" not in caplog.text  # a passcode never reaches a log
    messages = "\n".join(r.getMessage() for r in caplog.records if r.name == "adicom.dimse")
    assert "C-FIND-RQ sent on presentation context 1\n  Message ID: 1\n" in messages
    assert "  Priority: MEDIUM" in messages
    assert "Status: 0xFF00 (Pending" in messages
    assert "(0010,0020) Patient ID" in messages and "PAT2" in messages
    assert "C-FIND answered by ANY-SCP" in messages


def test_pdu_dumps_say_what_abort_and_reject_mean() -> None:
    assert events.describe_pdu(AAbort(2, 6), "sent") == (
        "A-ABORT sent, PDU length 4\n  source 2 (service-provider), reason 6 "
        "(invalid PDU parameter value)"
    )
    assert "temporary-congestion" in events.describe_pdu(AAssociateRJ(2, 3, 1))


async def test_debug_logging_switch_writes_the_dumps_to_a_stream() -> None:
    logger = logging.getLogger("adicom")
    level = logger.level
    stream = io.StringIO()
    handler = events.debug_logging(stream=stream)
    try:
        assert events.debug_logging() is handler  # once only
        async with server() as scp:
            async with adicom.connect("127.0.0.1", scp.port) as assoc:
                await assoc.echo()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = stream.getvalue()
    assert "DEBUG adicom.pdu: A-ASSOCIATE-AC received" in text
    assert "DEBUG adicom.dimse: C-ECHO-RSP received on presentation context 1" in text
    assert "INFO adicom.association: association accepted by ANY-SCP" in text


async def test_the_cli_debug_flag_dumps_pdus_and_verbose_goes_after_the_command() -> None:
    async with server(ae_title="ECHOES") as scp:
        peer = ["--aec", "ECHOES", "127.0.0.1", str(scp.port)]
        code, _, err = await run_cli("echo", "--debug", *peer)
        assert code == 0, err
        assert "DEBUG adicom.pdu: A-ASSOCIATE-RQ sent, PDU length" in err
        assert "  presentation context 1: Verification SOP Class (1.2.840.10008.1.1)" in err
        assert "DEBUG adicom.dimse: C-ECHO-RSP received on presentation context 1" in err
        code, _, err = await run_cli("--debug", "echo", *peer)
        assert code == 0 and "P-DATA-TF received" in err
        code, _, err = await run_cli("echo", "-v", *peer)
        assert code == 0, err
        assert "INFO adicom.association: association accepted by ECHOES" in err
        assert "INFO adicom.dimse: C-ECHO answered by ECHOES" in err
        assert "DEBUG" not in err
        code, _, err = await run_cli("echo", *peer)
        assert code == 0 and "adicom.association" not in err
    # asyncio waits for each CLI process in a thread of its own, which ends a
    # moment after the process: let it go before tests that count threads.
    async with asyncio.timeout(10):
        while threading.active_count() > 1:
            await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_dicom_client_passes_its_hooks_to_every_association() -> None:
    seen: list[str] = []
    hooks = Hooks()
    hooks.subscribe(events.Lifecycle, lambda event: seen.append(type(event).__name__))
    async with adicom.Server("HOOKED", port=0) as server:
        peer = adicom.DicomNode(aet="HOOKED", host="127.0.0.1", port=server.port)
        client = adicom.DicomClient("SCU", hooks=hooks)
        assert await client.echo(peer)
        assert await client.echo(peer)
    assert seen == ["Requested", "Accepted", "Released"] * 2


@pytest.mark.anyio
async def test_async_hooks_that_never_end_cannot_pile_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of PDUs against a slow async hook: at most MAX_PENDING_HOOKS run at once."""
    monkeypatch.setattr(events, "MAX_PENDING_HOOKS", 20)
    # The warning comes at the first skip and then every 1,000th, counted
    # for the process: start from none (tests/test_uvloop.py runs this again).
    monkeypatch.setattr(events, "_skipped", 0)
    never = asyncio.Event()

    async def stuck(event: Event) -> None:
        await never.wait()

    hooks = Hooks()
    hooks.subscribe(events.PduReceived, stuck)
    async with adicom.Server("FLOOD", port=0, hooks=hooks) as server:
        async with adicom.connect("127.0.0.1", server.port, called_ae="FLOOD") as assoc:
            for _ in range(60):
                assert await assoc.echo() == 0  # the protocol goes on
        assert len(events._TASKS) <= 20
    assert any("async hook calls are still running" in r.getMessage() for r in caplog.records)
    never.set()
    async with asyncio.timeout(5):
        while events._TASKS:
            await asyncio.sleep(0.01)
