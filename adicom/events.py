"""Event hooks: what happens on an association, told to the code that asks.

Subscribe handlers to event classes in a :class:`Hooks` registry and give it
to :func:`adicom.connect`, :func:`adicom.open_association` or
:class:`adicom.Server` (``hooks=``)::

    hooks = Hooks()
    hooks.subscribe(Accepted, lambda event: print("accepted", event.association.called_ae))

The events, each a frozen dataclass whose ``association`` is the
:class:`~adicom.association.Association` it happened on:

* the lifecycle (:class:`Lifecycle`): :class:`Requested`, :class:`Accepted`,
  :class:`Rejected`, :class:`Released`, :class:`Aborted`, on both sides
  (``association.requestor`` says which side we are);
* each whole DIMSE message: :class:`MessageSent`, :class:`MessageReceived`;
* for debugging, each PDU: :class:`PduSent`, :class:`PduReceived`.

Subscribing to a base class (:class:`Event`, :class:`Lifecycle`) takes every
event under it.

**How handlers run.** A handler is called on the event loop, in the order
the events happen, as soon as the driver is between protocol steps (never
inside a state transition). A plain function runs right there and must be
quick. A coroutine function (or any handler that returns an awaitable) is
scheduled as a task: it may await, but runs after the protocol has moved on
(the association may be released by then). An exception in a handler, or
in its task, is logged on ``adicom.events`` and goes no further: a hook can
never break an association. Handlers should not call the association's
methods synchronously; a coroutine handler may.

**What it costs.** An association takes the subscriptions its registry
holds when it starts (later ones count from the next association). With
none, and protocol logging off, it holds no emitter, and each place an event
could arise costs one ``is not None`` test: no event object is made.

**Protocol logging** is a subscriber like any other, attached to an
association when it starts if its logger is enabled then (all under the
``adicom`` logger, so applications route it with :mod:`logging`):

* ``adicom.association`` at INFO: requested, accepted, rejected (and why),
  released, aborted (by whom and why), with the peer's AE title and address;
* ``adicom.dimse`` at INFO: each operation's outcome (its final response and
  status); at DEBUG: a dump of every DIMSE message (command set fields, data
  set summary);
* ``adicom.pdu`` at DEBUG: a dump of every PDU (type, length, items).

:func:`debug_logging` turns all of it on in one call (``adicom --debug``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar

from pydicom.uid import UID

from adicom.dimse import (
    Command,
    DatasetReader,
    Message,
    Priority,
    StatusCategory,
    describe_status,
    status_category,
)
from adicom.errors import DicomError, describe_reject
from adicom.fileformat import decode_dataset
from adicom.pdu import (
    PDU,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    UserInformation,
)
from adicom.pdu.items import PRESENTATION_RESULTS

if TYPE_CHECKING:
    from adicom.association import Association

__all__ = [
    "Aborted",
    "Accepted",
    "Emitter",
    "Event",
    "Hooks",
    "Lifecycle",
    "MessageReceived",
    "MessageSent",
    "PduReceived",
    "PduSent",
    "Rejected",
    "Released",
    "Requested",
    "debug_logging",
    "describe_message",
    "describe_pdu",
    "emitter",
]

log = logging.getLogger("adicom.events")
#: Association lifecycle lines (INFO).
association_log = logging.getLogger("adicom.association")
#: Operation outcomes (INFO) and DIMSE message dumps (DEBUG).
dimse_log = logging.getLogger("adicom.dimse")
#: PDU dumps (DEBUG).
pdu_log = logging.getLogger("adicom.pdu")


# --------------------------------------------------------------------------
# The events


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: the association it happened on."""

    association: Association


@dataclass(frozen=True, slots=True)
class Lifecycle(Event):
    """Base of the association lifecycle events."""


@dataclass(frozen=True, slots=True)
class Requested(Lifecycle):
    """An A-ASSOCIATE-RQ: about to be sent (requestor) or just received (acceptor)."""

    request: AAssociateRQ


@dataclass(frozen=True, slots=True)
class Accepted(Lifecycle):
    """The association was accepted: A-ASSOCIATE-AC received (requestor) or sent (acceptor)."""

    response: AAssociateAC


