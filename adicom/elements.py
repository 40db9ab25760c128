"""Walking an encoded data set element by element (PS3.5 7.1, 7.5), without decoding it.

What a receiver needs of every instance, at a cost far below pydicom's:

* :func:`scan_elements` picks out a few top-level values (the UIDs a
  storage layout names files by), stepping over sequences of defined and
  undefined length;
* :func:`check_whole` and :func:`walk_top_level` tell whether a data set's
  top level is whole, all at once or as its fragments stream in;
* :func:`find_top_level` finds one top-level element (Pixel Data);
* :func:`skip_group_0002` measures a file meta group a sender left inside
  the data set (PS3.10 7.1).

Bytes that are not what the transfer syntax says make them raise
ValueError (:class:`DataSetTruncated` for a data set cut short); the caller
falls back to pydicom or refuses the instance.
"""

from __future__ import annotations

import struct
from typing import Literal

__all__ = [
    "LONG_VRS",
    "UNDEFINED",
    "DataSetTruncated",
    "check_whole",
    "find_top_level",
    "scan_elements",
    "skip_group_0002",
    "walk_top_level",
]

#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: The length of an element or item of undefined length (PS3.5 7.1.1).
UNDEFINED = 0xFFFFFFFF
# How an explicit VR's element header goes on, by the number the VR's two
# bytes make in the data set's byte order (little, big): a table of 65,536
# bytes, one index per element. A set of those numbers cost a few probes
# each: a set places an int by its low bits, and VRs that share their first
# letter (AE AS AT, SH SL SS ST SV, UC UI UL UN UR US UT UV) share them.
_NOT_A_VR, _SHORT_LENGTH, _LONG_LENGTH = 0, 1, 2


def _vr_kinds(order: Literal["little", "big"]) -> bytes:
    table = bytearray(65536)
    # Any two capital letters are a VR (PS3.5 6.2): one newer than
    # LONG_VRS has a 2-byte length (PS3.5 7.1.2).
    for first in range(0x41, 0x5B):
        for second in range(0x41, 0x5B):
            table[int.from_bytes(bytes((first, second)), order)] = _SHORT_LENGTH
    for vr in LONG_VRS:
        table[int.from_bytes(vr, order)] = _LONG_LENGTH
    return bytes(table)


_VR_KINDS = (_vr_kinds("little"), _vr_kinds("big"))
# An element header as one unpack, [implicit][little, big]: (group, element,
# the 4-byte length) implicit, (group, element, VR, 2-byte length) explicit.
_HEADERS = (
    (struct.Struct("<HHHH"), struct.Struct(">HHHH")),
    (struct.Struct("<HHL"), struct.Struct(">HHL")),
)
_U32 = (struct.Struct("<L"), struct.Struct(">L"))
# What a walk unpacks with, made once, [implicit][little, big]: the element
# header's unpack_from, the 4-byte length's, and the VR kinds (bound methods
# and tables looked up per call cost ~1.5k instructions per walk).
_WALK_TOOLS = tuple(
    tuple(
        (_HEADERS[implicit][order].unpack_from, _U32[order].unpack_from, _VR_KINDS[order])
        for order in (0, 1)
    )
    for implicit in (0, 1)
)
_FORMATS = (("<H", "<L"), (">H", ">L"))


#: The first bytes of a data set that :func:`scan_elements` copies to walk
#: (see there): a header's top-level elements up to Instance Number fit in
#: a few hundred bytes to a few kilobytes.
SCAN_PREFIX = 4096

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# The VR UN as an explicit VR header's unpack reads it, [little, big]. A UN
# of undefined length holds its items in implicit VR little endian, whatever
# the data set's syntax (PS3.5 6.2.2): a walk reads them so.
_UN = (struct.unpack("<H", b"UN")[0], struct.unpack(">H", b"UN")[0])


