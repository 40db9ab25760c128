"""The presentation contexts a query/retrieve SCU proposes (PS3.4 C.6, C.4.3.1).

The information model SOP classes of C-FIND, C-MOVE and C-GET, and for a
C-GET the storage classes offered in the SCP role (PS3.7 D.3.3.4): by
default the common ones, or planned from what a survey found the peer to
hold (:func:`plan_get_contexts`). :mod:`adicom.qrscu` runs the operations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from adicom.pdu import RoleSelection
from adicom.presentation import (
    DEFAULT_TRANSFER_SYNTAXES,
    MAX_CONTEXTS,
    STORAGE_TRANSFER_SYNTAXES,
)

__all__ = [
    "DEFAULT_GET_SOP_CLASSES",
    "GET_COMPRESSED_SYNTAXES",
    "GET_SYNTAX_PRIORITY",
    "UNCOMPRESSED_SYNTAXES",
    "Model",
    "find_contexts",
    "get_contexts",
    "information_model",
    "move_contexts",
    "plan_get_contexts",
]

log = logging.getLogger("adicom")

Model = Literal["patient", "study", "composite", "worklist"]

# Information model SOP classes (PS3.4 C.6 and K.6).
_FIND = {
    "patient": "1.2.840.10008.5.1.4.1.2.1.1",
    "study": "1.2.840.10008.5.1.4.1.2.2.1",
    "worklist": "1.2.840.10008.5.1.4.31",
}
_MOVE = {
    "patient": "1.2.840.10008.5.1.4.1.2.1.2",
    "study": "1.2.840.10008.5.1.4.1.2.2.2",
    "composite": "1.2.840.10008.5.1.4.1.2.4.2",
}
_GET = {
    "patient": "1.2.840.10008.5.1.4.1.2.1.3",
    "study": "1.2.840.10008.5.1.4.1.2.2.3",
    "composite": "1.2.840.10008.5.1.4.1.2.4.3",
}

#: Image storage classes a C-GET offers to receive compressed as well.
_IMAGE_SOP_CLASSES: tuple[str, ...] = tuple(
    "1.2.840.10008.5.1.4.1.1." + suffix
    for suffix in (
        "2", "2.1", "4", "4.1", "1", "1.1", "1.1.1", "1.2", "6.1", "3.1", "7", "7.4",
        "12.1", "20", "128", "481.1",
    )
)  # fmt: skip
#: ... and the other classes, uncompressed only (SR, RT, documents, ...).
_OTHER_SOP_CLASSES: tuple[str, ...] = tuple(
    "1.2.840.10008.5.1.4.1.1." + suffix
    for suffix in (
        "481.2", "481.3", "481.5", "88.11", "88.22", "88.33", "88.59", "11.1", "66.4",
        "104.1", "66",
    )
)  # fmt: skip
#: Storage SOP classes a C-GET offers to receive by default: the common
#: image, structured report, RT and document classes (PS3.4 Annex B).
DEFAULT_GET_SOP_CLASSES: tuple[str, ...] = _IMAGE_SOP_CLASSES + _OTHER_SOP_CLASSES

#: The compressed syntaxes offered for image classes, each in a context of
#: its own: an SCP picks one syntax per context, so only separate contexts
#: let it send each instance as it is stored (JPEG, JPEG-LS, JPEG 2000, RLE).
GET_COMPRESSED_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
)

_QUERY_SYNTAXES = list(DEFAULT_TRANSFER_SYNTAXES[:2])


def _sop(table: dict[str, str], model: str, what: str) -> str:
    try:
        return table[model]
    except KeyError:
        raise ValueError(f"no {what} in the {model!r} information model") from None


def information_model(operation: Literal["C-FIND", "C-GET", "C-MOVE"], model: str) -> str:
    """The SOP class of ``operation`` in the information model ``model`` (ValueError if none)."""
    return _sop({"C-FIND": _FIND, "C-GET": _GET, "C-MOVE": _MOVE}[operation], model, operation)


def find_contexts(model: Model = "study") -> list[tuple[str, list[str]]]:
    """The presentation context a C-FIND in ``model`` needs."""
    return [(_sop(_FIND, model, "C-FIND"), _QUERY_SYNTAXES)]


def move_contexts(model: Model = "study") -> list[tuple[str, list[str]]]:
    """The presentation context a C-MOVE in ``model`` needs."""
    return [(_sop(_MOVE, model, "C-MOVE"), _QUERY_SYNTAXES)]


def get_contexts(
    model: Model = "study", sop_classes: Sequence[str] = DEFAULT_GET_SOP_CLASSES
) -> tuple[list[tuple[str, list[str]]], list[RoleSelection]]:
    """Contexts and role selections for a C-GET: the model, and each storage class as SCP.

    PS3.4 C.4.3.1: the C-STOREs come back on the same association, so the
    requestor proposes the SCP role for every storage SOP class it wants
    (PS3.7 D.3.3.4). Each class gets an uncompressed context; image classes
    also one context per common compressed syntax. Raises ValueError past
    PS3.8's 128 contexts.
    """
    contexts = [(_sop(_GET, model, "C-GET"), _QUERY_SYNTAXES)]
    for sop in sop_classes:
        # Compressed contexts come first: some SCPs (DCMTK's dcmqrscp) send
        # each sub-operation on the first accepted context of its class,
        # whatever the file's syntax, and accept compressed contexts only
        # for syntaxes they hold; others (pynetdicom) match the syntax.
        if sop in _IMAGE_SOP_CLASSES:
            contexts += [(sop, [syntax]) for syntax in GET_COMPRESSED_SYNTAXES]
        contexts.append((sop, list(DEFAULT_TRANSFER_SYNTAXES[:2])))
    if len(contexts) > 128:
        raise ValueError(
            f"{len(sop_classes)} storage SOP classes need {len(contexts)} presentation "
            "contexts for a C-GET; PS3.8 allows 128"
        )
    roles = [RoleSelection(sop, scu_role=False, scp_role=True) for sop in sop_classes]
    return contexts, roles


#: The order in which a C-GET offers transfer syntaxes it does not know an
#: instance is held in: uncompressed and deflated first, then the common
#: compressed ones (JPEG, JPEG lossless, JPEG-LS, JPEG 2000, RLE), then every
#: other syntax pydicom knows (video, HTJ2K, ...). With room, each gets a
#: context of its own; the tail shares one (see plan_get_contexts).
GET_SYNTAX_PRIORITY: tuple[str, ...] = tuple(
    dict.fromkeys(
        (
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.51",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.57",
            "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.81",
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.2",
            "1.2.840.10008.1.2.4.201",
            "1.2.840.10008.1.2.4.202",
            "1.2.840.10008.1.2.4.203",
            "1.2.840.10008.1.2.4.92",
            "1.2.840.10008.1.2.4.93",
            *STORAGE_TRANSFER_SYNTAXES,
        )
    )
)
#: The syntaxes an SCP can convert between (deflate included): any of them
#: can carry an instance held in another.
UNCOMPRESSED_SYNTAXES = frozenset(DEFAULT_TRANSFER_SYNTAXES) | {"1.2.840.10008.1.2.1.99"}


def _compressed_first(syntaxes: Iterable[str]) -> list[str]:
    # Some SCPs (DCMTK's dcmqrscp) send each sub-operation on the first
    # accepted context of its class, whatever the file's syntax: a
    # compressed instance only goes if its syntax's context comes first,
    # while an uncompressed one can be converted on any.
    ordered = list(dict.fromkeys(syntaxes))
    return [t for t in ordered if t not in UNCOMPRESSED_SYNTAXES] + [
        t for t in ordered if t in UNCOMPRESSED_SYNTAXES
    ]


def plan_get_contexts(
    model: Model,
    wanted: Mapping[str, Sequence[str]],
    *,
    all_syntaxes: bool = False,
    also: Sequence[str] = (),
) -> tuple[list[tuple[str, list[str]]], list[RoleSelection]]:
    """Contexts and role selections for a C-GET of instances of the SOP classes in ``wanted``.

    ``wanted`` maps each storage SOP class to the transfer syntaxes its
    instances are held in (from Available Transfer Syntax UID (0008,3002),
    or the caller's choice); an empty list means unknown, and then, as for
    every class with ``all_syntaxes``, every syntax pydicom knows is
    offered. An acceptor takes one syntax per context and a C-GET SCP can
    send an instance only on a context in its syntax (or, converting, an
    uncompressed one), so each known syntax gets a context of its own. The
    unknown classes share what is left of PS3.8's 128 contexts (one is the
    C-GET's own): each gets contexts of its own for the syntaxes first in
    :data:`GET_SYNTAX_PRIORITY` as room allows, and one more listing all
    the others. ``also`` are classes to add with their usual syntaxes
    (:func:`get_contexts`) while room remains, for instances whose class is
    not known. Every class is proposed with the SCP role (PS3.4 C.4.3.1,
    PS3.7 D.3.3.4). When even one context per class does not fit, the
    classes beyond are left out (and logged).
    """
    budget = MAX_CONTEXTS - 1
    known = {sop: list(ts) for sop, ts in wanted.items() if ts and not all_syntaxes}
    unknown = [sop for sop in wanted if sop not in known]
    if len(known) + len(unknown) > budget:
        left = list(wanted)[budget:]
        log.warning(
            "C-GET: %d storage SOP classes, more than %d contexts allow; not offering %s",
            len(wanted),
            budget,
            ", ".join(left),
        )
        known = {sop: ts for sop, ts in known.items() if sop not in left}
        unknown = [sop for sop in unknown if sop not in left]
    planned: list[tuple[str, list[str]]] = [
        (sop, [syntax]) for sop, syntaxes in known.items() for syntax in _compressed_first(syntaxes)
    ]
    if len(planned) + len(unknown) > budget:
        # One context per class, listing the syntaxes it is held in: the
        # acceptor takes one, instances in the others may fail.
        planned = [(sop, _compressed_first(syntaxes)) for sop, syntaxes in known.items()]
    room = budget - len(planned) - len(unknown)
    for n, sop in enumerate(unknown):
        extra = room // len(unknown) + (n < room % len(unknown))
        own = (
            GET_SYNTAX_PRIORITY[: extra + 1]
            if extra + 1 >= len(GET_SYNTAX_PRIORITY)
            else (GET_SYNTAX_PRIORITY[:extra])
        )
        planned += [(sop, [syntax]) for syntax in _compressed_first(own)]
        rest = [syntax for syntax in GET_SYNTAX_PRIORITY if syntax not in own]
        if rest:
            planned.append((sop, rest))
    offered = dict.fromkeys(sop for sop, _ in planned)
    for sop in also:
        if sop in offered:
            continue
        usual = get_contexts(model, [sop])[0][1:]
        if len(planned) + len(usual) > budget:
            break
        planned += usual
        offered[sop] = None
    contexts = [(_sop(_GET, model, "C-GET"), _QUERY_SYNTAXES), *planned]
    roles = [RoleSelection(sop, scu_role=False, scp_role=True) for sop in offered]
    return contexts, roles
