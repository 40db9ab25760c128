"""The events an association tells its hooks (adicom.events), only when something listens.

:class:`Emission` is a base of :class:`adicom.driver.Driver`: what each PDU,
message and step of the association's life means as an event, and telling
it. The driver calls these only when its emitter is not None (a handler or
protocol logging listens), so an association nobody watches makes no event.
"""

from __future__ import annotations

from typing import Any

from adicom import events as ev
from adicom import protocol as ul
from adicom.dimse import Message
from adicom.errors import AssociationAborted, ConnectionClosed, DicomError
from adicom.pdu import AAssociateRQ

__all__ = ["Emission"]


class Emission:
    """Telling an association's events to its hooks (a base of the Driver)."""

    #: Calls the hooks' handlers and protocol logging (None: nothing listens).
    _emitter: ev.Emitter | None
    _ul: ul.UpperLayer
    #: The peer's A-ASSOCIATE-RQ (the driver's).
    request: AAssociateRQ | None
    #: Released, rejected or aborted has been told.
    _ended: bool
    #: The first failure of the association, if any (the driver's).
    _error: DicomError | None

    def _emit(self, event: ev.Event) -> None:
        assert self._emitter is not None
        self._emitter.emit(event)

    def _emit_trace(self) -> None:
        """Tell the PDUs sent and received since last time, in order."""
        trace = self._ul.trace
        if not trace:
            return
        self._ul.trace = []  # a handler that makes the layers send starts a new list
        this: Any = self  # events name the Association this driver is part of
        for pdu, sent in trace:
            self._emit(ev.PduSent(this, pdu) if sent else ev.PduReceived(this, pdu))

    def _emit_received(self, message: Message) -> None:
        assert self._emitter is not None
        if self._emitter.wants(ev.MessageReceived):
            this: Any = self
            self._emit(ev.MessageReceived(this, message))

    def _lifecycle_event(self, event: ul.ULEvent) -> None:
        """The lifecycle event an upper layer event means, if any."""
        self._emit_trace()  # an answer queued before this event (A-RELEASE-RP) comes first
        this: Any = self
        if isinstance(event, ul.AssociationRequested):
            self.request = event.request
            self._emit(ev.Requested(this, event.request))
        elif isinstance(event, ul.AssociationAccepted):
            self._emit(ev.Accepted(this, event.response))
        elif isinstance(event, ul.AssociationRejected):
            self._ended = True
            self._emit(ev.Rejected(this, event.response))
        elif isinstance(event, ul.ReleaseRequested | ul.ReleaseConfirmed):
            by_peer = isinstance(event, ul.ReleaseRequested)
            if not self._ended and not (by_peer and event.collision):  # type: ignore[union-attr]
                self._ended = True
                self._emit(ev.Released(this, by_peer))

    def _emit_end(self) -> None:
        """The connection closed: an association that did not end otherwise was aborted."""
        if self._ended or self.request is None:
            return
        self._ended = True
        error = self._error or ConnectionClosed("the association has ended")
        sent = self._ul.sent_abort
        this: Any = self
        if isinstance(error, AssociationAborted) and not error.local:
            event = ev.Aborted(this, False, error.source, error.reason, error)
        elif sent is not None:
            event = ev.Aborted(this, True, sent.source, sent.reason, error)
        else:
            event = ev.Aborted(this, False, None, None, error)
        self._emit(event)
