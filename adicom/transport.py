"""The asyncio protocol under an association: the loop's callbacks, forwarded to its Driver.

:class:`TransportProtocol` is what ``loop.create_connection`` (requestor) or
a server's protocol factory (acceptor) gets from
:meth:`adicom.driver.Driver.protocol`. It turns off Nagle's algorithm, lets
the loop read straight into the PDU reader's buffers, and breaks the
reference cycle with its driver when the connection is lost.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import socket
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # the driver makes its protocol; only its type is needed here
    from adicom.driver import Driver

__all__ = ["TransportProtocol", "adopt", "adopts", "break_cycle", "sets_nodelay"]


class _Closed:
    """What a connection's protocol points to once the connection is lost."""

    def _connection_lost(self, exc: Exception | None = None) -> None:
        """A second connection_lost: nothing to do."""

    def _data_received(self, nbytes: int) -> None:
        """Bytes after the connection was lost: nothing to do."""

    def _resume_writing(self) -> None:
        """Nothing waits any more."""

    def _eof_received(self) -> None:
        """The end of a connection already lost: nothing to do."""

    _paused = False


_CLOSED: Any = _Closed()


def sets_nodelay(kind: type) -> bool:
    """True for transports of type ``kind`` that turn Nagle's algorithm off themselves.

    uvloop's TCP transport does, on every connection it makes or wraps
    (``uv_tcp_nodelay``, since uvloop 0.9; adicom asks for 0.19 or later):
    asking its socket again costs a pseudo-socket object and a system call
    per connection (~7k instructions). asyncio's own transports try only
    for a socket whose protocol number says TCP (``socket.socket()``
    leaves it 0; an accepted socket has its listener's): for those
    TransportProtocol sets it, whatever the transport did.
    """
    return kind.__module__ == "uvloop.loop" and kind.__qualname__ == "TCPTransport"


#: sets_nodelay by transport type, asked once per type.
_SETS_NODELAY: dict[type, bool] = {}


class TransportProtocol(asyncio.BufferedProtocol):
    """The asyncio side of the socket; forwards everything to the Driver.

    The loop reads into buffers the PDU reader hands out, so a large PDU's
    body lands where it is decoded from.
    """

    def __init__(self, association: Driver) -> None:
        """Join ``association`` to the connection asyncio is about to make."""
        self._association = association
        self._reader = reader = association._ul._reader  # ul.reader, read directly
        # The two calls of every read go straight to where they land (the
        # methods below say the same, a call deeper); connection_lost
        # points buffer_updated elsewhere.
        self.get_buffer = reader.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = association._data_received  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Connected: TCP_NODELAY on, then the driver is told."""
        kind = type(transport)
        sets = _SETS_NODELAY.get(kind)
        if sets is None:
            sets = _SETS_NODELAY[kind] = sets_nodelay(kind)
        mend_flow_control(transport)
        sock = None if sets else transport.get_extra_info("socket")
        if sock is not None:
            # Nagle's algorithm plus delayed ACKs stall a small request and
            # its response by up to 40 ms each on Linux; DICOM is exactly
            # that pattern (a command PDU, then the peer's response). Not a
            # TCP socket (a Unix one)? Then there is no Nagle to turn off
            # (tried rather than asked: sock.family costs an enum lookup).
            try:  # noqa: SIM105 (suppress costs three calls per connection)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        # Not an isinstance check: uvloop's transports have the methods of
        # asyncio.Transport without deriving from it.
        self._association._connection_made(cast(asyncio.Transport, transport))

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the loop reads to: the PDU reader's buffer."""
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into the buffer: the driver parses them."""
        self._association._data_received(nbytes)

    def eof_received(self) -> bool:
        """The peer closed its side: close ours too."""
        self._association._eof_received()
        return False  # close our side too (if not closed already); connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection has closed: the driver is told, once."""
        association = self._association
        # The association holds us (its protocol) and we hold it: break the
        # cycle now, so both go when their last user lets go (by reference
        # counting, not in a garbage collection pass; ~45 objects each).
        self._association = _CLOSED
        self.buffer_updated = _CLOSED._data_received  # type: ignore[method-assign]
        association._connection_lost(exc)

    def pause_writing(self) -> None:
        """The transport's buffer is full: senders wait."""
        self._association._paused = True

    def resume_writing(self) -> None:
        """The transport's buffer has drained: waiting senders go on."""
        self._association._resume_writing()


#: asyncio's own selector loop (the default on Unix), and how it wraps a
#: connected socket in a transport (a method of that loop's class since
#: Python 3.4, called as on 3.11-3.13). Private, so checked once: a Python
#: without it, or where it takes other arguments, takes the public path.
_SELECTOR_LOOP: type = asyncio.SelectorEventLoop


def _transport_maker(kind: type) -> Any:
    """``kind._make_socket_transport`` if it is called as adopt calls it, else None."""
    make = getattr(kind, "_make_socket_transport", None)
    code = getattr(make, "__code__", None)
    if code is None or code.co_varnames[:4] != ("self", "sock", "protocol", "waiter"):
        return None
    return make


_MAKE_TRANSPORT = _transport_maker(_SELECTOR_LOOP)


