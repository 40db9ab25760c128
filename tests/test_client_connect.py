"""The requestor's connect: address, bound, cancellation, and the request sent on connect."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import adicom
from adicom.association import Association
from adicom.client import resolve
from adicom.errors import DicomTimeout, LocalProtocolError, PeerUnreachable, TimeoutKind
from adicom.fsm import State
from adicom.negotiation import build_request
from adicom.presentation import DEFAULT_TRANSFER_SYNTAXES, VERIFICATION

pytestmark = pytest.mark.anyio

#: Bound of every wait in these tests (s).
BOUND = 5.0


@contextlib.contextmanager
def never_accepting() -> Iterator[int]:
    """A port whose connects hang: its accept queue is full and it never accepts.

    Linux drops a SYN to a listener whose accept queue is full, so the
    connect neither completes nor fails until the client gives up.
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def prepared_requestor() -> Association:
    """A requestor with its A-ASSOCIATE-RQ (Verification, to ANY-SCP) prepared."""
    association = Association(requestor=True)
    association.prepare_request(
        build_request(
            calling_ae="ADICOM",
            called_ae="ANY-SCP",
            contexts=((VERIFICATION, DEFAULT_TRANSFER_SYNTAXES),),
        )
    )
    return association


def test_resolve_takes_ip_addresses_as_they_are() -> None:
    assert resolve("127.0.0.1", 104) == "127.0.0.1"
    assert resolve("::1", 104) == "::1"
    # Numeric forms only getaddrinfo reads are still addresses, not names,
    # given in the form every connect path reads without a lookup.
    assert resolve("127.1", 104) == "127.0.0.1"
    assert resolve("0x7f.1", 104) == "127.0.0.1"
    # A scoped (link-local) address keeps its scope, which getaddrinfo's
    # address leaves out.
    assert resolve("fe80::1%1", 104) == "fe80::1%1"


def link_local_addresses() -> list[str]:
    """This host's link-local IPv6 addresses, scoped ("fe80::1%eth0"): Linux's list of them."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:  # pragma: no cover - not Linux, or no IPv6
        return []
    found = []
    for line in lines:
        digits, _, _, scope, _, name = line.split()
        if scope == "20":  # IPV6_ADDR_LINKLOCAL
            packed = bytes.fromhex(digits)
            found.append(f"{socket.inet_ntop(socket.AF_INET6, packed)}%{name}")
    return found


def test_a_scoped_address_connects_with_its_interface_as_scope_id() -> None:
    from adicom.client import _sockaddr

    # connect() takes the scope only as the socket address's scope_id (as
    # text in a 2-tuple it fails with EINVAL).
    assert _sockaddr("fe80::1%1", 11112) == ("fe80::1", 11112, 0, 1)
    loopback = socket.if_nameindex()[0]
    assert _sockaddr(f"fe80::1%{loopback[1]}", 104) == ("fe80::1", 104, 0, loopback[0])
    assert _sockaddr("::1", 104) == ("::1", 104)
    assert _sockaddr("127.0.0.1", 104) == ("127.0.0.1", 104)


async def test_a_scoped_ipv6_address_is_connected_without_a_thread() -> None:
    # Given "fe80::1%lo", asyncio's create_connection would call getaddrinfo
    # on its executor (a thread), uvloop in libuv's pool: adicom connects a
    # socket of its own to the socket address with the scope.
    import threading

    loopback = socket.if_nameindex()[0][1]
    async with adicom.Server("ANY-SCP", host="::", port=0) as server:
        assert threading.active_count() == 1
        async with asyncio.timeout(BOUND):
            # No link-local address on the loopback: the kernel says so at once.
            with pytest.raises(PeerUnreachable, match="unreachable"):
                async with adicom.connect(f"fe80::1%{loopback}", server.port):
                    pass
            # And an association to each of this host's own (the CI host has one).
            for address in link_local_addresses():
                async with adicom.connect(address, server.port, called_ae="ANY-SCP") as assoc:
                    assert await assoc.echo() == 0
                    assert assoc.peer_address == (address.partition("%")[0], server.port)
        assert threading.active_count() == 1


def test_resolve_looks_a_name_up() -> None:
    assert resolve("localhost", 104) in ("127.0.0.1", "::1")
    with pytest.raises(PeerUnreachable, match="no such host"):
        resolve("no-such-host.invalid", 104)


async def test_connect_timeout_bounds_a_connect_that_hangs() -> None:
    with never_accepting() as port:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(DicomTimeout) as info:
            async with asyncio.timeout(BOUND):
                await adicom.open_association("127.0.0.1", port, connect_timeout=0.3)
        assert info.value.which is TimeoutKind.CONNECT
        assert 0.25 <= loop.time() - start < BOUND
        # The task is not left cancelled by the bound's own cancellation.
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0


async def test_cancelling_a_connect_is_a_cancellation_not_a_timeout() -> None:
    with never_accepting() as port:
        task = asyncio.create_task(
            adicom.open_association("127.0.0.1", port, connect_timeout=BOUND)
        )
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, BOUND)


async def test_request_leaves_when_the_connection_is_made() -> None:
    """Prepared before connecting (Sta4), the A-ASSOCIATE-RQ is written by connection_made."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await reader.read(6))
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        association = Association(requestor=True)
        request = build_request(
            calling_ae="ADICOM",
            called_ae="ANY-SCP",
            contexts=((VERIFICATION, DEFAULT_TRANSFER_SYNTAXES),),
        )
        association.prepare_request(request)
        assert association.state is State.STA4
        loop = asyncio.get_running_loop()
        await loop.create_connection(association.protocol, "127.0.0.1", port)
        # Sent from the callback, before this task ran again: awaiting Evt3.
        state: State = association.state  # (not narrowed by the assertion above)
        assert state is State.STA5
        header = await asyncio.wait_for(received, BOUND)
        assert header[0] == 0x01  # A-ASSOCIATE-RQ
        association.cancel_request()  # nobody awaits the answer: given up quietly
        await association.wait_closed(BOUND)