@dataclass(frozen=True, slots=True)
class Rejected(Lifecycle):
    """The association was rejected: A-ASSOCIATE-RJ received (requestor) or sent (acceptor)."""

    response: AAssociateRJ

    @property
    def reason(self) -> str:
        """The rejection in words (PS3.8 Table 9-21)."""
        rj = self.response
        return describe_reject(rj.result, rj.source, rj.reason)


@dataclass(frozen=True, slots=True)
class Released(Lifecycle):
    """The association was released (A-RELEASE); ``by_peer`` when the peer asked."""

    by_peer: bool


@dataclass(frozen=True, slots=True)
class Aborted(Lifecycle):
    """The association ended without a release: A-ABORT, or the connection went.

    ``local`` is True when we sent the A-ABORT; ``source`` and ``reason`` are
    those of the A-ABORT PDU sent or received (PS3.8 Table 9-26), None when
    there was none (the connection closed or timed out under the
    association: an A-P-ABORT). ``error`` is what the association's users
    were told. Reported once the connection has closed.
    """

    local: bool
    source: int | None
    reason: int | None
    error: DicomError


@dataclass(frozen=True, slots=True)
class MessageSent(Event):
    """A DIMSE message was wholly queued for the peer.

    ``dataset`` is what was given to send (encoded in the context's transfer
    syntax, or a reader already read to its end).
    """

    context_id: int
    command: Command
    dataset: bytes | memoryview | DatasetReader | None


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A whole DIMSE message came from the peer (its data set in memory or in a sink)."""

    message: Message


@dataclass(frozen=True, slots=True)
class PduSent(Event):
    """A PDU was queued for the peer (debugging: one per PDU).

    The PDV data of a P-DATA-TF may be a view of a buffer reused after the
    handler returns: a coroutine handler should not read it.
    """

    pdu: PDU


@dataclass(frozen=True, slots=True)
class PduReceived(Event):
    """A whole PDU came from the peer (debugging: one per PDU)."""

    pdu: PDU


#: The concrete events, for which an emitter keeps handlers.
KINDS: tuple[type[Event], ...] = (
    Requested,
    Accepted,
    Rejected,
    Released,
    Aborted,
    MessageSent,
    MessageReceived,
    PduSent,
    PduReceived,
)

E = TypeVar("E", bound=Event)
#: A handler: takes the event; returns None, or an awaitable run as a task.
Handler = Callable[[Any], object]


# --------------------------------------------------------------------------
# Subscriptions


class Hooks:
    """A registry of event handlers, given to associations with ``hooks=``.

    One registry may serve many associations (a server's, every call of a
    client); each takes the subscriptions there are when it starts.
    """

    def __init__(self) -> None:
        self._subscriptions: list[tuple[type[Event], Handler]] = []

    def subscribe(
        self, kind: type[E], handler: Callable[[E], Awaitable[object] | None]
    ) -> Callable[[E], Awaitable[object] | None]:
        """Call ``handler`` with every event of class ``kind`` (or a subclass); returns it.

        A coroutine function is run as a task per event.
        """
        if not (isinstance(kind, type) and issubclass(kind, Event)):
            raise TypeError(f"subscribe to an adicom.events.Event class, not {kind!r}")
        self._subscriptions.append((kind, handler))
        return handler

    def on(
        self, kind: type[E]
    ) -> Callable[
        [Callable[[E], Awaitable[object] | None]], Callable[[E], Awaitable[object] | None]
    ]:
        """Decorator form of :meth:`subscribe`: ``@hooks.on(events.Accepted)``."""
        return lambda handler: self.subscribe(kind, handler)

    def unsubscribe(self, kind: type[Event], handler: Callable[..., object]) -> None:
        """Stop calling ``handler`` for ``kind`` (from the next association on)."""
        self._subscriptions = [
            (k, h) for k, h in self._subscriptions if not (k is kind and h == handler)
        ]

    def __len__(self) -> int:
        """How many subscriptions there are."""
        return len(self._subscriptions)

    def handlers(self, kind: type[Event]) -> list[Handler]:
        """The handlers an event of class ``kind`` goes to, in subscription order."""
        return [h for k, h in self._subscriptions if issubclass(kind, k)]


class Emitter:
    """The handlers one association calls, fixed when it starts (see :func:`emitter`).

    Used by the driver; ``pdus`` says whether PDUs are wanted at all (they
    are traced only then).
    """

    __slots__ = ("_handlers", "pdus")

    def __init__(self, handlers: dict[type[Event], tuple[Handler, ...]]) -> None:
        self._handlers = handlers
        self.pdus = PduSent in handlers or PduReceived in handlers

    def wants(self, kind: type[Event]) -> bool:
        """True when events of class ``kind`` have a handler."""
        return kind in self._handlers

    def emit(self, event: Event) -> None:
        """Call the handlers of ``event``; what they raise is logged, never raised."""
        for handler in self._handlers.get(type(event), ()):
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    _schedule(result, handler, event)
            except Exception:
                log.exception("the %s hook %r failed", type(event).__name__, handler)


_TASKS: set[asyncio.Future[Any]] = set()
#: At most this many async hook calls run at once; beyond, an event's async
#: handler is skipped (logged): a peer's flood of PDUs cannot pile up tasks.
MAX_PENDING_HOOKS = 1024
_skipped = 0


def _schedule(awaitable: Awaitable[object], handler: Handler, event: Event) -> None:
    global _skipped
    if len(_TASKS) >= MAX_PENDING_HOOKS:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never awaited: no warning, no work
        _skipped += 1
        if _skipped == 1 or _skipped % 1000 == 0:
            log.warning(
                "%d async hook calls are still running; skipping the %s hook %r (%d skipped)",
                MAX_PENDING_HOOKS,
                type(event).__name__,
                handler,
                _skipped,
            )
        return
    task = asyncio.ensure_future(awaitable)
    _TASKS.add(task)  # a task nobody holds may be collected before it runs

    def done(task: asyncio.Future[Any]) -> None:
        _TASKS.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "the %s hook %r failed",
                type(event).__name__,
                handler,
                exc_info=task.exception(),
            )

    task.add_done_callback(done)


def emitter(hooks: Hooks | None) -> Emitter | None:
    """What an association starting now calls: ``hooks``' handlers and protocol logging.

    None when there is nothing to call, so the association makes no event.
    """
    handlers: dict[type[Event], list[Handler]] = {}
    if association_log.isEnabledFor(logging.INFO):
        for lifecycle in (Requested, Accepted, Rejected, Released, Aborted):
            handlers[lifecycle] = [_log_lifecycle]
    if dimse_log.isEnabledFor(logging.INFO):
        handlers[MessageSent] = [_log_message]
        handlers[MessageReceived] = [_log_message]
    if pdu_log.isEnabledFor(logging.DEBUG):
        handlers[PduSent] = [_log_pdu]
        handlers[PduReceived] = [_log_pdu]
    if hooks is not None and len(hooks):
        for kind in KINDS:
            subscribed = hooks.handlers(kind)
            if subscribed:
                handlers.setdefault(kind, []).extend(subscribed)
    if not handlers:
        return None
    return Emitter({kind: tuple(h) for kind, h in handlers.items()})


# --------------------------------------------------------------------------
# Protocol logging


def debug_logging(level: int = logging.DEBUG, stream: IO[str] | None = None) -> logging.Handler:
    """Log adicom's protocol lines, PDU and DIMSE dumps included, to ``stream`` (stderr).

    Sets the ``adicom`` logger to ``level`` and gives it a handler (once:
    calling again returns the same one). ``logging.INFO`` keeps the
    lifecycle and operation lines without the dumps. Takes effect for
    associations that start afterwards. Returns the handler, for
    ``logging.getLogger("adicom").removeHandler``.
    """
    logger = logging.getLogger("adicom")
    logger.setLevel(level)
    for handler in logger.handlers:
        if getattr(handler, "_adicom_debug", False):
            return handler
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._adicom_debug = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    return handler


def _peer(association: Association) -> str:
    """The peer's AE title (the one that is not ours) and address."""
    request = association.request
    title = ""
    if request is not None:
        title = request.called_ae if association.requestor else request.calling_ae
    address = association.peer_address
    where = f"{address[0]}:{address[1]}" if address else "?"
    return f"{title or '?'} at {where}"