def _element_header(
    data: bytes | bytearray | memoryview, pos: int, implicit: bool, u16: str, u32: str
) -> tuple[int, int, int] | None:
    """(tag, value length, value position) of the element at ``pos``; None if cut short."""
    end = len(data)
    if pos + 8 > end:
        return None
    group, element = struct.unpack_from(u16 + u16[1], data, pos)
    tag = (group << 16) | element
    if implicit or tag >> 16 == 0xFFFE:
        # Items and delimiters have no VR in any syntax (PS3.5 7.5).
        return tag, struct.unpack_from(u32, data, pos + 4)[0], pos + 8
    vr = bytes(data[pos + 4 : pos + 6])
    if vr in LONG_VRS:
        if pos + 12 > end:
            return None
        return tag, struct.unpack_from(u32, data, pos + 8)[0], pos + 12
    if not (vr.isalpha() and vr.isupper()):
        raise ValueError(f"no VR at the element ({group:04X},{element:04X})")
    return tag, struct.unpack_from(u16, data, pos + 6)[0], pos + 8


def scan_elements(
    data: bytes | bytearray | memoryview,
    wanted: frozenset[int],
    *,
    implicit: bool,
    little: bool = True,
    complete: bool = False,
    resume: list[int] | None = None,
    last: int | None = None,
    ordered: tuple[int, ...] | None = None,
) -> dict[int, bytes] | None:
    """Find the top-level elements ``wanted`` at the start of an encoded data set.

    Returns their raw values once every wanted tag is found or passed (tags
    ascend, PS3.5 7.1), or None if ``data`` ends first, unless ``data`` is
    the ``complete`` data set: then what was found is all there is. Raises
    ValueError for bytes that are not a data set. ``resume``, when given,
    gets the offset of the top-level element where the walk stopped, for
    :func:`check_whole` to go on from there instead of walking it twice.
    ``last``: ``max(wanted)``, and ``ordered``: ``tuple(sorted(wanted))``,
    when the caller knows them already (a receiver asks for the same tags
    for every instance). Wanted tags are data elements' (below group FFFE).
    """
    if last is None:
        last = max(wanted)
    if ordered is None:
        ordered = tuple(sorted(wanted))
    if last >= 0xFFFE0000:
        # The short path below counts on every item and delimiter being past
        # the wanted tags (PS3.5 7.5: group FFFE holds no data element).
        raise ValueError(f"({last >> 16:04X},{last & 0xFFFF:04X}) is not a data element's tag")
    if type(data) is not bytes:
        # A receive buffer's view (or a bytearray): each value taken from it
        # is a slice and a copy (~1.1k instructions, 20 values for an
        # archive), from bytes a slice only. Its first bytes, where the
        # wanted values usually are, are copied once and walked; the rest
        # only if they are not all there. Bytes cut short end a walk as the
        # data set's end does (None, never an error they would not raise
        # whole), so what the prefix gives is what the whole gives.
        if len(data) <= SCAN_PREFIX:
            data = bytes(data)
        else:
            found = _scan(
                bytes(data[:SCAN_PREFIX]), wanted, implicit, little, False, resume, last, ordered
            )
            if found is not None:
                return found
    return _scan(data, wanted, implicit, little, complete, resume, last, ordered)


