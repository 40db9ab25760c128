"""A raw asyncio PS3.8 client: just enough DICOM to load an SCP, and the probe.

The clients of ``benchmarks.scale`` (idle-5000, busy-1000, ``workers
--client raw``): A-ASSOCIATE-RQ from adicom's PDU codec, one pre-encoded
C-STORE or C-ECHO per message, A-RELEASE-RQ, on plain asyncio streams (a
full client per association would cost more than the server it measures);
``workers``' lanes are lighter still (``StoreLane``: whole messages written
from the read callback).
The probe times a new association's C-ECHO; ``Prober`` runs it in a process
of its own (``python -m benchmarks.scale --probe-child PORT``, whose body is
``probe_child``) so that the load's loop is not in its times.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from benchmarks.config import HOST, REPO_ROOT, SCP_AET, SCU_AET
from benchmarks.processes import child_env

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
#: Our maximum PDU length for what the SCP sends (responses are small).
OUR_MAX_PDU = 16384
_PDU = struct.Struct(">BxI")
_PDV = struct.Struct(">IBB")
_ELEMENT = struct.Struct("<HHI")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def associate_rq(abstract: str, called: str = SCP_AET) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``abstract`` (explicit, implicit VR LE) and Verification."""
    from adicom.pdu import AAssociateRQ, PresentationContextRQ, UserInformation

    contexts = [PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,))]
    if abstract != VERIFICATION:
        contexts.append(PresentationContextRQ(3, abstract, (EXPLICIT_LE, IMPLICIT_LE)))
    return AAssociateRQ(
        called_ae=called,
        calling_ae=SCU_AET,
        presentation_contexts=tuple(contexts),
        user_information=UserInformation(
            maximum_length=OUR_MAX_PDU, implementation_class_uid="1.2.826.0.1.3680043.10.1.1"
        ),
    ).encode()


def p_data(pdvs: list[tuple[int, int, bytes]]) -> bytes:
    """One P-DATA-TF PDU of (context ID, control header, bytes) PDVs (PS3.8 9.3.5)."""
    items = b"".join(_PDV.pack(len(v) + 2, ctx, flags) + v for ctx, flags, v in pdvs)
    return _PDU.pack(4, len(items)) + items


def message(context_id: int, command: bytes, dataset: bytes | None, max_pdu: int) -> bytes:
    """A DIMSE message as P-DATA-TF PDUs, each within the peer's maximum length."""
    # PS3.8 E.2: the command is a whole "last fragment" of its own (bits 0 and 1).
    out = [p_data([(context_id, 0x03, command)])]
    if dataset is not None:
        room = (max_pdu or 1 << 20) - 6  # PDV header
        for start in range(0, len(dataset), room):
            last = start + room >= len(dataset)
            out.append(
                p_data([(context_id, 0x02 if last else 0x00, dataset[start : start + room])])
            )
    return b"".join(out)


async def read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, length = _PDU.unpack(await reader.readexactly(6))
    return kind, await reader.readexactly(length)


class Failed(Exception):
    """An association of the load that did not do what it should."""


@dataclass
class RawAssociation:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    max_pdu: int
    message_id: int = 0
    #: Seconds the TCP connect took (from the call to the socket connected).
    connect_s: float = 0.0

    @classmethod
    async def open(cls, port: int, request: bytes, timeout: float) -> RawAssociation:
        from adicom.pdu import AAssociateAC

        async with asyncio.timeout(timeout):
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
            connect_s = time.perf_counter() - started
            writer.write(request)
            kind, body = await read_pdu(reader)
        if kind != 2:
            writer.close()
            raise Failed({3: "rejected", 7: "aborted"}.get(kind, f"PDU type {kind}"))
        accepted = AAssociateAC.decode(memoryview(body))
        return cls(reader, writer, accepted.user_information.maximum_length, connect_s=connect_s)

    async def request(self, context_id: int, command: bytes, dataset: bytes | None) -> int:
        """Send one request; the status of its response."""
        from adicom.dimse import Command

        self.writer.write(message(context_id, command, dataset, self.max_pdu))
        received = b""
        while True:
            kind, body = await read_pdu(self.reader)
            if kind != 4:
                raise Failed(f"PDU type {kind} instead of the response")
            pos = 0
            while pos < len(body):
                length, _, flags = _PDV.unpack_from(body, pos)
                received += body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if flags & 0x02:
                    status = Command.decode(received).status
                    return -1 if status is None else status

    async def release(self) -> None:
        self.writer.write(_PDU.pack(5, 4) + bytes(4))
        try:
            kind, _ = await read_pdu(self.reader)
        finally:
            self.writer.close()
        if kind != 6:
            raise Failed(f"PDU type {kind} instead of A-RELEASE-RP")