async def test_a_requestor_waits_for_no_request() -> None:
    association = Association(requestor=True)
    with pytest.raises(LocalProtocolError, match="requestor"):
        await association.wait_request()


async def test_a_request_given_up_after_its_answer_failed_leaves_no_unretrieved_error() -> None:
    """The peer hangs up before the connect returns: cancel_request() takes the error."""
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            association = prepared_requestor()
            await loop.create_connection(association.protocol, "127.0.0.1", port)
            await association.wait_closed(BOUND)  # the answer has failed meanwhile
            association.cancel_request()
            del association
            gc.collect()
        assert not [c for c in reported if "never retrieved" in str(c.get("message"))]
    finally:
        loop.set_exception_handler(None)


def test_loops_that_cannot_watch_a_descriptor_connect_with_sock_connect() -> None:
    from adicom.client import _watches_descriptors

    class NoWatching(asyncio.AbstractEventLoop):
        """A loop like the proactor one: add_writer is AbstractEventLoop's, which raises."""

    class Watching(asyncio.AbstractEventLoop):
        def add_writer(self, fd: object, callback: object, *args: object) -> None:
            """Watches."""

    assert _watches_descriptors(Watching) is True
    assert _watches_descriptors(NoWatching) is False
    assert _watches_descriptors(asyncio.SelectorEventLoop) is True


