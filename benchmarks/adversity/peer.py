"""An attacker's raw connection to the SCP, and the line protocol of the side processes.

A side process (probe or attacker) prepares, prints ``READY``, waits for a
``GO`` line on stdin, works until its window ends or stdin closes, and prints
one ``RESULT {json}`` line.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from adicom.dimse import Command
from adicom.errors import DicomError
from adicom.pdu import PDU, AAbort, AAssociateAC, AAssociateRJ, PDataTF, PDUReader
from benchmarks.adversity.pdus import ATTACKER_ADDR, association_request

HOST = "127.0.0.1"
READY = "READY"
GO = "GO"
RESULT = "RESULT "


class PeerGone(Exception):
    """The SCP aborted or closed the connection."""


class Rejected(Exception):
    """The SCP answered the A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ."""


class Peer:
    """One connection from the attackers' address, with a task reading what the SCP sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = PDUReader(max_pdata_length=0)
        self.received: asyncio.Queue[PDU | None] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.aborted = False  # the SCP sent an A-ABORT
        self.sent = 0
        self.connected_at = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, port: int, timeout: float, source: str = ATTACKER_ADDR) -> Peer:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while chunk := await self.reader.read(1 << 16):
                self.decoder.feed(chunk)
                while (pdu := self.decoder.next_pdu()) is not None:
                    self.aborted |= isinstance(pdu, AAbort)
                    self.received.put_nowait(pdu)
        except (OSError, DicomError):
            pass  # reset by the SCP, or bytes that are no PDU: either way it is over
        finally:
            self.gone.set()
            self.received.put_nowait(None)

    def ending(self) -> str:
        """How the SCP ended this connection."""
        return "abort" if self.aborted else "closed"

    async def send(self, *chunks: bytes) -> None:
        """Write and wait while the SCP does not read; PeerGone once it has closed."""
        if self.gone.is_set():
            raise PeerGone
        try:
            self.writer.writelines(chunks)
            await self.writer.drain()
        except OSError as exc:  # ConnectionResetError, BrokenPipeError
            raise PeerGone from exc
        self.sent += sum(len(c) for c in chunks)
        await asyncio.sleep(0)  # drain() does not yield while the buffer has room

    async def next_pdu(self) -> PDU:
        """The next PDU from the SCP; PeerGone if it closes first."""
        pdu = await self.received.get()
        if pdu is None:
            self.received.put_nowait(None)  # later calls see the end too
            raise PeerGone
        return pdu

    async def associate(self, called_ae: str) -> AAssociateAC:
        await self.send(association_request(called_ae))
        pdu = await self.next_pdu()
        if isinstance(pdu, AAssociateAC):
            return pdu
        if isinstance(pdu, AAssociateRJ):
            raise Rejected
        raise PeerGone

    async def response(self) -> Command:
        """The next DIMSE response's command set (data set PDVs skipped)."""
        command = b""
        while True:
            pdu = await self.next_pdu()
            if not isinstance(pdu, PDataTF):
                raise PeerGone  # A-ABORT, A-RELEASE-RQ: the message will not come
            for pdv in pdu.pdvs:
                if pdv.is_command:
                    command += bytes(pdv.data)
                    if pdv.is_last:
                        return Command.decode(command)

    async def wait_gone(self, timeout: float | None) -> bool:
        """True if the SCP closed within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self.gone.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self._task.cancel()
        self.writer.transport.abort()


# --------------------------------------------------------------------------- side processes


async def stdin_signals() -> tuple[asyncio.Event, asyncio.Event]:
    """(go, stop): set when stdin says GO, and when stdin closes."""
    go, stop = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    buffered = bytearray()

    def readable() -> None:
        data = os.read(fd, 4096)
        buffered.extend(data)
        if GO.encode() in buffered:
            go.set()
        if not data:
            loop.remove_reader(fd)
            go.set()
            stop.set()

    loop.add_reader(fd, readable)
    return go, stop


async def serve_side(
    prepare: Callable[[], Awaitable[None]],
    work: Callable[[asyncio.Event], Awaitable[dict[str, Any]]],
) -> None:
    """Prepare, say READY, wait for GO, work (until done or stdin closes), print RESULT."""
    go, stop = await stdin_signals()
    await prepare()
    print(READY, flush=True)
    await go.wait()
    result = await work(stop)
    times = os.times()
    result["cpu_s"] = round(times.user + times.system, 2)
    print(RESULT + json.dumps(result), flush=True)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list, None if empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(len(sorted_values) * fraction))
    return sorted_values[min(len(sorted_values), rank) - 1]
