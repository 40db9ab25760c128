"""Association negotiation (PS3.8 7.1, PS3.7 Annex D.3.3), as pure functions.

The requestor builds an A-ASSOCIATE-RQ with :func:`build_request`; the
acceptor answers it with :func:`negotiate` under an :class:`AcceptorPolicy`;
the requestor reads the A-ASSOCIATE-AC back with :func:`requestor_agreement`.
Both sides end with the same :class:`Agreement`: the presentation contexts,
the peer's maximum PDU length and the asynchronous operations window, which
is what the DIMSE layer needs, and the Query/Retrieve options agreed by SOP
class extended negotiation (:class:`QROptions`). Nothing here does I/O or
keeps state, so servers, clients and tests share one set of rules.

Query/Retrieve extended negotiation (PS3.4 C.5, PS3.7 D.3.3.5)
---------------------------------------------------------------

A requestor may send one SOP Class Extended Negotiation sub-item (0x56) per
Q/R SOP class it proposes; its service-class-application-information is a
run of bytes, one option each, 1 meaning "requested" (C-FIND: Table C.5-1;
C-MOVE and C-GET: C.5.2.1 and C.5.3.1). The acceptor answers each byte with
1 (it will do it) or 0 (it will not), in a field no longer than what was
offered: one byte if one was offered, since the first edition had one byte
and old requestors may expect no more; a shorter answer means 0 for the
bytes left out. An acceptor that sends no sub-item for a class agrees to
nothing for it (the default conditions: hierarchical search, independent
date and time matching, literal person names). And an acceptor never sends
one the requestor did not: "If the SOP Class Extended Negotiation Sub-Items
do not exist in the A-ASSOCIATE indication they shall be omitted in the
A-ASSOCIATE response" (C.5.1.1). An option is agreed when it was requested
and answered 1; everything else about the field (other values, a field for
a class not proposed, a second sub-item for one class, PS3.7 D.3.3.5.1
allows one) is read as "not agreed", never as an error: negotiation only
narrows what each side may assume.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from adicom.pdu import (
    APPLICATION_CONTEXT,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AsyncOperationsWindow,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassExtendedNegotiation,
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
    "NO_QR_OPTIONS",
    "QR_FIND_CLASSES",
    "QR_RETRIEVE_CLASSES",
    "SERVED_QR_OPTIONS",
    "AcceptorPolicy",
    "Agreement",
    "QROptions",
    "agreed_options",
    "answer_extended",
    "build_request",
    "check_window",
    "decode_options",
    "encode_options",
    "negotiate",
    "propose_options",
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


# -- Query/Retrieve extended negotiation (PS3.4 C.5) ----------------------------

#: The Query/Retrieve SOP classes that include C-FIND, whose sub-item is that
#: of PS3.4 C.5.1.1 (Patient Root, Study Root, Patient/Study Only, retired).
QR_FIND_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.2.1.1",
        "1.2.840.10008.5.1.4.1.2.2.1",
        "1.2.840.10008.5.1.4.1.2.3.1",
    }
)
#: ... and those that include C-MOVE or C-GET (PS3.4 C.5.2.1, C.5.3.1). The
#: Composite Instance Root Retrieve classes are not here: PS3.4 Y.5 forbids
#: their relational-retrieval sub-item.
QR_RETRIEVE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.2.1.2",
        "1.2.840.10008.5.1.4.1.2.1.3",
        "1.2.840.10008.5.1.4.1.2.2.2",
        "1.2.840.10008.5.1.4.1.2.2.3",
        "1.2.840.10008.5.1.4.1.2.3.2",
        "1.2.840.10008.5.1.4.1.2.3.3",
    }
)


@dataclass(frozen=True, slots=True)
class QROptions:
    """Query/Retrieve options of SOP class extended negotiation (PS3.4 C.5).

    As a proposal, the options requested; as an answer or an agreement, the
    options performed. For a C-FIND SOP class each field is one byte of the
    service-class-application-information field (PS3.4 Tables C.5-1 and
    C.5-2, in this order):

    1. ``relational``: relational-queries (C.4.1.2.2.1, C.4.1.3.2): keys at
       any level, the unique keys of the levels above not required;
    2. ``datetime_matching``: combined date and time range matching
       (C.2.2.2.5.4): Study Date and Study Time ranges as one DT range;
    3. ``fuzzy_matching``: fuzzy semantic matching of person names
       (C.2.2.2.1.1);
    4. ``timezone_adjustment``: Timezone Offset From UTC (0008,0201) adjusts
       the query's times (C.2.2.2.1.3);
    5. ``enhanced_conversion``: Enhanced Multi-Frame Image Conversion, the
       Query/Retrieve View (0008,0053) (C.4.1.2.2.2);
    6. ``empty_value_matching`` and 7. ``multiple_value_matching``: the two
       bytes later editions of PS3.4 added to Table C.5-1.

    For a C-MOVE or C-GET SOP class the field has two bytes (C.5.2.1,
    C.5.3.1): ``relational`` (relational-retrieval: a study, series or
    instances named by their own unique keys alone, C.4.2.2.2.1) and
    ``enhanced_conversion``; the other fields do not exist there.
    """

    relational: bool = False
    datetime_matching: bool = False
    fuzzy_matching: bool = False
    timezone_adjustment: bool = False
    enhanced_conversion: bool = False
    empty_value_matching: bool = False
    multiple_value_matching: bool = False

    def __and__(self, other: QROptions) -> QROptions:
        """The options both sides have: what a request and an answer agree on."""
        return QROptions(
            *(getattr(self, f.name) and getattr(other, f.name) for f in fields(QROptions))
        )

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(QROptions))


#: No option: the default conditions of PS3.4 C.5.1.1 and C.5.2.1.
NO_QR_OPTIONS = QROptions()
#: What adicom's archive performs (:mod:`adicom.archive`), so what an acceptor
#: answers by default: relational queries and retrieval, combined date and
#: time range matching, and person names matched without regard to case or
#: accents (its fuzzy semantic matching). Timezone adjustment (the index keeps
#: no offset), Enhanced Multi-Frame Image Conversion (nothing is converted),
#: empty and multiple value matching are answered 0.
SERVED_QR_OPTIONS = QROptions(relational=True, datetime_matching=True, fuzzy_matching=True)

# The byte order of each kind's field: QROptions field names.
_FIND_BYTES = (
    "relational",
    "datetime_matching",
    "fuzzy_matching",
    "timezone_adjustment",
    "enhanced_conversion",
    "empty_value_matching",
    "multiple_value_matching",
)
_RETRIEVE_BYTES = ("relational", "enhanced_conversion")


def _layout(sop_class_uid: str) -> tuple[str, ...] | None:
    """The option of each byte of ``sop_class_uid``'s field; None if it has none we know."""
    if sop_class_uid in QR_FIND_CLASSES:
        return _FIND_BYTES
    if sop_class_uid in QR_RETRIEVE_CLASSES:
        return _RETRIEVE_BYTES
    return None


