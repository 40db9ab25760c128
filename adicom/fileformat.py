"""The little of the DICOM file format (PS3.10) and data set encoding (PS3.5) on the hot path.

pydicom reads and writes data sets everywhere else in adicom. Three jobs run
once per stored instance, though, and pydicom's general machinery costs more
there than the whole C-STORE budget (measured here: writing a file meta group
with pydicom about 230 µs, reading Study/Series/SOP Instance UID back from a
40 KB file with ``dcmread(stop_before_pixels=True)`` about 710 µs, against
DCMTK's ~1,500 instances a second, i.e. ~660 µs per instance end to end):

* :func:`encode_file_meta` writes the 128-byte preamble, ``DICM`` and the
  group 0002 elements (PS3.10 7.1), always Explicit VR Little Endian;
* :func:`read_file_meta` reads them back from a file, returning where the
  data set starts, so a file can be sent as it is without decoding it;
* :mod:`adicom.elements` walks the top level of an encoded data set just
  far enough to pick out a few attributes (the UIDs a storage layout
  needs), stepping over sequences of defined and undefined length (PS3.5
  7.5).

Anything these do not understand makes them say so (None or ValueError) and
the caller falls back to pydicom.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import BinaryIO

from pydicom import config
from pydicom.config import disable_value_validation
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import PersonName

from adicom.elements import LONG_VRS, UNDEFINED, DataSetTruncated, check_whole, find_top_level

__all__ = [
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "ConvertedFile",
    "MAX_INFLATED",
    "MEMO_TAGS",
    "MEMO_VALUE",
    "Memo",
    "Inflater",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "decode_dataset",
    "encode_dataset",
    "encode_file_meta",
    "encode_text_elements",
    "is_valid_uid",
    "inflate",
    "read_file_meta",
]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"


def encode_dataset(dataset: Dataset, transfer_syntax: str) -> bytes:
    """Encode a data set (without group 0002) with pydicom in a transfer syntax.

    Compressed syntaxes encode everything but the (already encapsulated)
    pixel data as explicit VR little endian (PS3.5 A.4); deflate compresses
    that encoding (PS3.5 A.5).
    """
    if transfer_syntax in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN):
        quick = _encode_text_dataset(dataset, transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN)
        if quick is not None:
            return quick
    syntax = UID(transfer_syntax)
    buffer = DicomBytesIO()
    buffer.is_little_endian = syntax.is_little_endian
    buffer.is_implicit_VR = syntax.is_implicit_VR
    body = Dataset({tag: elem for tag, elem in dataset.items() if tag.group != 0x0002})
    write_dataset(buffer, body)
    encoded = buffer.getvalue()
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        encoded = compressor.compress(encoded) + compressor.flush()
        if len(encoded) % 2:
            encoded += b"\0"  # PS3.5 A.5: an odd deflated stream gets a trailing NUL
    return encoded


# Text VRs and their padding (PS3.5 6.2); UC, UR and UT take a 4-byte
# length in explicit VR (PS3.5 7.1.2).
_TEXT_VRS = {vr: b" " for vr in ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN",
                                 "SH", "ST", "TM", "UC", "UR", "UT")}  # fmt: skip
_TEXT_VRS["UI"] = b"\0"
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xL")
_IMPLICIT = struct.Struct("<HHL")


def _encode_text_dataset(dataset: Dataset, implicit: bool) -> bytes | None:
    """Encode a data set of plain ASCII text elements by hand, or None if it has others.

    Query identifiers and C-FIND matches are exactly that, and pydicom's
    general writer costs ~150 us for each (measured); this takes a few.
    Anything else (sequences, binary VRs, non-ASCII text, which needs the
    Specific Character Set) goes to pydicom.
    """
    elements: list[tuple[int, str, str]] = []
    for element in dataset:
        tag = element.tag
        if tag >> 16 == 0x0002:
            continue
        if element.VR not in _TEXT_VRS:
            return None
        value = element.value
        if value is None or value == "":
            text = ""
        elif isinstance(value, MultiValue | list | tuple):
            text = "\\".join("" if v is None else str(v) for v in value)
        elif isinstance(value, bytes):
            return None
        else:
            text = str(value)
        elements.append((tag, element.VR, text))
    return encode_text_elements(elements, implicit)


def encode_text_elements(
    elements: Iterable[tuple[int, str, str | bytes]], implicit: bool
) -> bytes | None:
    """Encode (tag, VR, value) elements, tags ascending, as a little endian data set.

    Only text VRs (the values of C-FIND identifiers): plain ASCII text, or
    bytes already encoded in the data set's Specific Character Set (an
    archive answering what it received); returns None for anything else, so
    the caller can go through pydicom. Values are padded to even length as
    PS3.5 6.2 says (UI with NUL, the rest with a space); multiple values are
    already joined with backslashes.
    """
    parts: list[bytes] = []
    append = parts.append
    for tag, vr, value in elements:
        pad = _TEXT_VRS.get(vr)
        if pad is None:
            return None
        if isinstance(value, bytes):
            raw = value
        elif value.isascii():
            raw = value.encode("ascii")
        else:
            return None
        if len(raw) % 2:
            raw += pad
        group, number = tag >> 16, tag & 0xFFFF
        if implicit:
            append(_IMPLICIT.pack(group, number, len(raw)))
        elif vr in ("UC", "UR", "UT"):
            append(_LONG.pack(group, number, vr.encode(), len(raw)))
        elif len(raw) <= 0xFFFF:
            append(_SHORT.pack(group, number, vr.encode(), len(raw)))
        else:
            return None
        append(raw)
    return b"".join(parts)


#: A Dataset's elements by tag, as Dataset(elements) takes them.
_Elements = dict[BaseTag, DataElement | RawDataElement]


#: What :func:`decode_dataset` keeps between the data sets of a stream: per
#: tag, the last short text value decoded (its bytes, VR, the tag and the
#: value made of them; in implicit VR apart from explicit VR's), for at most
#: :data:`MEMO_TAGS` tags. Values kept are
#: immutable (``str``, :class:`UID`), so data sets share them safely.
Memo = dict[int, tuple[bytes, str, BaseTag, object]]
#: The most tags a :data:`Memo` keeps a value for, and the longest value kept.
MEMO_TAGS = 64
MEMO_VALUE = 64


def _decode_text_dataset(data: bytes, implicit: bool, memo: Memo | None = None) -> Dataset | None:
    """Decode a data set of plain ASCII text elements by hand, or None if it has others.

    The counterpart of :func:`_encode_text_dataset` for C-FIND matches:
    pydicom's reader costs ~70 us for a small identifier. The values are
    what pydicom's reader makes of them (``str``, :class:`UID`,
    :class:`PersonName`, a MultiValue of them), made here directly: a
    :class:`DataElement` given its value converted costs a few
    microseconds, one that converts it about ten. Values with a type of
    their own (IS, DS, DA, DT, TM) go through DataElement's conversion;
    elements of several values, private tags (whose elements pydicom ties
    to their creator), sequences, binary VRs, a Specific Character Set and
    non-ASCII text through pydicom's reader (None here). A text element cut
    short raises ValueError (pydicom's reader would keep what there is).
    """
    elements: _Elements = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            if not data[pos:].strip(b"\0 "):
                break  # a few bytes of padding after the last element: as pydicom reads it
            raise ValueError(_cut(data, pos, "an element's header"))
        if implicit:
            group, number, length = _IMPLICIT.unpack_from(data, pos)
            vr: str | None = None  # the dictionary's, once the memo had nothing
        else:
            group, number, word, length = _SHORT.unpack_from(data, pos)
            vr = _EXPLICIT_TEXT_VRS.get(word)
            if vr is None:
                return None  # sequences, binary VRs
            if vr in ("UC", "UR", "UT"):
                if pos + 12 > end:
                    raise ValueError(_cut(data, pos, "an element's header"))
                (length,) = _LENGTH.unpack_from(data, pos + 8)
                pos += 4
        pos += 8
        tag = (group << 16) | number
        if pos + length > end:
            if vr is None:
                vr = _text_vr(tag)  # implicit VR: a sequence of undefined length is pydicom's
            if vr is None:
                return None
            # A text element whose value the data set does not hold: cut short
            # (PS3.5 7.1), not a shorter value to present as the peer's.
            raise ValueError(
                f"the data set ends inside ({group:04X},{number:04X}) {vr}:"
                f" {length} bytes said, {end - pos} there"
            )
        raw = data[pos : pos + length]
        pos += length
        # Implicit VR's values are kept apart in the memo (the VR is the
        # dictionary's, not one an explicit VR data set said).
        memo_key = tag | _IMPLICIT_KEY if implicit else tag
        if memo is not None:
            # The same bytes as the last value of this tag (and, in explicit
            # VR, the same VR: another makes another value) is the same value.
            seen = memo.get(memo_key)
            if seen is not None and seen[0] == raw and (vr is None or seen[1] == vr):
                key = seen[2]
                elements[key] = _new_element(key, seen[1], seen[3])
                continue
        if vr is None:
            vr = _text_vr(tag)
        if vr is None or group & 1 or tag == 0x00080005:
            # Binary VRs and unknown tags in implicit VR, private tags (see
            # above), a character set.
            return None
        if not raw.isascii():
            return None
        decoded = raw.decode("ascii")
        text = decoded.rstrip(" \0")
        key = BaseTag(tag)
        if "\\" in text and vr not in _ONE_VALUE_VRS:
            # Several values: pydicom's converters differ by VR in how they
            # split and strip them, so its reader has the whole data set.
            return None
        # Each value as pydicom's reader makes it (its converters strip
        # padding by VR: PS3.5 6.2 says which spaces do not count).
        if vr == "AE":
            value: object = decoded.strip()
        elif vr == "UR":
            value = decoded.rstrip()
        elif vr in _PLAIN_VRS or (not raw and vr == "UI"):
            value = text  # an empty UID too, as pydicom's reader has it
        elif vr == "UI":
            # What UID(text) makes, without its validation (off here) and calls.
            value = _new_str(UID, text.strip())
        elif vr == "PN":
            # Its original bytes kept, as pydicom's reader keeps them (not of an empty one).
            name = raw.rstrip(b"\0 ") if raw else ""
            value = PersonName(name, _DEFAULT_ENCODINGS, validation_mode=_IGNORE)
        else:
            value = None
        if value is not None:
            elements[key] = _new_element(key, vr, value)
            if (
                memo is not None
                and length <= MEMO_VALUE
                and type(value) is not PersonName  # mutable: each data set its own
                and (len(memo) < MEMO_TAGS or memo_key in memo)
            ):
                memo[memo_key] = (raw, vr, key, value)
            continue
        try:
            # pydicom reads an empty number as None, empty text as "", and
            # strips a decimal string's whitespace (PS3.5 6.2).
            if not raw and vr in ("IS", "DS"):
                converted = None
            else:
                converted = decoded.strip() if vr == "DS" else text
            elements[key] = DataElement(key, vr, converted, validation_mode=_IGNORE)
        except (ValueError, TypeError, ArithmeticError):  # Decimal's InvalidOperation too
            return None  # a value pydicom cannot convert: let its reader deal with it
    # Dataset(dict) is what Dataset[tag] = element does for public, non-pixel,
    # non-sequence elements (as these are), without its checks per element.
    dataset = _new_dataset(elements)
    dataset.set_original_encoding(implicit, True, "iso8859")  # as pydicom's reader
    return dataset


def _cut(data: bytes, pos: int, what: str) -> str:
    """Why a data set whose last ``len(data) - pos`` bytes are not a whole element is refused."""
    return f"the data set ends inside {what}: {len(data) - pos} bytes left at offset {pos}"


def _state_of(made: object) -> dict[str, object] | None:
    """The attributes of a pydicom object just made, if all are plain values (else None).

    Plain: None, bool, int, str, and dicts of them (copied for each object
    made from it, so none is shared).
    """
    state = vars(made)
    plain = (type(None), bool, int, str, dict)
    if all(type(value) in plain or isinstance(value, BaseTag) for value in state.values()):
        return state
    return None


def _dataset_maker() -> Callable[[_Elements], Dataset]:
    """``Dataset(elements)``, made in a couple of microseconds instead of about ten.

    Dataset.__init__ sets a dozen attributes through Dataset.__setattr__,
    which looks each name up as a DICOM keyword: more than what decoding a
    small C-FIND match costs besides. What it sets is taken from one
    Dataset made here and given to each new one; should a pydicom version
    set anything else there, each Dataset is made the usual way.
    """
    blank = _state_of(Dataset())
    if blank is None or "_dict" not in blank:
        return _usual_dataset
    plain = {name: value for name, value in blank.items() if type(value) is not dict}
    dicts = [(name, value) for name, value in blank.items() if type(value) is dict]
    new = Dataset.__new__
    set_state = object.__setattr__

    def make(elements: _Elements) -> Dataset:
        dataset = new(Dataset)
        state = plain.copy()
        for name, value in dicts:
            state[name] = value.copy()
        state["_dict"] = elements
        set_state(dataset, "__dict__", state)
        return dataset

    return make


def _usual_dataset(elements: _Elements) -> Dataset:
    return Dataset(elements)


def _element_maker() -> Callable[[BaseTag, str, object], DataElement]:
    """``DataElement(tag, vr, value, already_converted=True)``, in half the time.

    The same way as :func:`_dataset_maker`: DataElement.__init__ costs about
    a microsecond, five times per match; what it sets is copied from one
    made here, its tag, VR and value replaced.
    """
    blank = _state_of(
        DataElement(BaseTag(0x00100010), "LO", "", already_converted=True, validation_mode=_IGNORE)
    )
    if blank is None or not {"tag", "VR", "_value"} <= blank.keys():
        return _usual_element
    if any(type(value) is dict for value in blank.values()):
        return _usual_element
    new = DataElement.__new__
    set_state = object.__setattr__

    def make(tag: BaseTag, vr: str, value: object) -> DataElement:
        element = new(DataElement)
        state = blank.copy()
        state["tag"] = tag
        state["VR"] = vr
        state["_value"] = value
        set_state(element, "__dict__", state)
        return element

    return make


def _usual_element(tag: BaseTag, vr: str, value: object) -> DataElement:
    return DataElement(tag, vr, value, already_converted=True, validation_mode=_IGNORE)


#: Text VRs whose value pydicom keeps as a plain ``str`` (PS3.5 6.2).
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})
#: Text VRs of one value, in which a backslash is a character (PS3.5 6.2, 6.4; as pydicom).
_ONE_VALUE_VRS = frozenset({"LT", "ST", "UR", "UT"})
_DEFAULT_ENCODINGS = ["iso8859"]  # pydicom's name of the default repertoire (PS3.5 6.1)
#: Set in a :data:`Memo`'s keys of values read in implicit VR (tags are 32 bits).
_IMPLICIT_KEY = 1 << 32
_LENGTH = struct.Struct("<L")
#: The text VRs as explicit VR encodes them (PS3.5 7.1.2).
_EXPLICIT_TEXT_VRS = {vr.encode(): vr for vr in _TEXT_VRS}
_IGNORE = config.IGNORE
_new_str = str.__new__
_new_dataset = _dataset_maker()
_new_element = _element_maker()


@functools.lru_cache(maxsize=256)  # pydicom's dictionary look-up costs ~7k instructions
def _text_vr(tag: int) -> str | None:
    """The dictionary VR of a tag if it is a text VR, else None (private, unknown, binary)."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if vr in _TEXT_VRS else None


#: The most a deflated data set handed to :func:`decode_dataset` may inflate
#: to: an identifier is a few kilobytes, and a "deflate bomb" of a megabyte
#: inflates to gigabytes.
MAX_INFLATED = 4 << 20


class Inflater:
    """Inflates a Deflated Explicit VR Little Endian stream (PS3.5 A.5), bounded.

    Fed compressed bytes as they arrive, it gives back at most ``limit``
    inflated bytes in all and never inflates more than it gives: a small
    input that would inflate hugely costs only ``limit`` bytes of work.
    """

    __slots__ = ("_inflater", "_tail", "limit", "out")

    def __init__(self, limit: int) -> None:
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._tail = b""
        self.limit = limit
        #: What was inflated so far (at most ``limit`` bytes).
        self.out = bytearray()

    @property
    def full(self) -> bool:
        """True once ``limit`` bytes are out (more input is then ignored)."""
        return len(self.out) >= self.limit

    @property
    def ended(self) -> bool:
        """True once the deflate stream's last block is in (RFC 1951 3.2.3: BFINAL)."""
        return self._inflater.eof

    def feed(self, data: bytes | memoryview) -> None:
        """Inflate what fits of ``data``; raises ValueError if it is not deflate data."""
        room = self.limit - len(self.out)
        if room <= 0 or self._inflater.eof:
            return
        try:
            self.out += self._inflater.decompress(self._tail + bytes(data), room)
        except zlib.error as exc:
            raise ValueError(f"the deflated data set does not inflate: {exc}") from None
        # Once full, the rest is never wanted: keep none of it.
        self._tail = b"" if self.full else self._inflater.unconsumed_tail


def inflate(data: bytes, limit: int = MAX_INFLATED) -> bytes:
    """Inflate a whole deflated data set; ValueError if it would exceed ``limit`` bytes."""
    inflater = Inflater(limit + 1)
    inflater.feed(data)
    if len(inflater.out) > limit:
        raise ValueError(f"the deflated data set inflates to more than {limit} bytes")
    if not inflater.ended:
        # A stream cut short inflates to a shorter data set, silently.
        raise ValueError("the deflated data set is cut short: its deflate stream does not end")
    return bytes(inflater.out)


def decode_dataset(data: bytes, transfer_syntax: str, memo: Memo | None = None) -> Dataset:
    """Decode a data set received in a transfer syntax (pydicom).

    A deflated one may inflate to :data:`MAX_INFLATED` bytes at most
    (ValueError beyond); one that ends inside an element or an element's
    header raises ValueError too (pydicom's reader would present what there
    is as the whole), in any syntax. ``memo`` (an empty dict at first) is for a stream
    of similar data sets, C-FIND matches, whose values repeat from one to
    the next (a study's UID in each of its instances): given the same dict
    each time, a value decoded before is taken from it (see :data:`Memo`).
    """
    if transfer_syntax in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN):
        implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        quick = _decode_text_dataset(data, implicit, memo)
        if quick is not None:
            return quick
    syntax = UID(transfer_syntax)
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        data = inflate(data)
        quick = _decode_text_dataset(data, False, memo)  # explicit VR little endian (A.5)
        if quick is not None:
            return quick
    # A peer's values are checked where they are used (query matching, the
    # models), not by pydicom while reading: a bad value must become a
    # status for the peer, not a warning in our log.
    # pydicom's reader keeps what there is of a data set cut short, silently:
    # its top level is walked first (a few bytes of padding, NUL or space,
    # after the last element are read as pydicom reads them). Nested items
    # are within their sequence's length or delimited; pydicom reads those.
    try:
        check_whole(
            data, implicit=syntax.is_implicit_VR, little=syntax.is_little_endian, padding=True
        )
    except DataSetTruncated:
        raise
    except ValueError:
        # Not walkable as its syntax says (implicit VR sent on an explicit
        # VR context, met in the wild; a run of NUL bytes as padding):
        # pydicom's reader still reads such data sets, as before.
        pass
    # pydicom converts elements lazily, so convert them all in here.
    with disable_value_validation():
        dataset = read_dataset(
            BytesIO(data),
            is_implicit_VR=syntax.is_implicit_VR,
            is_little_endian=syntax.is_little_endian,
        )
        for _ in dataset.iterall():
            pass
    return dataset


