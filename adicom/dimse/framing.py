"""Splitting DIMSE messages into PDVs and putting them back together (PS3.8 Annex E).

A DIMSE message is a command set, optionally followed by a data set, each
carried in one or more PDVs on one presentation context; the message control
header of each PDV says which of the two it carries and whether it is the
last fragment (PS3.8 E.2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from adicom.dimse.commands import NO_DATASET, Command, malformed
from adicom.pdu.wire import frozen_builder

__all__ = [
    "MAX_SEND_PDU",
    "CommandReceived",
    "DataReceived",
    "DatasetReader",
    "MessageAssembler",
    "fragment_message",
]

#: The largest P-DATA-TF PDU we send, whatever the peer accepts (0 included):
#: big enough that headers and writes cost nothing, small enough that a data
#: set read from a file is never held whole.
MAX_SEND_PDU = 1 << 20


class DatasetReader(Protocol):
    """A data set read as it is sent (a file from its data set's first byte)."""

    @property
    def size(self) -> int:
        """How many bytes will be read in all."""
        ...

    def read(self, n: int, /) -> bytes:
        """The next ``n`` bytes."""
        ...


def fragment_message(
    context_id: int,
    command: bytes,
    dataset: bytes | memoryview | DatasetReader | None,
    max_pdu: int,
) -> Iterator[list[tuple[int, int, bytes | memoryview]]]:
    """Split a message into P-DATA-TF PDUs that fit the peer's maximum length.

    Yields, PDU by PDU, the (context ID, message control header, data)
    triples that :func:`adicom.pdu.encode_pdata` encodes. ``max_pdu`` is the
    maximum length the peer announced (0: no limit); we never send more than
    :data:`MAX_SEND_PDU`. The command and a data set that fits go in the same
    PDU, so a small message is one write. Each PDV costs 6 bytes of the PDU's
    length (PS3.8 9.3.5.1). A :class:`DatasetReader` is read only as its
    PDUs are taken, so a large file is never in memory whole.
    """
    limit = min(max_pdu, MAX_SEND_PDU) if max_pdu else MAX_SEND_PDU
    if limit < 8:
        raise ValueError(f"maximum PDU length {max_pdu} cannot carry a PDV")
    pdu: list[tuple[int, int, bytes | memoryview]] = []
    room = limit
    pieces: list[tuple[bytes | memoryview | DatasetReader, bool]] = [(command, True)]
    if dataset is not None:
        pieces.append((dataset, False))
    for data, is_command in pieces:
        if isinstance(data, bytes | bytearray | memoryview):
            view: memoryview | None = memoryview(data)
            total = len(data)
            reader = None
        else:
            view, total, reader = None, data.size, data
        pos = 0
        while True:
            remaining = total - pos
            take = min(remaining, room - 6)
            if take < remaining:
                # PS3.8 E.1: each fragment of a message is of even length;
                # only the last one of an odd-length data set cannot be.
                take -= take & 1
            if room < 6 or (remaining and take <= 0):  # no room for a PDV header and data
                yield pdu
                pdu, room = [], limit
                continue
            if view is not None:
                piece: bytes | memoryview = view[pos : pos + take]
            else:
                assert reader is not None
                piece = reader.read(take)
                if len(piece) != take:
                    raise OSError(
                        f"data set source ended after {pos + len(piece)} of {total} bytes"
                    )
            last = pos + take >= total
            pdu.append((context_id, is_command | (last << 1), piece))
            room -= take + 6
            pos += take
            if last:
                break
    if pdu:
        yield pdu


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A whole command set arrived on a presentation context."""

    context_id: int
    command: Command


@dataclass(frozen=True, slots=True)
class DataReceived:
    """A fragment of the data set of the message whose command came last."""

    context_id: int
    data: bytes | memoryview
    last: bool


# The same as calling the classes, faster (one per PDV received).
_new_command_received = frozen_builder(CommandReceived)
_new_data_received = frozen_builder(DataReceived)


class MessageAssembler:
    """Turns PDVs into DIMSE message events, checking their order (PS3.8 E.2).

    A command's fragments are gathered (command sets are small); data set
    fragments are passed on as they come, so the caller decides whether to
    keep them in memory or stream them elsewhere.
    """

    __slots__ = ("_command_parts", "_command_size", "_context", "_expect_data", "max_command")

    def __init__(self, max_command: int = 0) -> None:
        self._command_parts: list[bytes | memoryview] = []
        self._command_size = 0
        self._context: int | None = None
        self._expect_data = False
        #: The largest command set accepted, in bytes (0: no limit). Command
        #: sets are a few hundred bytes; one that never ends must not grow
        #: without bound.
        self.max_command = max_command

    @property
    def idle(self) -> bool:
        """True between messages."""
        return self._context is None

    def reset(self) -> None:
        """Forget a message half-received (the association ended under it)."""
        self._command_parts = []
        self._command_size = 0
        self._context = None
        self._expect_data = False

    def whole_command(self, context_id: int, data: bytes | memoryview) -> Command:
        """Take a PDV that holds a whole command set (command and last bits set).

        What :meth:`feed` does with such a PDV, without its event, for a
        caller that checked :attr:`idle` first (between messages a whole
        command may come on any context): the command, whose data set the
        assembler then expects when it announces one.
        """
        if self.max_command and len(data) > self.max_command:
            raise malformed(f"a command set longer than the {self.max_command} bytes accepted")
        command = Command.decode(data)
        if command.command_data_set_type != NO_DATASET:  # command.has_dataset
            self._expect_data = True
            self._context = context_id
        else:
            self._context = None
        return command

    def data_in_order(self, context_id: int, is_last: bool) -> bool:
        """Take a data set PDV if it is the one expected; False, having done nothing, if not.

        What :meth:`feed` does with a data set fragment in order, without its
        event; one out of order is :meth:`feed`'s to refuse.
        """
        if not self._expect_data or context_id != self._context:
            return False
        if is_last:
            self._expect_data = False
            self._context = None
        return True

    def feed(
        self, context_id: int, is_command: bool, is_last: bool, data: bytes | memoryview
    ) -> CommandReceived | DataReceived | None:
        """Take one PDV; return what it completes, if anything."""
        if self._context is not None and context_id != self._context:
            raise malformed(
                f"PDV on presentation context {context_id} in the middle of a message "
                f"on context {self._context}"
            )
        if is_command:
            if self._expect_data:
                raise malformed("a command PDV arrived where data set fragments were expected")
            if is_last and not self._command_parts:
                # The usual case: the whole command set in one PDV.
                return _new_command_received(context_id, self.whole_command(context_id, data))
            self._context = context_id
            # Copied: a PDV's data may be a view of a receive buffer that the
            # next read reuses (adicom.pdu.PDUReader.buffer_lent).
            self._command_parts.append(bytes(data))
            self._command_size += len(data)
            if self.max_command and self._command_size > self.max_command:
                raise malformed(f"a command set longer than the {self.max_command} bytes accepted")
            if not is_last:
                return None
            raw = b"".join(self._command_parts)
            self._command_parts = []
            self._command_size = 0
            command = Command.decode(raw)
            if command.has_dataset:
                self._expect_data = True
            else:
                self._context = None
            return CommandReceived(context_id, command)
        if not self._expect_data:
            raise malformed("a data set PDV arrived without a command announcing one")
        if is_last:
            self._expect_data = False
            self._context = None
        return _new_data_received(context_id, data, is_last)
