"""Modality Worklist matching (PS3.4 Annex K): an identifier checked, compiled, matched.

:class:`WorklistMatcher` takes a worklist C-FIND identifier, refuses what
it cannot match, and matches items and builds their answers;
:class:`adicom.worklist.WorklistFolder` serves it over a folder of files.

Matching (PS3.4 K.2.2 and C.2.2.2, which K.6.1.2 refers to):

- *Universal matching* (C.2.2.2.3): a key sent empty matches every item and
  is only a return key. A sequence key with no item, or with one empty item,
  is universal too, and returns the item's sequence whole. A value of only
  ``*`` is universal as well (C.2.2.2.4 note 1), even for items that lack the
  attribute (K.2.2.1.1.1 note 1).
- *Single value matching* (C.2.2.2.1): any other value. An item whose
  attribute is absent or empty matches no matching key (K.2.2.1.1.1). A
  multi-valued attribute of an item (a station with two AE titles, say)
  matches when one of its values does. Text is matched case-sensitively,
  surrounding spaces aside; person names are not (see below). A single time
  (TM) matches by its own precision: ``16`` matches 16:07:00, ``1630`` any
  second of 16:30 (PS3.5 6.2 makes ``HH`` and ``HHMM`` whole values).
- *Wild card matching* (C.2.2.2.4): ``*`` (any run of characters) and ``?``
  (one character) in keys of VR AE, CS, LO, LT, PN, SH, ST, UC, UR, UT. A
  wildcard in a UID, date, time, number or age is refused.
- *Range matching* (C.2.2.2.5): ``A-B``, ``-B``, ``A-`` for DA, TM and DT.
  When the Scheduled Procedure Step Start Date (0040,0002) *and* Start Time
  (0040,0003) both carry a value, they are matched as one date-time range,
  as the worklist has always done (the Basic Worklist text of C.2.2.2.5;
  CP-601 says it is "explicitly supported for worklist queries"): date
  ``20240101-20240103`` with time ``0800-1700`` runs from 1 January 08:00 to
  3 January 17:00, so 2 January 03:00 matches (wlmscpfs does the same). A
  side of the date range left open stays open whatever the time says; a
  single date with a time range is that range on that day; over several
  days the times may run through the night (``2200-0600``), which a TM
  range alone may not (C.2.2.2.5.2).
- *List of UID matching* (C.2.2.2.2): UIDs separated by backslashes. Other
  keys take a single value: lists are refused, as Multiple Value Matching is
  an extended negotiation we do not offer.
- *Sequence matching* (C.2.2.2.6): a sequence key holds one item; an item
  matches when one item of its sequence matches every key of that item
  (recursively), and the answer's sequence holds the matching items only,
  each with the keys asked for.

Person names: C.2.2.2.1 lets an SCP match PN "insensitive to some or all
aspects of case", and C.2.2.2.4 makes wildcard matching case-sensitive
"except for Attributes with a PN Value Representation". Modality operators
type names as they come, so adicom matches PN without regard to case, in
every script (``str.casefold``), and ignores empty trailing components and
groups (PS3.5 6.2.1.1: ``VIVALDI^ANTONIO^^`` is ``VIVALDI^ANTONIO``). A key
without ``=`` is also tried against each component group of a multi-group
name (C.2.2.2.4 note 3 leaves groups to the SCP). DCMTK's wlmscpfs matches
PN case-sensitively; both conform.

A query the SCP cannot take (a date that is not one, a wildcard in a UID, a
list where one value goes, a sequence key with two items) is refused with
0xA900 "Identifier does not match SOP Class" (PS3.4 K.4.1.1.4, Table K.4-1;
the same code and meaning as C.4.1.1.4 for Query/Retrieve), as wlmscpfs
does; the Error Comment names the attribute. 0xC000 "Unable to process" is
kept for the SCP's own failures (an unreadable folder), and 0xA700
"Refused: Out of resources" ends a query with more matches than the cap.

The answer to each match holds exactly the keys the identifier asked for
(K.2.2.1.2: every matching key is also a return key), each with the item's
value or empty when the item has none, and the item's Specific Character
Set, so its text goes back as it is held (PS3.5 6.1, C.2.2.2: the character
set is never matched).
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydicom.config import disable_value_validation
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from adicom.dimse import Status
from adicom.qrscp import QueryFailed
from adicom.values import check_match

__all__ = ["WorklistMatcher", "fold_person_name", "glob_match"]

log = logging.getLogger("adicom")

_SPS = 0x00400100  # Scheduled Procedure Step Sequence
_SPS_START_DATE = 0x00400002
_SPS_START_TIME = 0x00400003
_CHARSET = 0x00080005
_QR_LEVEL = 0x00080052  # not part of a worklist identifier; ignored if sent

# C.2.2.2.4: the VRs wildcards apply to.
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
# Texts whose leading spaces are significant (PS3.5 6.2).
_LEADING_SPACES_KEPT = frozenset({"LT", "ST", "UT", "UR"})
# A sequence key nested deeper than this is refused (no real identifier comes close).
_MAX_DEPTH = 8
# A longer text key is refused: wildcard matching costs its length times the value's.
_MAX_PATTERN = 1024

_DATE = re.compile(r"[0-9]{8}\Z")
_TIME = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?\Z")
_DATETIME = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})"
    r"(?:\.([0-9]{1,6}))?)?)?)?)?)?(?:[+-][0-9]{4})?\Z"
)
_DAY_MICROSECONDS = 86_400_000_000

#: A test of one item (or sequence item) against the matching keys.
_Test = Callable[[Dataset], bool]
#: A test of an attribute's values (absent or empty: no values).
_ValuesTest = Callable[[list[str]], bool]


# --------------------------------------------------------------------------
# Values


def _texts(element: DataElement | None, *, keep_empty: bool = False) -> list[str]:
    """The values of an element as strings, padding removed; [] when absent or empty.

    ``keep_empty`` keeps the empty values of a list (``A``, backslash twice, ``B`` has three).
    """
    if element is None:
        return []
    value = element.value
    if value is None:
        return []
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    keep_leading = element.VR in _LEADING_SPACES_KEPT
    texts: list[str] = []
    for item in items:
        if item is None:
            continue
        text = str(item).rstrip(" \0") if keep_leading else str(item).strip(" \0")
        if text or keep_empty:
            texts.append(text)
    return texts if any(texts) else []


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _name(tag: int) -> str:
    return keyword_for_tag(tag) or _tag_text(tag)


def _refused(tag: int, value: str, why: str) -> QueryFailed:
    """0xA900 for a key the SCP cannot match (PS3.4 K.4.1.1.4, Table K.4-1)."""
    shown = value if len(value) <= 20 else value[:17] + "..."
    failure = QueryFailed(Status.IDENTIFIER_DOES_NOT_MATCH, f"{_tag_text(tag)} {shown!r}: {why}")
    # The Error Comment is 64 characters; the log says it whole, by keyword.
    log.info("Worklist query refused: %s %r: %s", _name(tag), value, why)
    return failure


def glob_match(pattern: str, text: str) -> bool:
    """Wild card matching of PS3.4 C.2.2.2.4: ``*`` any run of characters, ``?`` one.

    Nothing else is special. Worst case ``len(pattern) * len(text)`` steps
    (a regular expression can take exponential time on ``*a*a*a*...b``).
    """
    p = t = 0
    star = -1  # where the last * was in the pattern
    resume = 0  # where in the text that * stopped matching so far
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star, resume = p, t
            p += 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            p += 1
            t += 1
        elif star >= 0:
            # Let the last * take one more character and try again from there.
            resume += 1
            p, t = star + 1, resume
        else:
            return False
    return all(ch == "*" for ch in pattern[p:])


def fold_person_name(text: str) -> str:
    """A person name as it is matched: case-folded, empty trailing parts dropped (PS3.5 6.2.1.1)."""
    groups = [group.rstrip("^ ") for group in text.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).casefold()


def _text_test(vr: str, key: str) -> _ValuesTest:
    """Single value or wild card matching of a text key (C.2.2.2.1, C.2.2.2.4)."""
    wild = "*" in key or "?" in key
    if vr == "PN":
        wanted = fold_person_name(key)
        groups_too = "=" not in key

        def person(values: list[str]) -> bool:
            for value in values:
                folded = fold_person_name(value)
                candidates = [folded]
                if groups_too and "=" in folded:
                    candidates += [group for group in folded.split("=") if group]
                for candidate in candidates:
                    if glob_match(wanted, candidate) if wild else candidate == wanted:
                        return True
            return False

        return person
    if wild:
        return lambda values: any(glob_match(key, value) for value in values)
    return lambda values: key in values


def _date_bounds(key: str) -> tuple[str | None, str | None]:
    """A checked DA key as (first, last) day, None for an open end."""
    low, dash, high = key.partition("-")
    if not dash:
        return key, key
    return low or None, high or None


def _item_date(text: str) -> str | None:
    # ACR-NEMA wrote dates as YYYY.MM.DD; some worklist files still do.
    text = text.replace(".", "") if len(text) == 10 else text
    return text if _DATE.match(text) else None


def _time_point(text: str, *, upper: bool) -> int | None:
    """A TM value as microseconds after midnight; missing parts at their lowest or highest.

    ``upper`` fills a value's missing parts at their highest, so ``16``
    spans 16:00:00.000000 to 16:59:59.999999. None if it is not a time.
    """
    match = _TIME.match(text.replace(":", ""))
    if match is None:
        return None
    hh, mm, ss, frac = match.groups()
    fill = 59 if upper else 0
    micro = int(frac.ljust(6, "9" if upper else "0")) if frac else (999_999 if upper else 0)
    hours, minutes = int(hh), int(mm) if mm is not None else fill
    seconds = int(ss) if ss is not None else fill
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return ((hours * 60 + minutes) * 60 + min(seconds, 59)) * 1_000_000 + micro


def _time_bounds(key: str) -> tuple[int, int]:
    """A checked TM key as (first, last) microsecond of the day it spans (C.2.2.2.5.2)."""
    low, dash, high = key.partition("-")
    if not dash:
        high = low
    first = _time_point(low, upper=False) if low else 0
    last = _time_point(high, upper=True) if high else _DAY_MICROSECONDS - 1
    assert first is not None and last is not None  # check_match passed
    return first, last


def _datetime_point(text: str, *, upper: bool) -> tuple[int, ...] | None:
    """A DT value as (year, month, day, hour, minute, second, microsecond).

    Missing parts are filled at their lowest or highest; a UTC offset is
    not applied (both sides are taken in the SCP's local time).
    """
    match = _DATETIME.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, frac = match.groups()
    highest = (12, 31, 23, 59, 59)
    parts = [int(year)]
    for given, high in zip((month, day, hour, minute, second), highest, strict=True):
        lowest = 1 if high in (12, 31) else 0
        parts.append(int(given) if given is not None else (high if upper else lowest))
    micro = int(frac.ljust(6, "9" if upper else "0")) if frac else (999_999 if upper else 0)
    return (*parts, micro)


def _datetime_bounds(key: str) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """A checked DT key as (first, last) moment; None for an open end."""
    if _DATETIME.match(key):
        return _datetime_point(key, upper=False), _datetime_point(key, upper=True)
    # The range's "-" may also be an offset's sign: take the split where both sides parse.
    for at, ch in enumerate(key):
        if ch != "-":
            continue
        low, high = key[:at], key[at + 1 :]
        if all(not part or _DATETIME.match(part) for part in (low, high)):
            return (
                _datetime_point(low, upper=False) if low else None,
                _datetime_point(high, upper=True) if high else None,
            )
    raise AssertionError(f"{key!r} passed check_match but is no DT range")  # pragma: no cover


def _checked(tag: int, vr: str, key: str) -> str:
    """The key, checked as a DA, TM, DT or UI matching key; refused (0xA900) if it is not one."""
    try:
        return check_match(vr, key, _name(tag))
    except ValueError:
        kinds = {"DA": "date or date range", "TM": "time or time range",
                 "DT": "date-time or range", "UI": "UID or list of UIDs"}  # fmt: skip
        if vr != "UI" and ("*" in key or "?" in key):
            raise _refused(tag, key, f"no wildcards in {vr} (C.2.2.2.4)") from None
        if vr == "UI" and ("*" in key or "?" in key):
            raise _refused(tag, key, "no wildcards in UIDs (C.2.2.2.4)") from None
        raise _refused(tag, key, f"not a {kinds[vr]}") from None


def _values_test(tag: int, vr: str, keys: list[str]) -> _ValuesTest | None:
    """The test of one non-sequence key; None for universal matching (a return key only)."""
    if not keys:
        return None  # C.2.2.2.3
    if vr == "UI":
        wanted = set(_checked(tag, vr, "\\".join(keys)).split("\\"))
        return lambda values: any(value in wanted for value in values)
    if len(keys) > 1:
        raise _refused(tag, "\\".join(keys), "a list; only UIDs take one (C.2.2.2.2)")
    key = keys[0]
    if vr in _WILDCARD_VRS:
        if not key.strip("*"):
            return None  # "*" is universal matching (C.2.2.2.4 note 1)
        if len(key) > _MAX_PATTERN:
            raise _refused(tag, key, f"longer than {_MAX_PATTERN} characters")
        return _text_test(vr, key)
    if vr == "DA":
        first, last = _date_bounds(_checked(tag, vr, key))

        def day(values: list[str]) -> bool:
            for value in values:
                date = _item_date(value)
                if date and (first is None or date >= first) and (last is None or date <= last):
                    return True
            return False

        return day
    if vr == "TM":
        start, end = _time_bounds(_checked(tag, vr, key))

        def time(values: list[str]) -> bool:
            points = (_time_point(value, upper=False) for value in values)
            return any(point is not None and start <= point <= end for point in points)

        return time
    if vr == "DT":
        low, high = _datetime_bounds(_checked(tag, vr, key))

        def moment(values: list[str]) -> bool:
            for value in values:
                point = _datetime_point(value, upper=False)
                if point is None:
                    continue
                if (low is None or point >= low) and (high is None or point <= high):
                    return True
            return False

        return moment
    if "*" in key or "?" in key:
        raise _refused(tag, key, f"no wildcards in {vr} (C.2.2.2.4)")
    if vr in ("IS", "DS"):
        try:
            number = float(key)
        except ValueError:
            raise _refused(tag, key, f"not a number ({vr})") from None

        def numeric(values: list[str]) -> bool:
            for value in values:
                try:
                    if float(value) == number:
                        return True
                except ValueError:
                    continue
            return False

        return numeric
    return lambda values: key in values


def _combined_start_test(date_keys: list[str], time_keys: list[str]) -> _Test:
    """Scheduled Procedure Step Start Date and Time matched as one range (C.2.2.2.5).

    Each bound joins the date and the time on its side; a side the date
    leaves open is open. The times may run "backwards" (``2200-0600``)
    when the dates differ: a night from one day to the next.
    """
    for tag, keys in ((_SPS_START_DATE, date_keys), (_SPS_START_TIME, time_keys)):
        if len(keys) > 1:
            raise _refused(tag, "\\".join(keys), "a list; only UIDs take one (C.2.2.2.2)")
    date_key = _checked(_SPS_START_DATE, "DA", date_keys[0])
    time_key = time_keys[0]
    start_text, _, end_text = time_key.partition("-")
    if time_key == "-" or "-" in end_text:
        raise _refused(_SPS_START_TIME, time_key, "not a time or time range")
    for part in (start_text, end_text):
        if part:
            _checked(_SPS_START_TIME, "TM", part)
    first_day, last_day = _date_bounds(date_key)
    first_time, last_time = _time_bounds(time_key)
    low = None if first_day is None else (first_day, first_time)
    high = None if last_day is None else (last_day, last_time)
    if low is not None and high is not None and low > high:
        raise _refused(_SPS_START_TIME, time_key, "the date-time range ends before it starts")

    def test(item: Dataset) -> bool:
        dates = _texts(item.get(_SPS_START_DATE))
        times = _texts(item.get(_SPS_START_TIME))
        if not dates or not times:
            return False  # K.2.2.1.1.1: an unknown value matches no key
        date = _item_date(dates[0])
        time = _time_point(times[0], upper=False)
        if date is None or time is None:
            return False
        point = (date, time)
        return (low is None or point >= low) and (high is None or point <= high)

    return test


# --------------------------------------------------------------------------
# Queries


@dataclass(frozen=True, slots=True)
class _Key:
    """One key of an identifier (or of a sequence key's item)."""

    tag: int
    vr: str
    #: For a sequence key with keys of its own: its item, compiled.
    nested: _ItemQuery | None = None


@dataclass(frozen=True, slots=True)
class _ItemQuery:
    """The keys of an identifier or of a sequence key's item, and the tests they make."""

    keys: tuple[_Key, ...]
    tests: tuple[_Test, ...]

    def matches(self, item: Dataset) -> bool:
        return all(test(item) for test in self.tests)

    def answer(self, item: Dataset) -> Dataset:
        """The keys asked for, with the item's values (empty when it has none)."""
        answer = Dataset()
        for key in self.keys:
            element = item.get(key.tag)
            if key.vr == "SQ":
                answer.add(DataElement(key.tag, "SQ", self._items(key, element)))
            elif element is None or element.VR == "SQ":
                answer.add(DataElement(key.tag, key.vr, None))
            else:
                value = element.value
                if isinstance(value, MultiValue | list):
                    value = list(value)
                answer.add(DataElement(key.tag, element.VR, value))
        return answer

    @staticmethod
    def _items(key: _Key, element: DataElement | None) -> Sequence:
        if element is None or element.VR != "SQ" or not element.value:
            return Sequence()
        if key.nested is None:
            # Universal (no item, or one empty item): the sequence whole.
            return Sequence([copy.deepcopy(item) for item in element.value])
        nested = key.nested
        # C.2.2.2.6: the matching items, with only the keys asked for.
        return Sequence([nested.answer(item) for item in element.value if nested.matches(item)])


def _compile(identifier: Dataset, depth: int, *, start_pair: bool) -> _ItemQuery:
    """Compile the keys of ``identifier`` (or of a sequence key's item).

    ``start_pair``: this is the Scheduled Procedure Step item, whose start
    date and time are matched as one range when both are given.
    """
    if depth > _MAX_DEPTH:
        raise QueryFailed(
            Status.IDENTIFIER_DOES_NOT_MATCH, f"sequence keys nested deeper than {_MAX_DEPTH}"
        )
    keys: list[_Key] = []
    tests: dict[int, _Test] = {}
    start: dict[int, list[str]] = {}
    for element in identifier:
        tag = int(element.tag)
        if tag in (_CHARSET, _QR_LEVEL) or tag & 0xFFFF == 0 or tag >> 16 in (0x0000, 0x0002):
            continue  # never matched (C.2.2.2), or not a key at all
        vr = str(element.VR)
        if vr == "SQ":
            items = list(element.value or [])
            if len(items) > 1:
                raise _refused(tag, f"{len(items)} items", "a sequence key holds one (C.2.2.2.6)")
            if not items or len(items[0]) == 0:
                keys.append(_Key(tag, vr))  # universal
                continue
            nested = _compile(items[0], depth + 1, start_pair=depth == 0 and tag == _SPS)
            keys.append(_Key(tag, vr, nested))
            if nested.tests:
                tests[tag] = _sequence_test(tag, nested)
            continue
        keys.append(_Key(tag, vr))
        values = _texts(element, keep_empty=True)
        if len(values) > 1 and not all(values):
            raise _refused(tag, "\\".join(values), "an empty value in a list")
        if start_pair and values and tag in (_SPS_START_DATE, _SPS_START_TIME):
            start[tag] = values  # matched below, alone or as one range with the other
            continue
        test = _values_test(tag, vr, values)
        if test is not None:
            tests[tag] = _attribute_test(tag, test)
    if len(start) == 2:
        tests[_SPS_START_DATE] = _combined_start_test(
            start[_SPS_START_DATE], start[_SPS_START_TIME]
        )
    else:
        for tag, values in start.items():
            test = _values_test(tag, "DA" if tag == _SPS_START_DATE else "TM", values)
            if test is not None:
                tests[tag] = _attribute_test(tag, test)
    return _ItemQuery(tuple(keys), tuple(tests.values()))


def _attribute_test(tag: int, test: _ValuesTest) -> _Test:
    return lambda item: test(_texts(item.get(tag)))


def _sequence_test(tag: int, nested: _ItemQuery) -> _Test:
    def test(item: Dataset) -> bool:
        element = item.get(tag)
        if element is None or element.VR != "SQ":
            return False
        return any(nested.matches(sub) for sub in element.value or [])

    return test


class WorklistMatcher:
    """A worklist identifier, checked and compiled once, to match items and build answers.

    Raises :class:`~adicom.qrscp.QueryFailed` with 0xA900 (PS3.4 K.4.1.1.4)
    for an identifier it cannot match: an invalid date, time or UID, a
    wildcard where none is allowed, a list of values where one goes, a
    sequence key with more than one item. See the module's documentation
    for the rules.
    """

    __slots__ = ("_query",)

    def __init__(self, identifier: Dataset) -> None:
        with disable_value_validation(), warnings.catch_warnings():
            # The peer's values are checked here, into a status for it,
            # not by pydicom into warnings for our log.
            warnings.simplefilter("ignore")
            self._query = _compile(identifier, 0, start_pair=False)

    def matches(self, item: Dataset) -> bool:
        """True when ``item`` matches every matching key of the identifier."""
        return self._query.matches(item)

    def answer(self, item: Dataset) -> Dataset:
        """The C-FIND answer for a matching ``item``: the keys asked for, and its character set."""
        answer = self._query.answer(item)
        charset = item.get(_CHARSET)
        if charset is not None and charset.value:
            # PS3.5 6.1: the text goes back as the item holds it, so says its set.
            value = charset.value
            answer.add(
                DataElement(_CHARSET, "CS", list(value) if isinstance(value, MultiValue) else value)
            )
        return answer

    def filter(self, items: Iterable[Dataset]) -> list[Dataset]:
        """The answers for the items that match, in order (for tests and small lists)."""
        return [self.answer(item) for item in items if self.matches(item)]
