"""The requestor side: :func:`connect` opens an association for raw DIMSE work.

:class:`~adicom.dicomclient.DicomClient` (query, retrieve and store by
level, with pydantic models) builds on it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from ssl import SSLContext, SSLError
from types import TracebackType
from typing import Any

from adicom.association import Association
from adicom.errors import (
    DicomTimeout,
    IdentityNotConfirmed,
    PeerUnreachable,
    TimeoutKind,
    TlsError,
)
from adicom.events import Hooks
from adicom.negotiation import (
    ASYNC_WINDOW,
    DEFAULT_MAX_PDU,
    QROptions,
    build_request,
    propose_options,
)
from adicom.pdu import RoleSelection, UserIdentityRQ
from adicom.presentation import DEFAULT_TRANSFER_SYNTAXES, VERIFICATION
from adicom.tls import describe_tls_failure
from adicom.transport import adopt, adopts

log = logging.getLogger("adicom")

#: Seconds a cancelled ``connect`` block waits for the release of its association.
CANCEL_RELEASE_TIMEOUT = 2.0

__all__ = ["connect", "open_association", "tcp_socket"]

#: What :func:`connect` proposes when no contexts are given: Verification.
DEFAULT_CONTEXTS: tuple[tuple[str, Sequence[str]], ...] = (
    (VERIFICATION, DEFAULT_TRANSFER_SYNTAXES),
)


async def open_association(
    host: str,
    port: int,
    *,
    calling_ae: str = "ADICOM",
    called_ae: str = "ANY-SCP",
    contexts: Iterable[tuple[str, Sequence[str]]] | None = None,
    roles: Iterable[RoleSelection] = (),
    user_identity: UserIdentityRQ | None = None,
    max_pdu: int = DEFAULT_MAX_PDU,
    connect_timeout: float | None = 10.0,
    timeout: float | None = 30.0,
    artim_timeout: float = 10.0,
    async_window: int = ASYNC_WINDOW,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    extended_negotiation: QROptions | Mapping[str, QROptions] | None = None,
    hooks: Hooks | None = None,
) -> Association:
    """Connect to ``host:port`` and negotiate an association; the caller releases it.

    ``contexts`` lists (abstract syntax, transfer syntaxes) pairs to propose
    (default: Verification with the uncompressed syntaxes). ``timeout``
    bounds the association negotiation and each DIMSE response.
    ``async_window`` is the asynchronous operations window proposed both
    ways (PS3.7 D.3.3.3): how many C-STOREs may be in flight at once, ours
    and a C-GET's sub-operations; 1 proposes none (synchronous operations).
    ``ssl`` (see :func:`adicom.tls.client_context`) runs the association over
    TLS; ``server_hostname`` is the name its certificate is checked against
    when the context checks host names (default: ``host``).
    ``extended_negotiation`` asks for Query/Retrieve options (PS3.4 C.5:
    relational queries and retrieval, combined date-time matching, ...) for
    every proposed Q/R SOP class, or by SOP class; what the peer agreed is
    ``adicom.negotiation.agreed_options(association.request,
    association.response)`` (absent or all false: the default, hierarchical
    behaviour). ``hooks`` (:class:`adicom.events.Hooks`) are told the
    association's lifecycle, messages and PDUs.

    Raises :class:`~adicom.errors.PeerUnreachable`,
    :class:`~adicom.errors.TlsError`,
    :class:`~adicom.errors.AssociationRejected`,
    :class:`~adicom.errors.AssociationAborted` or
    :class:`~adicom.errors.DicomTimeout`.
    """
    proposed = tuple(DEFAULT_CONTEXTS if contexts is None else contexts)
    request = build_request(
        calling_ae=calling_ae,
        called_ae=called_ae,
        contexts=proposed,
        roles=tuple(roles),
        user_identity=user_identity,
        max_pdu=max_pdu,
        async_window=async_window,
        extended=(
            ()
            if extended_negotiation is None
            else propose_options((uid for uid, _ in proposed), extended_negotiation)
        ),
    )
    association = Association(
        requestor=True,
        max_pdu=max_pdu,
        dimse_timeout=timeout,
        artim_timeout=artim_timeout,
        hooks=hooks,
    )
    loop = asyncio.get_running_loop()
    address = resolve(host, port)
    # The request leaves from the transport's connection_made callback
    # (Evt2 in Sta4, PS3.8 9.2), not a loop turn later when this task runs.
    association.prepare_request(request)
    # The connect is bounded by the association's timer (the one its later
    # waits share), which cancels this task when it runs out, told apart
    # from any other cancellation as asyncio.timeout does, at a fraction of
    # its cost.
    task = asyncio.current_task()
    assert task is not None
    expiry = None
    if connect_timeout is not None:
        expiry = _ConnectExpiry(task)
        association._watch(expiry, connect_timeout)
    cancelling = task.cancelling()
    try:
        if ssl is None:
            await _connect_tcp(loop, association, address, port)
        else:
            await _connect_tls(
                loop, association, address, port, ssl, server_hostname or host, connect_timeout
            )
    except asyncio.CancelledError:
        association.cancel_request()
        if expiry is not None and expiry.expired and task.uncancel() <= cancelling:
            raise DicomTimeout(
                TimeoutKind.CONNECT, connect_timeout or 0, f"to {host}:{port}"
            ) from None
        raise
    except TimeoutError:
        # ETIMEDOUT: the kernel gave up on the connect first.
        association.cancel_request()
        raise DicomTimeout(TimeoutKind.CONNECT, connect_timeout or 0, f"to {host}:{port}") from None
    except OSError as exc:
        association.cancel_request()
        if ssl is not None and (
            isinstance(exc, SSLError)
            or (isinstance(exc, ConnectionError) and not isinstance(exc, ConnectionRefusedError))
        ):
            # Connected, then the handshake failed (a reset: the server did
            # not take our certificate, or does not speak TLS).
            raise TlsError(
                f"TLS handshake with {host}:{port} failed: {describe_tls_failure(exc)}"
            ) from None
        # asyncio's message ("Connect call failed ...") hides the cause;
        # the errno says it in words ("Connection refused").
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise PeerUnreachable(f"cannot connect to {host}:{port}: {reason}") from None
    except BaseException:
        association.cancel_request()
        raise
    finally:
        if expiry is not None:
            association._unwatch(expiry)
    try:
        response = await association.request_association(request, timeout, async_window)
        asked = user_identity is not None and user_identity.positive_response_requested
        if asked and response.user_information.user_identity_ac is None:
            raise IdentityNotConfirmed(
                f"{called_ae} at {host}:{port} accepted the association but did not "
                "confirm our user identity (no positive response, PS3.7 D.3.3.7)"
            )
    except BaseException:
        association.abort()
        raise
    return association


async def _connect_tcp(
    loop: asyncio.AbstractEventLoop, association: Association, address: str, port: int
) -> None:
    """Plain TCP to an IP address: create_connection's work without its search.

    ``loop.create_connection`` resolves the address (twice), walks the list
    of candidates and wraps each attempt in a coroutine of its own; for one
    address the socket, its connect and the transport are all there is.
    uvloop's create_connection is its own code, and cheaper given the
    address than the socket made here (see _connects_itself).
    """
    if _connects_itself(type(loop)) and _plain_address(address):
        await loop.create_connection(association.protocol, address, port)
        return
    sock, pending = _start_connect(loop, address, port)
    try:
        if pending is not None:
            await _finish_connect(loop, sock, pending, address, port)
        if not adopts(loop):
            await loop.create_connection(association.protocol, sock=sock)
            return
    except BaseException:
        sock.close()
        raise
    # The A-ASSOCIATE-RQ leaves now (Evt2 in Sta4, PS3.8 9.2), and this
    # task goes straight on to wait for the answer.
    adopt(loop, sock, association)


async def _connect_tls(
    loop: asyncio.AbstractEventLoop,
    association: Association,
    address: str,
    port: int,
    ssl: SSLContext,
    server_hostname: str,
    handshake_timeout: float | None,
) -> None:
    """TLS to an IP address: our connected socket, then asyncio's (or uvloop's) handshake.

    Given the address, asyncio would read a plain one without its resolver,
    but hand a scoped one (``fe80::1%eth0``) to getaddrinfo on its executor,
    a thread; the socket connected here needs neither.
    """
    sock, pending = _start_connect(loop, address, port)
    try:
        if pending is not None:
            await _finish_connect(loop, sock, pending, address, port)
        await loop.create_connection(
            association.protocol,
            sock=sock,
            ssl=ssl,
            server_hostname=server_hostname,
            ssl_handshake_timeout=handshake_timeout,
        )
    except BaseException:
        sock.close()
        raise


_SockAddr = tuple[str, int] | tuple[str, int, int, int]


def _start_connect(
    loop: asyncio.AbstractEventLoop, address: str, port: int
) -> tuple[socket.socket, _SockAddr | None]:
    """A non-blocking TCP socket to ``address`` (an IP address, maybe scoped), connect started.

    Returns the socket and None when it is connected already (a peer on
    this host, nearly always), else the socket address that
    :func:`_finish_connect` waits for: no coroutine for the common case.
    ``loop.sock_connect`` resolves the address again and asks the socket
    its family and type (enum conversions); where the loop can watch a
    descriptor the connect is started here and awaited as the socket
    turning writable, as sock_connect does after that.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockaddr = _sockaddr(address, port)
    sock = tcp_socket(socket.socket(family), family)
    try:
        sock.setblocking(False)
        if not _watches_descriptors(type(loop)):
            return sock, sockaddr  # sock_connect does it all
        error = sock.connect_ex(sockaddr)
        if error in _CONNECTING:
            if not _connected_now(sock.fileno()):
                return sock, sockaddr
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            # OSError picks the subclass for the errno (ConnectionRefusedError,
            # TimeoutError for ETIMEDOUT), as sock_connect raises it.
            raise OSError(error, f"Connect call failed {(address, port)}")
    except BaseException:
        sock.close()
        raise
    return sock, None


