"""Answering an A-ASSOCIATE-RQ: the negotiation half of the server.

:class:`AssociationAnswering` decides on each request a server receives:
the AE titles and application context, the peer rules, a user identity
required or offered (the one step that awaits, PS3.7 D.3.3.7), the
association limit, then the presentation contexts (adicom.negotiation);
it answers and writes the audit trail. The server (adicom.server)
inherits it; this module does not import it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from adicom.admission import Admission
from adicom.association import Association
from adicom.audit import AuditLog
from adicom.errors import describe_reject
from adicom.negotiation import AcceptorPolicy, Agreement, check_request, negotiate
from adicom.pdu import AAssociateAC, AAssociateRJ, AAssociateRQ, UserIdentityRQ
from adicom.peers import Peer, PeerRules
from adicom.tls import TlsInfo

__all__ = ["AssociationAnswering", "AssociationInfo", "Session", "UserIdentityHook"]

log = logging.getLogger("adicom")

#: Decides a user identity (PS3.7 D.3.3.7): return None to reject the
#: association, or the server response bytes to accept (b"" when none).
UserIdentityHook = Callable[[UserIdentityRQ, "AssociationInfo"], Awaitable[bytes | None]]


@dataclass(frozen=True, slots=True)
class AssociationInfo:
    """Who is asking: what the server knows when it decides on a request."""

    calling_ae: str
    called_ae: str
    address: tuple[str, int] | None
    request: AAssociateRQ
    #: TLS version, cipher and the peer's certificate; None on plain TCP.
    tls: TlsInfo | None = None


# PS3.8 Table 9-21 answers, (result, source, reason).
_RJ_NO_REASON = AAssociateRJ(1, 1, 1)
_RJ_CALLING_AE = AAssociateRJ(1, 1, 3)  # calling-AE-title-not-recognized
_RJ_TOO_MANY = AAssociateRJ(2, 3, 2)  # transient, local limit exceeded


class Session:
    """What a connection's task and its transport callbacks share about its negotiation."""

    __slots__ = (
        "accepted",
        "answered",
        "answers_now",
        "associated",
        "connected",
        "ended",
        "sock",
        "task",
        "ticket",
    )

    def __init__(self, ticket: int) -> None:
        #: Its admission ticket (see adicom.admission).
        self.ticket = ticket
        #: Its transport is made: as it was accepted (adicom.transport.adopt),
        #: or by its task (TLS, other loops). Until then its association is
        #: in Sta1, not ended.
        self.connected = False
        #: Its task (Server._serve), until the task ends.
        self.task: asyncio.Task[None] | None = None
        #: Its socket, until its task wraps it in a transport (not adopted).
        self.sock: socket.socket | None = None
        #: Its A-ASSOCIATE-RQ is answered in the transport callback (no await needed).
        self.answers_now = False
        #: Its A-ASSOCIATE-RQ came and was answered (or failed answering).
        self.answered = False
        #: Admission counts it as an association (Admission.associate).
        self.associated = False
        #: It was accepted.
        self.accepted = False
        #: Admission was told its association ended (Admission.closing).
        self.ended = False