def encode_options(sop_class_uid: str, options: QROptions, length: int | None = None) -> bytes:
    """The service-class-application-information of ``options`` for ``sop_class_uid``.

    ``length`` bytes (at most the class's field), or as few as carry every
    option set, and at least one: a requestor asking for relational queries
    alone sends the single byte every edition of PS3.4 knows. Raises
    ValueError for a class without Q/R extended negotiation.
    """
    layout = _layout(sop_class_uid)
    if layout is None:
        raise ValueError(f"{sop_class_uid} has no Query/Retrieve extended negotiation (PS3.4 C.5)")
    flags = [getattr(options, name) for name in layout]
    if length is None:
        length = max((i + 1 for i, flag in enumerate(flags) if flag), default=1)
    return bytes(flags[: max(1, min(length, len(layout)))])


def decode_options(sop_class_uid: str, information: bytes) -> QROptions | None:
    """The options a service-class-application-information field sets to 1.

    None when the class has no Q/R extended negotiation or the field is
    empty (Table C.5-1 has at least one byte): such a sub-item is not
    understood, so it is not answered. A byte other than 0 or 1 is not a
    request (C.5.1.1 allows only those); bytes past the known ones are
    ignored, as later editions of the standard may add options.
    """
    layout = _layout(sop_class_uid)
    if layout is None or not information:
        return None
    return QROptions(**{name: value == 1 for name, value in zip(layout, information, strict=False)})


