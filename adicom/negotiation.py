"""Association negotiation (PS3.8 7.1, PS3.7 Annex D.3.3), as pure functions.

The requestor builds an A-ASSOCIATE-RQ with :func:`build_request`; the
acceptor answers it with :func:`negotiate` under an :class:`AcceptorPolicy`;
the requestor reads the A-ASSOCIATE-AC back with :func:`requestor_agreement`.
Both sides end with the same :class:`Agreement`: the presentation contexts,
the peer's maximum PDU length and the asynchronous operations window, which
is what the DIMSE layer needs. Nothing here does I/O or keeps state, so
servers, clients and tests share one set of rules.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from adicom.pdu import (
    APPLICATION_CONTEXT,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AsyncOperationsWindow,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from adicom.presentation import (
    STORAGE_TRANSFER_SYNTAXES,
    PresentationContext,
    accept_roles,
    answer_context,
    may_be_storage,
    negotiated,
    propose_contexts,
)
from adicom.version import IMPLEMENTATION_VERSION_NAME

__all__ = [
    "ASYNC_WINDOW",
    "DEFAULT_MAX_PDU",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "MIN_PEER_MAX_PDU",
    "AcceptorPolicy",
    "Agreement",
    "build_request",
    "check_window",
    "negotiate",
    "requestor_agreement",
    "window_size",
]

#: adicom's implementation class UID (PS3.7 D.3.3.2): a UUID-derived UID
#: under the 2.25 root (PS3.5 B.2), so it needs no registered root.
IMPLEMENTATION_CLASS_UID = "2.25.193100295771143521161366717771740821097"
#: The largest P-DATA-TF PDU we announce we can receive. Larger PDUs mean
#: fewer headers and writes on bulk transfers; each is held once in memory.
DEFAULT_MAX_PDU = 1 << 20
#: The asynchronous operations window adicom proposes and accepts at most,
#: each way (PS3.7 D.3.3.3): this many C-STOREs in flight keep both sides
#: busy at once without holding much (their data sets stream).
ASYNC_WINDOW = 16
#: The smallest maximum PDU length we agree to send in. PS3.8 D.1 sets no
#: floor, but a PDV needs 6 bytes of header, and a peer announcing a few
#: bytes would make us send a large data set as millions of PDUs (work it
#: chooses and we pay for). DCMTK's own floor for what it accepts is 4096.
MIN_PEER_MAX_PDU = 1024

# PS3.8 Table 9-21 answers, (result, source, reason).
_RJ_NO_REASON = AAssociateRJ(1, 1, 1)
_RJ_APPLICATION_CONTEXT = AAssociateRJ(1, 1, 2)
_RJ_CALLING_AE = AAssociateRJ(1, 1, 3)
_RJ_CALLED_AE = AAssociateRJ(1, 1, 7)


def check_window(async_window: int) -> int:
    """``async_window`` if it can be proposed (1 to 65535, PS3.7 D.3.3.3.1); else ValueError."""
    if not 1 <= async_window <= 0xFFFF:
        raise ValueError(f"async_window must be 1 to 65535, not {async_window}")
    return async_window


def window_size(proposed: int, limit: int) -> int:
    """A window value agreed down to ``limit`` (0 is "unlimited", PS3.7 D.3.3.3)."""
    if proposed == 0:
        return limit
    return min(proposed, limit)


def peer_max_pdu_problem(maximum_length: int) -> str | None:
    """Why the peer's maximum PDU length cannot be used, or None (0 means no limit)."""
    if 0 < maximum_length < MIN_PEER_MAX_PDU:
        return (
            f"the peer's maximum PDU length of {maximum_length} bytes is below the "
            f"{MIN_PEER_MAX_PDU} adicom sends in at least"
        )
    return None


@dataclass(frozen=True, slots=True)
class Agreement:
    """What an association's two sides agreed on, as the DIMSE layer uses it.

    ``contexts`` are the negotiated presentation contexts by ID (rejected
    ones too); ``peer_max_pdu`` the largest P-DATA-TF PDU the peer accepts
    (0: no limit); ``max_outstanding`` how many of our requests may await a
    response at once and ``max_incoming`` how many of the peer's (the
    asynchronous operations window, PS3.7 D.3.3.3; 1 when none was agreed).
    """

    contexts: Mapping[int, PresentationContext] = field(default_factory=dict)
    peer_max_pdu: int = 0
    max_outstanding: int = 1
    max_incoming: int = 1