async def _finish_connect(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    sockaddr: _SockAddr,
    address: str,
    port: int,
) -> None:
    """Wait for the connect _start_connect began (or make it, where the loop watches nothing)."""
    if not _watches_descriptors(type(loop)):
        await loop.sock_connect(sock, sockaddr)
        return
    await _writable(loop, sock.fileno())
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, f"Connect call failed {(address, port)}")


def _sockaddr(address: str, port: int) -> _SockAddr:
    """The socket address to connect ``address`` (from resolve()) to ``port``.

    A scoped IPv6 address (``fe80::1%eth0``, PS3.8 leaves addressing to
    TCP/IP) needs its interface in the socket address's scope_id: given as
    text in a 2-tuple, connect() fails with EINVAL. getaddrinfo reads the
    numeric form itself, on this thread (no lookup: AI_NUMERICHOST).
    """
    if "%" not in address:
        return (address, port)
    found = socket.getaddrinfo(
        address, port, socket.AF_INET6, socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
    )
    sockaddr = found[0][4]  # (host, port, flowinfo, scope_id) for AF_INET6
    return (str(sockaddr[0]), port, int(sockaddr[2]), int(sockaddr[3]))  # type: ignore[misc]


#: Loop types and whether they connect to an address themselves (see _connects_itself).
_CONNECTS: dict[type, bool] = {}


