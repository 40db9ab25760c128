"""Sequence matching for the archive's C-FIND (PS3.4 C.2.2.2.6).

A sequence key carries one item holding zero or more keys. An item with no
keys is universal matching: every entity matches and the sequence is
returned whole. An item with keys matches an entity when one of the
entity's stored items matches every key of it, each by the rules of its VR
(single value, universal, wildcard, range, list of UIDs; C.2.2.2.1 to
C.2.2.2.5); the answer then returns those items, with the keys asked for.

The index keeps flat attributes only, so sequences are read from the files
of the candidates the flat keys left (one file per entity: its sequences
are the same across its instances), a header each, as the answers go out.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from adicom.archive.index import fold_name

__all__ = ["SequenceKeys"]


class SequenceKeys:
    """The sequence keys of one identifier, matched against entities' files."""

    def __init__(self, identifier: Dataset) -> None:
        self.keys: list[tuple[int, Dataset | None]] = []
        for element in identifier:
            if element.VR != "SQ":
                continue
            items = element.value or []
            self.keys.append((int(element.tag), items[0] if len(items) else None))

    def __bool__(self) -> bool:
        return bool(self.keys)

    @property
    def tags(self) -> list[int]:
        """The sequences to read from the files."""
        return [tag for tag, _ in self.keys]

    def match(self, path: str) -> dict[int, Sequence] | None:
        """The sequences to answer for the entity whose file is ``path``, or None if no match."""
        try:
            stored = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=self.tags)
        except (OSError, ValueError, EOFError):
            return None
        answer: dict[int, Sequence] = {}
        for tag, query in self.keys:
            items = stored[tag].value if tag in stored else []
            if query is None or len(query) == 0:
                answer[tag] = Sequence(list(items))  # universal: the sequence whole
                continue
            matching = [item for item in items if _item_matches(query, item)]
            if not matching:
                return None
            answer[tag] = Sequence([_answer_item(query, item) for item in matching])
        return answer


def _item_matches(query: Dataset, item: Dataset) -> bool:
    for element in query:
        if element.VR == "SQ":
            nested = element.value[0] if element.value else None
            if nested is not None and len(nested):
                stored = item.get(element.tag)
                if stored is None or not any(
                    _item_matches(nested, sub) for sub in (stored.value or [])
                ):
                    return False
            continue
        wanted = _text(element.value)
        if wanted == "":
            continue  # universal
        found = item.get(element.tag)
        if found is None or not _value_matches(element.VR, wanted, _text(found.value)):
            return False
    return True


def _value_matches(vr: str, wanted: str, value: str) -> bool:
    if vr == "UI":
        return value in [u.strip() for u in wanted.split("\\")]
    if vr in ("DA", "TM", "DT") and "-" in wanted:
        low, _, high = wanted.partition("-")
        return (
            bool(value) and (not low or value >= low) and (not high or value[: len(high)] <= high)
        )
    if vr == "PN":
        wanted, value = fold_name(wanted), fold_name(value)
    if "*" in wanted or "?" in wanted:
        return re.fullmatch(_glob(wanted), value, re.DOTALL) is not None
    return wanted == value


def _glob(pattern: str) -> str:
    """``*`` and ``?`` of PS3.4 C.2.2.2.4 as a regular expression (nothing else special)."""
    return fnmatch.translate(pattern.replace("[", "[[]"))


def _answer_item(query: Dataset, item: Dataset) -> Dataset:
    """The stored item with only the keys the query item asked for."""
    answer = Dataset()
    for element in query:
        if element.tag in item:
            answer[element.tag] = item[element.tag]
        else:
            answer.add_new(element.tag, element.VR, None)
    return answer


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return "\\".join(str(v) for v in value)
    return str(value)