def _scan(
    data: bytes | bytearray | memoryview,
    wanted: frozenset[int],
    implicit: bool,
    little: bool,
    complete: bool,
    resume: list[int] | None,
    last: int,
    ordered: tuple[int, ...],
) -> dict[int, bytes] | None:
    """:func:`scan_elements`, its arguments checked and completed."""
    # Values are slices of bytes (``whole``), copies of a view's slices.
    whole = data if isinstance(data, bytes) else None
    found: dict[int, bytes] = {}
    end = len(data)
    pos = group = element = 0
    order = 0 if little else 1
    # One unpack per element header: (group, element, VR or the 4-byte
    # length). This runs once per received instance (some 25 elements of a
    # small CT), so the common element takes the fewest steps: one unpack,
    # one chained comparison, one table lookup and one addition (about 2.8k
    # instructions under callgrind, 3.0k the way every element went before).
    unpack, long_length, kinds = _WALK_TOOLS[1 if implicit else 0][order]
    undefined, short = UNDEFINED, _SHORT_LENGTH
    # The wanted tags are met in their order (tags ascend, PS3.5 7.1): each
    # element's tag is compared with the next wanted one, not looked up in
    # a set. ``passed``: the greatest tag at which the walk stepped through
    # the wanted ones; a later element at or below it means the tags do not
    # ascend, and the data set is walked again with a set lookup each.
    # The common element lies strictly between the two (``passed`` is always
    # below ``next_wanted``), is not an item (group FFFE is past any tag a
    # data set's element has) and has a short VR or, implicit, a defined
    # length: it is stepped over on the short path. Every other element takes
    # the general one, which does what the whole walk did before.
    at_wanted, next_wanted, count, passed = 0, ordered[0], len(ordered), -1
    try:
        while pos < end:
            if implicit:
                group, element, length = unpack(data, pos)
                tag = (group << 16) | element
                if passed < tag < next_wanted and length != undefined:
                    pos += 8 + length
                    continue
                value = pos + 8
            else:
                group, element, vr, length = unpack(data, pos)
                tag = (group << 16) | element
                if kinds[vr] == short:
                    if tag < next_wanted:
                        if tag > passed:
                            pos += 8 + length
                            continue
                    elif tag == next_wanted:
                        # The next wanted one, a short VR (as most are): taken
                        # here, in fewer steps than the general way below,
                        # which does the same (it is no item: those are past
                        # every wanted tag; its length is defined).
                        # A value cut short is taken cut (a slice stops at
                        # the end) and the walk ends at the loop's test, as
                        # past any element: only the last one is checked here.
                        value = pos + 8
                        pos = value + length
                        found[tag] = bytes(data[value:pos]) if whole is None else whole[value:pos]
                        at_wanted += 1
                        if at_wanted == count:
                            if pos > end:
                                _ended(complete, group, element)
                                return None
                            if resume is not None:
                                resume.append(value - 8)
                            return found
                        next_wanted = ordered[at_wanted]
                        passed = tag
                        continue
                if group == 0xFFFE:
                    # Items and delimiters have no VR in any syntax (PS3.5 7.5).
                    (length,) = long_length(data, pos + 4)
                    value = pos + 8
                elif kinds[vr] == _SHORT_LENGTH:
                    value = pos + 8
                elif kinds[vr] == _LONG_LENGTH:
                    if pos + 12 > end:
                        _ended(complete, group, element)
                        return None
                    (length,) = long_length(data, pos + 8)
                    value = pos + 12
                else:
                    raise ValueError(f"no VR at the element ({group:04X},{element:04X})")
            if length == undefined:
                if tag > last:
                    if resume is not None:
                        resume.append(pos)
                    return found
                un = not implicit and vr == _UN[order]  # see _UN
                skipped = _sequence_end(data, value, implicit or un, 0 if un else order)
                if skipped < 0:
                    _ended(complete, group, element)
                    return None
                pos = skipped
                continue
            if tag >= next_wanted:
                if tag > last:
                    if resume is not None:
                        resume.append(pos)
                    return found
                while tag > next_wanted:
                    at_wanted += 1  # that one is not in the data set
                    next_wanted = ordered[at_wanted]
                if tag == next_wanted:
                    if value + length > end:
                        _ended(complete, group, element)
                        return None
                    found[tag] = bytes(data[value : value + length])
                    at_wanted += 1
                    if at_wanted == count:
                        if resume is not None:
                            resume.append(pos)
                        return found
                    next_wanted = ordered[at_wanted]
                passed = tag
            elif tag <= passed:
                return _scan_unordered(data, wanted, implicit, little, complete, resume, last)
            pos = value + length
    except struct.error:
        pass  # fewer than 8 bytes left: the data set ends inside an element header
    if pos > end:
        # The last element's value goes past the end: more is needed, or
        # the data set is cut short.
        _ended(complete, group, element)
        return None
    if complete:
        if pos != end:
            raise DataSetTruncated("the data set ends inside an element header")
        if resume is not None:
            resume.append(pos)
        return found
    return None