def _log_lifecycle(event: Event) -> None:
    if not association_log.isEnabledFor(logging.INFO):
        return
    association = event.association
    peer = _peer(association)
    requestor = association.requestor
    if isinstance(event, Requested):
        rq = event.request
        contexts = len(rq.presentation_contexts)
        if requestor:
            text = f"requesting an association from {rq.calling_ae} to {peer}"
        else:
            text = f"association requested by {peer}, calling {rq.called_ae}"
        association_log.info("%s (%s)", text, _count(contexts, "presentation context"))
    elif isinstance(event, Accepted):
        ac = event.response
        accepted = sum(pc.result == 0 for pc in ac.presentation_contexts)
        text = (
            f"association accepted by {peer}"
            if requestor
            else f"accepted the association of {peer}"
        )
        association_log.info(
            "%s: %d of %d presentation contexts, maximum PDU %d",
            text,
            accepted,
            len(ac.presentation_contexts),
            ac.user_information.maximum_length,
        )
    elif isinstance(event, Rejected):
        rj = event.response
        text = (
            f"association rejected by {peer}"
            if requestor
            else f"rejected the association of {peer}"
        )
        association_log.info(
            "%s: %s [result %d, source %d, reason %d]",
            text,
            event.reason,
            rj.result,
            rj.source,
            rj.reason,
        )
    elif isinstance(event, Released):
        who = "the peer" if event.by_peer else "us"
        association_log.info("association with %s released (asked by %s)", peer, who)
    elif isinstance(event, Aborted):
        if event.source is None:
            how = "ended without A-ABORT (A-P-ABORT)"
        else:
            by = "by us" if event.local else "by the peer"
            how = f"aborted {by} [source {event.source}, reason {event.reason}]"
        association_log.info("association with %s %s: %s", peer, how, event.error)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _final(command: Command) -> bool:
    return command.is_response and (
        status_category(command.status or 0) is not StatusCategory.PENDING
    )


