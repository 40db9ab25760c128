"""Associations per second an SCP answers: one raw client, the same for every SCP.

The issue's association row compared adicom with "a raw client against
storescp": a client that costs next to nothing, so that the SCP's own cost
per association is what the rate shows. This is that client, in its own
process (or ``--lanes N`` of them at once), against each SCP in the same
run:

- ``adicom``: ``python -m adicom serve`` as a user runs it (an archive,
  ``--loop auto``: uvloop when installed); ``adicom-asyncio`` the same on
  asyncio's own loop;
- ``dcmtk``: ``storescp`` (one process; TCP_NODELAY=1, as in the other
  benchmarks);
- ``floor`` (uvloop) and ``floor-asyncio``: the least any SCP on that event
  loop can do: a protocol that answers each PDU with canned bytes (an
  A-ASSOCIATE-AC, a C-ECHO-RSP, an A-RELEASE-RP) and decodes nothing. What
  adicom spends over it is adicom's; what it spends over storescp is the
  loop's and the interpreter's.

Each cycle: connect, A-ASSOCIATE-RQ (Verification), A-ASSOCIATE-AC, one
C-ECHO-RQ and its response, A-RELEASE-RQ, A-RELEASE-RP, close. The
client's PDUs are encoded once; it reads each answer's PDU header and body
whole on a blocking socket with TCP_NODELAY. Reported per SCP: cycles per
second (median over ``--reps``), and the CPU seconds of the SCP and of the
clients per cycle, read from /proc (the clients' share shows how much of
the two cores the load itself took).

    python -m benchmarks.assocrate                  # 2,000 cycles, 1 lane, 3 reps
    python -m benchmarks.assocrate -n 4000 --lanes 2 --json out.json
    python -m benchmarks.assocrate --callgrind -n 200   # instructions, whatever the load
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from benchmarks.config import HOST, SCP_AET
from benchmarks.processes import callgrind_instructions, child_env, free_port, port_open
from benchmarks.procfs import proc_cpu_seconds
from benchmarks.rawdicom import VERIFICATION, associate_rq, p_data
from benchmarks.sides import dcmtk_side

SCPS = ("adicom", "adicom-asyncio", "dcmtk", "floor", "floor-asyncio")
#: Seconds an SCP has to listen, and one cycle to finish.
START_TIMEOUT = 30.0
CYCLE_TIMEOUT = 10.0
_PDU = struct.Struct(">BxI")
#: A-RELEASE-RQ (PS3.8 9.3.6): type 5, length 4, four reserved bytes.
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
#: A-RELEASE-RP (PS3.8 9.3.7), the same but type 6.
RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
#: Status (0000,0900) = 0x0000, Success, as a command encodes it (implicit VR
#: little endian, PS3.7 6.3.1): tag, length 2, value.
SUCCESS = b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00"


def echo_rq() -> bytes:
    """A C-ECHO-RQ as one P-DATA-TF PDU on presentation context 1."""
    from adicom.dimse import Command

    command = Command(
        command_field=0x0030,
        affected_sop_class_uid=VERIFICATION,
        message_id=1,
        command_data_set_type=0x0101,
    )
    return p_data([(1, 0x03, command.encode())])


def _read_pdu(sock: socket.socket, buffer: bytearray) -> tuple[int, int]:
    """Read one whole PDU into ``buffer``; its type and length (header included)."""
    view = memoryview(buffer)
    got = 0
    while got < 6:
        n = sock.recv_into(view[got:6])
        if not n:
            raise ConnectionError("the SCP closed the connection")
        got += n
    kind, length = _PDU.unpack_from(buffer)
    if length > len(buffer) - 6:
        raise ValueError(f"a PDU of {length} bytes")
    got = 0
    while got < length:
        n = sock.recv_into(view[6 + got : 6 + length])
        if not n:
            raise ConnectionError("the SCP closed the connection")
        got += n
    return int(kind), 6 + length


def client(port: int, cycles: int, *, ready: bool = False) -> dict[str, Any]:
    """Run ``cycles`` associate + echo + release cycles; when (monotonic clock) and this CPU.

    ``ready``: say so on stdout once prepared, and start at the next line of stdin.
    """
    request, echo = associate_rq(VERIFICATION, SCP_AET), echo_rq()
    buffer = bytearray(1 << 16)
    if ready:
        # Prepared (Python started, imports done): start with the other lanes.
        print("ready", flush=True)
        sys.stdin.readline()
    cpu0, started = time.process_time(), time.monotonic()
    for _ in range(cycles):
        with socket.create_connection((HOST, port), timeout=CYCLE_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            if (kind := _read_pdu(sock, buffer)[0]) != 2:
                raise RuntimeError(f"PDU type {kind} instead of A-ASSOCIATE-AC")
            sock.sendall(echo)
            kind, end = _read_pdu(sock, buffer)
            if kind != 4 or buffer.find(SUCCESS, 0, end) < 0:
                raise RuntimeError(f"PDU type {kind}: not a C-ECHO-RSP of status Success")
            sock.sendall(RELEASE_RQ)
            if (kind := _read_pdu(sock, buffer)[0]) != 6:
                raise RuntimeError(f"PDU type {kind} instead of A-RELEASE-RP")
    return {
        "cycles": cycles,
        "started": started,
        "ended": time.monotonic(),
        "cpu_s": time.process_time() - cpu0,
    }


class _Canned(asyncio.Protocol):
    """The floor SCP's connection: PDUs framed by their headers, answered with canned bytes."""

    def __init__(self, answers: dict[int, bytes]) -> None:
        self.answers = answers
        self.received = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        received = self.received + data if self.received else data
        while len(received) >= 6:
            kind, length = _PDU.unpack_from(received)
            end = 6 + length
            if len(received) < end:
                break
            assert self.transport is not None
            self.transport.write(self.answers[kind])
            received = received[end:]
        self.received = received