def _scan_unordered(
    data: bytes | bytearray | memoryview,
    wanted: frozenset[int],
    implicit: bool,
    little: bool,
    complete: bool,
    resume: list[int] | None,
    last: int,
) -> dict[int, bytes] | None:
    """:func:`scan_elements` for a data set whose tags do not ascend: a set lookup per element.

    PS3.5 7.1 wants them ascending; one that is not is read as before,
    every wanted element taken wherever it is before the first tag past
    ``last``.
    """
    found: dict[int, bytes] = {}
    end = len(data)
    pos = 0
    header = _HEADERS[bool(implicit)][0 if little else 1]
    long_length = _U32[0 if little else 1]
    kinds = _VR_KINDS[0 if little else 1]
    missing = len(wanted)
    while pos + 8 <= end:
        at = pos
        if implicit:
            group, element, length = header.unpack_from(data, pos)
            pos += 8
        else:
            group, element, vr, length = header.unpack_from(data, pos)
            if group == 0xFFFE:
                (length,) = long_length.unpack_from(data, pos + 4)
                pos += 8
            elif kinds[vr] == _SHORT_LENGTH:
                pos += 8
            elif kinds[vr] == _LONG_LENGTH:
                if pos + 12 > end:
                    _ended(complete, group, element)
                    return None
                (length,) = long_length.unpack_from(data, pos + 8)
                pos += 12
            else:
                raise ValueError(f"no VR at the element ({group:04X},{element:04X})")
        tag = (group << 16) | element
        if tag > last:
            if resume is not None:
                resume.append(at)
            return found
        if length == UNDEFINED:
            un = not implicit and vr == _UN[0 if little else 1]  # see _UN
            skipped = _skip_undefined(
                data, pos, implicit or un, *_FORMATS[0 if little or un else 1]
            )
            if skipped is None:
                _ended(complete, group, element)
                return None
            pos = skipped
            continue
        if pos + length > end:
            _ended(complete, group, element)
            return None
        if tag in wanted:
            # A tag given twice (PS3.5 7.1 forbids it; met in damaged files)
            # counts once: the scan goes on until every wanted tag is in,
            # the last of the repeats standing, as the ordered walk reads it.
            missing -= tag not in found
            found[tag] = bytes(data[pos : pos + length])
            if not missing:
                if resume is not None:
                    resume.append(at)
                return found
        pos += length
    if complete:
        if pos != end:
            raise DataSetTruncated("the data set ends inside an element header")
        if resume is not None:
            resume.append(pos)
        return found
    return None