def _log_message(event: Event) -> None:
    if dimse_log.isEnabledFor(logging.DEBUG):
        dimse_log.debug("%s", describe_message(event))
    if not dimse_log.isEnabledFor(logging.INFO):
        return
    if isinstance(event, MessageSent):
        command = event.command
    elif isinstance(event, MessageReceived):
        command = event.message.command
    else:
        return
    if not _final(command):
        return
    # The SCU hears an operation's outcome; the SCP says it.
    received = isinstance(event, MessageReceived)
    peer = _peer(event.association)
    operation = command.name.removesuffix("-RSP")
    status = command.status or 0
    extra = ""
    if command.affected_sop_instance_uid and operation in ("C-STORE", "N-CREATE", "N-SET"):
        extra = f", instance {command.affected_sop_instance_uid}"
    if command.number_of_completed_suboperations is not None:
        extra += (
            f", sub-operations: {command.number_of_completed_suboperations} completed, "
            f"{command.number_of_failed_suboperations or 0} failed, "
            f"{command.number_of_warning_suboperations or 0} warning"
        )
    dimse_log.info(
        "%s %s %s: %s [0x%04X]%s",
        operation,
        "answered by" if received else "from",
        peer if received else peer + " answered",
        describe_status(status),
        status,
        extra,
    )


def _log_pdu(event: Event) -> None:
    if pdu_log.isEnabledFor(logging.DEBUG):
        assert isinstance(event, PduSent | PduReceived)
        direction = "sent" if isinstance(event, PduSent) else "received"
        pdu_log.debug("%s", describe_pdu(event.pdu, direction))


# --------------------------------------------------------------------------
# Readable dumps