def _connects_itself(kind: type) -> bool:
    """True for uvloop's loops: ``create_connection(host=IP address)`` is cheapest there.

    uvloop reads an IP address without a lookup (no thread: it parses the
    address as inet_pton does, see _plain_address), connects and makes the
    transport in its own compiled code: ~13k instructions per association
    fewer than our socket, its connect and poll, and create_connection(sock=).
    """
    connects = _CONNECTS.get(kind)
    if connects is None:
        connects = _CONNECTS[kind] = kind.__module__.partition(".")[0] == "uvloop"
    return connects


def _plain_address(address: str) -> bool:
    """True when ``address`` is an IP address in the form inet_pton reads.

    resolve() gives no other form but a scoped IPv6 address ("fe80::1%eth0");
    that, or another form ("127.1", from a caller that did not ask
    resolve()), uvloop would hand to its resolver, a thread of libuv's pool:
    adicom starts no thread, so it connects a socket of ours.
    """
    try:  # not contextlib.suppress: every connect on uvloop
        socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        return True
    except OSError:
        return False


#: connect_ex() on a non-blocking socket: the connection is on its way.
_CONNECTING = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY, errno.EINTR})
#: Loop types and whether they watch descriptors (add_writer; not the proactor loop).
_WATCHES: dict[type, bool] = {}