def propose_options(
    abstract_syntaxes: Iterable[str], options: QROptions | Mapping[str, QROptions]
) -> tuple[SOPClassExtendedNegotiation, ...]:
    """The 0x56 sub-items a requestor sends to ask for ``options``.

    With one :class:`QROptions`, one sub-item for every Q/R SOP class among
    ``abstract_syntaxes`` for which it asks something (a C-MOVE class has no
    date-time byte, say); with a mapping, one per class named (classes not
    proposed are left out: PS3.7 D.3.3.5 ties the sub-item to a proposed
    abstract syntax). Raises ValueError for a class without Q/R extended
    negotiation named in the mapping.
    """
    proposed = list(dict.fromkeys(str(uid) for uid in abstract_syntaxes))
    if isinstance(options, QROptions):
        wanted = {uid: options for uid in proposed if _layout(uid) is not None}
    else:
        for uid in options:
            if _layout(uid) is None:
                raise ValueError(f"{uid} has no Query/Retrieve extended negotiation (PS3.4 C.5)")
        wanted = {uid: options[uid] for uid in proposed if uid in options}
    items = []
    for uid, asked in wanted.items():
        information = encode_options(uid, asked)
        if any(information):
            items.append(SOPClassExtendedNegotiation(uid, information))
    return tuple(items)


def _first_per_class(
    items: Iterable[SOPClassExtendedNegotiation],
) -> dict[str, SOPClassExtendedNegotiation]:
    # PS3.7 D.3.3.5.1: one sub-item per SOP class; a second one is ignored.
    first: dict[str, SOPClassExtendedNegotiation] = {}
    for item in items:
        first.setdefault(item.sop_class_uid, item)
    return first


def answer_extended(
    proposed: Iterable[SOPClassExtendedNegotiation],
    performed: QROptions,
    accepted: Collection[str],
) -> tuple[tuple[SOPClassExtendedNegotiation, ...], dict[str, QROptions]]:
    """The acceptor's 0x56 sub-items, and the options they agree, by SOP class.

    Each proposed Q/R sub-item whose class is among the ``accepted``
    abstract syntaxes is answered option by option, 1 where ``performed``
    has it and it was asked, in a field as long as the one offered (at most
    the known bytes; PS3.4 C.5.1.1: one byte to a one-byte offer). Sub-items
    of other classes, for contexts not accepted, or empty, are not answered.
    """
    answers: list[SOPClassExtendedNegotiation] = []
    agreed: dict[str, QROptions] = {}
    for uid, item in _first_per_class(proposed).items():
        asked = decode_options(uid, item.application_information)
        if asked is None or uid not in accepted:
            continue
        agreed[uid] = asked & performed
        length = len(item.application_information)
        answers.append(SOPClassExtendedNegotiation(uid, encode_options(uid, agreed[uid], length)))
    return tuple(answers), agreed


def agreed_options(
    request: AAssociateRQ | None, response: AAssociateAC | None
) -> dict[str, QROptions]:
    """The Q/R options agreed, by SOP class, from the request and its answer.

    The same on both sides: an option is agreed when the request asked it
    and the answer says 1. A class the acceptor did not answer is absent
    (nothing agreed). ``association.request`` and ``association.response``
    of an :class:`~adicom.association.Association` are what to pass, on
    either side; None for either gives no options.
    """
    if request is None or response is None:
        return {}
    answered = _first_per_class(response.user_information.sop_class_extended)
    agreed: dict[str, QROptions] = {}
    for uid, item in _first_per_class(request.user_information.sop_class_extended).items():
        asked = decode_options(uid, item.application_information)
        answer = answered.get(uid)
        if asked is None or answer is None:
            continue
        agreed[uid] = asked & (decode_options(uid, answer.application_information) or NO_QR_OPTIONS)
    return agreed