def floor_server(port: int, loop_name: str) -> None:
    """Serve canned answers on ``port`` until killed (the ``floor`` SCPs)."""
    from adicom.pdu import AAssociateAC, PresentationContextAC, UserInformation

    accept = AAssociateAC(
        called_ae=SCP_AET,
        calling_ae="BENCH-SCU",
        presentation_contexts=(PresentationContextAC(1, 0, "1.2.840.10008.1.2"),),
        user_information=UserInformation(
            maximum_length=16384, implementation_class_uid="1.2.826.0.1.3680043.10.1.1"
        ),
    ).encode()
    from adicom.dimse import Command

    response = Command(
        command_field=0x8030,
        affected_sop_class_uid=VERIFICATION,
        message_id_being_responded_to=1,
        command_data_set_type=0x0101,
        status=0,
    )
    answers = {1: accept, 4: p_data([(1, 0x03, response.encode())]), 5: RELEASE_RP}

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: _Canned(answers), HOST, port
        )
        print("listening", flush=True)
        await server.serve_forever()

    if loop_name == "uvloop":
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())


def _scp_argv(kind: str, port: int, scratch: Path) -> tuple[list[str], dict[str, str]]:
    if kind.startswith("floor"):
        loop = "asyncio" if kind == "floor-asyncio" else "uvloop"
        argv = [sys.executable, "-m", "benchmarks.assocrate", "--floor", str(port), loop]
        return argv, child_env()
    if kind.startswith("adicom"):
        loop = "asyncio" if kind == "adicom-asyncio" else "auto"
        argv = [sys.executable, "-m", "adicom", "serve", "--aet", SCP_AET, "--host", HOST,
                "--port", str(port), "--storage", str(scratch), "--loop", loop]  # fmt: skip
        return argv, child_env()
    tool = dcmtk_side.find_tool("storescp")
    if tool is None:
        raise RuntimeError("DCMTK storescp not found")
    return [tool, "-aet", SCP_AET, "-od", str(scratch), str(port)], child_env({"TCP_NODELAY": "1"})


