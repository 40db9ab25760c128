"""The element walks' short paths, run side by side with the walks before them on random data sets.

``scan_elements`` steps over the common element (in order, not wanted, a
short VR or a defined length) on a short path and ``walk_top_level`` runs
one loop per syntax. Whatever the bytes, each must do what the walk before
it did (tests/elements_before.py): the same values found, the same place to
resume, the same error. The data sets are made here byte by byte, so they
can be what pydicom would not write: tags out of order, a tag twice, items
and delimiters at the top level, odd lengths, private elements, sequences
of defined and undefined length nested, long VRs, bytes that are no VR.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import pytest

from adicom import elements
from adicom.elements import DataSetTruncated, scan_elements, walk_top_level
from tests.elements_before import scan_elements_before, walk_top_level_before

SHORT_VRS = ["AE", "AS", "CS", "DA", "DS", "IS", "LO", "PN", "SH", "TM", "UI", "US", "UL", "FD"]
LONG_VRS = ["OB", "OW", "UN", "UT"]
#: Tags a data set is made of, ascending: the UIDs a storage wants among them.
TAGS = [
    0x00080005, 0x00080008, 0x00080016, 0x00080018, 0x00080020, 0x00080060,
    0x00081030, 0x00081032, 0x00090010, 0x00091001, 0x00100010, 0x00100020,
    0x00181030, 0x0020000D, 0x0020000E, 0x00200013, 0x00280010, 0x00291010,
    0x7FE00010,
]  # fmt: skip
SYNTAXES = [(False, True), (True, True), (False, False)]  # (implicit, little)


class Encoder:
    """Element headers of one syntax, written by hand."""

    def __init__(self, implicit: bool, little: bool) -> None:
        self.implicit = implicit
        self.e = "<" if little else ">"

    def element(self, tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
        length = len(value) if length is None else length
        group, element = tag >> 16, tag & 0xFFFF
        if self.implicit:
            return struct.pack(self.e + "HHL", group, element, length) + value
        if vr in LONG_VRS or vr == "SQ":
            return struct.pack(self.e + "HH2s2xL", group, element, vr.encode(), length) + value
        return struct.pack(self.e + "HH2sH", group, element, vr.encode(), length) + value

    def item(self, tag: int, length: int, value: bytes = b"") -> bytes:
        """An item or a delimiter (FFFE,xxxx): no VR in any syntax (PS3.5 7.5)."""
        return struct.pack(self.e + "HHL", 0xFFFE, tag, length) + value


def nested(rng: random.Random, enc: Encoder, depth: int) -> bytes:
    """A sequence's value: items of defined or undefined length, maybe nested."""
    out = b""
    for _ in range(rng.randint(0, 2)):
        inner = enc.element(0x00080100, "SH", b"CODE")
        if depth < 2 and rng.random() < 0.5:
            inner += sequence(rng, enc, 0x0040A043, depth + 1)
        if rng.random() < 0.5:
            out += enc.item(0xE000, 0xFFFFFFFF, inner) + enc.item(0xE00D, 0)
        else:
            out += enc.item(0xE000, len(inner), inner)
    return out


def sequence(rng: random.Random, enc: Encoder, tag: int, depth: int = 0) -> bytes:
    value = nested(rng, enc, depth)
    if rng.random() < 0.5:
        return enc.element(tag, "SQ", value + enc.item(0xE0DD, 0), 0xFFFFFFFF)
    return enc.element(tag, "SQ", value)


def value(rng: random.Random, vr: str) -> bytes:
    size = rng.choice([0, 2, 4, 8, 10, 26, 64])
    if rng.random() < 0.05:
        size += 1  # odd (against PS3.5 7.1.1): walked all the same
    if vr == "UI":
        return (b"1.2.840." + b"9" * 64)[:size]
    return bytes(rng.randrange(256) for _ in range(size)) if vr in LONG_VRS else b"A" * size


def data_set(rng: random.Random, implicit: bool, little: bool) -> tuple[bytes, list[int]]:
    """Random elements, now and then out of order; the encoded data set and its tags."""
    enc = Encoder(implicit, little)
    tags = sorted(rng.sample(TAGS, rng.randint(1, len(TAGS))))
    if rng.random() < 0.3 and len(tags) > 1:  # two tags swapped
        a, b = rng.sample(range(len(tags)), 2)
        tags[a], tags[b] = tags[b], tags[a]
    if rng.random() < 0.2:  # a tag twice
        tags.insert(rng.randrange(len(tags) + 1), rng.choice(tags))
    parts = []
    for tag in tags:
        if tag in (0x00081032,):
            parts.append(sequence(rng, enc, tag))
        elif tag in (0x00091001, 0x00291010, 0x7FE00010) or rng.random() < 0.1:
            vr = rng.choice(LONG_VRS)
            parts.append(enc.element(tag, vr, value(rng, vr)))
        else:
            uid = tag in (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)
            vr = "UI" if uid else rng.choice(SHORT_VRS)
            parts.append(enc.element(tag, vr, value(rng, vr)))
    roll = rng.random()
    at = rng.randrange(len(parts) + 1)
    if roll < 0.05:
        # An item at the top level whose 4-byte length reads as a VR ("SC").
        parts.insert(at, enc.item(0xE000, 0x4353 if little else 0x53430000))
    elif roll < 0.08:
        parts.insert(at, enc.item(0xE0DD, 0))
    elif roll < 0.11 and not implicit:
        parts.insert(at, struct.pack("<HH2sH", 0x0010, 0x0030, b"a1", 2) + b"xx")  # no VR
    return b"".join(parts), tags