@dataclass(frozen=True, slots=True)
class Agreement:
    """What an association's two sides agreed on, as the DIMSE layer uses it.

    ``contexts`` are the negotiated presentation contexts by ID (rejected
    ones too); ``peer_max_pdu`` the largest P-DATA-TF PDU the peer accepts
    (0: no limit); ``max_outstanding`` how many of our requests may await a
    response at once and ``max_incoming`` how many of the peer's (the
    asynchronous operations window, PS3.7 D.3.3.3; 1 when none was agreed);
    ``extended`` the Query/Retrieve options agreed by SOP class extended
    negotiation, by SOP class (PS3.4 C.5; a class absent: none agreed).
    """

    contexts: Mapping[int, PresentationContext] = field(default_factory=dict)
    peer_max_pdu: int = 0
    max_outstanding: int = 1
    max_incoming: int = 1
    extended: Mapping[str, QROptions] = field(default_factory=dict)


def build_request(
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Iterable[tuple[str, Sequence[str]]],
    roles: Sequence[RoleSelection] = (),
    user_identity: UserIdentityRQ | None = None,
    max_pdu: int = DEFAULT_MAX_PDU,
    async_window: int = ASYNC_WINDOW,
    extended: Sequence[SOPClassExtendedNegotiation] = (),
) -> AAssociateRQ:
    """The A-ASSOCIATE-RQ adicom sends as requestor.

    ``contexts`` lists (abstract syntax, transfer syntaxes) pairs, numbered
    1, 3, 5, ...; an ``async_window`` of 1 proposes no window (synchronous
    operations). ``extended`` are SOP class extended negotiation sub-items
    (:func:`propose_options` makes the Query/Retrieve ones). Raises
    ValueError for more than 128 contexts or a window out of range.
    """
    proposed = tuple((abstract, tuple(syntaxes)) for abstract, syntaxes in contexts)
    key = (
        calling_ae,
        called_ae,
        proposed,
        tuple(roles),
        user_identity,
        max_pdu,
        async_window,
        tuple(extended),
    )
    if user_identity is not None:
        # Credentials are not kept past the association (PS3.7 D.3.3.7;
        # see AAssociateRQ.carries_credentials): built afresh each time.
        return _build_request(key)
    request = _REQUESTS.get(key)
    if request is None:
        request = _build_request(key)
        if len(_REQUESTS) >= _CACHE_SIZE:
            _REQUESTS.clear()
        _REQUESTS[key] = request
    return request


#: The requests build_request made lately, by its arguments: a client that
#: associates again and again sends one request object (frozen, so it can
#: be shared), whose encoding and agreement are then cached too.
_REQUESTS: dict[tuple[Any, ...], AAssociateRQ] = {}
#: The answers negotiate gave lately, by the request's identity (see negotiate).
_ANSWERS: dict[int, tuple[AAssociateRQ, AcceptorPolicy, bytes | None, Any]] = {}
#: The agreements requestor_agreement made lately, by the response's identity.
_AGREEMENTS: dict[int, tuple[AAssociateRQ, AAssociateAC, int, Agreement]] = {}
_CACHE_SIZE = 64


def _build_request(key: tuple[Any, ...]) -> AAssociateRQ:
    calling_ae, called_ae, contexts, roles, user_identity, max_pdu, async_window, extended = key
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
            role_selections=roles,
            sop_class_extended=extended,
            user_identity_rq=user_identity,
        ),
    )


