"""Modality Worklist (PS3.4 Annex K): worklist items from a folder, matched and answered.

:class:`WorklistFolder` serves the Modality Worklist Information Model - FIND
SOP Class (1.2.840.10008.5.1.4.31) from a folder of DICOM files, one
worklist item per file, as DCMTK's ``wlmscpfs`` does with its data folder:
an operator (or a RIS export) drops ``*.wl`` files (or any DICOM file
holding a Scheduled Procedure Step Sequence) into the folder while the
server runs, and the next query sees them. :class:`WorklistMatcher` is the
matching itself, usable on any items.

The matching (PS3.4 K.2.2 and C.2.2.2, with the choices adicom makes where
the standard leaves them to the SCP) is :mod:`adicom.worklistmatch`.

Bounds: the folder holds at most ``max_items`` items (about 15 KB of memory
each) and files of at most ``max_file_bytes``; files past the limits are
logged and left out. Reading yields to the event loop every
``files_per_step`` files, matching every ``items_per_step`` items, and a
query ends after ``max_matches`` answers. No threads: the files are small
and few at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from adicom.dimse import Status
from adicom.qrscp import QRContext, QueryFailed
from adicom.worklistmatch import WorklistMatcher, fold_person_name, glob_match

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_MATCHES",
    "MODALITY_WORKLIST_FIND",
    "WorklistFolder",
    "WorklistMatcher",
    "fold_person_name",
    "glob_match",
]

log = logging.getLogger("adicom")

#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.1, PS3.6 Annex A).
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"

#: How many worklist items a folder holds at most (about 15 KB of memory each).
DEFAULT_MAX_ITEMS = 5000
#: The largest worklist file read (an item is a few kilobytes).
DEFAULT_MAX_FILE_BYTES = 1 << 20
#: How many matches one query returns at most before it ends with 0xA700.
DEFAULT_MAX_MATCHES = 1000

_SPS = 0x00400100  # Scheduled Procedure Step Sequence


@dataclass(frozen=True, slots=True)
class _Entry:
    """One file of the folder as last read: its (mtime_ns, size) and its item, if usable."""

    stamp: tuple[int, int]
    item: Dataset | None


def _skipped_name(name: str) -> bool:
    # Hidden and temporary names (a copy in progress), and wlmscpfs's lock file.
    return name.startswith(".") or name == "lockfile" or name.endswith(("~", ".tmp", ".part"))


def _read_item(path: Path, limit: int) -> Dataset:
    """One worklist item from a file of at most ``limit`` bytes.

    Raises ValueError (or whatever pydicom raises) if it is none.
    """
    with path.open("rb") as file:
        # At most limit bytes, even if the file grew since it was listed.
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"more than max_file_bytes ({limit}) bytes")
    with warnings.catch_warnings(record=True) as caught, disable_value_validation():
        warnings.simplefilter("always")
        # force: wlmscpfs's .wl files are often data sets without a preamble.
        item = pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=True)
        item.filename = str(path)
        # pydicom converts (and decodes, in the item's character set) lazily:
        # convert everything now, so that a bad file fails here, once.
        for element in item.iterall():
            if element.VR == "PN":
                value = element.value
                _ = [str(v) for v in value] if isinstance(value, MultiValue) else str(value)
    element = item.get(_SPS)
    if element is None or element.VR != "SQ":
        raise ValueError("it has no Scheduled Procedure Step Sequence (0040,0100)")
    if caught:
        log.warning("Worklist file %s: %s", path, caught[0].message)
    # A FileDataset: its .filename says where the item came from. Its file
    # meta information is never answered (only the keys asked for are).
    return item


class WorklistFolder:
    """Modality Worklist items from a folder of DICOM files, and the C-FIND handler over them.

    Each file directly in ``path`` is one worklist item: DCMTK's ``*.wl``
    files (with or without file meta information) or any DICOM file holding a
    Scheduled Procedure Step Sequence (0040,0100). Hidden files, names
    ending in ``~``, ``.tmp`` or ``.part``, and ``lockfile`` are left alone.
    A file that cannot be read, is larger than ``max_file_bytes`` or is no
    worklist item is logged (once until it changes) and skipped.

    Before each query the folder is listed again and the files whose
    modification time or size changed are read again, so items can be
    added, changed and removed while serving. At most ``max_items`` items
    are held (by file name order); more are logged and ignored. Reading
    yields to the event loop every ``files_per_step`` files and matching
    every ``items_per_step`` items; a query returns at most ``max_matches``
    matches and then ends with 0xA700 (Refused: out of resources, PS3.4
    K.4.1.1.4) so the SCU knows the list is incomplete.

    Use :meth:`find` as the C-FIND handler of the Modality Worklist
    Information Model - FIND SOP Class (:data:`MODALITY_WORKLIST_FIND`).
    Raises NotADirectoryError when ``path`` is not a folder.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_matches: int = DEFAULT_MAX_MATCHES,
        files_per_step: int = 8,
        items_per_step: int = 64,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise NotADirectoryError(f"worklist folder {self.path} is not a directory")
        for name, number in (
            ("max_items", max_items),
            ("max_file_bytes", max_file_bytes),
            ("max_matches", max_matches),
            ("files_per_step", files_per_step),
            ("items_per_step", items_per_step),
        ):
            if number < 1:
                raise ValueError(f"{name} must be at least 1, not {number}")
        self.max_items = max_items
        self.max_file_bytes = max_file_bytes
        self.max_matches = max_matches
        self.files_per_step = files_per_step
        self.items_per_step = items_per_step
        self._entries: dict[str, _Entry] = {}
        self._items: tuple[Dataset, ...] = ()
        self._lock = asyncio.Lock()
        self._over_limit = False

    @property
    def items(self) -> tuple[Dataset, ...]:
        """The worklist items as last read (by file name), each a pydicom Dataset."""
        return self._items

    async def refresh(self) -> None:
        """List the folder and read the files that are new or changed since the last time.

        Raises OSError when the folder itself cannot be listed.
        """
        async with self._lock:
            names = await self._list()
            entries: dict[str, _Entry] = {}
            items: list[Dataset] = []
            read = 0
            for index, (name, stamp) in enumerate(names):
                if len(items) == self.max_items:
                    if not self._over_limit:
                        log.warning(
                            "Worklist folder %s: more than %d items; %d files ignored "
                            "(max_items bounds the memory they take)",
                            self.path,
                            self.max_items,
                            len(names) - index,
                        )
                    self._over_limit = True
                    break
                entry = self._entries.get(name)
                if entry is None or entry.stamp != stamp:
                    entry = self._read(name, stamp)
                    read += 1
                    if read % self.files_per_step == 0:
                        await asyncio.sleep(0)
                entries[name] = entry
                if entry.item is not None:
                    items.append(entry.item)
            else:
                self._over_limit = False
            self._entries = entries
            self._items = tuple(items)
            if read:
                log.debug(
                    "Worklist folder %s: %d files read, %d items", self.path, read, len(items)
                )

    async def _list(self) -> list[tuple[str, tuple[int, int]]]:
        """The candidate files, by name, with their (mtime_ns, size); bounded, yielding."""
        # A folder of unrelated files must not be listed without end.
        limit = self.max_items * 4
        names: list[tuple[str, tuple[int, int]]] = []
        with os.scandir(self.path) as listing:
            for count, entry in enumerate(listing, 1):
                if count % 256 == 0:
                    await asyncio.sleep(0)
                if _skipped_name(entry.name):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    stat = entry.stat()
                except OSError:
                    continue  # removed meanwhile
                names.append((entry.name, (stat.st_mtime_ns, stat.st_size)))
                if len(names) >= limit:
                    log.warning("Worklist folder %s: listing stopped at %d files", self.path, limit)
                    break
        names.sort()
        return names

    def _read(self, name: str, stamp: tuple[int, int]) -> _Entry:
        """Read one file; an unusable one is logged and kept as such (until it changes)."""
        path = self.path / name
        size = stamp[1]
        if size > self.max_file_bytes:
            log.warning(
                "Worklist file %s skipped: %d bytes, more than max_file_bytes (%d)",
                path,
                size,
                self.max_file_bytes,
            )
            return _Entry(stamp, None)
        try:
            item = _read_item(path, self.max_file_bytes)
        except Exception as exc:  # whatever a bad file makes pydicom raise
            log.warning("Worklist file %s skipped: %s", path, exc or type(exc).__name__)
            return _Entry(stamp, None)
        return _Entry(stamp, item)

    async def find(self, identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        """The C-FIND handler: the answer for each item matching ``identifier``.

        Raises :class:`~adicom.qrscp.QueryFailed`: 0xA900 for an identifier
        it cannot match, 0xC000 when the folder cannot be read, 0xA700 after
        ``max_matches`` answers when there are more.
        """
        matcher = WorklistMatcher(identifier)
        try:
            await self.refresh()
        except OSError as exc:
            log.error("Worklist folder %s cannot be read: %s", self.path, exc)
            raise QueryFailed(
                Status.CANNOT_UNDERSTAND, "the worklist folder cannot be read"
            ) from None
        found = 0
        for index, item in enumerate(self._items):
            if index and index % self.items_per_step == 0:
                await asyncio.sleep(0)
            if not matcher.matches(item):
                continue
            if found == self.max_matches:
                log.warning(
                    "Worklist query from %s: more than %d matches; ended with 0xA700",
                    context.calling_ae,
                    self.max_matches,
                )
                raise QueryFailed(
                    Status.OUT_OF_RESOURCES,
                    f"more than {self.max_matches} matches; narrow the query",
                )
            found += 1
            yield matcher.answer(item)
        log.debug("Worklist query from %s: %d matches", context.calling_ae, found)