def command_status(command: bytes) -> int:
    """Status (0000,0900) of an implicit VR LE command set (PS3.7 6.3.1, E.1); -1 if absent."""
    pos, end = 0, len(command)
    while pos + 8 <= end:
        group, element, length = _ELEMENT.unpack_from(command, pos)
        if group == 0 and element == 0x0900 and length == 2:
            return int.from_bytes(command[pos + 8 : pos + 10], "little")
        pos += 8 + length
    return -1


class StoreLane(asyncio.Protocol):
    """One association that stores pre-encoded messages from its callbacks, no task per message.

    The load generator of ``workers --client raw``: each C-STORE-RQ is one
    ``bytes`` (its P-DATA-TF PDUs, built before the timed span), written
    from the callback that read the previous C-STORE-RSP, so what the client
    spends per instance is about one read callback and one write: far less
    than the server it measures. ``done`` ends with the number stored, or
    with :class:`Failed` (a refused association, a status other than
    Success, anything but the answer expected).
    """

    def __init__(self, request: bytes, messages: list[bytes], max_pdu: int) -> None:
        self._request = request
        self._messages = messages
        self._max_pdu = max_pdu
        self._buffer = bytearray()
        self._command = bytearray()
        self._sent = 0
        self._released = False
        self._transport: asyncio.Transport | None = None
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        try:
            while len(buffer) - pos >= 6:
                kind, length = _PDU.unpack_from(buffer, pos)
                if len(buffer) - pos - 6 < length:
                    break
                self._pdu(kind, bytes(buffer[pos + 6 : pos + 6 + length]))
                pos += 6 + length
        except Exception as exc:  # a PDU that does not parse, too: never left waiting
            self._end(exc if isinstance(exc, Failed) else Failed(f"{type(exc).__name__}: {exc}"))
        del buffer[:pos]

    def _pdu(self, kind: int, body: bytes) -> None:
        if kind == 2 and not self._sent:  # A-ASSOCIATE-AC
            from adicom.pdu import AAssociateAC

            accepted = AAssociateAC.decode(memoryview(body))
            limit = accepted.user_information.maximum_length
            if limit and limit < self._max_pdu:
                raise Failed(f"the SCP takes PDUs of {limit} bytes, the messages {self._max_pdu}")
            # The data sets are explicit VR little endian, on context 3.
            if not any(
                (pc.context_id, pc.result, pc.transfer_syntax) == (3, 0, EXPLICIT_LE)
                for pc in accepted.presentation_contexts
            ):
                raise Failed("the SCP did not accept CT Image Storage in explicit VR LE")
            self._next()
        elif kind == 4:  # P-DATA-TF: the C-STORE-RSP, in one or more PDVs
            pos = 0
            while pos < len(body):
                length, _, flags = _PDV.unpack_from(body, pos)
                self._command += body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if flags & 0x02:
                    status = command_status(bytes(self._command))
                    self._command.clear()
                    if status != 0:
                        raise Failed(f"C-STORE status {status:#06x}")
                    self._next()
        elif kind == 6 and self._released:  # A-RELEASE-RP
            self._end(None)
        else:
            raise Failed({3: "rejected", 7: "aborted"}.get(kind, f"PDU type {kind}"))

    def _next(self) -> None:
        assert self._transport is not None
        if self._sent < len(self._messages):
            self._transport.write(self._messages[self._sent])
            self._sent += 1
        else:
            self._released = True
            self._transport.write(_PDU.pack(5, 4) + bytes(4))  # A-RELEASE-RQ

    def _end(self, error: Failed | None) -> None:
        if self._transport is not None:
            self._transport.close()
        if not self.done.done():
            if error is None:
                self.done.set_result(self._sent)
            else:
                self.done.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(Failed("the connection closed"))


def echo_command(message_id: int) -> bytes:
    from adicom.dimse import Command, CommandField

    return Command(
        CommandField.C_ECHO_RQ, message_id=message_id, affected_sop_class_uid=VERIFICATION
    ).encode()


def store_command(message_id: int, sop_instance_uid: str) -> bytes:
    from adicom.dimse import c_store_rq

    return c_store_rq(CT_IMAGE_STORAGE, sop_instance_uid, message_id=message_id).encode()


def dataset_of(path: Path) -> tuple[str, bytes]:
    """(SOP Instance UID, the data set's bytes) of a DICOM file in explicit VR LE."""
    raw = path.read_bytes()
    # PS3.10 7.1: preamble, DICM, then group 2 led by its group length (UL).
    (meta_length,) = struct.unpack_from("<I", raw, 132 + 8)
    from pydicom.filereader import read_file_meta_info

    uid = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
    return uid, raw[132 + 12 + meta_length :]


async def probe_once(port: int, timeout: float = 30.0) -> tuple[float, float]:
    """Connect, associate, C-ECHO, then release (not timed).

    (seconds until the C-ECHO-RSP, seconds of them the TCP connect took): a
    slow probe whose time is its connect waited for the kernel (a SYN sent
    again when the listen backlog was full), not for the server's loop.
    """
    started = time.perf_counter()
    association = await RawAssociation.open(port, associate_rq(VERIFICATION), timeout)
    async with asyncio.timeout(timeout):
        status = await association.request(1, echo_command(1), None)
        took = time.perf_counter() - started
        if status != 0:
            raise Failed(f"C-ECHO status {status:#06x}")
        await association.release()
    return took, association.connect_s