def adopts(loop: asyncio.AbstractEventLoop) -> bool:
    """True when :func:`adopt` can take a connected socket on ``loop`` (asyncio's selector loop)."""
    return type(loop) is _SELECTOR_LOOP and _MAKE_TRANSPORT is not None


def _ignore_connection_made(transport: asyncio.BaseTransport) -> None:
    """The loop's connection_made for a transport whose association was told already."""


def adopt(loop: asyncio.AbstractEventLoop, sock: socket.socket, association: Driver) -> None:
    """Wrap the connected TCP ``sock`` in asyncio's transport; tell ``association`` at once.

    Only where :func:`adopts` (else ``loop.create_connection(sock=...)`` or
    ``loop.connect_accepted_socket``). What those do on asyncio's selector
    loop, without their two coroutines, their future and the loop turn the
    caller waits for connection_made: the transport is made here and the
    association told in this call (a requestor's prepared A-ASSOCIATE-RQ
    leaves now; an acceptor starts ARTIM), so the caller goes straight on.
    The transport's own connection_made call, which it schedules for the
    next loop turn, is made a no-op: the association is told once, and is
    never without its transport while the connection exists (an abort then
    would leave the connection open). The transport starts reading in the
    next loop turn, as ever. If telling the association raises, the
    connection is closed and the error raised.
    """
    try:
        protocol = association.protocol()
        # Read by the transport's constructor, which schedules the call.
        protocol.connection_made = _ignore_connection_made  # type: ignore[method-assign]
        # What TransportProtocol.connection_made does (see there why); the
        # transport's own attempt passes over a socket made with proto 0.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = _MAKE_TRANSPORT(loop, sock, protocol)
        mend_flow_control(transport)
    except BaseException:
        sock.close()
        raise
    try:
        association._connection_made(transport)
    except BaseException:
        transport.abort()
        raise


#: asyncio's plain TCP transport on its selector loop (see break_cycle).
_SELECTOR_TRANSPORT: Any = getattr(asyncio.selector_events, "_SelectorSocketTransport", None)


def writelines_pauses(kind: type) -> bool:
    """False when ``kind.writelines`` never asks the protocol to pause (CPython gh-127655).

    Python 3.12.0-3.12.8 and 3.13.0-3.13.1 gave asyncio's selector transport
    a ``writelines`` of its own that, unlike ``write``, never calls
    ``pause_writing`` however much it buffers. adicom sends with it (a PDU
    header and its data, unjoined): a peer that stopped reading would have
    every message queued for it held in memory, an 8 MB C-STORE in full
    where the high-water mark is 64 KiB. Read from the method's code, so no
    list of versions is kept: a writelines that calls ``write`` (asyncio's
    default, which the transport inherits on 3.11) pauses through it.
    """
    writelines = getattr(kind, "writelines", None)
    code = getattr(writelines, "__code__", None)
    if code is None:  # not a Python function (uvloop's): not asyncio's method
        return True
    return not {"_maybe_pause_protocol", "write"}.isdisjoint(code.co_names)


if _SELECTOR_TRANSPORT is not None and not writelines_pauses(_SELECTOR_TRANSPORT):

    class _PausingSelectorTransport(_SELECTOR_TRANSPORT):  # type: ignore[misc]
        """asyncio's selector transport whose writelines pauses the protocol as write does."""

        def writelines(self, list_of_data: Any) -> None:
            """Buffer or send ``list_of_data``; pause the protocol above the high-water mark."""
            super().writelines(list_of_data)
            self._maybe_pause_protocol()

    _PAUSING: Any = _PausingSelectorTransport
else:
    _PAUSING = None


def mend_flow_control(transport: object) -> None:
    """Make a selector transport whose writelines does not pause do so (see writelines_pauses).

    The same object and layout, its class a subclass that only adds the
    pause: nothing else about the transport changes. Others are left alone.
    """
    if _PAUSING is not None and type(transport) is _SELECTOR_TRANSPORT:
        transport.__class__ = _PAUSING


def break_cycle(transport: object) -> None:
    """Let a closed connection's transport go by reference counting (call from connection_lost).

    asyncio's selector transport keeps its read callback as a bound method
    of itself (``_read_ready_cb``, Python 3.11), a reference cycle: every
    closed connection, with its socket, waited for a pass of the cyclic
    collector (7 objects each, on each side of every association; ~13k
    instructions per associate + echo + release of a requestor that
    connects again and again, counted by callgrind). By the time the
    protocol's connection_lost runs, the transport has taken its reader off
    the selector (close, abort and the end of the stream all do that first),
    so the callback is never called again. From Python 3.12 the transport
    also keeps its write callback so (``_write_ready``); its ``close()``
    drops both, its ``abort()`` neither: that one becomes a no-op (a write
    after the connection is lost is dropped before it gets there, and
    ``writelines`` calls it without looking). Other transports are left alone.
    """
    if type(transport) is _SELECTOR_TRANSPORT or type(transport) is _PAUSING:
        transport._read_ready_cb = None  # type: ignore[attr-defined]
        if "_write_ready" in vars(transport):
            transport._write_ready = _no_write  # type: ignore[attr-defined]


def _no_write() -> None:
    """A closed selector transport's write callback (see break_cycle)."""