def outcome(call: Callable[..., object], *args: object, **kwargs: object) -> tuple[Any, ...]:
    try:
        return ("returned", call(*args, **kwargs))
    except DataSetTruncated as exc:
        return ("truncated", str(exc), exc.tag)
    except ValueError as exc:
        return ("not a data set", str(exc))


@pytest.mark.parametrize(("implicit", "little"), SYNTAXES)
def test_the_scan_does_what_the_scan_before_it_did(
    implicit: bool, little: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random data sets, cut anywhere, whole or not: the same values, resume and errors."""
    rng = random.Random(f"scan {implicit} {little}")
    seen = {"returned": 0, "truncated": 0, "not a data set": 0, "out of order": 0, "by lookup": 0}
    if implicit:
        del seen["not a data set"]  # no VR to be wrong
    by_lookup = elements._scan_unordered

    def counted(*args: Any) -> dict[int, bytes] | None:
        seen["by lookup"] += 1
        return by_lookup(*args)

    monkeypatch.setattr(elements, "_scan_unordered", counted)
    for _ in range(250):
        data, tags = data_set(rng, implicit, little)
        seen["out of order"] += tags != sorted(set(tags))
        present = sorted(set(tags))
        wanted = frozenset(
            rng.sample(present, rng.randint(1, min(5, len(present))))
            + rng.sample(TAGS, rng.randint(0, 2))
        )
        cuts = {len(data), *(rng.randrange(len(data) + 1) for _ in range(25))}
        for end in sorted(cuts):
            for complete in (False, True):
                new: list[int] = []
                old: list[int] = []
                got = outcome(scan_elements, data[:end], wanted, implicit=implicit,
                              little=little, complete=complete, resume=new)  # fmt: skip
                expected = outcome(scan_elements_before, data[:end], wanted, implicit=implicit,
                                   little=little, complete=complete, resume=old)  # fmt: skip
                assert (got, new) == (expected, old), (data.hex(), sorted(wanted), end, complete)
                seen[got[0]] += 1
    # Every way out was taken, on data sets in order and out of it (read by lookup).
    assert min(seen.values()) > 10, seen


@pytest.mark.parametrize(("implicit", "little"), SYNTAXES)
def test_the_walk_does_what_the_walk_before_it_did(implicit: bool, little: bool) -> None:
    """From the start and from odd places, whole and cut: the same position, tag and verdict."""
    rng = random.Random(f"walk {implicit} {little}")
    verdicts: set[object] = set()
    for _ in range(250):
        data, _ = data_set(rng, implicit, little)
        starts = {0, *(rng.randrange(len(data) + 1) for _ in range(5))}
        ends = {len(data), *(rng.randrange(len(data) + 1) for _ in range(10))}
        for start in starts:
            for end in ends:
                piece = memoryview(data)[:end]
                got = outcome(walk_top_level, piece, start, implicit=implicit, little=little)
                expected = outcome(
                    walk_top_level_before, piece, start, implicit=implicit, little=little
                )
                assert got == expected, (data.hex(), start, end)
                if got[0] == "returned":
                    result = got[1]
                    assert isinstance(result, tuple)
                    verdicts.add((result[1] == -1, result[2]))
                else:
                    verdicts.add(got[0])
    # Whole, cut in a header, cut in a sequence, no element, no VR: all met.
    assert len(verdicts) >= 4, verdicts


def test_the_scan_wants_data_elements_only() -> None:
    """Items and delimiters (group FFFE) are never wanted: the short path counts on it."""
    data = Encoder(False, True).element(0x00080018, "UI", b"1.2\0")
    with pytest.raises(ValueError, match=r"\(FFFE,E000\) is not a data element's tag"):
        scan_elements(data, frozenset({0x00080018, 0xFFFEE000}), implicit=False)
    assert scan_elements(data, frozenset({0x00080018}), implicit=False) == {0x00080018: b"1.2\0"}


@pytest.mark.parametrize(("implicit", "little"), SYNTAXES)
def test_a_wanted_tag_given_twice_out_of_order_counts_once(implicit: bool, little: bool) -> None:
    """A damaged data set repeats a wanted tag out of order: the other wanted tags are found."""
    enc = Encoder(implicit, little)
    data = (
        enc.element(0x00080016, "UI", b"1.2\0")
        + enc.element(0x00080018, "UI", b"1.3\0")
        + enc.element(0x00080016, "UI", b"1.4\0")  # again, and below the last tag: out of order
        + enc.element(0x0020000D, "UI", b"1.5\0")
    )
    wanted = frozenset({0x00080016, 0x00080018, 0x0020000D})
    found = scan_elements(data, wanted, implicit=implicit, little=little, complete=True)
    assert found == {0x00080016: b"1.4\0", 0x00080018: b"1.3\0", 0x0020000D: b"1.5\0"}


def _un_sequence(little: bool, nested: bool = False) -> bytes:
    """(0008,1115) as UN of undefined length: its items in implicit VR little endian (PS3.5 6.2.2).

    ``nested``: inside an item of an explicit VR sequence of undefined length.
    """
    order = "<" if little else ">"
    inner = struct.pack("<HHL", 0x0020, 0x000E, 4) + b"1.2\0"  # no VR: implicit
    items = (
        struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + inner
        + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    un = struct.pack(order + "HH2s2xL", 0x0008, 0x1115, b"UN", 0xFFFFFFFF) + items
    if not nested:
        return un
    return (
        struct.pack(order + "HH2s2xL", 0x0008, 0x1110, b"SQ", 0xFFFFFFFF)
        + struct.pack(order + "HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + un
        + struct.pack(order + "HHL", 0xFFFE, 0xE00D, 0)
        + struct.pack(order + "HHL", 0xFFFE, 0xE0DD, 0)
    )


@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize("nested", [False, True])
def test_every_walk_reads_a_un_of_undefined_length_as_implicit_vr(
    little: bool, nested: bool
) -> None:
    """PS3.5 6.2.2: a UN of undefined length holds implicit VR little endian items, any syntax."""
    enc = Encoder(False, little)
    data = (
        enc.element(0x00080018, "UI", b"1.3\0")
        + _un_sequence(little, nested)
        + enc.element(0x00100020, "LO", b"1234")
    )
    wanted = frozenset({0x00080018, 0x00100020})
    found = scan_elements(data, wanted, implicit=False, little=little, complete=True)
    assert found == {0x00080018: b"1.3\0", 0x00100020: b"1234"}
    # A tag out of order after it: the scan that looks every tag up reads it the same.
    again = (
        enc.element(0x00080018, "UI", b"1.3\0")
        + _un_sequence(little, nested)
        + enc.element(0x00080016, "UI", b"1.4\0")
        + enc.element(0x00100020, "LO", b"1234")
    )
    found = scan_elements(
        again, wanted | {0x00080016}, implicit=False, little=little, complete=True
    )
    assert found == {0x00080016: b"1.4\0", 0x00080018: b"1.3\0", 0x00100020: b"1234"}
    elements.check_whole(data, implicit=False, little=little)
    assert walk_top_level(data, 0, implicit=False, little=little) == (len(data), 0x00100020, True)
    if little:
        assert elements.find_top_level(data, 0x00100020, implicit=False) == (
            len(data) - 12,
            len(data) - 4,
            4,
        )
    # Cut inside its items, it is a data set cut short, not bytes that are no data set.
    with pytest.raises(DataSetTruncated):
        elements.check_whole(data[: len(data) - 20], implicit=False, little=little)


def test_a_peer_nesting_sequences_deep_around_a_un_costs_no_recursion() -> None:
    """Nesting is counted, not recursed: 20,000 explicit VR sequences deep, a UN at the bottom.

    The UN's own items are walked one level deeper (implicit VR has no UN,
    so no further); the same data set cut short is refused, not read on.
    """
    depth = 20_000
    opening = struct.pack("<HH2s2xL", 0x0008, 0x1110, b"SQ", 0xFFFFFFFF) + struct.pack(
        "<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    closing = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    data = opening * depth + _un_sequence(True) + closing * depth
    data += Encoder(False, True).element(0x00100020, "LO", b"1234")
    elements.check_whole(data, implicit=False, little=True)
    assert walk_top_level(data, 0, implicit=False, little=True) == (len(data), 0x00100020, True)
    found = scan_elements(data, frozenset({0x00100020}), implicit=False, complete=True)
    assert found == {0x00100020: b"1234"}
    with pytest.raises(DataSetTruncated):
        elements.check_whole(data[: len(data) // 2], implicit=False, little=True)
