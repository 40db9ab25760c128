"""Presentation context negotiation and SCP/SCU role selection (PS3.8 7.1.1.13, PS3.7 D.3.3.4).

The requestor proposes contexts (an abstract syntax and the transfer syntaxes
it can use for it); the acceptor answers each with a result and, when it
accepts, the one transfer syntax it chose. adicom's acceptor chooses by its
own preference order, not the requestor's.

Role selection: without a role selection sub-item the requestor is the SCU
and the acceptor the SCP of a SOP class. A requestor that wants to be the SCP
too (C-GET: the C-STOREs come back to it) proposes the roles it wants, and the
acceptor answers with the roles it allows: an acceptor may turn a proposed
role off but never on (PS3.7 D.3.3.4).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pydicom
from pydicom import uid as _uid
from pydicom.uid import UID

from adicom.pdu import PresentationContextAC, PresentationContextRQ, RoleSelection

__all__ = [
    "DEFAULT_TRANSFER_SYNTAXES",
    "MAX_CONTEXTS",
    "QR_FIND_SOP_CLASSES",
    "QR_GET_SOP_CLASSES",
    "QR_MOVE_SOP_CLASSES",
    "STORAGE_SOP_CLASSES",
    "STORAGE_TRANSFER_SYNTAXES",
    "VERIFICATION",
    "PresentationContext",
    "accept_contexts",
    "answer_context",
    "may_be_storage",
    "accept_roles",
    "propose_contexts",
]

#: Verification SOP Class (PS3.4 Annex A).
VERIFICATION = UID("1.2.840.10008.1.1")
#: CT Image Storage (PS3.4 B.5): a storage class every registry has.
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")

#: Uncompressed transfer syntaxes, in adicom's order of preference: explicit
#: little endian first (self-describing, what most modern peers send), then
#: implicit little endian (the default every peer must support, PS3.5 10.1),
#: then the retired big endian.
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
)


def _registered_uids() -> frozenset[str]:
    """Every UID of PS3.6 Table A-1 pydicom knows (SOP classes, syntaxes, the rest)."""
    from pydicom._uid_dict import UID_dictionary

    return frozenset(UID_dictionary)


def _storage_sop_classes() -> tuple[str, ...]:
    """The storage SOP classes pydicom knows; fails loudly if it cannot say.

    pydicom keeps its registry of UIDs (PS3.6 Table A-1) in a private module.
    A pydicom that moved it must not leave a storage SCP accepting nothing,
    silently: adicom then refuses to import, naming the cause.
    """
    try:
        from pydicom._uid_dict import UID_dictionary
    except ImportError as exc:  # pragma: no cover - a pydicom that moved it
        raise ImportError(
            "adicom reads the storage SOP classes from pydicom._uid_dict, which this "
            f"pydicom ({pydicom.__version__}) lacks: {exc}"
        ) from exc
    found = tuple(
        uid
        for uid, (name, kind, *_) in UID_dictionary.items()
        if kind == "SOP Class" and "Storage" in name and "Commitment" not in name
    )
    if CT_IMAGE_STORAGE not in found:  # pragma: no cover - a registry of another shape
        raise ImportError(
            f"pydicom {pydicom.__version__}'s UID registry names no CT Image Storage: "
            "adicom cannot tell which SOP classes are storage classes"
        )
    return found


#: Every storage SOP class of PS3.4 Annex B that pydicom knows (retired ones too).
STORAGE_SOP_CLASSES: tuple[str, ...] = _storage_sop_classes()
_STORAGE_SET = frozenset(STORAGE_SOP_CLASSES)
_REGISTERED = _registered_uids()

#: What a storage SCP accepts, most preferred first: the uncompressed
#: syntaxes, deflate, then every compressed syntax pydicom knows, so an
#: instance can be stored as it was sent.
STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    *DEFAULT_TRANSFER_SYNTAXES,
    "1.2.840.10008.1.2.1.99",
    *(
        str(ts)
        for ts in _uid.AllTransferSyntaxes
        if ts not in DEFAULT_TRANSFER_SYNTAXES and ts != "1.2.840.10008.1.2.1.99"
    ),
)

#: Query/retrieve information models (PS3.4 C.6): Patient Root, Study Root.
QR_FIND_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1")
#: Modality Worklist Information Model - FIND (PS3.4 K.6.1).
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
#: Storage Commitment Push Model SOP Class (PS3.4 J.3.5).
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
#: Modality Performed Procedure Step SOP Class (PS3.4 F.7.3).
MPPS = "1.2.840.10008.3.1.2.3.3"
#: ... and Composite Instance Root for the retrieves.
QR_MOVE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.2.1.2",
    "1.2.840.10008.5.1.4.1.2.2.2",
    "1.2.840.10008.5.1.4.1.2.4.2",
)
QR_GET_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.2.1.3",
    "1.2.840.10008.5.1.4.1.2.2.3",
    "1.2.840.10008.5.1.4.1.2.4.3",
)

#: At most 128 presentation contexts per association: IDs are the odd
#: numbers 1 to 255 (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128


@dataclass(frozen=True, slots=True)
class PresentationContext:
    """A negotiated presentation context, as both sides see it after negotiation.

    ``result`` is 0 when accepted (then ``transfer_syntax`` is the one to use);
    otherwise the reason (PS3.8 Table 9-18). ``scu_role`` and ``scp_role`` say
    which roles the *requestor* plays for this abstract syntax.
    """

    context_id: int
    abstract_syntax: UID
    transfer_syntax: UID | None
    result: int
    scu_role: bool = True
    scp_role: bool = False

    @property
    def accepted(self) -> bool:
        """True when the acceptor accepted the context."""
        return self.result == 0


def propose_contexts(
    wanted: Iterable[tuple[str, Sequence[str]]],
) -> tuple[PresentationContextRQ, ...]:
    """Number the (abstract syntax, transfer syntaxes) pairs as contexts 1, 3, 5, ...

    Raises ValueError beyond 128 contexts or with an empty transfer syntax list.
    """
    out: list[PresentationContextRQ] = []
    for index, (abstract, transfers) in enumerate(wanted):
        if index >= MAX_CONTEXTS:
            raise ValueError(
                f"more than {MAX_CONTEXTS} presentation contexts proposed; "
                "PS3.8 allows 128 per association"
            )
        if not transfers:
            raise ValueError(f"no transfer syntax proposed for {abstract}")
        out.append(PresentationContextRQ(2 * index + 1, str(abstract), tuple(transfers)))
    return tuple(out)


def accept_contexts(
    proposed: Iterable[PresentationContextRQ],
    supported: Mapping[str, Sequence[str]],
    requestor_order: Iterable[str] = (),
) -> list[PresentationContextAC]:
    """Answer each proposed context.

    ``supported`` maps each abstract syntax the acceptor serves to the
    transfer syntaxes it takes, most preferred first. The result is 3 for an
    abstract syntax not served, 4 when no proposed transfer syntax is taken
    (PS3.8 Table 9-18), else 0 with the first of ours the requestor offered;
    for the abstract syntaxes in ``requestor_order``, the first the
    requestor offered that we take (a C-GET requestor receiving in the SCP
    role knows best what it wants, and we send stored files unconverted).
    """
    theirs_first = set(requestor_order)
    answers: list[PresentationContextAC] = []
    for context in proposed:
        ours = supported.get(context.abstract_syntax)
        if ours is None:
            answers.append(PresentationContextAC(context.context_id, 3))
        else:
            first = context.abstract_syntax in theirs_first
            answers.append(answer_context(context, ours, requestor_first=first))
    return answers


def answer_context(
    context: PresentationContextRQ, ours: Sequence[str], *, requestor_first: bool
) -> PresentationContextAC:
    """Accept ``context`` with one of the transfer syntaxes ``ours``, or say none fits.

    With ``requestor_first`` the requestor's first proposed syntax that we
    take is chosen, else the first of ours it proposed; none in common is
    result 4, "transfer syntaxes not supported" (PS3.8 Table 9-18).
    """
    if requestor_first:
        taken = set(ours)
        chosen = next((ts for ts in context.transfer_syntaxes if ts in taken), None)
    else:
        offered = set(context.transfer_syntaxes)
        chosen = next((ts for ts in ours if ts in offered), None)
    if chosen is None:
        return PresentationContextAC(context.context_id, 4)
    return PresentationContextAC(context.context_id, 0, chosen)


def may_be_storage(abstract_syntax: str) -> bool:
    """True unless ``abstract_syntax`` is a registered SOP class of another service.

    A storage SCP takes any SOP class its peers send, private ones included
    (a Siemens CSA Non-Image, say): PS3.4 B.1 lets an SCP of the Storage
    Service Class store what it does not know. What the registry of PS3.6
    names as a SOP class of another service (Verification, query/retrieve,
    worklist, commitment, ...) is not storage.
    """
    return abstract_syntax in _STORAGE_SET or abstract_syntax not in _REGISTERED


def accept_roles(
    proposed: Iterable[RoleSelection],
    abstract_syntaxes: Iterable[str],
    allow_scp_role: Iterable[str] = (),
) -> tuple[RoleSelection, ...]:
    """Answer the requestor's role selection sub-items.

    A role selection is answered only for an abstract syntax that was
    proposed. The requestor keeps the SCU role it asked for; it gets the SCP
    role only for SOP classes in ``allow_scp_role``.
    """
    present = set(abstract_syntaxes)
    allowed = set(allow_scp_role)
    return tuple(
        RoleSelection(r.sop_class_uid, r.scu_role, r.scp_role and r.sop_class_uid in allowed)
        for r in proposed
        if r.sop_class_uid in present
    )


def negotiated(
    proposed: Sequence[PresentationContextRQ],
    answers: Sequence[PresentationContextAC],
    requested_roles: Iterable[RoleSelection] = (),
    answered_roles: Iterable[RoleSelection] = (),
) -> dict[int, PresentationContext]:
    """Join a request's contexts and their answers into :class:`PresentationContext` s.

    An answer for a context ID that was not proposed is ignored. The roles
    follow PS3.7 Table D.3-10: a role is the requestor's when it proposed it
    and the acceptor allowed it; with no sub-item, the requestor is SCU only.
    """
    by_id = {pc.context_id: pc for pc in proposed}
    asked = {r.sop_class_uid: r for r in requested_roles}
    given = {r.sop_class_uid: r for r in answered_roles}
    out: dict[int, PresentationContext] = {}
    for answer in answers:
        request = by_id.get(answer.context_id)
        if request is None:
            continue
        abstract = request.abstract_syntax
        scu, scp = True, False
        if abstract in asked and abstract in given:
            scu = asked[abstract].scu_role and given[abstract].scu_role
            scp = asked[abstract].scp_role and given[abstract].scp_role
        transfer = _as_uid(answer.transfer_syntax) if answer.result == 0 else None
        out[answer.context_id] = PresentationContext(
            answer.context_id, _as_uid(abstract), transfer, answer.result, scu, scp
        )
    return out


@functools.lru_cache(maxsize=1024)
def _as_uid(value: str) -> UID:
    """``UID(value)``, made once per distinct value.

    pydicom's constructor costs ~9 us, twice per context, and DCMTK's
    storescu proposes 120 contexts on every association (~2.3 ms of its
    negotiation). A peer's own UIDs just cycle through the bounded cache.
    """
    return UID(value)
