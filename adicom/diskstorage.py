"""Received instances streamed to files: :class:`DiskStorage`.

Each instance goes into a temporary file in the storage folder (preamble,
``DICM``, file meta built from the command, then the data set as received,
never decoded) and is renamed into place when complete and checked, so a
file under its final name is always whole, and the C-STORE status is sent
only once the data is there (PS3.4 B.2.2: success means stored).

What is refused, and how (PS3.4 B.2.3; statuses of PS3.7 C.5 for the rest):

* an empty data set, or one that does not parse: 0xC000, cannot understand;
* a Study, Series or SOP Instance UID missing or not a UID (PS3.5 9.1:
  digits and dots, at most 64 characters), or a SOP Class or SOP Instance
  UID that is not the one the C-STORE-RQ names: 0xA900, data set does not
  match SOP class, with the offending element;
* a second copy of an instance under ``on_duplicate="reject"``: 0x0111;
* a full or unwritable disk: 0xA700, out of resources.

A group 0002 sent inside the data set (it belongs in the file meta, which
the SCP writes) is never written into the file: it is dropped and the
instance answered 0xB006, elements discarded. Error comments never carry a
path of this server; the log has them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import string
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Literal

from pydicom.datadict import tag_for_keyword

from adicom.diskinstance import WRITE_SLICE, DiskInstance
from adicom.fileformat import is_valid_uid
from adicom.storage import IncomingInstance, StorageHandler, StoreContext

__all__ = ["DEFAULT_LAYOUT", "REQUIRED_UIDS", "DiskStorage", "Filed", "Filer"]

log = logging.getLogger("adicom")

#: The default folder layout of :class:`DiskStorage`.
DEFAULT_LAYOUT = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
#: The UIDs every instance must carry to be filed and found again.
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")

#: What a filer decided: (status, where the instance is, an error comment).
Filed = tuple[int, Path | None, str]
#: ``filer(temp, values, context, raw, policy)``: see :class:`DiskStorage`.
Filer = Callable[[Path, dict[str, str], StoreContext, dict[str, bytes], str], Awaitable[Filed]]
#: Default of ``DiskStorage(write_behind=)``: bytes of a data set received
#: but not yet written that one instance may hold before its association
#: stops reading from the peer (TCP then makes the peer wait).
DEFAULT_WRITE_BEHIND = 2 << 20
#: Written blocks of a backlog a DiskStorage keeps for the next (2 MiB).
SPARE_BLOCKS = 8

#: Valid UIDs a DiskStorage remembers (see DiskStorage.valid_uid).
_VALID_UIDS_KEPT = 256

_UNSAFE = re.compile(r"[^A-Za-z0-9._^=+-]")


def _path_component(value: str) -> str:
    """Make an attribute value safe as one path component (no separators, no '..')."""
    if value.isascii() and value.replace(".", "").isdigit():
        # Digits and dots (a UID, the usual value of a layout): safe as it
        # is, and never "." or "..", which have no digit.
        return value
    cleaned = _UNSAFE.sub("_", value.strip()) or "unknown"
    return "_" + cleaned if cleaned in (".", "..") else cleaned


class DiskStorage(StorageHandler):
    """Streams received instances to files under ``root``.

    ``layout`` names each file from the instance's attributes (any keyword
    of the data set); values are made safe as path components (the UIDs of
    ``required`` are checked to be UIDs first, so distinct instances never
    share a name). ``on_duplicate`` says what a second copy of a SOP
    Instance UID does: "replace" (default) stores it and removes the first,
    wherever that was filed (the rename is atomic: a reader sees one whole
    file or the other); "keep" keeps the first and answers success; "reject"
    keeps the first and answers 0x0111, duplicate SOP instance. ``lookup``
    tells where an instance is stored already when the layout alone cannot
    (an archive's index: the same UID may come under another study).
    With ``lookup_replaced=False`` it is asked only for "keep" and
    "reject": under "replace" the ``on_stored`` hook removes a copy filed
    elsewhere itself (an index that finds them for many instances at once,
    when it commits).
    ``fsync`` makes each file and its folder durable before the success
    status is sent (slower; off by default, like DCMTK).

    A large data set is written for about a millisecond (:data:`WRITE_TIME`)
    per event-loop turn, so the other associations are served between; up to
    ``write_behind`` bytes of it wait in memory, beyond that the association
    stops reading from the peer until the backlog is half written (``0``:
    write each fragment at once, holding the loop as long as that takes).

    ``on_stored(path, values, context, raw)`` is called once a file is in
    place, with the values of the layout's attributes, of ``required`` and
    of ``extra_keywords`` (text, "" when absent), read from the data set as
    it streamed in: an index can take them without reading the file again.
    ``raw`` has the bytes as received of the values that are not plain
    ASCII, in the data set's Specific Character Set (also in ``values``),
    so they can be answered back byte for byte.
    A server that answers the C-STORE-RQ in the transport callback writes
    the response once the file is in place (and fsync'd with ``fsync``)
    and calls the hooks right after it, in the same callback, before any
    other code runs (:meth:`~adicom.storage.IncomingInstance.store_now`); a hook that
    fails is logged and the status stays Success.
    Temporary files that an earlier process left behind (killed while
    receiving) are removed when the storage is made.

    ``on_filed(name, values, context, raw, stat)`` is ``on_stored`` for a
    hook that wants the file's name as text (no :class:`~pathlib.Path` is
    made for it) and its ``os.stat_result`` (taken from the open file
    before it is closed: no look-up of the name again).

    ``filer`` takes the filing over (naming, duplicates, ``on_stored``),
    for an index that decides them itself and must have the instance
    before the status is sent (several nodes sharing one database): it is
    awaited with the complete, checked temporary file, the values, the
    context, ``raw`` and the duplicate policy, owns the file from then on
    (moves it into place or removes it), and returns ``(status, path,
    comment)``; a failure status is answered with the comment.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        layout: str = DEFAULT_LAYOUT,
        *,
        on_duplicate: Literal["replace", "keep", "reject"] = "replace",
        fsync: bool = False,
        extra_keywords: Iterable[str] = (),
        required: Iterable[str] = REQUIRED_UIDS,
        on_stored: Callable[[Path, dict[str, str], StoreContext, dict[str, bytes]], None]
        | None = None,
        on_filed: Callable[
            [str, dict[str, str], StoreContext, dict[str, bytes], os.stat_result], None
        ]
        | None = None,
        lookup: Callable[[str], Path | None] | None = None,
        lookup_replaced: bool = True,
        filer: Filer | None = None,
        write_behind: int = DEFAULT_WRITE_BEHIND,
    ) -> None:
        if write_behind < 0:
            raise ValueError(f"write_behind must be 0 or more bytes, not {write_behind}")
        if on_duplicate not in ("replace", "keep", "reject"):
            raise ValueError(f"on_duplicate must be replace, keep or reject, not {on_duplicate!r}")
        self.root = Path(root)
        self.layout = layout
        self.on_duplicate = on_duplicate
        #: Per sender: the duplicate policy for what this context brings (None:
        #: ``on_duplicate``); the server's peer rules set it.
        self.duplicate_policy: Callable[[StoreContext], str | None] | None = None
        self.fsync = fsync
        #: Bytes of one instance received but not yet written, at most (see above).
        self.write_behind = write_behind
        self.on_stored = on_stored
        self.on_filed = on_filed
        self.lookup = lookup
        #: Whether ``lookup`` is asked before a replace too (see above).
        self.lookup_replaced = lookup_replaced
        self.filer = filer
        self._required = tuple(required)
        #: ``required`` with, for each, whether it is a UID (checked to be one).
        self.required_checks = tuple(
            (keyword, keyword.endswith("UID")) for keyword in self._required
        )
        layout_keywords = {name for _, name, _, _ in string.Formatter().parse(layout) if name}
        tags = {}
        keywords = layout_keywords | set(extra_keywords) | set(self._required)
        for keyword in sorted(keywords | {"SpecificCharacterSet"}):
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise ValueError(f"{keyword!r} (in the layout) is no DICOM keyword")
            tags[keyword] = tag
        self.tags = tags
        #: The keyword of each tag of ``tags``.
        self.keywords = {tag: keyword for keyword, tag in tags.items()}
        #: Every keyword of ``tags`` with no value: what an instance's values start from.
        self.blank_values = dict.fromkeys(tags, "")
        self.wanted = frozenset(tags.values())
        #: The greatest tag of ``wanted``: where the scan of a data set stops.
        self.last_wanted = max(self.wanted)
        #: ``wanted`` in ascending order (as the scan meets them).
        self.wanted_order = tuple(sorted(self.wanted))
        # UIDs seen valid lately: an association sends one SOP class, study
        # and series again and again, and the check is a regular expression.
        self._valid_uids: set[str] = set()
        self._layout_keywords = tuple(sorted(layout_keywords))
        self._layout_pieces = _plain_layout(layout)
        # What a relative layout's names start with (an absolute one's: nothing).
        self._name_prefix = "" if layout.startswith(os.sep) else f"{os.fspath(self.root)}{os.sep}"
        self.incoming = self.root / ".incoming"
        # The names of the most recent files stored (see stored).
        self.stored_names: deque[str] = deque(maxlen=1024)
        #: Folders known to exist (their names): one mkdir per folder, not
        #: per instance, and no Path made or hashed for the lookup (see
        #: ensure_folder).
        self.folders: set[str] = set()
        # Temporary names: this process, this storage, a serial number.
        self._serial = 0
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._incoming_of: Path | None = None
        self._incoming_name = ""
        self._temp_prefix = ""
        # Blocks of WRITE_SLICE bytes for write-behind backlogs, kept for reuse.
        self._blocks: list[bytearray] = []
        self.remove_leftovers()

    @property
    def required(self) -> tuple[str, ...]:
        """The keywords an instance must have one of (fixed when the storage is made)."""
        return self._required

    @property
    def stored(self) -> deque[Path]:
        """The most recent files stored (up to 1024), newest last (a copy, made when asked)."""
        return deque(map(Path, self.stored_names), maxlen=self.stored_names.maxlen)

    def remove_leftovers(self) -> int:
        """Remove temporary files of processes that no longer run; how many went.

        A process killed while receiving leaves its ``.part`` files behind
        (nothing was acknowledged for them). Those of a process still
        running (several servers may share a folder) are left alone.
        """
        removed = 0
        try:
            names = os.listdir(self.incoming)
        except OSError:
            return 0
        for name in names:
            pid = name.split("-", 1)[0]
            if not name.endswith(".part") or (pid.isdigit() and _running(int(pid))):
                continue
            with contextlib.suppress(OSError):
                os.unlink(self.incoming / name)
                removed += 1
        if removed:
            log.info("removed %d unfinished files left in %s", removed, self.incoming)
        return removed

    def ensure_folder(self, folder: str | os.PathLike[str]) -> None:
        """Make ``folder`` (and its parents) once; later calls cost a set lookup."""
        name = os.fspath(folder)
        if name not in self.folders:
            os.makedirs(name, exist_ok=True)
            if len(self.folders) > 100_000:
                self.folders.clear()
            self.folders.add(name)

    def forget_folder(self, folder: str | os.PathLike[str]) -> None:
        """``folder`` went away behind our back: make it again next time."""
        self.folders.discard(os.fspath(folder))

    def valid_uid(self, value: str) -> bool:
        """:func:`~adicom.fileformat.is_valid_uid`, remembered for the UIDs that pass."""
        if value in self._valid_uids:
            return True
        if not is_valid_uid(value):
            return False
        if len(self._valid_uids) >= _VALID_UIDS_KEPT:
            self._valid_uids.clear()
        self._valid_uids.add(value)
        return True

    def take_block(self) -> bytearray:
        """A block of :data:`WRITE_SLICE` bytes for a write-behind backlog."""
        return self._blocks.pop() if self._blocks else bytearray(WRITE_SLICE)

    def give_block(self, block: bytearray) -> None:
        """A backlog's block is written: kept for the next (up to SPARE_BLOCKS of them)."""
        if len(self._blocks) < SPARE_BLOCKS:
            self._blocks.append(block)

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance into a temporary file."""
        return DiskInstance(self, context)

    def final_path(self, values: dict[str, str]) -> Path:
        """Where an instance with these attribute values is stored."""
        return Path(self.final_name(values))

    def final_name(self, values: dict[str, str]) -> str:
        """:meth:`final_path` as a string (what filing an instance uses: no Path to parse)."""
        pieces = self._layout_pieces
        if pieces is not None:
            # Text and safe values joined: what format() makes, at a third of its cost.
            # A UID this storage checked (valid_uid) is digits and dots: safe as it is.
            checked = self._valid_uids
            parts = [self._name_prefix]
            for text, keyword in pieces:
                parts.append(text)
                if keyword:
                    value = values.get(keyword) or "unknown"
                    parts.append(value if value in checked else _path_component(value))
            return "".join(parts)
        # Only the layout's own keywords: an archive's on_stored hook wants
        # some twenty more values, which never become part of a path.
        safe = {key: _path_component(values.get(key) or "unknown") for key in self._layout_keywords}
        name = self.layout.format(**safe)
        # os.path.join, without its cost: a layout is relative (an absolute
        # one, as join would, leaves the root).
        return name if name.startswith(os.sep) else f"{os.fspath(self.root)}{os.sep}{name}"

    def existing(self, values: dict[str, str], final: Path) -> Path | None:
        """Where this SOP Instance UID is stored already, if it is."""
        if self.lookup is not None:
            found = self.lookup(values.get("SOPInstanceUID", ""))
            if found is not None:
                return found
        return final if os.path.exists(final) else None

    def temp_file(self) -> tuple[str, int]:
        """A new empty temporary file under ``.incoming`` (raises OSError)."""
        incoming = self.incoming
        if incoming is not self._incoming_of:
            # Its name and the names under it, made once (an archive sets
            # ``incoming`` anew after making the storage).
            self._incoming_of = incoming
            self._incoming_name = os.fspath(incoming)
            self._temp_prefix = f"{self._incoming_name}{os.sep}{self._prefix}-"
        if self._incoming_name not in self.folders:
            self.ensure_folder(self._incoming_name)
        self._serial += 1
        path = f"{self._temp_prefix}{self._serial}.part"
        # A raw descriptor: Python's buffered file costs three more system
        # calls per instance, and the data arrives in large pieces anyway.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return path, os.open(path, flags, 0o644)
        except FileNotFoundError:
            # .incoming was removed behind our back: make it again, once.
            self.forget_folder(self.incoming)
            self.ensure_folder(self.incoming)
            return path, os.open(path, flags, 0o644)


def _plain_layout(layout: str) -> tuple[tuple[str, str], ...] | None:
    """A layout as (text, keyword) pieces, if it has no format specs or conversions.

    A keyword with either (``{StudyDate:.4}``, ``{PatientID!s}``) or with
    an attribute or an index leaves it to :meth:`str.format` (None).
    """
    pieces = []
    for text, name, spec, conversion in string.Formatter().parse(layout):
        if name is not None and (spec or conversion or not name.isidentifier()):
            return None
        pieces.append((text, name or ""))
    return tuple(pieces)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True