def requestor_agreement(
    request: AAssociateRQ, response: AAssociateAC, async_window: int = ASYNC_WINDOW
) -> Agreement:
    """What the requestor agreed on, from its request and the acceptor's answer."""
    # The PDU reader hands out one object for the same bytes, and
    # build_request one for the same arguments: the same request answered
    # the same way agrees on the same (frozen) things.
    entry = _AGREEMENTS.get(id(response))
    if (
        entry is not None
        and entry[1] is response
        and entry[0] is request
        and entry[2] == async_window
    ):
        return entry[3]
    agreement = _requestor_agreement(request, response, async_window)
    if request.carries_credentials or response.carries_credentials:
        return agreement  # not kept past the association (see negotiate)
    if len(_AGREEMENTS) >= _CACHE_SIZE:
        _AGREEMENTS.clear()
    _AGREEMENTS[id(response)] = (request, response, async_window, agreement)
    return agreement


def _requestor_agreement(
    request: AAssociateRQ, response: AAssociateAC, async_window: int
) -> Agreement:
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
        extended=agreed_options(request, response),
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

    ``qr_options`` are the Query/Retrieve options of SOP class extended
    negotiation performed (PS3.4 C.5): each one a requestor asks for on an
    accepted Q/R context is answered 1 if here, else 0. The default is what
    the reference archive does (:data:`SERVED_QR_OPTIONS`); a server whose
    handlers do less says so with fewer (``NO_QR_OPTIONS``: none).
    """

    ae_title: str
    supported: Mapping[str, Sequence[str]]
    require_called_ae: bool = True
    allowed_calling_aes: Collection[str] | None = None
    storage: Sequence[str] | None = None
    storage_classes: Collection[str] | None = None
    prefer_requestor_syntax: bool = True
    get_scp_role: bool = False
    #: SOP classes whose SCP role a requestor may take: a Storage Commitment
    #: SCP reporting on an association it opens to us (PS3.4 J.3.3.1.3).
    scp_role_classes: Collection[str] = ()
    max_pdu: int = DEFAULT_MAX_PDU
    async_window: int = ASYNC_WINDOW
    #: What this requestor may use: (abstract syntax, it asked for the SCP
    #: role) -> allowed. A context it may not use is answered user-rejection.
    allow: Callable[[str, bool], bool] | None = None
    qr_options: QROptions = SERVED_QR_OPTIONS

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
    # A peer that associates again and again sends the same bytes, which
    # the PDU reader decodes once into one (frozen) request object: the
    # same request under the same policy gets the same answer. Not with a
    # policy that asks a callable (``allow``) each time.
    entry = _ANSWERS.get(id(request))
    if (
        entry is not None
        and entry[0] is request
        and entry[1] is policy
        and entry[2] == identity_response
    ):
        answer: tuple[AAssociateAC, Agreement] | AAssociateRJ = entry[3]
        return answer
    answer = _negotiate(request, policy, identity_response)
    # Never with credentials (the request's, or the response to them):
    # they are not to outlive the association.
    if policy.allow is None and not identity_response and not request.carries_credentials:
        if len(_ANSWERS) >= _CACHE_SIZE:
            _ANSWERS.clear()
        _ANSWERS[id(request)] = (request, policy, identity_response, answer)
    return answer


def _negotiate(
    request: AAssociateRQ, policy: AcceptorPolicy, identity_response: bytes | None
) -> tuple[AAssociateAC, Agreement] | AAssociateRJ:
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
        allow_scp_role=[
            uid
            for uid in asked_scp
            if (policy.get_scp_role and policy.storage_class(uid)) or uid in policy.scp_role_classes
        ],
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
    # PS3.4 C.5.1.1, C.5.2.1, C.5.3.1: the Q/R options, for accepted contexts.
    extended, agreed = answer_extended(
        user.sop_class_extended,
        policy.qr_options,
        {
            context.abstract_syntax
            for context, answer in zip(request.presentation_contexts, answers, strict=True)
            if answer.result == 0
        },
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
            sop_class_extended=extended,
            user_identity_ac=identity_ac,
        ),
    )
    agreement = Agreement(
        contexts=negotiated(request.presentation_contexts, answers, user.role_selections, roles),
        peer_max_pdu=user.maximum_length,
        max_outstanding=window.performed if window is not None else 1,
        max_incoming=window.invoked if window is not None else 1,
        extended=agreed,
    )
    return response, agreement