# The element tables and walks are in adicom.elements.


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr in LONG_VRS:
        return struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    *,
    implementation_class_uid: str,
    implementation_version_name: str | None = None,
    source_ae: str | None = None,
) -> bytes:
    """Preamble, ``DICM`` and the file meta group of a DICOM file (PS3.10 7.1)."""
    heads, before, after = _file_meta_template(
        sop_class_uid,
        transfer_syntax,
        implementation_class_uid,
        implementation_version_name,
        source_ae,
    )
    # Written for every received instance: the one element that differs,
    # (0002,0003) Media Storage SOP Instance UID, comes between ``before``
    # and ``after``; what goes before its value (the preamble, the group
    # length (0002,0000) that counts it, ``before`` and its header) depends
    # only on its length, and is made once per length.
    uid = sop_instance_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\0"
    head = heads.get(len(uid))
    if head is None:
        length = len(before) + 8 + len(uid) + len(after)
        head = b"".join((_META_START, _U32.pack(length), before, _UID_HEADER, _U16.pack(len(uid))))
        if len(uid) <= 64:  # a UID's longest (PS3.5 9.1): a few lengths in all
            heads[len(uid)] = head
    return b"".join((head, uid, after))


_PREAMBLE = bytes(128) + b"DICM"
# The preamble, DICM and (0002,0000) File Meta Information Group Length's
# header (UL, 4 bytes); then (0002,0003)'s header, its length to come.
_META_START = _PREAMBLE + b"\x02\x00\x00\x00UL\x04\x00"
_UID_HEADER = b"\x02\x00\x03\x00UI"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")


