"""The values a received instance says it has, read and checked before it is filed.

Split from :mod:`adicom.diskinstance`, which keeps receiving (the temporary
file, the write-behind, filing): here are the layout's values read from the
data set's first bytes (as it streamed in, from the head kept in memory, or
by pydicom), the checks that refuse an instance that cannot be filed and
found again (PS3.4 B.2.3), and the walk that refuses a data set cut short.
:class:`ValueReading` is a base of :class:`~adicom.diskinstance.DiskInstance`.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from adicom.dimse import Status
from adicom.elements import DataSetTruncated, check_whole, find_top_level, scan_elements
from adicom.fileformat import EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, Inflater

if TYPE_CHECKING:
    from adicom.diskstorage import DiskStorage
    from adicom.storage import StoreContext

__all__ = ["Refused", "ValueReading"]

log = logging.getLogger("adicom")

#: How much of the start of a data set is kept to find the layout's attributes.
HEAD = 1 << 16
#: How much is read (or inflated) at most when they are not in the head: a
#: data set's top-level attributes before its pixel data fit easily, and no
#: instance makes the event loop parse or inflate more than this.
DEEP_HEAD = 4 << 20

#: How far the check of a data set streamed in got (``_walk_state``): walking
#: each piece as it comes; to go on from bytes read back from the file; not
#: checked (its bytes are not what its transfer syntax says).
WALKING, READ_BACK, UNCHECKED = 0, 1, 2

#: ESC (0x1B), which starts an ISO 2022 escape sequence (PS3.5 6.1.2.5). An
#: int, not b"\x1b": ``bytes in bytes`` first tries the needle as an integer
#: and builds (and drops) a TypeError each time, ~2 us per value here.
ESC = 0x1B


class Refused(Exception):
    """Why an instance is not stored: the status, the comment, the offending element."""

    def __init__(self, status: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.offending = offending


class ValueReading:
    """Reads and checks the values of one received instance (a base of DiskInstance).

    What it reads, :class:`~adicom.diskinstance.DiskInstance` keeps as the
    data set arrives: the first piece's values (``_found``) and how far
    the walk of its top-level elements got, or the head held in memory, or
    the inflater of a deflated data set; and the temporary file, read back
    when the head is not enough.
    """

    # Set by DiskInstance (declared here for the type checker).
    context: StoreContext
    _storage: DiskStorage
    _inflater: Inflater | None
    _plain: tuple[bool, bool] | None
    _inflate_error: str | None
    _found: dict[int, bytes] | None
    _head: bytearray | bytes
    _size: int
    _resume: list[int] | None
    _raw: dict[str, bytes] | None
    _walk_state: int
    _walk_at: int
    _walk_tag: int
    _temp: str | None
    _meta_length: int

    def _checked_values(self) -> dict[str, str]:
        """The layout's values, the instance refused if it cannot be filed and found."""
        if self._size == 0:
            raise Refused(Status.CANNOT_UNDERSTAND, "the data set is empty")
        try:
            values = self._layout_values()
        except Exception as exc:  # pydicom raises many kinds on bad data
            raise Refused(Status.CANNOT_UNDERSTAND, f"the data set does not parse: {exc}") from None
        storage = self._storage
        for keyword, is_uid in storage.required_checks:
            value = values.get(keyword, "")
            if not value:
                if not any(values.get(keyword) for keyword in storage.required):
                    # Not one of the UIDs every instance has: this is no data set.
                    raise Refused(
                        Status.CANNOT_UNDERSTAND,
                        f"not an instance: it has none of {', '.join(storage.required)}",
                    )
                raise Refused(
                    Status.IDENTIFIER_DOES_NOT_MATCH,
                    f"{keyword} is missing",
                    storage.tags[keyword],
                )
            if is_uid and not storage.valid_uid(value):
                raise Refused(
                    Status.IDENTIFIER_DOES_NOT_MATCH,
                    f"{keyword} {value[:24]!r} is not a UID",
                    storage.tags[keyword],
                )
        self._check_whole()
        ctx = self.context
        named = ctx.sop_instance_uid
        value = values.get("SOPInstanceUID", "")
        if value and named and value != named:
            raise _not_the_command_s("SOPInstanceUID", storage)
        named = ctx.sop_class_uid
        value = values.get("SOPClassUID", "")
        if value and named and value != named:
            raise _not_the_command_s("SOPClassUID", storage)
        return values

    def _check_whole(self) -> None:
        """Refuse a data set cut short (a truncated file sent as it lies).

        Its start parses well enough; so the top-level elements are walked to
        the end where that is cheap: a data set within the head held in
        memory, or what follows the Pixel Data (whose length says where the
        rest begins), read back from the file.
        """
        plain = self._plain
        if plain is None:
            return  # deflated, or not a standard syntax
        implicit, little = plain
        try:
            if self._found is not None:
                self._check_streamed(implicit, little)
                return
            if self._size <= HEAD:
                start = self._resume[0] if self._resume else 0
                check_whole(self._head, implicit=implicit, little=little, start=start)
                return
            if not little:
                return
            found = find_top_level(self._head, 0x7FE00010, implicit=implicit)
            if found is None or found[2] == 0xFFFFFFFF:
                return
            _, value, length = found
            after = value + length
            if after > self._size:
                raise DataSetTruncated(
                    f"the data set is cut short: {after - self._size} bytes of (7FE0,0010) missing",
                    0x7FE00010,
                )
            if 0 < self._size - after <= HEAD:
                check_whole(self._tail(after), implicit=implicit, little=little)
        except DataSetTruncated as exc:
            raise Refused(Status.CANNOT_UNDERSTAND, str(exc), exc.tag) from None
        except ValueError:
            return  # not what its syntax says: pydicom read what it could already

    def _check_streamed(self, implicit: bool, little: bool) -> None:
        """:meth:`_check_whole` of a data set walked as it streamed in (raises DataSetTruncated)."""
        state, at, size = self._walk_state, self._walk_at, self._size
        if state == UNCHECKED:
            return
        if state == READ_BACK or at < size:
            if 0 < size - at <= HEAD:
                check_whole(self._tail(at), implicit=implicit, little=little)
            return  # a longer rest goes unchecked, as after a large Pixel Data
        if at > size:
            tag = self._walk_tag
            raise DataSetTruncated(
                f"the data set is cut short: {at - size} bytes of "
                f"({tag >> 16:04X},{tag & 0xFFFF:04X}) missing",
                tag,
            )

    def _tail(self, start: int) -> bytes:
        """The data set's bytes from ``start`` to its end, read back from the file."""
        assert self._temp is not None
        with open(self._temp, "rb") as fp:
            fp.seek(self._meta_length + start)
            return fp.read()

    def _layout_values(self) -> dict[str, str]:
        """The layout's attributes, from the data set's first bytes (or pydicom)."""
        storage = self._storage
        transfer = self.context.transfer_syntax
        found: dict[int, bytes] | None = None
        if self._inflater is not None:
            if self._inflate_error is not None:
                raise ValueError(self._inflate_error)
            head = self._inflater
            found = self._scan(head.out, implicit=False, complete=not head.full)
            if found is None:
                deeper = self._inflated_deeper()
                found = self._scan(deeper.out, implicit=False, complete=not deeper.full)
            if found is None:
                raise ValueError(
                    f"the layout's attributes are not within its first {DEEP_HEAD} inflated bytes"
                )
        elif self._found is not None:
            found = self._found  # read as the data set streamed in
        elif transfer.startswith("1.2.840.10008.1.2"):
            # Every standard transfer syntax but deflate encodes the top
            # level of the data set plainly; only the pixel data differs.
            try:
                found = self._scan(
                    self._head,
                    implicit=transfer == IMPLICIT_VR_LITTLE_ENDIAN,
                    little=transfer != EXPLICIT_VR_BIG_ENDIAN,
                    complete=self._size <= HEAD,
                    resume=self._resume_list(),
                )
            except DataSetTruncated:
                raise  # whole, and cut short: nothing to read there
            except ValueError:
                # Not encoded as its transfer syntax says (implicit VR sent
                # as explicit is met in the wild): pydicom may still read it.
                found = None
        if found is None:
            found = self._read_with_pydicom()
        # Every keyword, "" unless found: only the values found are decoded.
        values = storage.blank_values.copy()
        keywords = storage.keywords
        joined = b"".join(found.values())
        if joined.isascii() and ESC not in joined:
            # Every value plain ASCII (see below), as in most instances: told
            # once for all of them, not per value (an archive wants some 19).
            # The tags found are wanted ones, each with its keyword. ASCII
            # bytes read as UTF-8 (decode's default) read as ASCII: without
            # the codec's name to look up, ~500 instructions less a value.
            for tag, raw in found.items():
                values[keywords[tag]] = raw.decode().strip(" \0")
            return values
        encodings: tuple[str, ...] | None = None
        for tag, raw in found.items():
            if not raw:
                continue
            keyword = keywords.get(tag)
            if keyword is None:
                continue
            if raw.isascii() and ESC not in raw:
                # Every character set DICOM allows reads these bytes as
                # ASCII; only ISO 2022 escape sequences (ESC) switch to
                # something else (PS3.5 6.1): most values of most instances.
                values[keyword] = raw.decode("ascii").strip(" \0")
            else:
                if encodings is None:
                    charset = found.get(0x00080005, b"")
                    encodings = _encodings(charset.decode("ascii", "replace").strip(" \0"))
                values[keyword] = _decode_text(raw, encodings)
                if self._raw is None:
                    self._raw = {}
                self._raw[keyword] = raw.rstrip(b" \0")
        return values

    def _raw_values(self) -> dict[str, bytes]:
        """The raw bytes of the values that are not plain ASCII, by keyword (for the hooks)."""
        if self._raw is None:
            self._raw = {}
        return self._raw

    def _resume_list(self) -> list[int]:
        """Where the scan of the head stops is kept here (made on first use)."""
        if self._resume is None:
            self._resume = []
        return self._resume

    def _scan(
        self,
        head: bytes | bytearray,
        *,
        implicit: bool,
        little: bool = True,
        complete: bool,
        resume: list[int] | None = None,
    ) -> dict[int, bytes] | None:
        # The head as it is (values are copied out as bytes): no copy of it whole.
        storage = self._storage
        return scan_elements(
            head,
            storage.wanted,
            implicit=implicit,
            little=little,
            complete=complete,
            resume=resume,
            last=storage.last_wanted,
            ordered=storage.wanted_order,
        )

    def _data_set_head(self, size: int) -> bytes:
        """The first ``size`` bytes of the data set, read back from the temporary file."""
        assert self._temp is not None
        with open(self._temp, "rb") as fp:
            fp.seek(self._meta_length)
            return fp.read(size)

    def _inflated_deeper(self) -> Inflater:
        """Up to DEEP_HEAD inflated bytes, from the file: for attributes past the head."""
        inflater = Inflater(DEEP_HEAD)
        assert self._temp is not None
        with open(self._temp, "rb") as fp:
            fp.seek(self._meta_length)
            while not inflater.full and (chunk := fp.read(1 << 16)):
                inflater.feed(chunk)
        return inflater

    def _read_with_pydicom(self) -> dict[int, bytes]:
        """The layout's attributes as pydicom reads them from the data set's first bytes."""
        storage = self._storage
        ctx = self.context
        syntax = UID(ctx.transfer_syntax)
        head = io.BytesIO(self._data_set_head(DEEP_HEAD))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = read_dataset(
                head,
                is_implicit_VR=syntax.is_implicit_VR if syntax.is_transfer_syntax else True,
                is_little_endian=syntax.is_little_endian if syntax.is_transfer_syntax else True,
                stop_when=_stop_after(max(storage.wanted)),
            )
            found = {
                tag: str(dataset[tag].value).encode() for tag in storage.wanted if tag in dataset
            }
        for warning in caught:
            log.warning("instance %s: %s", ctx.sop_instance_uid, warning.message)
        # pydicom decoded the text already; carry it as UTF-8.
        found[0x00080005] = b"ISO_IR 192"
        return found