@pytest.mark.parametrize("watching", [True, False])
async def test_connect_with_or_without_watching_the_descriptor(
    watching: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of connecting: the loop watching the socket, and loop.sock_connect."""
    from adicom import client

    loop = asyncio.get_running_loop()
    monkeypatch.setitem(client._WATCHES, type(loop), watching)
    async with adicom.Server("ANY-SCP", port=0) as server:
        async with asyncio.timeout(BOUND):
            async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                assert await assoc.echo() == 0
            # A port nobody listens on is refused, in words, either way.
            free = socket.socket()
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
            free.close()
            with pytest.raises(PeerUnreachable, match="Connection refused"):
                await adicom.open_association("127.0.0.1", port)


async def test_a_connect_block_releases_aborts_or_releases_when_cancelled() -> None:
    """Normal end: released; an exception: aborted; a cancellation between operations: released."""
    async with adicom.Server("ANY-SCP", port=0) as server:
        async with asyncio.timeout(BOUND):
            async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                await assoc.echo()
            await server.wait_idle()
            assert (server.stats["released"], server.stats["aborted"]) == (1, 0)

            with pytest.raises(ValueError, match="ours"):
                async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                    await assoc.echo()
                    raise ValueError("ours")
            await server.wait_idle()
            assert (server.stats["released"], server.stats["aborted"]) == (1, 1)

            entered = asyncio.Event()

            async def block() -> None:
                async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as a:
                    await a.echo()
                    entered.set()
                    await asyncio.sleep(BOUND * 2)

            task = asyncio.create_task(block())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await server.wait_idle()
            assert (server.stats["released"], server.stats["aborted"]) == (2, 1)


async def test_a_connect_block_is_entered_once() -> None:
    async with adicom.Server("ANY-SCP", port=0) as server:
        block = adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP")
        async with asyncio.timeout(BOUND):
            async with block as assoc:
                assert await assoc.echo() == 0
                with pytest.raises(RuntimeError, match="entered twice"):
                    await block.__aenter__()


def test_tcp_socket_keeps_the_family_and_type_it_reports() -> None:
    from adicom.client import tcp_socket

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            plain = socket.socket(family)
        except OSError:  # pragma: no cover - a host without IPv6
            continue
        with plain:
            sock = tcp_socket(plain, family)
            assert sock is plain and type(sock) is not socket.socket
            # What the socket itself says, read past the class attributes.
            assert sock.family == socket.socket.family.fget(sock) == family  # type: ignore[attr-defined]
            assert sock.type == socket.socket.type.fget(sock) == socket.SOCK_STREAM  # type: ignore[attr-defined]
            sock.bind((host, 0))
            assert sock.getsockname()[1] > 0
    # Anything else is left as it is: another family, a subclass of socket.
    unix = socket.socket(socket.AF_UNIX)
    with unix:
        assert type(tcp_socket(unix, socket.AF_UNIX)) is socket.socket

    class Mine(socket.socket):
        pass

    with Mine() as mine:
        assert type(tcp_socket(mine, socket.AF_INET)) is Mine


async def test_a_cycle_looks_no_socket_up_in_vain_when_it_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # asyncio's selector loop: a descriptor it does not watch costs a failed
    # lookup (a KeyError raised twice, ~17k instructions) whenever it is
    # registered anew, and when close() asks to stop watching it for writing
    # after it was dropped. The closes of a connect, echo and release (ours
    # after the A-RELEASE-RP, the acceptor's on the end of the stream) are
    # aborts when nothing is left to write, which do not ask: what is left
    # is the registrations, once each (the transport's; a connect to this
    # host is done when connect_ex returns, so it is never watched: see
    # client._connected_now).
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.SelectorEventLoop):
        return  # uvloop (tests/test_uvloop.py): no selector, no lookups
    selector = loop._selector  # type: ignore[attr-defined]
    failed: dict[int, int] = {}
    get_key = selector.get_key

    def looking_up(fileobj: int) -> object:
        try:
            return get_key(fileobj)
        except KeyError:
            failed[fileobj] = failed.get(fileobj, 0) + 1
            raise

    # Whether the kernel had the local connect done by the time connect_ex
    # returned (Linux does, nearly always): if not, the loop watched the
    # socket, and looked it up once more.
    from adicom import client

    done_at_once: list[bool] = []
    connected_now = client._connected_now

    def telling(fd: int) -> bool:
        done_at_once.append(connected_now(fd))
        return done_at_once[-1]

    monkeypatch.setattr(client, "_connected_now", telling)
    async with adicom.Server("ANY-SCP", port=0) as server:
        async with asyncio.timeout(BOUND):
            async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as warm:
                await warm.echo()
            await server.wait_idle()
            done_at_once.clear()
            selector.get_key = looking_up
            try:
                async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                    assert await assoc.echo() == 0
                await server.wait_idle()
            finally:
                del selector.get_key
    assert assoc.closed
    # The acceptor's socket, ours (and ours again when the connect was watched).
    # Python 3.13's selector loop looks a descriptor up without KeyError.
    if sys.version_info >= (3, 13):
        expected = []
    else:
        expected = [1, 1] if done_at_once == [True] else [1, 2]
    assert sorted(failed.values()) == expected, (failed, done_at_once)


async def test_a_connect_not_done_at_once_waits_for_the_socket_to_be_writable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A remote peer's connect is still under way when connect_ex returns:
    # the loop watches the socket until it is writable (the poll that finds
    # a local connect done at once is bypassed here).
    from adicom import client

    waits: list[int] = []
    writable = client._writable

    async def watched(loop: asyncio.AbstractEventLoop, fd: int) -> None:
        waits.append(fd)
        await writable(loop, fd)

    monkeypatch.setattr(client, "_connected_now", lambda fd: False)
    monkeypatch.setattr(client, "_writable", watched)
    # uvloop connects to an address itself (client._connects_itself): here
    # it takes our socket too, the path a form resolve() did not give takes.
    monkeypatch.setattr(client, "_connects_itself", lambda kind: False)
    async with adicom.Server("ANY-SCP", port=0) as server:
        async with asyncio.timeout(BOUND):
            async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                assert await assoc.echo() == 0
    assert len(waits) == 1


async def test_a_local_connect_is_done_at_once() -> None:
    # What lets a connect to this host skip the loop's watch.
    from adicom import client

    if client._POLL is None:
        pytest.skip("no select.poll here: every connect is watched by the loop")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    done = []
    try:
        # Nearly always at the first try; a kernel busy elsewhere may
        # finish the handshake a moment later (then the loop waits).
        for _ in range(5):
            with socket.socket() as sock:
                sock.setblocking(False)
                assert sock.connect_ex(listener.getsockname()) in (0, *client._CONNECTING)
                done.append(client._connected_now(sock.fileno()))
            with contextlib.suppress(BlockingIOError):
                listener.setblocking(False)
                listener.accept()[0].close()
    finally:
        listener.close()
    assert any(done), done


@pytest.mark.selector_loop_only
async def test_on_asyncios_selector_loop_the_transport_is_made_without_create_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # transport.adopt: the connected socket is wrapped in asyncio's transport
    # and the association told at once (its A-ASSOCIATE-RQ sent), without
    # create_connection's coroutines and the loop turn it waits; the
    # transport's own connection_made, a turn later, tells nobody again.
    from adicom import client
    from adicom.driver import Driver

    loop = asyncio.get_running_loop()
    assert type(loop) is asyncio.SelectorEventLoop, (
        "asyncio's selector loop only (not collected by test_uvloop)"
    )
    told: list[object] = []
    made = Driver._connection_made

    def counting(self: Driver, transport: asyncio.Transport) -> None:
        if self.requestor:
            told.append(transport)
        made(self, transport)

    async def refusing(*args: object, **kwargs: object) -> None:
        raise AssertionError("create_connection is not used for plain TCP here")

    async with adicom.Server("ANY-SCP", port=0) as server:
        monkeypatch.setattr(Driver, "_connection_made", counting)
        monkeypatch.setattr(loop, "create_connection", refusing)
        async with asyncio.timeout(BOUND):
            association = prepared_requestor()
            await client._connect_tcp(loop, association, "127.0.0.1", server.port)
            # Told, and the request on its way, before the loop ran again.
            assert association.state is State.STA5
            assert association._transport is not None
            # TCP_NODELAY, which the transport does not set on a socket of proto 0.
            sock = association._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            await association.request_association(association.request, BOUND)  # type: ignore[arg-type]
            assert await association.echo() == 0
            await association.release(BOUND)
    assert association.closed
    assert len(told) == 1


@contextlib.contextmanager
def connected_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two ends of a TCP connection on 127.0.0.1 (ours, theirs), closed after."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs = listener.accept()[0]
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


@pytest.mark.selector_loop_only
async def test_adopt_closes_the_connection_when_the_association_refuses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # transport.adopt: an association that raises when told of its
    # connection leaves no transport open behind it.
    from adicom.driver import Driver
    from adicom.transport import adopt, adopts

    loop = asyncio.get_running_loop()
    assert adopts(loop), "asyncio's selector loop only (not collected by test_uvloop)"

    def refusing(self: Driver, transport: asyncio.Transport) -> None:
        raise RuntimeError("refused")

    monkeypatch.setattr(Driver, "_connection_made", refusing)
    with connected_pair() as (ours, theirs):
        ours.setblocking(False)
        before = dict(loop._transports)  # type: ignore[attr-defined]
        association = Association(requestor=True)
        with pytest.raises(RuntimeError, match="refused"):
            adopt(loop, ours, association)
        (made,) = [t for fd, t in loop._transports.items() if fd not in before]  # type: ignore[attr-defined]
        assert made.is_closing()
        async with asyncio.timeout(BOUND):
            while ours.fileno() != -1:  # closed when its connection_lost runs
                await asyncio.sleep(0)
        theirs.settimeout(BOUND)
        assert theirs.recv(1) == b""  # the peer sees the end


@pytest.mark.selector_loop_only
async def test_adopt_closes_the_socket_of_an_association_that_has_its_connection() -> None:
    # transport.adopt: a socket it cannot hand over is closed, not left open.
    from adicom.errors import LocalProtocolError as Refused
    from adicom.transport import adopt, adopts

    loop = asyncio.get_running_loop()
    assert adopts(loop), "asyncio's selector loop only (not collected by test_uvloop)"
    with connected_pair() as (ours, _):
        association = Association(requestor=True)
        association.protocol()  # it has its connection's protocol already
        with pytest.raises(Refused):
            adopt(loop, ours, association)
        assert ours.fileno() == -1


@pytest.mark.selector_loop_only
async def test_a_closed_connection_needs_no_garbage_collection() -> None:
    # transport.break_cycle: asyncio's selector transport refers to itself
    # through its read callback; once the connection is lost that cycle is
    # broken, so the transport (and its socket) go when the association does.
    import weakref

    loop = asyncio.get_running_loop()
    assert type(loop) is asyncio.SelectorEventLoop, (
        "asyncio's selector loop only (not collected by test_uvloop)"
    )
    gc.collect()
    gc.disable()
    try:
        async with adicom.Server("ANY-SCP", port=0) as server:
            async with asyncio.timeout(BOUND):
                async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                    assert await assoc.echo() == 0
                    transport = weakref.ref(assoc._transport)
                await server.wait_idle()
            assert assoc.closed
            del assoc
            assert transport() is None
    finally:
        gc.enable()


def test_only_asyncios_own_selector_loop_is_adopted() -> None:
    # transport.adopt calls a private method of asyncio's selector loop:
    # a subclass (which may override what it does) and uvloop go the public
    # way, create_connection(sock=) / connect_accepted_socket.
    import uvloop

    from adicom.transport import adopts

    class Custom(asyncio.SelectorEventLoop):
        pass

    loops = [asyncio.SelectorEventLoop(), Custom(), uvloop.new_event_loop()]
    try:
        assert [adopts(loop) for loop in loops] == [True, False, False]
    finally:
        for loop in loops:
            loop.close()


def test_a_writelines_that_never_pauses_the_protocol_is_recognised() -> None:
    # CPython gh-127655 (3.12.0-3.12.8, 3.13.0-3.13.1): the selector
    # transport's writelines buffered without pausing the protocol, so a
    # peer that stopped reading had everything sent to it held in memory.
    # transport.mend_flow_control gives such a transport the pause.
    from adicom.transport import writelines_pauses

    class NeverPauses(asyncio.WriteTransport):
        def writelines(self, list_of_data: Any) -> None:
            self.buffered = list(list_of_data)

    class Pauses(asyncio.WriteTransport):
        def writelines(self, list_of_data: Any) -> None:
            self.buffered = list(list_of_data)
            self._maybe_pause_protocol()  # type: ignore[attr-defined]

    assert not writelines_pauses(NeverPauses)
    assert writelines_pauses(Pauses)
    # Inherited: WriteTransport.writelines joins and calls write, which pauses.
    assert writelines_pauses(asyncio.WriteTransport)


@pytest.mark.selector_loop_only
async def test_a_sender_to_a_peer_that_stopped_reading_is_paused() -> None:
    # The pause is what bounds a send to a peer that does not read: the
    # association's messages wait instead of piling up in the transport.
    # Holds on every Python (see the test above), through writelines.
    from pydicom.dataset import Dataset

    stop = asyncio.Event()

    async def never_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from tests.test_association import _accept_association

        await _accept_association(reader, writer)
        await stop.wait()
        writer.close()

    listener = await asyncio.start_server(never_reading, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        dataset = Dataset()
        dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        dataset.SOPInstanceUID = "1.2.3.4"
        dataset.add_new(0x00091011, "OB", bytes(8 << 20))
        assoc = await adicom.open_association(
            "127.0.0.1", port, contexts=[(dataset.SOPClassUID, ["1.2.840.10008.1.2"])]
        )
        task = asyncio.get_running_loop().create_task(adicom.store_instance(assoc, dataset))
        try:
            async with asyncio.timeout(BOUND):
                while not assoc._paused:
                    await asyncio.sleep(0.01)  # bounded: until flow control holds the sender
            assert assoc._transport is not None
            # Held at about the high-water mark (64 KiB) plus one write, not 8 MB.
            assert assoc._transport.get_write_buffer_size() < 1 << 20
        finally:
            task.cancel()
            stop.set()
            assoc.abort()


def test_adopt_takes_asyncios_private_transport_maker_only_as_it_knows_it() -> None:
    # adopt calls a private method; one that takes other arguments in some
    # future Python leaves adopts() false (the public path), not a TypeError.
    from adicom.transport import _transport_maker

    assert _transport_maker(asyncio.SelectorEventLoop) is not None

    class Other(asyncio.SelectorEventLoop):
        def _make_socket_transport(self, protocol: Any, sock: Any) -> Any:
            raise AssertionError("never called")

    class Without:
        pass

    assert _transport_maker(Other) is None
    assert _transport_maker(Without) is None
