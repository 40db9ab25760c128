"""The acceptor side: :class:`Server` accepts associations and serves DIMSE requests.

One task per association, all on one event loop: negotiation (the answer
to the A-ASSOCIATE-RQ, adicom.serveranswers), then a loop over the
requests (adicom.serverrequests). Without a user identity hook (the one
part of the negotiation that awaits) the A-ASSOCIATE-RQ is answered in the
transport callback that read it, as C-ECHO-RQs and C-STOREs stored at once
are: the task is woken only for what needs it. An association that breaks
the protocol is aborted and logged; the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from ssl import SSLContext
from types import TracebackType

from adicom.admission import Admission
from adicom.association import Association
from adicom.audit import AuditLog
from adicom.dimse import Limits
from adicom.errors import DicomError
from adicom.events import Hooks
from adicom.fsm import State
from adicom.listener import DEFAULT_BACKLOG, Listener
from adicom.negotiation import (
    ASYNC_WINDOW,
    DEFAULT_MAX_PDU,
    NO_QR_OPTIONS,
    AcceptorPolicy,
    QROptions,
    check_window,
)
from adicom.nservices import NHandler
from adicom.peers import PeerRules
from adicom.presentation import (
    DEFAULT_TRANSFER_SYNTAXES,
    QR_FIND_SOP_CLASSES,
    QR_GET_SOP_CLASSES,
    QR_MOVE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
    VERIFICATION,
    WORKLIST_FIND,
)
from adicom.qrscp import FindHandler, MoveDestinations, RetrieveHandler
from adicom.serveranswers import AssociationAnswering, AssociationInfo, Session, UserIdentityHook
from adicom.serverrequests import RequestServing
from adicom.storage import StorageHandler, sink_factory
from adicom.tls import describe_tls_failure
from adicom.transport import adopt, adopts
from adicom.turns import DEFAULT_TURN_BUDGET, loop_turns

__all__ = ["AssociationInfo", "Server", "UserIdentityHook"]

log = logging.getLogger("adicom")

#: An acceptor's association is over in these states: aborted or closed
#: (Sta1), released and waiting for the peer's close (Sta13; PS3.8 9.2).
_ENDED = frozenset((State.STA1, State.STA13))


def listen_backlog(backlog: int | None, max_associations: int) -> int:
    """The listen backlog to use: ``backlog``, or by default ``max_associations`` (at least 128).

    As many connections as the server would serve at once may arrive at
    once, and each one beyond the backlog waits for its SYN to be sent
    again (a second or more) instead of being accepted.
    """
    if backlog is None:
        return max(DEFAULT_BACKLOG, max_associations)
    if backlog < 1:
        raise ValueError(f"the listen backlog must be 1 or more, not {backlog}")
    return backlog


class Server(RequestServing, AssociationAnswering):
    """A DICOM SCP listening on ``host:port``.

    Use it as an async context manager: the server listens when the block
    starts and stops, aborting open associations, when it ends::

        async with Server("ADICOM", port=11112) as server:
            await server.serve_forever()

    ``port`` 0 picks a free port; read it back from :attr:`port`.
    Associations calling another AE title are rejected unless
    ``require_called_ae`` is False; ``allowed_calling_aes``, when given, is
    the list of calling AE titles let in. Beyond ``max_associations`` open
    associations, new requests are rejected as transient. Connections not
    yet associated are capped apart (``max_pending``), and one peer address
    holds at most ``max_per_address`` connections; a connection over either
    cap is closed at once (see :mod:`adicom.admission`). ``backlog`` is the
    listen backlog, the connections the kernel completes and holds until
    they are accepted (default: ``max_associations``, at least 128; the
    kernel caps it at ``net.core.somaxconn``): a burst of connections beyond
    it is not refused but delayed, a second or more, while the peers send
    their SYN again (see :mod:`adicom.listener`). An association
    from which nothing arrives for ``idle_timeout`` seconds is aborted;
    ``artim_timeout`` bounds the wait for the A-ASSOCIATE-RQ after a
    connection opens (PS3.8 9.1.5); ``limits`` bound what one message may
    hold and take (:class:`~adicom.dimse.Limits`). ``ssl`` (see
    :func:`adicom.tls.server_context`) serves every connection over TLS;
    the handshake is bounded by ``artim_timeout``, a failed one is logged
    and closes that connection only, and :attr:`Association.tls` tells
    handlers the peer's certificate; ``outgoing_ssl`` (see
    :func:`adicom.tls.client_context`) is for the associations it opens to
    C-MOVE destinations. ``user_identity`` decides the user
    identity a request carries (see :func:`adicom.identity.identity_hook`);
    with ``require_identity`` a request without one is rejected. ``peers``
    (:class:`~adicom.peers.PeerRules`) admits only the peers it knows, from
    their addresses (and certificates), to the services each may use.
    ``audit`` (:class:`~adicom.audit.AuditLog`) gets a line per association
    accepted or refused, failed TLS handshake, instance received, query and
    retrieve. ``on_worklist`` answers Modality Worklist C-FINDs (see
    :class:`adicom.worklist.WorklistFolder`). ``n_handlers`` maps SOP class
    UIDs to handlers of their DIMSE-N requests (see :mod:`adicom.nservices`).
    ``max_background`` bounds the work their handlers leave for later
    (beyond it a DIMSE-N request gets 0x0213). ``turn_budget`` (seconds)
    bounds the work of one turn of the event loop: when many associations
    send at once, input beyond it waits for the next turn, associations
    that sent little first (see :mod:`adicom.turns`; it is the loop's, so
    it holds for the server's own outgoing associations too; 0: none).
    ``qr_options`` are the Query/Retrieve extended negotiation options
    (relational queries, ...; PS3.4 C.5) the find/get/move handlers support
    (default: none; :meth:`adicom.archive.Archive.handlers` says what the
    archive does). ``scp_role_classes`` are SOP classes a requestor may take
    the SCP role for (role selection, PS3.7 D.3.3.4), as a Storage Commitment
    SCP does when it reports on an association it opens. ``hooks``
    (:class:`adicom.events.Hooks`) are told the lifecycle, messages and PDUs
    of every association it accepts (or rejects).
    """

    def __init__(
        self,
        ae_title: str = "ADICOM",
        host: str = "127.0.0.1",
        port: int = 11112,
        *,
        require_called_ae: bool = True,
        allowed_calling_aes: Iterable[str] | None = None,
        max_associations: int = 500,
        max_pending: int | None = 128,
        max_per_address: int | None = 64,
        backlog: int | None = None,
        limits: Limits | None = None,
        max_pdu: int = DEFAULT_MAX_PDU,
        artim_timeout: float = 10.0,
        dimse_timeout: float | None = 30.0,
        idle_timeout: float | None = 60.0,
        transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
        user_identity: UserIdentityHook | None = None,
        storage: StorageHandler | None = None,
        storage_sop_classes: Iterable[str] | None = None,
        prefer_requestor_syntax: bool = True,
        on_find: FindHandler | None = None,
        on_get: RetrieveHandler | None = None,
        on_move: RetrieveHandler | None = None,
        move_destinations: MoveDestinations | None = None,
        async_window: int = ASYNC_WINDOW,
        ssl: SSLContext | None = None,
        require_identity: bool = False,
        peers: PeerRules | None = None,
        audit: AuditLog | None = None,
        n_handlers: Mapping[str, NHandler] | None = None,
        scp_role_classes: Iterable[str] = (),
        on_worklist: FindHandler | None = None,
        qr_options: QROptions = NO_QR_OPTIONS,
        outgoing_ssl: SSLContext | None = None,
        hooks: Hooks | None = None,
        max_background: int = 256,
        turn_budget: float = DEFAULT_TURN_BUDGET,
    ) -> None:
        if not 0 < len(ae_title.strip()) <= 16:
            raise ValueError(f"AE title must be 1 to 16 characters, not {ae_title!r}")
        self.ae_title = ae_title.strip()
        self.host = host
        self._requested_port = port
        self.require_called_ae = require_called_ae
        self.allowed_calling_aes = (
            None if allowed_calling_aes is None else {a.strip() for a in allowed_calling_aes}
        )
        self.max_associations = max_associations
        #: The listen backlog (see the class docs).
        self.backlog = listen_backlog(backlog, max_associations)
        #: Every connection runs TLS with this context, when given.
        self.ssl = ssl
        #: The associations the server opens (C-MOVE sub-operations) run
        #: TLS with this client context, when given.
        self.outgoing_ssl = outgoing_ssl
        #: Counts connections against max_associations, max_pending, max_per_address.
        self.admission = Admission(
            max_associations=max_associations,
            max_pending=max_pending,
            max_per_address=max_per_address,
        )
        #: What one message may hold and take (PS3.7 messages as they arrive).
        self.limits = limits or Limits()
        self.async_window = check_window(async_window)
        self.max_pdu = max_pdu
        self.artim_timeout = artim_timeout
        self.dimse_timeout = dimse_timeout
        self.idle_timeout = idle_timeout
        self.user_identity = user_identity
        #: Reject requests that carry no user identity (PS3.7 D.3.3.7).
        self.require_identity = require_identity
        #: Who may associate, from where, to do what (see :mod:`adicom.peers`).
        self.peers = peers
        #: The audit trail (see :mod:`adicom.audit`), when one is kept.
        self.audit = audit
        #: Event hooks for the associations it serves (see :mod:`adicom.events`).
        self.hooks = hooks
        #: Where received instances go; with it every storage SOP class is
        #: accepted (private ones too), or those of ``storage_sop_classes``.
        self.storage = storage
        #: Abstract syntax -> transfer syntaxes we take, most preferred first
        #: (Verification, query/retrieve; storage is by kind, see AcceptorPolicy).
        self.supported: dict[str, Sequence[str]] = {VERIFICATION: tuple(transfer_syntaxes)}
        #: Query/retrieve handlers (see :mod:`adicom.qrscp`).
        self.on_find, self.on_get, self.on_move = on_find, on_get, on_move
        #: The Modality Worklist C-FIND handler (see :mod:`adicom.worklist`).
        self.on_worklist = on_worklist
        self.move_destinations: MoveDestinations = move_destinations or {}
        #: SOP class UID -> the handler of its DIMSE-N requests.
        self.n_handlers: dict[str, NHandler] = dict(n_handlers or {})
        #: At most this much work left by DIMSE-N handlers pending (see _run_n).
        self.max_background = max_background
        #: Seconds of work per turn of the event loop before further input
        #: waits for the next turn (see adicom.turns); 0: no budget.
        self.turn_budget = turn_budget
        query_syntaxes = tuple(transfer_syntaxes)
        self.supported.update(dict.fromkeys(self.n_handlers, query_syntaxes))
        for handler, sop_classes in (
            (on_find, QR_FIND_SOP_CLASSES),
            (on_worklist, (WORKLIST_FIND,)),
            (on_get, QR_GET_SOP_CLASSES),
            (on_move, QR_MOVE_SOP_CLASSES),
        ):
            if handler is not None:
                self.supported.update(dict.fromkeys(sop_classes, query_syntaxes))
        self._policy = AcceptorPolicy(
            ae_title=self.ae_title,
            supported=self.supported,
            require_called_ae=require_called_ae,
            allowed_calling_aes=self.allowed_calling_aes,
            # Instances are kept as sent: any syntax pydicom knows, the
            # requestor's choice first unless told otherwise (PS3.4 B.2).
            storage=STORAGE_TRANSFER_SYNTAXES if storage is not None else None,
            storage_classes=(
                None if storage_sop_classes is None else frozenset(storage_sop_classes)
            ),
            prefer_requestor_syntax=prefer_requestor_syntax,
            # C-GET sends instances back as C-STOREs on contexts where the
            # requestor takes the SCP role (PS3.4 C.4.3).
            get_scp_role=on_get is not None,
            scp_role_classes=frozenset(scp_role_classes),
            qr_options=qr_options,
            max_pdu=max_pdu,
            async_window=self.async_window,
        )
        self._listener: Listener | None = None
        #: close() has run to its end (a later call returns at once).
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        # The work DIMSE-N handlers left for after their responses.
        self._background: set[asyncio.Task[None]] = set()
        #: The open associations, by peer address (see _settle_ended).
        self._by_host: dict[str, dict[Association, Session]] = {}
        #: Connections whose association is over, waiting for the peer's
        #: close without their task (see _linger).
        self._closing: set[Association] = set()
        #: How many associations were accepted, rejected and aborted so far.
        self.stats = {
            "accepted": 0,
            "rejected": 0,
            "aborted": 0,
            "released": 0,
            "refused": 0,
            "tls_failed": 0,
        }

    # -- lifecycle ------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (useful after ``port=0``)."""
        if self._listener is None:
            raise RuntimeError("the server is not listening")
        return self._listener.port

    @property
    def associations(self) -> list[Association]:
        """The connections being served now, associated or not yet (a copy)."""
        return [association for held in self._by_host.values() for association in held]

    async def start(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Start listening; raises OSError when the address cannot be used.

        ``sockets``: listening sockets to accept on instead of binding
        ``host:port``, such as those a supervising process made and passed
        on to its workers (see :mod:`adicom.workers`); the server closes
        them when it closes.
        """
        # The budget is the loop's, shared by everything on it (see adicom.turns).
        loop_turns().budget = self.turn_budget
        listener = Listener(self.host, self._requested_port, self._accepted, backlog=self.backlog)
        await listener.start(sockets)
        self._listener = listener
        self._closed = False
        log.info("%s listening on %s:%d", self.ae_title, self.host, self.port)

    async def close(self, *, grace: float = 0.0) -> None:
        """Stop listening, abort open associations (from any state) and wait for them.

        ``grace``: seconds to let the open associations (and the work that
        N-service handlers left running, see ``n_handlers``) end by
        themselves first (requestors release their associations) before
        the rest are aborted and cancelled; a close cancelled during the
        grace still aborts them. Connections whose association is over
        get the grace to close too (a peer still reading our last PDU);
        then they are dropped. Connections not associated yet are closed
        at once: a server that is stopping takes no new association.
        A server that answers a peer's one message and is done with it, such
        as the Storage Commitment report a peer brings on an association it
        opened (PS3.4 J.3.3), lets that peer release rather than aborting it
        between our response and its A-RELEASE-RQ.
        Bounded: an association task that has not ended 5 s after being
        cancelled is left to the event loop's shutdown. Once closed, a
        further close returns at once. A close that is itself cancelled
        has stopped listening and aborted everything, but has not
        finished: call it again (what it aborted closes within ARTIM
        meanwhile).
        """
        if grace < 0 or math.isnan(grace):
            raise ValueError(f"grace must be 0 or more seconds, not {grace}")
        if self._closed:
            return
        if self._listener is not None:
            self._listener.close()
        try:
            if grace and not self.idle:
                for host, held in list(self._by_host.items()):
                    for association, session in list(held.items()):
                        if not session.accepted:
                            association.abort()
                            if not session.connected:
                                # No transport yet (Sta1, where abort() does
                                # nothing: its task would make it, uvloop or
                                # TLS, and serve it during the grace), or
                                # one made a moment ago, its task not resumed
                                # (Sta2, Sta13): dropped first (see _evict).
                                association.drop()
                                self._cancel(association, host, session)
                # The open associations, the connections whose association
                # is over (a release's A-RELEASE-RP still on its way) and
                # the work DIMSE-N handlers left, all within the grace.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await self.wait_idle()
        finally:
            # Also when the close is cancelled during the grace: nothing is
            # left open and served behind a server said to be closed.
            for host, held in list(self._by_host.items()):
                for association, session in list(held.items()):
                    association.abort()  # its A-ABORT written first
                    if not session.connected:
                        association.drop()  # see _evict
                    self._cancel(association, host, session)
            for task in list(self._tasks):
                task.cancel()  # the background work (and any cancelled already)
            for association in list(self._closing):
                association.drop()  # released, rejected or aborted: closed now
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._closing:
            # Those the tasks cancelled just now left (an A-ABORT queued).
            for association in list(self._closing):
                association.drop()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.wait_idle()
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        if self.storage is not None:
            await self.storage.aclose()
        self._closed = True

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def idle(self) -> bool:
        """No connection is open and no work left by DIMSE-N handlers is running.

        Such work (a Storage Commitment report sent after the N-ACTION's
        response, PS3.4 J.3.3) outlives its association; ``close(grace=...)``
        gives it the grace too (see :meth:`wait_idle`).
        """
        return not self._tasks and not self._closing

    @property
    def closing(self) -> int:
        """How many connections whose association has ended wait for their peer to close.

        They still count against the limits; the driver bounds each wait
        (at most the ARTIM timeout once we close, see ``artim_timeout``).
        """
        return len(self._closing)

    @property
    def background(self) -> int:
        """How many pieces of work left by DIMSE-N handlers are running (see ``max_background``)."""
        return len(self._background)

    async def wait_idle(self) -> None:
        """Wait until :attr:`idle`: every association has ended and been cleaned up.

        For tests and tools that must know a peer's association is over on
        the server's side too (its counts in :attr:`stats` final, its files
        dealt with), and the work DIMSE-N handlers left has ended. Bound it
        with ``asyncio.timeout``.
        """
        while self._tasks or self._closing:
            if self._tasks:
                await asyncio.wait(list(self._tasks))
            else:  # ARTIM bounds it (see _linger)
                await next(iter(self._closing)).wait_closed(None)

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        if self._listener is None:
            await self.start()
        await asyncio.Event().wait()

    # -- per association --------------------------------------------------------

    def _accepted(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """A connection arrived: let it in within the limits, or close it at once."""
        host = address[0]
        ticket = self.admission.connect(host)
        if isinstance(ticket, str) and host in self._by_host and self._settle_ended(host):
            ticket = self.admission.connect(host)
        if isinstance(ticket, str):
            self.stats["refused"] += 1
            self.admission.log.warning("refused", "closing new connections: %s", ticket)
            sock.close()
            return
        association = Association(
            requestor=False,
            max_pdu=self.max_pdu,
            artim_timeout=self.artim_timeout,
            dimse_timeout=self.dimse_timeout,
            idle_timeout=self.idle_timeout,
            limits=self.limits,
            hooks=self.hooks,
        )
        if self.storage is not None:
            association.on_dataset = sink_factory(association, self.storage)
        session = Session(ticket)
        if self.user_identity is None:
            # Nothing in the negotiation awaits (the user identity hook is the
            # one thing that does): the A-ASSOCIATE-RQ is answered in the
            # transport callback that read it, and this association's task
            # is not woken for it.
            session.answers_now = True
            association.on_association_request = partial(self._request_now, association, session)
        loop = asyncio.get_running_loop()
        if self.ssl is None and adopts(loop):
            # asyncio's selector loop: the transport is made in this callback
            # (no connect_accepted_socket, whose coroutines, future and turn
            # for connection_made would follow the task's own first turn),
            # so that it reads from the next turn on.
            try:
                adopt(loop, sock, association)  # closes sock if it fails
            except Exception as exc:
                self.admission.disconnect(ticket, host, associated=False)
                if isinstance(exc, OSError):
                    log.info("connection from %s lost before it started: %s", address, exc)
                else:  # a bug: that connection ends, the others are accepted still
                    log.exception("error accepting %s; closed", address)
                return
            session.connected = True
            self.admission.silent(ticket, association.drop)
        else:
            session.sock = sock
            # No transport yet (its task makes it, a TLS handshake first):
            # evicting it cancels that task (see _evict).
            self.admission.silent(ticket, partial(self._evict, association, host, session))
        held = self._by_host.get(host)
        if held is None:
            held = self._by_host[host] = {}
        held[association] = session
        task = loop.create_task(self._serve(association, sock, address, session))
        # The task takes itself out of _tasks as it ends (see _serve): a done
        # callback would cost a loop turn of its own per connection. One
        # cancelled before it ever ran is dealt with by close(). (An eager
        # task factory, Python 3.12, may have run it to its end already.)
        if not task.done():
            session.task = task
            self._tasks.add(task)

    def _forget(self, association: Association, host: str) -> None:
        """Take ``association`` out of the ones being served."""
        held = self._by_host[host]
        del held[association]
        if not held:
            del self._by_host[host]

    def _linger(self, association: Association, session: Session, host: str) -> None:
        """The peer closes the connection now: admission is told then, without the task.

        Its task ends here rather than wait for the close: the wake-up it
        would take costs a loop turn of its own per association. The driver
        bounds the wait: in Sta13 ARTIM runs (every way into Sta13 starts
        it, PS3.8 9.2) and its expiry drops the connection; a close of ours that
        waits behind data the peer does not read (in Sta1 too) ends at the
        ARTIM timeout (Driver._end_connection).
        """
        if association.state not in _ENDED:
            association.abort()  # AA-1: to Sta13, ARTIM started
        self._closing.add(association)
        association.on_closed = partial(self._peer_closed, association, session, host)

    def _peer_closed(self, association: Association, session: Session, host: str) -> None:
        """A lingering connection (see _linger) has closed: it counts no more."""
        self._closing.discard(association)
        self.admission.disconnect(session.ticket, host, associated=False)

    def _evict(self, association: Association, host: str, session: Session) -> None:
        """Admission needs this connection's place (see adicom.admission): it goes now.

        One whose transport exists is dropped; one whose task is still
        making it (uvloop, or a TLS handshake a silent peer never finishes)
        has that task cancelled, which closes the socket and tells
        admission. Either way the connection counts until it has gone.
        """
        # Dropped first in any case: a transport made a moment ago, its
        # task not resumed yet, would otherwise be closed by asyncio's
        # cancelled connect, which on 3.11's TLS transport may leave it
        # registered under a closed socket (a second close() unlinks it).
        association.drop()
        if not session.connected:
            self._cancel(association, host, session)

    def _cancel(self, association: Association, host: str, session: Session) -> None:
        """Cancel the task of a connection that close() or an eviction ends, if it still runs."""
        task = session.task
        if task is not None:
            # A task cancelled before it ever ran runs none of _serve: this
            # tidies up after it when it ends (also when close() is itself
            # cancelled meanwhile; a second call adds a callback that finds
            # nothing left to do).
            task.add_done_callback(partial(self._drop_unstarted, association, host, session))
            task.cancel()

    def _drop_unstarted(
        self,
        association: Association,
        host: str,
        session: Session,
        task: asyncio.Task[None],
    ) -> None:
        """After a task close() or an eviction cancelled: if it never ran, forget its connection.

        Such a task ends without running any of _serve, whose ``finally``
        would have done this (and set ``session.task`` to None). Its
        association was aborted or dropped already (an adopted transport
        closes its socket); a socket not yet wrapped in a transport is
        closed here.
        """
        if session.task is not task:
            return  # it ran: its own finally tidied up
        self._tasks.discard(task)
        session.task = None
        self._forget(association, host)
        if session.sock is not None:
            session.sock.close()
            session.sock = None
        self.admission.disconnect(session.ticket, host, associated=False)

    def _settle_ended(self, host: str) -> bool:
        """Tell admission now of ``host``'s associations that have ended; True if any had.

        A peer's A-ABORT (or the end of a release) and its next connection
        can reach the server in the same turn of its loop, before the old
        association's task has run to tell admission (see _serve's end):
        that association would still fill the address's places, and a peer
        that aborts and reconnects at once be refused. Called only when a
        new connection from ``host`` would be refused, over that host's
        associations (at most its ``max_per_address``).
        """
        settled = False
        for association, session in self._by_host[host].items():
            # Sta1 before its transport is made is a connection starting.
            if not session.ended and session.connected and association.state in _ENDED:
                session.ended = True
                self.admission.closing(
                    session.ticket, host, association.drop, associated=session.associated
                )
                settled = True
        return settled

    async def _serve(
        self,
        association: Association,
        sock: socket.socket,
        address: tuple[str, int],
        session: Session,
    ) -> None:
        try:
            host = address[0]
            session.sock = None  # this task has it now
            try:
                if not session.connected:
                    await asyncio.get_running_loop().connect_accepted_socket(
                        association.protocol,
                        sock,
                        ssl=self.ssl,
                        ssl_handshake_timeout=self.artim_timeout if self.ssl is not None else None,
                    )
                    session.connected = True
            except BaseException as exc:
                # Cancelled (a close, an eviction) once a TLS handshake had
                # ended, asyncio only starts a graceful TLS close, waiting
                # for a peer that may never answer: its transport goes with
                # the socket here (the selector forgets the descriptor now,
                # before it can be reused).
                association.drop()
                sock.close()
                self._forget(association, host)
                # Accepted already if the request came with the handshake's
                # end (answered in that callback), and cancelled since.
                associated = session.associated and not session.ended
                self.admission.disconnect(session.ticket, host, associated=associated)
                if isinstance(exc, OSError | TimeoutError) and self.ssl is not None:
                    # An untrusted client certificate, plain DICOM on the TLS
                    # port, a scanner: that connection ends, the server goes on.
                    self.stats["tls_failed"] += 1
                    why = describe_tls_failure(exc)
                    self.admission.log.warning("tls", "TLS handshake with %s failed: %s", host, why)
                    if self.audit is not None:
                        self.audit.tls_failed(address, why)
                    return
                if not isinstance(exc, OSError):
                    raise
                log.info("connection from %s lost before it started: %s", address, exc)
                return
            try:
                if session.answers_now:
                    # The A-ASSOCIATE-RQ is answered in the transport callback
                    # (_request_now): the task waits for the peer's requests from
                    # the start, woken first by one that cannot be answered at
                    # once, the release, or the end of the connection (ARTIM
                    # bounds the wait for the request, PS3.8 9.1.5, and for the
                    # close after a rejection).
                    try:
                        await self._handle_requests(association)
                    except DicomError:
                        if session.accepted:
                            raise
                        # Ended before an association: never requested (closed,
                        # ARTIM, a PDU not allowed in Sta2), or rejected, or
                        # failed answering (both counted already).
                        if not session.answered:
                            log.info("connection from %s closed before an association", address)
                    return
                request = await association.wait_request()
                if request is None:
                    log.info("connection from %s closed before an association", address)
                    return
                self.admission.requested(session.ticket)
                if not await self._negotiate(association, session, request):
                    return
                await self._handle_requests(association)
            except asyncio.CancelledError:
                association.abort()
                raise
            except DicomError as exc:
                self.stats["aborted"] += 1
                log.info("association from %s ended: %s", association.calling_ae or "?", exc)
                association.abort()
            except Exception:
                self.stats["aborted"] += 1
                log.exception("error serving %s; aborting", association.calling_ae or "?")
                association.abort()
            finally:
                self._forget(association, host)
                # Until the peer closes (ARTIM bounds it), the connection still
                # counts, no longer as an association (see adicom.admission).
                if not session.ended:
                    self.admission.closing(
                        session.ticket, host, association.drop, associated=session.associated
                    )
                if association.closed:
                    self.admission.disconnect(session.ticket, host, associated=False)
                else:
                    self._linger(association, session, host)
        finally:
            # Its place in _tasks (see _accepted: no done callback).
            if session.task is not None:
                self._tasks.discard(session.task)
                session.task = None