@functools.lru_cache(maxsize=256)
def _file_meta_template(
    sop_class_uid: str,
    transfer_syntax: str,
    implementation_class_uid: str,
    implementation_version_name: str | None,
    source_ae: str | None,
) -> tuple[dict[int, bytes], bytes, bytes]:
    """The file meta elements before and after (0002,0003), the one that differs per instance.

    A receiver writes one of these per instance, and an association brings
    the same SOP class, transfer syntax and sender again and again. The
    dict is filled by :func:`encode_file_meta`: all that goes before the
    value of (0002,0003), by that value's length.
    """
    before = _element(0x00020001, b"OB", b"\x00\x01") + _element(
        0x00020002, b"UI", _text(sop_class_uid, b"\0")
    )
    elements = [
        _element(0x00020010, b"UI", _text(transfer_syntax, b"\0")),
        _element(0x00020012, b"UI", _text(implementation_class_uid, b"\0")),
    ]
    if implementation_version_name:
        elements.append(_element(0x00020013, b"SH", _text(implementation_version_name, b" ")))
    if source_ae:
        elements.append(_element(0x00020016, b"AE", _text(source_ae, b" ")))
    return {}, before, b"".join(elements)


def read_file_meta(fp: BinaryIO) -> tuple[dict[int, bytes], int]:
    """Read preamble and file meta group; return the raw values by tag and the data set offset.

    Raises ValueError when the file has no ``DICM`` marker or a malformed
    meta group. The values are raw bytes (UIDs still padded). The file is
    left positioned at the data set's first byte.
    """
    head = fp.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise ValueError("no DICM marker at byte 128: not a DICOM Part 10 file")
    values: dict[int, bytes] = {}
    offset = 132
    while True:
        header = fp.read(8)
        if len(header) < 8:
            raise ValueError("the file ends inside its meta information")
        group, element, vr = struct.unpack("<HH2s", header[:6])
        if group != 0x0002:
            fp.seek(offset)  # leave the file at the data set's first byte
            break
        if vr in LONG_VRS:
            length = struct.unpack("<L", fp.read(4))[0]
            size = 12
        else:
            length = struct.unpack("<H", header[6:8])[0]
            size = 8
        if length > 1 << 16:
            raise ValueError(f"file meta element (0002,{element:04X}) claims {length} bytes")
        value = fp.read(length)
        if len(value) != length:
            raise ValueError("the file ends inside its meta information")
        values[(group << 16) | element] = value
        offset += size + length
    return values, offset