class DataSetTruncated(ValueError):
    """A data set known to be whole ends inside an element (``tag``, when known)."""

    def __init__(self, message: str, tag: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag


def _ended(complete: bool, group: int, element: int) -> None:
    """The bytes end inside an element: more are needed, unless the data set is whole."""
    if complete:
        raise DataSetTruncated(f"the data set ends inside the element ({group:04X},{element:04X})")


def _is_un(data: bytes | bytearray | memoryview, pos: int, tag: int) -> bool:
    """Whether the explicit VR element at ``pos`` (``tag``) is a UN (items have no VR)."""
    return tag >> 16 != 0xFFFE and data[pos + 4 : pos + 6] == b"UN"


def _skip_undefined(
    data: bytes | bytearray | memoryview, pos: int, implicit: bool, u16: str, u32: str
) -> int | None:
    """Skip a sequence (or encapsulated value) of undefined length; return where it ends."""
    depth = 1
    while depth:
        start = pos
        header = _element_header(data, pos, implicit, u16, u32)
        if header is None:
            return None
        tag, length, pos = header
        if tag in (_ITEM_END, _SEQUENCE_END):
            depth -= 1
        elif length == UNDEFINED and not implicit and _is_un(data, start, tag):
            # Its items in implicit VR little endian (see _UN), to its own
            # delimiter: one level deeper at most (implicit VR has no UN).
            inner = _skip_undefined(data, pos, True, "<H", "<L")
            if inner is None:
                return None
            pos = inner
        elif length == UNDEFINED:
            depth += 1  # an item, or a nested sequence, of undefined length
        else:
            pos += length  # an item or an element of defined length
    return pos


def check_whole(
    data: bytes | bytearray | memoryview,
    *,
    implicit: bool,
    little: bool,
    start: int = 0,
    padding: bool = False,
) -> None:
    """Walk the top-level elements of ``data`` to its end; DataSetTruncated if one is cut.

    ``start``: the offset of a top-level element to begin with (what
    :func:`scan_elements` walked already, its ``resume``). ``padding``: up
    to 7 NUL or space bytes after the last element (too few for a header)
    are padding, as pydicom's reader takes them, not a header cut short.
    """
    # This walks every received instance whole (some 20 elements of a small
    # CT after what scan_elements walked), so the common element takes one
    # unpack, one test and one addition: a header cut short shows as the
    # unpack's struct.error, a value cut short as the walk ending past the
    # end; sequences of undefined length, items and long VRs go the general way.
    order = 0 if little else 1
    unpack, _, kinds = _WALK_TOOLS[1 if implicit else 0][order]
    undefined, short = UNDEFINED, _SHORT_LENGTH
    pos, end = start, len(data)
    group = element = 0
    try:
        if implicit:
            while pos < end:
                group, element, length = unpack(data, pos)
                if length != undefined:
                    pos += 8 + length
                else:
                    pos = _past_undefined(data, pos + 8, group, element, True, order)
        else:
            while pos < end:
                group, element, vr, length = unpack(data, pos)
                if kinds[vr] == short and group != 0xFFFE:
                    pos += 8 + length
                else:
                    pos = _explicit_step(data, pos, group, element, vr, order)
    except struct.error:
        # ``pos``: where the header that could not be read starts.
        if padding and not bytes(data[pos:]).strip(b"\0 "):
            return
        raise DataSetTruncated("the data set ends inside an element header") from None
    if pos > end:
        raise DataSetTruncated(
            f"the data set is cut short: {pos - end} bytes of ({group:04X},{element:04X}) missing",
            (group << 16) | element,
        )


def walk_top_level(
    data: bytes | bytearray | memoryview, start: int, *, implicit: bool, little: bool
) -> tuple[int, int, bool]:
    """Step over the top-level elements of a piece of a data set, from ``start``.

    For a receiver that checks a data set as it streams in, piece by piece,
    without keeping it: returns ``(position, tag, whole)``. ``whole``: every
    element that starts in ``data`` was stepped over, and the next one
    starts at ``position`` (at or past the end of ``data``: the value of
    ``tag``, the last element stepped over, may run on into later pieces).
    Otherwise the element at ``position`` (``tag``) could not be stepped
    over with these bytes (its header is cut: ``tag`` -1; or it is a
    sequence of undefined length that goes on): the caller goes on from
    the bytes kept elsewhere. ``tag`` is -1 too when no element starts in
    ``data``. Raises
    ValueError for bytes that are not a data set.
    """
    # One loop per syntax, the common element (a defined length; explicit, a
    # short VR) in one unpack, one test and one addition, as check_whole: this
    # walks the rest of every received instance (some 20 elements of a small
    # CT). Where an element starts is ``pos`` until it is stepped over.
    order = 0 if little else 1
    unpack, long_length, kinds = _WALK_TOOLS[1 if implicit else 0][order]
    undefined, short = UNDEFINED, _SHORT_LENGTH
    pos, end = start, len(data)
    group = element = 0
    try:
        if implicit:
            while pos < end:
                group, element, length = unpack(data, pos)
                if length != undefined:
                    pos += 8 + length
                    continue
                skipped = _skip_undefined(data, pos + 8, True, *_FORMATS[order])
                if skipped is None:
                    return pos, (group << 16) | element, False
                pos = skipped
        else:
            while pos < end:
                group, element, vr, length = unpack(data, pos)
                if kinds[vr] == short and group != 0xFFFE:
                    pos += 8 + length
                    continue
                if group == 0xFFFE:
                    # Items and delimiters have no VR in any syntax (PS3.5 7.5).
                    (length,) = long_length(data, pos + 4)
                    value = pos + 8
                elif kinds[vr] == _LONG_LENGTH:
                    (length,) = long_length(data, pos + 8)
                    value = pos + 12
                else:
                    raise ValueError(f"no VR at the element ({group:04X},{element:04X})")
                if length != undefined:
                    pos = value + length
                    continue
                un = vr == _UN[order]  # see _UN
                skipped = _skip_undefined(data, value, un, *_FORMATS[0 if un else order])
                if skipped is None:
                    return pos, (group << 16) | element, False
                pos = skipped
    except struct.error:
        return pos, -1, False  # the header is cut
    return pos, (group << 16) | element if pos > start else -1, True


def _explicit_step(
    data: bytes | bytearray | memoryview, pos: int, group: int, element: int, vr: int, order: int
) -> int:
    """Where the explicit VR element at ``pos`` that is not a plain short one ends."""
    length: int
    if group == 0xFFFE:
        # Items and delimiters have no VR in any syntax (PS3.5 7.5).
        (length,) = _U32[order].unpack_from(data, pos + 4)
        value = pos + 8
    elif _VR_KINDS[order][vr] == _LONG_LENGTH:
        (length,) = _U32[order].unpack_from(data, pos + 8)  # struct.error if cut
        value = pos + 12
    else:
        raise ValueError(f"no VR at the element ({group:04X},{element:04X})")
    if length == UNDEFINED:
        un = vr == _UN[order]  # see _UN
        return _past_undefined(data, value, group, element, un, 0 if un else order)
    return value + length


def _sequence_end(
    data: bytes | bytearray | memoryview, pos: int, implicit: bool, order: int
) -> int:
    """Where a sequence of undefined length whose value starts at ``pos`` ends; -1 if cut."""
    skipped = _skip_undefined(data, pos, implicit, *_FORMATS[order])
    return -1 if skipped is None else skipped


def _past_undefined(
    data: bytes | bytearray | memoryview,
    pos: int,
    group: int,
    element: int,
    implicit: bool,
    order: int,
) -> int:
    """Where a sequence of undefined length whose value starts at ``pos`` ends."""
    skipped = _skip_undefined(data, pos, implicit, *_FORMATS[order])
    if skipped is None:
        tag = (group << 16) | element
        raise DataSetTruncated(f"the data set ends inside the sequence ({tag:08X})")
    return skipped


def find_top_level(
    data: bytes | bytearray | memoryview, tag: int, *, implicit: bool
) -> tuple[int, int, int] | None:
    """Where the top-level element ``tag`` is in a little endian data set's first bytes.

    Returns (header position, value position, value length), or None when
    ``data`` ends or passes ``tag`` first. Raises ValueError for bytes that
    are not a data set.
    """
    pos, end = 0, len(data)
    while pos < end:
        header = _element_header(data, pos, implicit, "<H", "<L")
        if header is None:
            return None
        found, length, value = header
        if found == tag:
            return pos, value, length
        if found > tag:
            return None
        if length == UNDEFINED:
            un = not implicit and _is_un(data, pos, found)  # see _UN
            skipped = _skip_undefined(data, value, implicit or un, "<H", "<L")
            if skipped is None:
                return None
            pos = skipped
        else:
            pos = value + length
    return None


def skip_group_0002(
    data: bytes | bytearray | memoryview, *, little: bool, complete: bool
) -> int | None:
    """How many leading bytes of a data set are group 0002 elements (0 if none).

    Group 0002 is the file meta information (PS3.10 7.1); some senders put
    theirs inside the data set. Its elements are read explicit VR (what
    PS3.10 prescribes), or implicit when no VR is there. Returns None when
    more bytes are needed to tell, unless ``complete``; raises ValueError
    for a group 0002 cut short.
    """
    u16, u32 = ("<H", "<L") if little else (">H", ">L")
    pos, end = 0, len(data)
    while True:
        if end - pos < 2:
            if not complete:
                return None
            if pos == end:
                return pos
            raise ValueError("the data set ends inside an element header")
        (group,) = struct.unpack_from(u16, data, pos)
        if group != 0x0002:
            return pos
        if end - pos < 8:
            _cut_short(complete)
            return None
        vr = bytes(data[pos + 4 : pos + 6])
        if vr.isalpha() and vr.isupper():
            if vr in LONG_VRS:
                if end - pos < 12:
                    _cut_short(complete)
                    return None
                (length,) = struct.unpack_from(u32, data, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from(u16, data, pos + 6)
                pos += 8
        else:
            (length,) = struct.unpack_from(u32, data, pos + 4)
            pos += 8
        if length == UNDEFINED:
            raise ValueError("a group 0002 element of undefined length")
        pos += length
        if pos > end:
            _cut_short(complete)
            return None


def _cut_short(complete: bool) -> None:
    """More bytes are needed, unless none will come: then the group 0002 is cut short."""
    if complete:
        raise ValueError("the data set ends inside its group 0002")