async def probes(
    port: int, stop: asyncio.Event, every: float, limit: int
) -> tuple[list[float], list[float], int]:
    """Probe every ``every`` s until ``stop`` (at most ``limit``); (times, connects, failures)."""
    times: list[float] = []
    connects: list[float] = []
    failures = 0
    while not stop.is_set() and len(times) + failures < limit:
        try:
            took, connect = await probe_once(port)
            times.append(took)
            connects.append(connect)
        except (Failed, OSError, TimeoutError, asyncio.IncompleteReadError):
            failures += 1
        try:
            async with asyncio.timeout(every):
                await stop.wait()
        except TimeoutError:
            pass
    return times, connects, failures


async def probe_child(port: int, every: float, limit: int) -> None:
    """The prober's own process: probe until SIGTERM, then print the times as JSON."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # Import what a probe uses now: the first probe would pay for it (pydicom).
    associate_rq(VERIFICATION)
    echo_command(1)
    from adicom.dimse import Command
    from adicom.pdu import AAssociateAC

    del Command, AAssociateAC
    print("ready", flush=True)
    times, connects, failures = await probes(port, stop, every, limit)
    print(json.dumps({"times": times, "connects": connects, "failures": failures}), flush=True)


class Prober:
    """Probes from a process of its own, so that the clients' loop is not in its times.

    The storm's 1,000 client associations share this process's loop: a probe
    sharing it would wait behind their callbacks too and measure the client.
    Held idle, 5,000 of them still weigh on this process's garbage collector:
    a full pass over their objects is a pause in a probe sharing the process.
    """

    def __init__(self, port: int, every: float, limit: int = 10_000) -> None:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.scale",
                "--probe-child",
                str(port),
                "--probe-every",
                str(every),
                "--probe-limit",
                str(limit),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=child_env(),
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            self._process.kill()
            raise RuntimeError("the prober did not start")

    async def finished(self, timeout: float) -> tuple[list[float], list[float], int]:
        """Wait, without blocking the loop, until the prober has made its ``limit`` probes.

        Its times come as one line at its end, larger than a pipe holds for
        a few thousand probes: the pipe is read meanwhile, or the prober
        would wait on its write and never end. At ``timeout`` it is told to
        stop (SIGTERM) and reports the probes made so far.
        """
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        os.set_blocking(fd, False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        told = False
        out = bytearray()
        while True:
            try:
                chunk: bytes | None = os.read(fd, 1 << 16)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                break  # the prober printed its times and exited
            if chunk:
                out += chunk
                continue
            if loop.time() >= deadline:
                if told:
                    self._process.kill()
                    raise RuntimeError("the prober did not stop when told")
                self._process.send_signal(signal.SIGTERM)
                told = True
                deadline = loop.time() + 90  # a probe under way may take 60 s
            await asyncio.sleep(0.05)
        self._process.wait(10)
        return self._result(out.decode())

    def stop(self, timeout: float = 60.0) -> tuple[list[float], list[float], int]:
        """Stop probing; (probe times, their connect times, failures)."""
        self._process.send_signal(signal.SIGTERM)
        out, _ = self._process.communicate(timeout=timeout)
        return self._result(out)

    @staticmethod
    def _result(out: str) -> tuple[list[float], list[float], int]:
        result = json.loads(out.strip().splitlines()[-1])
        return result["times"], result["connects"], result["failures"]


async def open_many(
    port: int, n: int, request: bytes, opening: int, timeout: float
) -> tuple[list[RawAssociation], dict[str, int]]:
    """Open ``n`` associations, ``opening`` at a time; (the open ones, failures by kind)."""
    gate = asyncio.Semaphore(opening)
    failures: dict[str, int] = {}

    async def one() -> RawAssociation | None:
        async with gate:
            try:
                return await RawAssociation.open(port, request, timeout)
            except (Failed, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                kind = str(exc) if isinstance(exc, Failed) else type(exc).__name__
                failures[kind] = failures.get(kind, 0) + 1
                return None

    opened = await asyncio.gather(*(one() for _ in range(n)))
    return [a for a in opened if a is not None], failures


def probe_summary(times: list[float], connects: list[float], failures: int) -> dict[str, Any]:
    """The probes' p50, p99 and worst (ms), of their connects too; how many answered, failed."""
    return {
        "probe_p50_ms": ms(percentile(times, 50)),
        "probe_p99_ms": ms(percentile(times, 99)),
        "probe_max_ms": ms(max(times) if times else None),
        "probe_connect_p99_ms": ms(percentile(connects, 99)),
        "probe_connect_max_ms": ms(max(connects) if connects else None),
        "probes": len(times),
        "probe_failures": failures,
    }


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