def _not_the_command_s(keyword: str, storage: DiskStorage) -> Refused:
    """The refusal of a data set whose ``keyword`` is not the one the C-STORE-RQ names."""
    return Refused(
        Status.IDENTIFIER_DOES_NOT_MATCH,
        f"its {keyword} is not the one of the C-STORE-RQ",
        storage.tags.get(keyword),
    )


def _stop_after(last: int) -> Callable[[BaseTag, str | None, int], bool]:
    """A pydicom ``stop_when``: stop once past tag ``last`` (tags ascend, PS3.5 7.1)."""

    def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
        return int(tag) > last

    return stop


@lru_cache(maxsize=64)
def _encodings(charset: str) -> tuple[str, ...]:
    """Python codecs for a Specific Character Set value (0008,0005)."""
    return tuple(convert_encodings([c.strip() for c in charset.split("\\")] or None))


def _decode_text(raw: bytes, encodings: Sequence[str]) -> str:
    """An element's text value in its character set (PS3.5 6.1), without padding."""
    if raw.isascii() and ESC not in raw:
        # Every character set DICOM allows reads these bytes as ASCII; only
        # ISO 2022 escape sequences (ESC) switch to something else.
        return raw.decode("ascii").strip(" \0")
    try:
        text = decode_bytes(raw, encodings, {0x5E, 0x3D})
    except Exception:
        text = raw.decode("latin-1")
    return text.strip(" \0")