def _watches_descriptors(kind: type) -> bool:
    """True when loops of type ``kind`` implement ``add_writer`` (selector loops, uvloop)."""
    watches = _WATCHES.get(kind)
    if watches is None:
        # The proactor loop inherits AbstractEventLoop's, which raises.
        implementation = getattr(kind, "add_writer", None)
        watches = implementation not in (None, asyncio.AbstractEventLoop.add_writer)
        _WATCHES[kind] = watches
    return watches


_POLL = getattr(select, "poll", None)


def _connected_now(fd: int) -> bool:
    """True when a non-blocking connect has finished already (or failed): no wait needed.

    A connect to a peer on this host is done by the time connect_ex()
    returns, yet says "in progress". Asking the kernel at once (a poll that
    does not wait) spares the loop's writer watch: asyncio's add_writer of
    a descriptor it does not watch yet looks it up first, a KeyError raised
    and caught (~17k instructions), then remove_writer, a future and a loop
    turn for the task. False where there is no poll (then the loop waits).
    """
    if _POLL is None:
        return False
    poller = _POLL()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(0))


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Wait until ``fd`` is writable (a non-blocking connect has finished, or failed)."""
    waiter = loop.create_future()
    loop.add_writer(fd, _wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Tcp4(socket.socket):
    """A TCP socket over IPv4 whose family and type are class attributes (see tcp_socket)."""

    __slots__ = ()
    family = socket.AF_INET
    type = socket.SOCK_STREAM


class _Tcp6(socket.socket):
    """A TCP socket over IPv6 whose family and type are class attributes (see tcp_socket)."""

    __slots__ = ()
    family = socket.AF_INET6
    type = socket.SOCK_STREAM


def tcp_socket(sock: socket.socket, family: int) -> socket.socket:
    """``sock``, a plain TCP socket of ``family`` (IPv4 or IPv6), made cheap to ask its kind.

    ``socket.socket.family`` and ``.type`` are properties that turn the
    number into an enum member at every read (a few thousand instructions
    each); asyncio reads them five times for a connection it wraps
    (``create_connection``, ``connect_accepted_socket``, its TCP_NODELAY
    check) and ``socket.accept`` twice, which adds up for a server or a
    client that opens an association per operation. A TCP socket's family
    and type never change, so the socket's class becomes a subclass that
    holds them as plain attributes (the same layout, nothing else differs).
    Any other socket (another family, a subclass) is returned as it is.
    """
    if type(sock) is socket.socket:
        kind = _Tcp4 if family == socket.AF_INET else _Tcp6 if family == socket.AF_INET6 else None
        if kind is not None:
            sock.__class__ = kind
    return sock


class _ConnectExpiry:
    """The connect's bound, kept by the association's timer (Driver._watch): cancels the task."""

    __slots__ = ("_deadline", "_task", "_timeout", "expired")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self._deadline = self._timeout = 0.0
        self.expired = False

    def _expired(self) -> None:
        self.expired = True
        self._task.cancel()


def resolve(host: str, port: int) -> str:
    """The address to connect to for ``host``: an IP address as it is, a name looked up.

    asyncio would look a name up in its default executor, a thread; adicom
    starts none. So the lookup runs here, on the event loop: at once for a
    name in /etc/hosts (``localhost``), but a DNS lookup holds the loop until
    the resolver answers (its timeout, 5 s by default, when a server is
    down). Servers that must never stall should name their peers by address.
    A name that does not resolve is :class:`PeerUnreachable`, saying so.
    """
    # An IP address (the common case, and every server's peer) asks
    # nothing of the resolver: inet_pton is a fraction of getaddrinfo's cost.
    try:  # not contextlib.suppress: three calls per connect
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return host
    except OSError:
        pass
    try:
        # The other numeric forms getaddrinfo takes ("127.1", "fe80::1%eth0"),
        # as the address they stand for ("127.0.0.1"): given "127.1", uvloop
        # and asyncio's TLS connect would look it up again, on a thread.
        # A scoped IPv6 address keeps its scope ("%eth0"), which the
        # address getaddrinfo gives back leaves out (in its scope_id).
        numeric = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
        return host if "%" in host else str(numeric[0][4][0])
    except socket.gaierror:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PeerUnreachable(
            f"cannot connect to {host}:{port}: no such host ({exc.strerror})"
        ) from None
    return str(found[0][4][0])


def connect(
    host: str,
    port: int,
    *,
    calling_ae: str = "ADICOM",
    called_ae: str = "ANY-SCP",
    contexts: Iterable[tuple[str, Sequence[str]]] | None = None,
    roles: Iterable[RoleSelection] = (),
    user_identity: UserIdentityRQ | None = None,
    max_pdu: int = DEFAULT_MAX_PDU,
    connect_timeout: float | None = 10.0,
    timeout: float | None = 30.0,
    async_window: int = ASYNC_WINDOW,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    extended_negotiation: QROptions | Mapping[str, QROptions] | None = None,
    hooks: Hooks | None = None,
) -> AbstractAsyncContextManager[Association]:
    """An association for the length of an ``async with`` block.

    Released when the block ends normally; aborted when it raises, so the
    peer never waits on a half-finished association. Cancelled, it is
    released when no operation is outstanding (a retrieve cancelled on the
    wire has had its final response), within CANCEL_RELEASE_TIMEOUT seconds,
    else aborted (the options are :func:`open_association`'s)::

        async with adicom.connect("pacs", 11112, called_ae="PACS") as assoc:
            await assoc.echo()
    """
    return _Connection(
        (
            host,
            port,
            calling_ae,
            called_ae,
            contexts,
            roles,
            user_identity,
            max_pdu,
            connect_timeout,
            timeout,
            async_window,
            ssl,
            server_hostname,
            extended_negotiation,
            hooks,
        ),
        timeout,
    )


#: connect()'s arguments, in the order _Connection takes them.
_ConnectArgs = tuple[
    str,
    int,
    str,
    str,
    Iterable[tuple[str, Sequence[str]]] | None,
    Iterable[RoleSelection],
    UserIdentityRQ | None,
    int,
    float | None,
    float | None,
    int,
    SSLContext | None,
    str | None,
    QROptions | Mapping[str, QROptions] | None,
    Hooks | None,
]


class _Connection:
    """What :func:`connect` returns: an async context manager over one association.

    A class rather than ``contextlib.asynccontextmanager``, whose generator
    and StopAsyncIteration cost more than the rest of a short connect block's
    bookkeeping (a requestor may open an association per operation). It
    keeps connect()'s arguments as a tuple and passes them on by name itself:
    a ``functools.partial`` of open_association built a dict of them, copied
    it and took it apart again on the call (~4k instructions per block).
    """

    __slots__ = ("_args", "_association", "_timeout")

    def __init__(self, args: _ConnectArgs, timeout: float | None) -> None:
        self._args = args
        self._timeout = timeout
        self._association: Association | None = None

    async def __aenter__(self) -> Association:
        if self._association is not None:
            raise RuntimeError("a connect() block cannot be entered twice")
        (
            host,
            port,
            calling_ae,
            called_ae,
            contexts,
            roles,
            user_identity,
            max_pdu,
            connect_timeout,
            timeout,
            async_window,
            ssl,
            server_hostname,
            extended_negotiation,
            hooks,
        ) = self._args
        self._association = association = await open_association(
            host,
            port,
            calling_ae=calling_ae,
            called_ae=called_ae,
            contexts=contexts,
            roles=roles,
            user_identity=user_identity,
            max_pdu=max_pdu,
            connect_timeout=connect_timeout,
            timeout=timeout,
            async_window=async_window,
            ssl=ssl,
            server_hostname=server_hostname,
            extended_negotiation=extended_negotiation,
            hooks=hooks,
        )
        return association

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        association = self._association
        assert association is not None
        if exc_type is None:
            await association.release(self._timeout)
        elif issubclass(exc_type, asyncio.CancelledError):
            # Cancelled between operations (a retrieve cancelled on the wire
            # has had its final response, PS3.7 9.3.2.3): the association is
            # in order, so it is released, within a moment; mid-operation,
            # aborted.
            try:
                if association.is_established and association.outstanding == 0:
                    await association.release(CANCEL_RELEASE_TIMEOUT)
            except Exception as error:
                log.debug("no release after a cancellation: %s", error)
            finally:
                association.abort()  # a no-op once released
        else:
            association.abort()
