"""One instance being received by a :class:`~adicom.diskstorage.DiskStorage`.

Split from :mod:`adicom.diskstorage`, which keeps the storage itself (folder
layout, temporary files, duplicate policy): here is what happens to one
instance's bytes as they arrive (write-behind in slices, the walk of the
data set's top-level elements as it streams in) until it is filed. Reading
and checking the values it is filed by is :mod:`adicom.instancevalues`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from adicom.dimse import Status
from adicom.elements import scan_elements, skip_group_0002, walk_top_level
from adicom.fileformat import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    Inflater,
)
from adicom.instancevalues import HEAD, READ_BACK, UNCHECKED, WALKING, Refused, ValueReading
from adicom.storage import IncomingInstance, StoreContext

if TYPE_CHECKING:
    from adicom.diskstorage import DiskStorage

log = logging.getLogger("adicom")

#: Bytes of one write to a file. Writing to the page cache costs about
#: 0.2 ms per MiB here when it has pages at hand and up to ~2.5 ms (peaks
#: of 10 ms) when it must find them, so a 1 MiB PDV written at once could
#: hold every other association that long.
WRITE_SLICE = 256 << 10
#: Seconds of writing in one event-loop callback: slices are written while
#: they go fast; once this is spent the rest waits for the next turn (a
#: copy), so each callback holds the loop about a millisecond at most.
WRITE_TIME = 0.001

#: How a data set of each transfer syntax is read (see _plan), made once per
#: syntax: an association sends thousands of instances in a few syntaxes.
_PLANS: dict[str, tuple[bool, tuple[bool, bool] | None, tuple[int, int]]] = {}
_PLANS_KEPT = 64


def _plan(transfer: str) -> tuple[bool, tuple[bool, bool] | None, tuple[int, int]]:
    """(deflated, (implicit, little) if plain, the first two bytes of a group 0002 element)."""
    deflated = transfer == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    # Top-level elements of a plain transfer syntax are read as they stream
    # in, none of the data set kept (a copy of a 40 KB instance into the head
    # cost as much as the walks): the layout's values, found in the first
    # piece; where the next element starts, and the tag of the last one
    # stepped over (whose value may run on). Every standard syntax but
    # deflate encodes the top level plainly (PS3.5 A.4: only the pixel data
    # differs).
    plain = (
        None
        if deflated or not transfer.startswith("1.2.840.10008.1.2")
        else (transfer == IMPLICIT_VR_LITTLE_ENDIAN, transfer != EXPLICIT_VR_BIG_ENDIAN)
    )
    # A group 0002 element's first two bytes (PS3.10 7.1), in the data
    # set's byte order: little endian but for one retired syntax.
    group_0002 = (0x00, 0x02) if transfer == EXPLICIT_VR_BIG_ENDIAN else (0x02, 0x00)
    plan = (deflated, plain, group_0002)
    if len(_PLANS) >= _PLANS_KEPT:
        _PLANS.clear()  # a peer that offers ever new syntaxes keeps no more
    _PLANS[transfer] = plan
    return plan


class DiskInstance(ValueReading, IncomingInstance):
    """One instance received into a temporary file of ``storage``, filed when complete."""

    # What an instance starts with and most never change, as class
    # defaults: the one made per received instance sets only the rest.
    # Where the file was filed (path makes the Path when asked), and its
    # stat for the storage's on_filed hook.
    _path: Path | None = None
    _name: str | None = None
    _stat: os.stat_result | None = None
    _inflate_error: str | None = None
    _discarded = False  # a group 0002 was dropped from the data set
    _unreadable = False
    _size = 0  # of the data set written so far
    # Write-behind: the size of the backlog, the callback that writes the
    # next slice, whoever waits for the last one, whether the sender is held.
    _pending = 0
    _draining: asyncio.Handle | None = None
    _drained: asyncio.Future[None] | None = None
    _held = False
    _status: int | None = None  # once finished by finish_now (finish returns it)
    # Filed, its hooks (on_filed, on_stored) not run yet: the values they
    # get (see store_now and after_answer).
    _unhooked: dict[str, str] | None = None
    # The data set read as it streams in (see __init__).
    _found: dict[int, bytes] | None = None
    _walk_at = 0
    _walk_tag = -1
    _walk_state = WALKING
    # The first two bytes of a group 0002 element (PS3.10 7.1), in the data
    # set's byte order: little endian but for one retired syntax.
    _group_0002 = (0x02, 0x00)
    # How the data set is read, by its transfer syntax (see _plan): inflated
    # as it arrives (deflate), or its top-level elements read as they stream
    # in ((implicit, little) of a plain syntax; None: not plain).
    _inflater: Inflater | None = None
    _plain: tuple[bool, bool] | None = None
    # The data set's first bytes, held until we know whether it starts with
    # a group 0002 (a bytearray once some are held; None once decided).
    _start: bytearray | bytes | None = b""
    # The start of a data set not read as it streamed in, kept to be read
    # when it is all in (a bytearray once some is kept).
    _head: bytearray | bytes = b""
    # The raw bytes of values that are not plain ASCII (made when one is met).
    _raw: dict[str, bytes] | None = None
    # Where the scan of a head kept in memory stopped (check_whole goes on
    # from there); None until it is scanned.
    _resume: list[int] | None = None
    # Write-behind: received fragments (copies) not yet written (made when
    # the first fragment has to wait).
    _backlog: deque[tuple[bytearray, memoryview]] | None = None
    _temp: str | None = None
    _fd: int | None = None
    _meta: bytes | None = None

    def __init__(self, storage: DiskStorage, context: StoreContext) -> None:
        # IncomingInstance's own attributes are class defaults but for the
        # context, and what the common instance never needs (the head kept
        # in memory, the values' raw bytes, the write-behind backlog) is
        # made only if it does: a DiskInstance is made per received instance.
        self.context = context
        self._storage = storage
        transfer = context.transfer_syntax
        plan = _PLANS.get(transfer)
        if plan is None:
            plan = _plan(transfer)
        deflated, self._plain, self._group_0002 = plan
        if deflated:
            # A deflated data set's head is inflated as it arrives, never
            # more of it than the layout needs (PS3.5 A.5; a small "deflate
            # bomb" would otherwise inflate to gigabytes on the event loop).
            # Its first bytes are not held to look for a group 0002 (not in
            # a deflated stream: nobody sends that).
            self._inflater = Inflater(HEAD)
            self._start = None
        meta = context.file_meta()
        self._meta_length = len(meta)
        # Written with the data set's first bytes, in one system call.
        self._meta = meta
        try:
            self._temp, self._fd = storage.temp_file()
        except OSError as exc:
            self._fail(_disk_error(exc), f"in {storage.root}")

    @property
    def path(self) -> Path | None:
        """Where the instance ended up, when it went to a file."""
        if self._path is None and self._name is not None:
            self._path = Path(self._name)
        return self._path

    @path.setter
    def path(self, path: Path | None) -> None:
        self._path = path
        self._name = None

    # -- receiving ----------------------------------------------------------------

    def write(self, data: memoryview, /) -> None:
        """Take the next fragment of the data set (written now or behind)."""
        if self._fd is None:
            return
        held = self._start
        if held is not None:
            # Usually the first fragment tells at once, read where it lies:
            # copying it (a 1 MiB PDV, twice) cost ~1.5 ms per instance.
            if held:
                assert isinstance(held, bytearray)
                held += data
                data = memoryview(held)
            first = self._group_0002
            if len(data) > 1 and (data[0] != first[0] or data[1] != first[1]):
                # The usual start, not group 0002: nothing to drop, told
                # from its first two bytes without walking anything.
                skip: int | None = 0
            else:
                skip = self._start_skip(data, complete=False)
            if skip is None:
                if not held and self._fd is not None:
                    self._start = bytearray(data)  # too short to tell: kept until more comes
                return
            self._start = None
            if skip:
                data = data[skip:]
        inflater = self._inflater
        if inflater is not None:
            if not inflater.full and self._inflate_error is None:
                try:
                    inflater.feed(data)
                except ValueError as exc:
                    self._inflate_error = str(exc)
        elif self._found is not None:
            if self._walk_state == WALKING and self._walk_at < self._size + len(data):
                self._walk(data, self._size)
        elif not (self._size == 0 and self._stream_first(data)) and len(self._head) < HEAD:
            # Not found in the first piece: kept, and read when it is all in.
            head = self._head
            if not head:
                self._head = head = bytearray()
            assert isinstance(head, bytearray)
            head += data[: HEAD - len(head)]
        self._size += len(data)
        try:
            if not self._pending and len(data) <= WRITE_SLICE:
                self._write(data)  # what _put does first, without a call more
            else:
                self._put(data)
        except OSError as exc:
            self._fail(_disk_error(exc), f"writing {self._temp}")

    def _stream_first(self, data: memoryview) -> bool:
        """Read the layout's values from the data set's first piece; False if not all there."""
        plain = self._plain
        if plain is None:
            return False
        storage = self._storage
        resume: list[int] = []
        try:
            found = scan_elements(
                data,
                storage.wanted,
                implicit=plain[0],
                little=plain[1],
                resume=resume,
                last=storage.last_wanted,
                ordered=storage.wanted_order,
            )
        except ValueError:
            return False  # not what its syntax says: read whole when it is in
        if found is None:
            return False
        self._found = found
        # The rest of the piece walked here (what _walk does, without a call
        # more per instance).
        at = resume[0]
        try:
            at, tag, whole = walk_top_level(data, at, implicit=plain[0], little=plain[1])
        except ValueError:
            self._walk_at = at
            self._walk_state = UNCHECKED
            return True
        if tag >= 0:
            self._walk_tag = tag
        self._walk_at = at
        if not whole:
            self._walk_state = READ_BACK
        return True

    def _walk(self, data: memoryview, base: int) -> None:
        """Step over the top-level elements that start in ``data`` (at ``base`` in the data set)."""
        plain = self._plain
        assert plain is not None
        try:
            at, tag, whole = walk_top_level(
                data, self._walk_at - base, implicit=plain[0], little=plain[1]
            )
        except ValueError:
            self._walk_state = UNCHECKED
            return
        if tag >= 0:
            self._walk_tag = tag
        self._walk_at = base + at
        if not whole:
            # A header cut between pieces, or a sequence of undefined length
            # that goes on: the rest is read back from the file at the end.
            self._walk_state = READ_BACK

    def _put(self, data: memoryview) -> None:
        """Write ``data`` while it goes fast (WRITE_TIME); what is left waits behind."""
        limit = self._storage.write_behind
        if not self._pending:
            if len(data) <= WRITE_SLICE or not limit:
                self._write(data)
                return
            started = time.perf_counter()
            while True:
                self._write(data[:WRITE_SLICE])
                data = data[WRITE_SLICE:]
                if not data:
                    return
                if time.perf_counter() - started > WRITE_TIME:
                    break
        # Copied (``data`` is the receive buffer, which a later read may
        # reuse) into blocks the storage keeps for reuse: a copy into fresh
        # memory costs its page faults, about as much as the write itself.
        storage = self._storage
        backlog = self._backlog
        if backlog is None:
            self._backlog = backlog = deque()
        for at in range(0, len(data), WRITE_SLICE):
            piece = data[at : at + WRITE_SLICE]
            block = storage.take_block()
            block[: len(piece)] = piece
            backlog.append((block, memoryview(block)[: len(piece)]))
        self._pending += len(data)
        if self._draining is None:
            self._draining = asyncio.get_running_loop().call_soon(self._drain)
        if self._pending > limit:
            self._hold(True)
            if self._pending > 2 * limit:
                # The sender was let go on regardless (the driver resumes
                # reading after parsing a slice): catch up now, at the
                # price of the loop, rather than hold more.
                self._write_backlog(self._pending - limit)

    def _write_backlog(self, budget: int, seconds: float | None = None) -> None:
        """Write up to ``budget`` bytes of the backlog, oldest first, and for ``seconds``."""
        assert self._fd is not None
        backlog = self._backlog
        assert backlog is not None
        until = None if seconds is None else time.perf_counter() + seconds
        while budget > 0 and backlog:
            block, view = backlog[0]
            written = os.write(self._fd, view[:budget])
            if not written:
                raise OSError(errno.ENOSPC, "the file system took no more bytes")
            budget -= written
            self._pending -= written
            if written == len(view):
                backlog.popleft()
                self._storage.give_block(block)
            else:
                backlog[0] = (block, view[written:])
            if until is not None and time.perf_counter() > until:
                return  # at least one block per call: the backlog always shrinks

    def _drain(self) -> None:
        """One loop callback: the next slice of the backlog; again later if more is left."""
        self._draining = None
        if self._fd is None:
            return
        try:
            self._write_backlog(self._pending, WRITE_TIME)
        except OSError as exc:
            self._fail(_disk_error(exc), f"writing {self._temp}")
            return
        if self._pending:
            self._draining = asyncio.get_running_loop().call_soon(self._drain)
            if self._held and self._pending <= self._storage.write_behind // 2:
                self._hold(False)
            return
        self._hold(False)
        self._wake()

    def _hold(self, hold: bool) -> None:
        if hold != self._held:
            self._held = hold
            if self.hold_input is not None:
                self.hold_input(hold)

    def _wake(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _start_skip(self, start: bytes | bytearray | memoryview, *, complete: bool) -> int | None:
        """Decide on the data set's start: how many of its first bytes to drop.

        None while more bytes are needed to tell, or when the start does
        not parse (the instance then failed). ``complete``: no more bytes
        will come (the data set is that short).
        """
        little = self.context.transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
        try:
            skip = skip_group_0002(start, little=little, complete=complete)
        except ValueError as exc:
            self._fail(f"the data set does not parse: {exc}")
            self._unreadable = True
            return None
        if skip is None:
            if len(start) > HEAD:
                self._fail("a group 0002 of more than 64 KiB at the start of the data set")
                self._unreadable = True
            return None  # more bytes needed to decide
        if skip:
            # PS3.10 7.1: group 0002 is the file meta, which this SCP writes
            # from the command; one sent inside the data set is dropped.
            self._discarded = True
            log.warning(
                "instance %s: a group 0002 (%d bytes) inside the data set was dropped",
                self.context.sop_instance_uid,
                skip,
            )
        return skip

    def _write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        meta = self._meta
        if meta is not None:
            # The file meta still waits (nothing was written yet): one
            # writev for both, not two writes.
            self._meta = None
            written = os.writev(self._fd, (meta, data))
            if written == len(meta) + len(data):
                return  # the usual: both at once, no view made to go on
            if written < len(meta):
                if not written:
                    raise OSError(errno.ENOSPC, "the file system took no more bytes")
                self._write(memoryview(meta)[written:])
                view = memoryview(data)
            else:
                view = memoryview(data)[written - len(meta) :]
        else:
            view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            if not written:
                raise OSError(errno.ENOSPC, "the file system took no more bytes")
            view = view[written:]

    def _fail(self, reason: str, where: str = "") -> None:
        """Give up on this instance: ``reason`` goes to the peer, ``where`` only to the log."""
        if self.error is None:
            self.error = reason
            log.warning(
                "storing %s failed: %s%s",
                self.context.sop_instance_uid,
                reason,
                f" ({where})" if where else "",
            )
        self._discard()

    def _discard(self) -> None:
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None
        backlog = self._backlog
        while backlog:
            self._storage.give_block(backlog.popleft()[0])
        self._pending = 0
        self._hold(False)
        self._wake()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)
            self._temp = None

    def abort(self) -> None:
        """Drop what was received: the temporary file goes."""
        self._discard()

    # -- the last fragment is in -------------------------------------------------------

    async def finish(self) -> int:
        """Check the data set, file it, and return the C-STORE status."""
        if self._status is not None:
            self.after_answer()  # if store_now left its hooks
            return self._status  # finished already, by finish_now
        self._settle_start()
        if self._pending and self._fd is not None:
            # The last fragments are still behind: the file is whole first.
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self._storage.filer is None:
            status = self._conclude()
            self.after_answer()
            return status
        early = self._early_status()
        if early is not None:
            return early
        try:
            status = await self._hand_over(self._closed_values())
        except Refused as refused:
            return self._refused(refused)
        return self._warned(status)

    def finish_now(self) -> int | None:
        """:meth:`finish` without waiting, when nothing has to be awaited; None otherwise.

        For a server that answers the C-STORE-RQ in the transport callback
        that read its last fragment (no task switch): None while part of the
        data set is still behind (write-behind) or a filer takes the file,
        and then :meth:`finish` does the rest. Once this returned a status,
        :meth:`finish` returns that same status and does nothing more.
        """
        status = self._store_now()
        self.after_answer()
        return status

    def store_now(self) -> int | None:
        """:meth:`finish_now`, leaving the filing's hooks to :meth:`after_answer`.

        The status is final once the file is in place (fsync'd when the
        storage asks): PS3.4 B.2.2 wants nothing more before it is sent.
        What only follows the filing, the storage's ``on_filed`` and
        ``on_stored`` hooks (an archive's index row), waits for
        :meth:`after_answer`, which the caller runs right after sending the
        response, in the same callback.
        """
        finish_now = self.finish_now
        if getattr(finish_now, "__func__", None) is not DiskInstance.finish_now:
            # A subclass (or a test) decides with a finish_now of its own,
            # None to be finished by finish(): it is asked, as before, and
            # runs the hooks itself.
            return finish_now()
        return self._store_now()

    def _store_now(self) -> int | None:
        if self._status is None:
            if self._storage.filer is not None:
                return None
            if self._start is not None:
                self._settle_start()
            if self._pending and self._fd is not None:
                return None
            self._status = self._conclude()
        return self._status

    def after_answer(self) -> None:
        """Run the filing's hooks that :meth:`store_now` left, once."""
        values = self._unhooked
        if values is not None:
            self._unhooked = None
            self._run_hooks(values)

    def _settle_start(self) -> None:
        start = self._start
        if start is not None and self._fd is not None:
            # The whole data set was shorter than what decides its start.
            self._start = None
            skip = self._start_skip(start, complete=True)
            if skip is not None and len(start) > skip:
                self.write(memoryview(start)[skip:])

    def _early_status(self) -> int | None:
        """The status of an instance that failed while it arrived; None if it did not."""
        if self._unreadable:
            return Status.CANNOT_UNDERSTAND
        if self.error is not None or self._fd is None or self._temp is None:
            self._discard()
            return Status.OUT_OF_RESOURCES
        return None

    def _conclude(self) -> int:
        """Check the whole data set and file it here (no filer); the status."""
        if self._unreadable or self.error is not None or self._fd is None or self._temp is None:
            early = self._early_status()
            assert early is not None
            return early
        try:
            status = self._file(self._closed_values())
        except Refused as refused:
            return self._refused(refused)
        return self._warned(status) if self._discarded else status

    def _closed_values(self) -> dict[str, str]:
        """Close the file and check the whole data set; its values (raises Refused)."""
        self._close_file()
        values = self._checked_values()
        self.values = values
        return values

    def _refused(self, refused: Refused) -> int:
        self._discard()
        self.error = str(refused)
        self.offending_element = refused.offending
        log.warning("refused %s: %s", self.context.sop_instance_uid, refused)
        return refused.status

    def _warned(self, status: int) -> int:
        if status == Status.SUCCESS and self._discarded:
            self.warning = "group 0002 elements inside the data set were discarded"
            return Status.ELEMENTS_DISCARDED
        return status

    def _close_file(self) -> None:
        assert self._fd is not None
        try:
            if self._meta is not None:
                self._write(b"")  # no data set came: the file meta alone
            if self._storage.fsync:
                os.fsync(self._fd)
            if self._storage.on_filed is not None:
                # The file's size and time for the hook, from the open file
                # (a rename changes neither).
                self._stat = os.fstat(self._fd)
            fd, self._fd = self._fd, None
            os.close(fd)
        except OSError as exc:
            self._fail(_disk_error(exc), f"closing {self._temp}")
            raise Refused(Status.OUT_OF_RESOURCES, self.error or "") from None

    async def _hand_over(self, values: dict[str, str]) -> int:
        """Give the complete file to the storage's filer; its status (a failure raised)."""
        storage = self._storage
        assert storage.filer is not None and self._temp is not None
        policy: str = storage.on_duplicate
        if storage.duplicate_policy is not None:
            policy = storage.duplicate_policy(self.context) or policy
        temp, self._temp = Path(self._temp), None  # the filer's from now on
        try:
            status, path, comment = await storage.filer(
                temp, values, self.context, self._raw_values(), policy
            )
        except Exception:
            log.exception("filing %s failed", self.context.sop_instance_uid)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise Refused(Status.OUT_OF_RESOURCES, "the instance could not be filed") from None
        self.path = path
        if status != Status.SUCCESS:
            raise Refused(status, comment)
        if path is not None:
            storage.stored_names.append(str(path))
        return status

    def _file(self, values: dict[str, str]) -> int:
        """Rename the file into place, as the duplicate policy says; the status."""
        storage = self._storage
        temp = self._temp
        assert temp is not None
        # Names as strings until the file is in place: a Path made, split
        # and hashed for the folder cost ~8 us per instance.
        name = storage.final_name(values)
        # Its folder: what os.path.dirname says, without its cost (a name is
        # under the root, or absolute: it has a separator past its start).
        cut = name.rfind(os.sep)
        if os.altsep:  # Windows: a layout's "/" separates folders too
            cut = max(cut, name.rfind(os.altsep))
        folder = name[:cut] if cut > 0 else os.path.dirname(name)
        policy: str = storage.on_duplicate
        if storage.duplicate_policy is not None:
            policy = storage.duplicate_policy(self.context) or policy
        if policy != "replace":
            existing = storage.existing(values, Path(name))
        elif storage.lookup is not None and storage.lookup_replaced:
            # A copy under the final name is replaced by the rename itself
            # (atomically); only one filed elsewhere needs finding, and
            # asking the disk about the final name would cost a stat.
            # (lookup_replaced=False: on_stored finds and removes that one.)
            existing = storage.lookup(values.get("SOPInstanceUID", ""))
        else:
            existing = None
        if existing is not None and policy != "replace":
            self._discard()
            self.path = existing
            if policy == "reject":
                raise Refused(Status.DUPLICATE_SOP_INSTANCE, "this SOP instance is stored already")
            log.info("%s is stored already; keeping the first copy", values["SOPInstanceUID"])
            return Status.SUCCESS
        try:
            if folder not in storage.folders:
                storage.ensure_folder(folder)
            try:
                os.replace(temp, name)
            except FileNotFoundError:
                # The folder went away behind our back: make it again, once.
                storage.forget_folder(folder)
                storage.ensure_folder(folder)
                os.replace(temp, name)
            if storage.fsync:
                _fsync_folder(folder)
        except OSError as exc:
            self._fail(_disk_error(exc), f"filing at {name}")
            raise Refused(Status.OUT_OF_RESOURCES, self.error or "") from None
        self._temp = None
        if existing is not None and os.fspath(existing) != name:
            # The same instance came again under other attributes (another
            # study, say): one copy per SOP Instance UID, the new one.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(existing)
        # The name, not a Path: one is made only if someone asks (a Path
        # made from text costs ~2.5 us, a tenth of filing an instance).
        self._name = name
        storage.stored_names.append(name)
        if storage.on_filed is not None or storage.on_stored is not None:
            # Run by after_answer (finish_now, finish, or the server once
            # the response is written): the status does not wait for them.
            self._unhooked = values
        return Status.SUCCESS

    def _run_hooks(self, values: dict[str, str]) -> None:
        """The storage's hooks for the filed instance; their failures only logged."""
        storage = self._storage
        name = self._name
        assert name is not None
        try:
            if storage.on_filed is not None:
                assert self._stat is not None
                storage.on_filed(name, values, self.context, self._raw_values(), self._stat)
            if storage.on_stored is not None:
                storage.on_stored(self.path or Path(name), values, self.context, self._raw_values())
        except Exception:
            # The file is stored; a failing hook (an index) must not
            # turn that into a failure status.
            log.exception("the storage's hook failed for %s", name)


def _disk_error(exc: OSError) -> str:
    """What a peer is told of a failed write: the cause, never our paths."""
    return f"cannot store the instance: {exc.strerror or 'input/output error'}"


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (the file's own fsync does not)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