def build_request(
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Iterable[tuple[str, Sequence[str]]],
    roles: Sequence[RoleSelection] = (),
    user_identity: UserIdentityRQ | None = None,
    max_pdu: int = DEFAULT_MAX_PDU,
    async_window: int = ASYNC_WINDOW,
) -> AAssociateRQ:
    """The A-ASSOCIATE-RQ adicom sends as requestor.

    ``contexts`` lists (abstract syntax, transfer syntaxes) pairs, numbered
    1, 3, 5, ...; an ``async_window`` of 1 proposes no window (synchronous
    operations). Raises ValueError for more than 128 contexts or a window
    out of range.
    """
    check_window(async_window)
    return AAssociateRQ(
        called_ae=called_ae,
        calling_ae=calling_ae,
        presentation_contexts=propose_contexts(contexts),
        user_information=UserInformation(
            maximum_length=max_pdu,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            async_operations_window=(
                None if async_window == 1 else AsyncOperationsWindow(async_window, async_window)
            ),
            role_selections=tuple(roles),
            user_identity_rq=user_identity,
        ),
    )


def requestor_agreement(
    request: AAssociateRQ, response: AAssociateAC, async_window: int = ASYNC_WINDOW
) -> Agreement:
    """What the requestor agreed on, from its request and the acceptor's answer."""
    user = response.user_information
    window = user.async_operations_window
    outstanding = incoming = 1
    if window is not None and request.user_information.async_operations_window is not None:
        # The acceptor's answer: how many we may invoke, and perform (D.3.3.3).
        outstanding = window_size(window.invoked, async_window)
        incoming = window_size(window.performed, async_window)
    return Agreement(
        contexts=negotiated(
            request.presentation_contexts,
            response.presentation_contexts,
            request.user_information.role_selections,
            user.role_selections,
        ),
        peer_max_pdu=user.maximum_length,
        max_outstanding=outstanding,
        max_incoming=incoming,
    )


@dataclass(frozen=True, slots=True)
class AcceptorPolicy:
    """What an acceptor agrees to: the rules :func:`negotiate` applies.

    ``supported`` maps each abstract syntax served to the transfer syntaxes
    taken for it, most preferred first (Verification, query/retrieve).

    Storage is by kind, not by list, since modalities send SOP classes of
    their own (private ones): with ``storage`` set, every abstract syntax
    that may be a storage SOP class (:func:`~adicom.presentation.may_be_storage`;
    only ``storage_classes`` when given) is accepted with the transfer
    syntaxes ``storage`` lists. A storage SCP keeps instances as they were
    sent, so with ``prefer_requestor_syntax`` the requestor's first proposed
    syntax that we take wins (PS3.8 lets the acceptor choose either way);
    else our order does. ``get_scp_role`` lets a C-GET requestor take the
    SCP role for storage classes (its sub-operations come back to it) and
    accepts their contexts in its order.
    """

    ae_title: str
    supported: Mapping[str, Sequence[str]]
    require_called_ae: bool = True
    allowed_calling_aes: Collection[str] | None = None
    storage: Sequence[str] | None = None
    storage_classes: Collection[str] | None = None
    prefer_requestor_syntax: bool = True
    get_scp_role: bool = False
    max_pdu: int = DEFAULT_MAX_PDU
    async_window: int = ASYNC_WINDOW
    #: What this requestor may use: (abstract syntax, it asked for the SCP
    #: role) -> allowed. A context it may not use is answered user-rejection.
    allow: Callable[[str, bool], bool] | None = None

    def storage_class(self, abstract_syntax: str) -> bool:
        """True when ``abstract_syntax`` is taken as a storage SOP class here."""
        if self.storage_classes is not None:
            return abstract_syntax in self.storage_classes
        return may_be_storage(abstract_syntax)


