"""The element walks as they were before their short paths (adicom.elements at 6d638eb).

Kept as the reference the tests run the current walks against, side by side,
on the same bytes: the same values found, the same place to resume, the same
errors. Not used by the package.
"""

from __future__ import annotations

import struct

from adicom.elements import (
    _FORMATS,
    _HEADERS,
    _LONG_LENGTH,
    _SHORT_LENGTH,
    _U32,
    _VR_KINDS,
    UNDEFINED,
    DataSetTruncated,
    _ended,
    _scan_unordered,
    _sequence_end,
    _skip_undefined,
)


def scan_elements_before(
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
    for every instance).
    """
    if last is None:
        last = max(wanted)
    if ordered is None:
        ordered = tuple(sorted(wanted))
    found: dict[int, bytes] = {}
    end = len(data)
    pos = at = group = element = 0
    order = 0 if little else 1
    # One unpack per element header: (group, element, VR or the 4-byte
    # length). This runs once per received instance (some 25 elements of a
    # small CT), so the common element (a short VR) takes the fewest steps.
    unpack = _HEADERS[bool(implicit)][order].unpack_from
    long_length = _U32[order].unpack_from
    kinds = _VR_KINDS[order]
    undefined = UNDEFINED
    # The wanted tags are met in their order (tags ascend, PS3.5 7.1): each
    # element's tag is compared with the next wanted one, not looked up in
    # a set. ``passed``: the greatest tag at which the walk stepped through
    # the wanted ones; a later element below it means the tags do not
    # ascend, and the data set is walked again with a set lookup each.
    at_wanted, next_wanted, count, passed = 0, ordered[0], len(ordered), -1
    try:
        while pos < end:
            at = pos
            if implicit:
                group, element, length = unpack(data, pos)
                pos += 8
                if length == undefined:
                    if ((group << 16) | element) > last:
                        if resume is not None:
                            resume.append(at)
                        return found
                    pos = _sequence_end(data, pos, implicit, order)
                    if pos < 0:
                        _ended(complete, group, element)
                        return None
                    continue
            else:
                group, element, vr, length = unpack(data, pos)
                if kinds[vr] == _SHORT_LENGTH and group != 0xFFFE:
                    pos += 8
                else:
                    if group == 0xFFFE:
                        # Items and delimiters have no VR in any syntax (PS3.5 7.5).
                        (length,) = long_length(data, pos + 4)
                        pos += 8
                    elif kinds[vr] == _LONG_LENGTH:
                        if pos + 12 > end:
                            _ended(complete, group, element)
                            return None
                        (length,) = long_length(data, pos + 8)
                        pos += 12
                    else:
                        raise ValueError(f"no VR at the element ({group:04X},{element:04X})")
                    if length == undefined:
                        if ((group << 16) | element) > last:
                            if resume is not None:
                                resume.append(at)
                            return found
                        pos = _sequence_end(data, pos, implicit, order)
                        if pos < 0:
                            _ended(complete, group, element)
                            return None
                        continue
            tag = (group << 16) | element
            if tag >= next_wanted:
                if tag > last:
                    if resume is not None:
                        resume.append(at)
                    return found
                while tag > next_wanted:
                    at_wanted += 1  # that one is not in the data set
                    next_wanted = ordered[at_wanted]
                if tag == next_wanted:
                    if pos + length > end:
                        _ended(complete, group, element)
                        return None
                    found[tag] = bytes(data[pos : pos + length])
                    at_wanted += 1
                    if at_wanted == count:
                        if resume is not None:
                            resume.append(at)
                        return found
                    next_wanted = ordered[at_wanted]
                passed = tag
            elif tag <= passed:
                return _scan_unordered(data, wanted, implicit, little, complete, resume, last)
            pos += length
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


def walk_top_level_before(
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
    order = 0 if little else 1
    unpack = _HEADERS[bool(implicit)][order].unpack_from
    kinds = _VR_KINDS[order]
    pos, end = start, len(data)
    group = element = at = 0
    tag = -1
    try:
        while pos < end:
            at = pos
            if implicit:
                group, element, length = unpack(data, pos)
                if length != UNDEFINED:
                    pos += 8 + length
                    continue
                value = pos + 8
            else:
                group, element, vr, length = unpack(data, pos)
                if kinds[vr] == _SHORT_LENGTH and group != 0xFFFE:
                    pos += 8 + length
                    continue
                if group == 0xFFFE:
                    # Items and delimiters have no VR in any syntax (PS3.5 7.5).
                    (length,) = _U32[order].unpack_from(data, pos + 4)
                    value = pos + 8
                elif kinds[vr] == _LONG_LENGTH:
                    (length,) = _U32[order].unpack_from(data, pos + 8)
                    value = pos + 12
                else:
                    raise ValueError(f"no VR at the element ({group:04X},{element:04X})")
                if length != UNDEFINED:
                    pos = value + length
                    continue
            skipped = _skip_undefined(data, value, implicit, *_FORMATS[order])
            if skipped is None:
                return at, (group << 16) | element, False
            pos = skipped
    except struct.error:
        return at, -1, False  # the header is cut
    if pos > start:
        tag = (group << 16) | element
    return pos, tag, True