class AssociationAnswering:
    """The answers to the A-ASSOCIATE-RQs a server receives (a base of Server).

    It reads what the server sets up (its policy, peer rules, identity
    hook, admission, audit trail and counts, see
    :class:`~adicom.server.Server`) and adds nothing public.
    """

    admission: Admission
    audit: AuditLog | None
    peers: PeerRules | None
    require_identity: bool
    user_identity: UserIdentityHook | None
    stats: dict[str, int]
    _policy: AcceptorPolicy

    def _request_now(
        self, association: Association, session: Session, request: AAssociateRQ
    ) -> None:
        """Answer the A-ASSOCIATE-RQ in the transport callback (Driver.on_association_request)."""
        self.admission.requested(session.ticket)
        session.answered = True
        try:
            answer, why, peer, policy = self._screen(association, request)
            self._answer(association, session, request, answer, why, peer, policy)
        except Exception:
            # As the task would (see _serve): the association ends, the server goes on.
            session.accepted = False
            self.stats["aborted"] += 1
            log.exception("error answering %s; aborting", request.calling_ae or "?")
            association.abort()

    async def _negotiate(
        self, association: Association, session: Session, request: AAssociateRQ
    ) -> bool:
        """Answer the A-ASSOCIATE-RQ, asking the user identity hook; True when accepted."""
        answer: AAssociateRJ | bytes | None
        answer, why, peer, policy = self._screen(association, request)
        if answer is None:
            answer = await self._identity(association, request)
            if isinstance(answer, AAssociateRJ):
                why = "user identity not accepted"
        return self._answer(association, session, request, answer, why, peer, policy)

    def _screen(
        self, association: Association, request: AAssociateRQ
    ) -> tuple[AAssociateRJ | None, str | None, Peer | str | None, AcceptorPolicy]:
        """What is decided before the contexts: a rejection (and why), the peer, the policy.

        The called and calling AE titles, the application context, the
        peer's maximum PDU, the peer rules, and a user identity required
        but absent: all without awaiting anything.
        """
        policy = self._policy
        answer = check_request(request, policy)
        why = None  # what the audit trail says of a rejection, beyond PS3.8's reason
        peer: Peer | str | None = None
        if answer is None and self.peers is not None:
            peer = self._admit(association, request)
            if isinstance(peer, str):
                answer, why = _RJ_CALLING_AE, peer
            else:
                policy = replace(policy, allow=peer.allows)
        if (
            answer is None
            and self.require_identity
            and request.user_information.user_identity_rq is None
        ):
            # PS3.7 D.3.3.7: an acceptor may refuse an association without
            # one; PS3.8 Table 9-21 has no more precise reason than "none".
            self.admission.log.warning(
                "identity",
                "rejecting %s from %s: no user identity, and one is required",
                request.calling_ae,
                association.peer_address,
            )
            answer, why = _RJ_NO_REASON, "no user identity, and one is required"
        return answer, why, peer, policy

    def _answer(
        self,
        association: Association,
        session: Session,
        request: AAssociateRQ,
        answer: AAssociateRJ | bytes | None,
        why: str | None,
        peer: Peer | str | None,
        policy: AcceptorPolicy,
    ) -> bool:
        """Negotiate the contexts, within the association limit, and answer; True when accepted.

        ``answer`` is a rejection decided already, or the user identity
        hook's server response (None: none to send). ``session`` is told
        when admission counts it as an association, and when it is accepted.
        """
        if session.ended:
            # The peer went while the user identity hook ran, and admission
            # was told already (_settle_ended): nothing to answer or count.
            return False
        result: tuple[AAssociateAC, Agreement] | AAssociateRJ
        if isinstance(answer, AAssociateRJ):
            result = answer
        else:
            result = negotiate(request, policy, identity_response=answer)
        if not isinstance(result, AAssociateRJ):
            session.associated = self.admission.associate()
        if not isinstance(result, AAssociateRJ) and not session.associated:
            self.admission.log.warning(
                "full",
                "rejecting associations: %d are open (--max-associations)",
                self.admission.associated,
            )
            result = _RJ_TOO_MANY
        if isinstance(result, AAssociateRJ):
            self.stats["rejected"] += 1
            # adicom.association logs it (adicom.events), with the reason.
            reason = describe_reject(result.result, result.source, result.reason)
            if self.audit is not None:
                self.audit.association(
                    request,
                    association.peer_address,
                    association.tls,
                    refused=f"{why}: {reason}" if why else reason,
                )
            association.reject(result)
            return False
        response, agreement = result
        association.accept(response, agreement)
        session.accepted = True
        self.stats["accepted"] += 1
        if self.audit is not None:
            self.audit.association(
                request,
                association.peer_address,
                association.tls,
                peer=peer.ae_title if isinstance(peer, Peer) else None,
            )
        return True

    def _admit(self, association: Association, request: AAssociateRQ) -> Peer | str:
        """The known peer this request comes from, or why it is refused (logged)."""
        assert self.peers is not None
        address = association.peer_address
        tls = association.tls
        peer = self.peers.admit(
            request.calling_ae, address[0] if address else "", tls.peer_subject if tls else None
        )
        if isinstance(peer, str):
            self.admission.log.warning("peers", "rejecting an association: %s", peer)
        return peer

    async def _identity(
        self, association: Association, request: AAssociateRQ
    ) -> bytes | AAssociateRJ | None:
        """The user identity hook's answer: the response to send, or a rejection.

        (A required identity that is absent was refused already, see _screen.)
        """
        identity = request.user_information.user_identity_rq
        if self.user_identity is None or identity is None:
            return None
        info = AssociationInfo(
            request.calling_ae,
            request.called_ae,
            association.peer_address,
            request,
            association.tls,
        )
        response = await self.user_identity(identity, info)
        return _RJ_NO_REASON if response is None else response