class ConvertedFile:
    """A little endian file's data set, sent in the other little endian syntax.

    Converting between implicit and explicit VR little endian (PS3.5 A.1,
    A.2) changes the element headers, never the values: so what comes
    before the Pixel Data and what comes after it (trailing padding, say)
    are read and re-encoded by pydicom (kilobytes), and the pixel data is
    streamed from the file as it lies, behind a header of the new syntax. A
    50 MB instance costs the event loop its head, not 140 ms of decoding and
    encoding. :meth:`open` says None when the file does not have that shape.
    """

    #: How much of the data set's start is read to find its Pixel Data, and
    #: the most that may follow the pixel data.
    HEAD = 1 << 20

    def __init__(self, fp: BinaryIO, prefix: bytes, pixels: int, suffix: bytes) -> None:
        self._fp = fp
        self._prefix = prefix
        self._pixels = pixels
        self._suffix = suffix
        self._sent = 0
        self.size = len(prefix) + pixels + len(suffix)

    @classmethod
    def open(cls, path: str, offset: int, source: str, target: str) -> ConvertedFile | None:
        """The converted source, or None if the pixel data cannot simply be streamed."""
        little = (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
        if source not in little or target not in little or source == target:
            return None
        fp = open(path, "rb")  # noqa: SIM115 - handed to the object, closed by close()
        try:
            converted = cls._convert(fp, offset, source == IMPLICIT_VR_LITTLE_ENDIAN, target)
        except BaseException:
            fp.close()
            raise
        if converted is None:
            fp.close()
        return converted

    @classmethod
    def _convert(
        cls, fp: BinaryIO, offset: int, implicit: bool, target: str
    ) -> ConvertedFile | None:
        fp.seek(offset)
        head = fp.read(cls.HEAD)
        total = os.fstat(fp.fileno()).st_size - offset
        found = find_top_level(head, 0x7FE00010, implicit=implicit)
        if found is None:
            return None
        at, value, length = found
        after = value + length
        if length == UNDEFINED or after > total or total - after > cls.HEAD:
            return None  # encapsulated, cut short, or much after the pixel data
        before = cls._read(BytesIO(head[:at]), implicit)
        fp.seek(offset + after)
        trailer = cls._read(BytesIO(fp.read(total - after)), implicit)
        if implicit:
            bits = int(before.get("BitsAllocated", 16) or 16)
            vr = b"OB" if bits <= 8 else b"OW"  # PS3.5 8.2 / A.1: what implicit leaves unsaid
        else:
            vr = bytes(head[at + 4 : at + 6])
        prefix = encode_dataset(before, target)
        if target == IMPLICIT_VR_LITTLE_ENDIAN:
            prefix += struct.pack("<HHL", 0x7FE0, 0x0010, length)
        else:
            prefix += struct.pack("<HH2s2xL", 0x7FE0, 0x0010, vr, length)
        suffix = encode_dataset(trailer, target) if len(trailer) else b""
        fp.seek(offset + value)
        return cls(fp, prefix, length, suffix)

    @staticmethod
    def _read(data: BytesIO, implicit: bool) -> Dataset:
        with disable_value_validation():
            return read_dataset(data, is_implicit_VR=implicit, is_little_endian=True)

    def read(self, n: int, /) -> bytes:
        """The next ``n`` bytes (fewer only at the end)."""
        out = bytearray()
        prefix, pixels = len(self._prefix), self._pixels
        while len(out) < n and self._sent < self.size:
            want = n - len(out)
            sent = self._sent
            if sent < prefix:
                part = self._prefix[sent : sent + want]
            elif sent < prefix + pixels:
                part = self._fp.read(min(want, prefix + pixels - sent))
                if not part:
                    raise OSError(f"the file ended {prefix + pixels - sent} bytes early")
            else:
                start = sent - prefix - pixels
                part = self._suffix[start : start + want]
            out += part
            self._sent += len(part)
        return bytes(out)

    def close(self) -> None:
        """Close the file."""
        self._fp.close()


# PS3.5 9.1: components of digits, none empty, none with a leading 0 but "0".
# Possessive repeats: a component's digits, and the components, are never
# given back (a dot or the end follows each), so the engine keeps no
# backtracking state for them: ~17% fewer instructions per UID.
_UID = re.compile(r"(?:0|[1-9][0-9]*+)(?:\.(?:0|[1-9][0-9]*+))*+")


def is_valid_uid(value: str) -> bool:
    """True for a UID as PS3.5 9.1 allows it: digits in dotted components, at most 64.

    No component is empty, and none starts with 0 unless it is 0 itself.
    """
    # One regular expression (ASCII digits only): four of these per received
    # instance cost ~10 us as a loop over the components.
    return len(value) <= 64 and _UID.fullmatch(value) is not None