_PDU_NAMES: dict[type, str] = {
    AAssociateRQ: "A-ASSOCIATE-RQ",
    AAssociateAC: "A-ASSOCIATE-AC",
    AAssociateRJ: "A-ASSOCIATE-RJ",
    PDataTF: "P-DATA-TF",
    AReleaseRQ: "A-RELEASE-RQ",
    AReleaseRP: "A-RELEASE-RP",
    AAbort: "A-ABORT",
}
_IDENTITY_TYPES = {
    1: "username",
    2: "username and passcode",
    3: "Kerberos service ticket",
    4: "SAML assertion",
    5: "JSON Web Token",
}
_ABORT_REASONS = {
    0: "not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}
#: Data sets larger than this are summed up by size, not decoded.
DUMP_DATASET_MAX = 16 * 1024
#: Lines of a decoded data set shown at most.
DUMP_LINES = 40


def _uid(uid: str) -> str:
    """A UID with its name, when pydicom knows it."""
    name = UID(uid).name
    return uid if not name or name == uid else f"{name} ({uid})"


def _pdu_length(pdu: PDU) -> int:
    if isinstance(pdu, PDataTF):
        return sum(6 + len(pdv.data) for pdv in pdu.pdvs)
    return len(pdu.encode()) - 6


def describe_pdu(pdu: PDU, direction: str = "") -> str:
    """A readable, multi-line dump of a PDU: its type, length and items.

    ``direction`` ("sent", "received") goes into the first line.
    """
    name = _PDU_NAMES.get(type(pdu), type(pdu).__name__)
    head = f"{name} {direction}".rstrip() + f", PDU length {_pdu_length(pdu)}"
    lines = [head]
    if isinstance(pdu, AAssociateRQ | AAssociateAC):
        lines.append(
            f"  protocol version {pdu.protocol_version}, called AE {pdu.called_ae!r}, "
            f"calling AE {pdu.calling_ae!r}"
        )
        lines.append(f"  application context {_uid(pdu.application_context)}")
        if isinstance(pdu, AAssociateRQ):
            for rq in pdu.presentation_contexts:
                lines.append(f"  presentation context {rq.context_id}: {_uid(rq.abstract_syntax)}")
                for ts in rq.transfer_syntaxes:
                    lines.append(f"    transfer syntax {_uid(ts)}")
        else:
            for ac in pdu.presentation_contexts:
                result = PRESENTATION_RESULTS.get(ac.result, f"result {ac.result}")
                syntax = f", {_uid(ac.transfer_syntax)}" if ac.result == 0 else ""
                lines.append(f"  presentation context {ac.context_id}: {result}{syntax}")
        lines.extend(_user_information(pdu.user_information))
    elif isinstance(pdu, AAssociateRJ):
        lines.append(
            f"  result {pdu.result}, source {pdu.source}, reason {pdu.reason}: "
            + describe_reject(pdu.result, pdu.source, pdu.reason)
        )
    elif isinstance(pdu, PDataTF):
        for pdv in pdu.pdvs:
            kind = "command" if pdv.is_command else "data set"
            last = "last fragment" if pdv.is_last else "more to come"
            lines.append(f"  PDV context {pdv.context_id}, {kind}, {last}, {len(pdv.data)} bytes")
    elif isinstance(pdu, AAbort):
        source = {0: "service-user", 2: "service-provider"}.get(pdu.source, "reserved")
        reason = _ABORT_REASONS.get(pdu.reason, "unknown") if pdu.source == 2 else "-"
        lines.append(f"  source {pdu.source} ({source}), reason {pdu.reason} ({reason})")
    return "\n".join(lines)


def _user_information(user: UserInformation) -> list[str]:
    lines = [
        f"  user information: maximum length {user.maximum_length}, implementation class "
        f"{user.implementation_class_uid}"
        + (f" ({user.implementation_version_name})" if user.implementation_version_name else "")
    ]
    window = user.async_operations_window
    if window is not None:
        lines.append(
            f"    asynchronous operations window: {window.invoked} invoked, "
            f"{window.performed} performed"
        )
    for role in user.role_selections:
        lines.append(
            f"    role selection {_uid(role.sop_class_uid)}: "
            f"SCU {'yes' if role.scu_role else 'no'}, SCP {'yes' if role.scp_role else 'no'}"
        )
    for ext in user.sop_class_extended:
        lines.append(
            f"    extended negotiation {_uid(ext.sop_class_uid)}: "
            f"{ext.application_information.hex(' ')}"
        )
    for common in user.sop_class_common_extended:
        lines.append(
            f"    common extended negotiation {_uid(common.sop_class_uid)}: "
            f"service class {_uid(common.service_class_uid)}"
        )
    if user.user_identity_rq is not None:
        rq = user.user_identity_rq
        kind = _IDENTITY_TYPES.get(rq.identity_type, f"type {rq.identity_type}")
        # Never the secret itself: a log is no place for a password.
        lines.append(
            f"    user identity: {kind}, positive response "
            f"{'requested' if rq.positive_response_requested else 'not requested'}"
        )
    if user.user_identity_ac is not None:
        size = len(user.user_identity_ac.server_response)
        lines.append(f"    user identity accepted, server response of {size} bytes")
    for unknown in user.unknown:
        lines.append(f"    unknown sub-item 0x{unknown.item_type:02X}, {len(unknown.data)} bytes")
    return lines


def _label(name: str) -> str:
    words = {"id": "ID", "uid": "UID", "sop": "SOP", "ae": "AE", "of": "of"}
    return " ".join(words.get(w, w.capitalize()) for w in name.split("_"))


def _field_value(name: str, value: object) -> str:
    if name == "status" and isinstance(value, int):
        return f"0x{value:04X} ({describe_status(value)})"
    if name == "priority" and isinstance(value, int):
        try:
            return Priority(value).name
        except ValueError:
            return str(value)
    if name == "command_data_set_type" and isinstance(value, int):
        return "none" if value == 0x0101 else f"data set present (0x{value:04X})"
    if name.endswith("_uid") and isinstance(value, str):
        return _uid(value)
    if isinstance(value, tuple) and name in ("offending_element", "attribute_identifier_list"):
        return ", ".join(f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in value)
    return str(value)


def _command_lines(command: Command) -> list[str]:
    lines = []
    for field in dataclasses.fields(command):
        if field.name in ("command_field", "other"):
            continue
        value = getattr(command, field.name)
        if value is not None:
            lines.append(f"  {_label(field.name)}: {_field_value(field.name, value)}")
    for tag, raw in command.other:
        lines.append(f"  ({tag >> 16:04X},{tag & 0xFFFF:04X}): {len(raw)} bytes")
    return lines


def _dataset_lines(association: Association, context_id: int, data: bytes) -> list[str]:
    context = association.contexts.get(context_id)
    syntax = context.transfer_syntax if context is not None else None
    if len(data) > DUMP_DATASET_MAX or syntax is None:
        return [f"  data set: {len(data)} bytes"]
    try:
        dataset = decode_dataset(data, syntax)
        shown = str(dataset).splitlines()
    except Exception as exc:  # pydicom raises many kinds on bad data
        return [f"  data set: {len(data)} bytes, which do not decode: {exc}"]
    lines = [f"  data set: {len(data)} bytes, {UID(syntax).name or syntax}"]
    lines.extend("    " + line for line in shown[:DUMP_LINES])
    if len(shown) > DUMP_LINES:
        lines.append(f"    ... {len(shown) - DUMP_LINES} more lines")
    return lines


def describe_message(event: Event) -> str:
    """A readable, multi-line dump of a :class:`MessageSent` or :class:`MessageReceived`.

    The command set's fields by name, then the data set: decoded when it is
    small and in memory, else its size.
    """
    association = event.association
    if isinstance(event, MessageSent):
        direction, context_id, command = "sent", event.context_id, event.command
        dataset = event.dataset
        if isinstance(dataset, bytes | memoryview):
            data_lines = _dataset_lines(association, context_id, bytes(dataset))
        elif dataset is not None:
            data_lines = [f"  data set: {dataset.size} bytes, read as sent"]
        else:
            data_lines = []
    elif isinstance(event, MessageReceived):
        message = event.message
        direction, context_id, command = "received", message.context_id, message.command
        if message.refused is not None:
            data_lines = [f"  data set refused: {message.refused}"]
        elif message.sink is not None:
            data_lines = ["  data set: streamed to storage as it arrived"]
        elif message.dataset is not None:
            data_lines = _dataset_lines(association, context_id, message.dataset)
        else:
            data_lines = []
    else:
        raise TypeError(f"not a DIMSE message event: {event!r}")
    lines = [f"{command.name} {direction} on presentation context {context_id}"]
    lines.extend(_command_lines(command))
    lines.extend(data_lines)
    return "\n".join(lines)