def _wait_listening(
    proc: subprocess.Popen[bytes], port: int, timeout: float = START_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if proc.poll() is not None:
            raise RuntimeError(f"the SCP exited with {proc.returncode} before it listened")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the SCP did not listen within {timeout} s")
        time.sleep(0.05)


def callgrind_cycle(kind: str, cycles: int) -> float:
    """Instructions the SCP runs per cycle under callgrind, counted over the timed cycles only.

    The counters are zeroed after 20 cycles of warm-up (``callgrind_control
    -z``) and read after ``cycles`` more: user-space instructions, whatever
    the load (system calls are not in it), without the start or the stop.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="adicom-assocrate-") as scratch:
        argv, env = _scp_argv(kind, port, Path(scratch))
        out = Path(scratch) / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        with open(Path(scratch) / "scp.log", "wb") as log:
            scp = subprocess.Popen(
                [*valgrind, *argv], env=env, stdout=log, stderr=log, start_new_session=True
            )
        try:
            _wait_listening(scp, port, START_TIMEOUT * 10)  # ~50 times slower
            client(port, 20)
            subprocess.run(
                ["callgrind_control", "-z", str(scp.pid)],
                check=True,
                capture_output=True,
                timeout=START_TIMEOUT,
            )
            client(port, cycles)
            count = callgrind_instructions(scp.pid)
        finally:
            _stop(scp)
    if count <= 0:
        raise RuntimeError(f"callgrind counted no instructions for {kind}")
    return count / cycles


def _cpu(scp: subprocess.Popen[bytes]) -> float:
    """The SCP's CPU seconds so far (/proc); an error if they cannot be read."""
    seconds = proc_cpu_seconds(scp.pid)
    if seconds is None:
        raise RuntimeError(f"cannot read the SCP's CPU time (pid {scp.pid})")
    return seconds


def _stop(scp: subprocess.Popen[bytes]) -> None:
    """SIGTERM (each SCP ends cleanly on it; callgrind writes its counts), SIGKILL after 60 s."""
    os.killpg(scp.pid, signal.SIGTERM)
    try:
        scp.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(scp.pid, signal.SIGKILL)
        scp.wait(10)


def measure(kind: str, cycles: int, lanes: int) -> dict[str, Any]:
    """One repetition: start the SCP, run the lanes, stop it."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="adicom-assocrate-") as scratch:
        argv, env = _scp_argv(kind, port, Path(scratch))
        log_path = Path(scratch) / "scp.log"
        with open(log_path, "wb") as log:
            scp = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
        try:
            _wait_listening(scp, port)
            client(port, 50)  # warm: imports, first accept, caches
            share = [cycles // lanes + (1 if i < cycles % lanes else 0) for i in range(lanes)]
            children = [
                subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.assocrate", "--client", str(port), str(n)],
                    env=child_env(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                for n in share
            ]
            for child in children:  # every lane prepared before any starts
                assert child.stdout is not None
                if child.stdout.readline().strip() != b"ready":
                    raise RuntimeError("a client did not start")
            scp_cpu0 = _cpu(scp)
            for child in children:
                assert child.stdin is not None
                child.stdin.write(b"go\n")
                child.stdin.close()
            outs = []
            for child, n in zip(children, share, strict=True):
                assert child.stdout is not None
                outs.append(child.stdout.read())
                child.stdout.close()
                child.wait(CYCLE_TIMEOUT * n)
            scp_cpu = _cpu(scp) - scp_cpu0
            if any(child.returncode for child in children):
                raise RuntimeError(
                    f"a client failed (exit codes {[c.returncode for c in children]});"
                    f" the SCP's log ends: {log_path.read_text(errors='replace')[-2000:]}"
                )
        finally:
            _stop(scp)
    results = [json.loads(out) for out in outs]
    elapsed = max(r["ended"] for r in results) - min(r["started"] for r in results)
    return {
        "cycles_per_s": cycles / elapsed,
        "scp_cpu_us_per_cycle": scp_cpu / cycles * 1e6,
        "client_cpu_us_per_cycle": sum(r["cpu_s"] for r in results) / cycles * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.assocrate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "-n", type=int, default=2000, help="cycles per repetition (default %(default)s)"
    )
    parser.add_argument(
        "--lanes", type=int, default=1, help="client processes at once (default %(default)s)"
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions per SCP (default %(default)s)"
    )
    parser.add_argument("--scp", action="append", choices=SCPS, help="only this SCP (repeatable)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count the SCPs' instructions per cycle under valgrind instead (one lane, -n cycles)",
    )
    parser.add_argument("--floor", nargs=2, metavar=("PORT", "LOOP"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--client", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.floor:
        floor_server(int(args.floor[0]), args.floor[1])
        return 0
    if args.client:
        print(json.dumps(client(*args.client, ready=True)))
        return 0
    if args.n < args.lanes or args.lanes < 1 or args.reps < 1:
        parser.error("need -n >= --lanes >= 1 and --reps >= 1")
    if args.callgrind:
        counts = {kind: callgrind_cycle(kind, args.n) for kind in args.scp or SCPS}
        print(f"SCP instructions per associate + C-ECHO + release ({args.n} cycles, callgrind)")
        for kind, count in counts.items():
            print(f"{kind:16s} {count / 1000:8,.0f}k")
        if args.json:
            args.json.write_text(json.dumps({"n": args.n, "instructions": counts}, indent=1))
        return 0
    rows: dict[str, Any] = {}
    for kind in args.scp or SCPS:
        reps = []
        for rep in range(args.reps):
            result = measure(kind, args.n, args.lanes)
            reps.append(result)
            print(
                f"[{kind} {rep + 1}/{args.reps}] {result['cycles_per_s']:,.0f} cycles/s", flush=True
            )
        rows[kind] = {key: statistics.median(r[key] for r in reps) for key in reps[0]} | {
            "reps": reps
        }
    print(
        f"\nassociate + C-ECHO + release, raw client, {args.lanes} lane(s),"
        f" {args.n} cycles; medians"
    )
    print(f"{'SCP':16s} {'cycles/s':>9s} {'SCP CPU us/cycle':>17s} {'client CPU us/cycle':>20s}")
    for kind, row in rows.items():
        print(f"{kind:16s} {row['cycles_per_s']:9,.0f} {row['scp_cpu_us_per_cycle']:17.0f} "
              f"{row['client_cpu_us_per_cycle']:20.0f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"lanes": args.lanes, "n": args.n, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