def check_request(request: AAssociateRQ, policy: AcceptorPolicy) -> AAssociateRJ | None:
    """The rejection an A-ASSOCIATE-RQ gets before its contexts are looked at, if any."""
    if policy.require_called_ae and request.called_ae != policy.ae_title:
        return _RJ_CALLED_AE
    if policy.allowed_calling_aes is not None and (
        request.calling_ae not in policy.allowed_calling_aes
    ):
        return _RJ_CALLING_AE
    if request.application_context != APPLICATION_CONTEXT:
        return _RJ_APPLICATION_CONTEXT
    if peer_max_pdu_problem(request.user_information.maximum_length) is not None:
        return _RJ_NO_REASON
    return None


def _answer(
    context: PresentationContextRQ, policy: AcceptorPolicy, asked_scp: set[str]
) -> PresentationContextAC:
    """The answer to one proposed context (PS3.8 9.3.3.2, Table 9-18)."""
    abstract = context.abstract_syntax
    if policy.allow is not None and not policy.allow(abstract, abstract in asked_scp):
        return PresentationContextAC(context.context_id, 1)  # PS3.8 Table 9-18: user-rejection
    ours = policy.supported.get(abstract)
    if policy.get_scp_role and abstract in asked_scp and policy.storage_class(abstract):
        # A C-GET requestor taking the SCP role knows best in which syntax
        # it wants its instances (and we send stored files unconverted).
        return answer_context(context, ours or STORAGE_TRANSFER_SYNTAXES, requestor_first=True)
    if ours is not None:
        return answer_context(context, ours, requestor_first=False)
    if policy.storage is not None and policy.storage_class(abstract):
        return answer_context(
            context, policy.storage, requestor_first=policy.prefer_requestor_syntax
        )
    return PresentationContextAC(context.context_id, 3)  # abstract syntax not supported


def negotiate(
    request: AAssociateRQ,
    policy: AcceptorPolicy,
    *,
    identity_response: bytes | None = None,
) -> tuple[AAssociateAC, Agreement] | AAssociateRJ:
    """Answer an A-ASSOCIATE-RQ: the A-ASSOCIATE-AC and the agreement, or the rejection.

    ``identity_response`` is the server response of an accepted user
    identity (PS3.7 D.3.3.7; b"" when there is none to send); it is sent
    only when the requestor asked for a positive response. Called AE title,
    calling AE title, application context and the peer's maximum PDU length
    are checked first; an association without one accepted presentation
    context is rejected, "no reason given" (PS3.8 Table 9-21).
    """
    rejection = check_request(request, policy)
    if rejection is not None:
        return rejection
    user = request.user_information
    asked_scp = {r.sop_class_uid for r in user.role_selections if r.scp_role}
    answers = [_answer(context, policy, asked_scp) for context in request.presentation_contexts]
    if not any(answer.result == 0 for answer in answers):
        return _RJ_NO_REASON
    roles = accept_roles(
        user.role_selections,
        (pc.abstract_syntax for pc in request.presentation_contexts),
        allow_scp_role=(
            [uid for uid in asked_scp if policy.storage_class(uid)] if policy.get_scp_role else ()
        ),
    )
    identity_ac = None
    if (
        identity_response is not None
        and user.user_identity_rq is not None
        and user.user_identity_rq.positive_response_requested
    ):
        identity_ac = UserIdentityAC(identity_response)
    # PS3.7 D.3.3.3: answer a proposed window, agreed down to ours (the
    # first value is what the requestor may invoke on us, the second what
    # we may invoke on it: C-GET's C-STORE sub-operations); no proposal, no
    # answer, and 1/1.
    proposed = user.async_operations_window
    window = (
        None
        if proposed is None
        else AsyncOperationsWindow(
            window_size(proposed.invoked, policy.async_window),
            window_size(proposed.performed, policy.async_window),
        )
    )
    response = AAssociateAC(
        called_ae=request.called_ae,
        calling_ae=request.calling_ae,
        presentation_contexts=tuple(answers),
        user_information=UserInformation(
            maximum_length=policy.max_pdu,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            async_operations_window=window,
            role_selections=roles,
            user_identity_ac=identity_ac,
        ),
    )
    agreement = Agreement(
        contexts=negotiated(request.presentation_contexts, answers, user.role_selections, roles),
        peer_max_pdu=user.maximum_length,
        max_outstanding=window.performed if window is not None else 1,
        max_incoming=window.invoked if window is not None else 1,
    )
    return response, agreement
