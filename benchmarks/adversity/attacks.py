"""The hostile peers: each attack is a body run on `slots` connections from 127.0.0.2 at once.

    python -m benchmarks.adversity.attacks --attack silent-500 --port P --seconds 8

A slot connects, runs the attack's body until the SCP ends the connection
(A-ABORT or close) or the body is done, notes the outcome, waits
`reconnect_delay` and goes again, until the window ends or stdin closes. Then
it prints ``RESULT {json}``: connections made, how they ended, bytes sent, the
statuses of any responses. Every wait is bounded by the window.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from adicom.dimse import Command
from adicom.errors import DicomError
from benchmarks.adversity import pdus
from benchmarks.adversity.pdus import (
    COMMAND_LAST,
    COMMAND_MORE,
    DATA_LAST,
    DATA_MORE,
    DEFLATED_STORE_CONTEXT,
    ECHO_CONTEXT,
    FIND_CONTEXT,
    STORE_CONTEXT,
    pdata,
)
from benchmarks.adversity.peer import Peer, PeerGone, Rejected, serve_side

NOT_ACCEPTED = "context-not-accepted"
#: Bytes handed to one write when streaming (several PDUs of the SCP's size).
BATCH = 1 << 18


@dataclass(frozen=True)
class Params:
    """How hard an attack pushes: connections at once, size, pacing."""

    slots: int = 1
    #: bytes to stream; MiB inflated (deflate-bomb); PDVs per PDU (tiny-pdvs)
    size: int = 0
    reconnect_delay: float = 0.05
    #: seconds between two bytes (PDVs) of a dribble
    interval: float = 1.0
    #: bytes in each PDV of tiny-pdvs and dribble-store
    pdv_bytes: int = 1
    #: source addresses the slots take turns on (127.0.0.2 and up)
    addresses: int = 1
    connect_timeout: float = 5.0


@dataclass
class Tally:
    """What the slots of one attack did, together."""

    port: int
    called_ae: str
    params: Params
    connects: int = 0
    connect_failures: int = 0
    open: int = 0
    max_open: int = 0
    associated: int = 0
    max_associated: int = 0
    bytes_sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    #: seconds from the first data byte to the SCP closing (dribble-store)
    closed_after_s: list[float] = field(default_factory=list)
    #: seconds from connecting to the SCP ending the connection (first 50)
    round_s: list[float] = field(default_factory=list)

    def summary(self, open_at_end: int, seconds: float) -> dict[str, Any]:
        return {
            "params": vars(self.params),
            "seconds": round(seconds, 3),
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "max_open": self.max_open,
            "open_at_end": open_at_end,
            "max_associated": self.max_associated,
            "bytes_sent": self.bytes_sent,
            "outcomes": dict(self.outcomes),
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "closed_after_s": [round(s, 3) for s in self.closed_after_s],
            "round_s": [round(s, 3) for s in self.round_s],
        }


Body = Callable[[Tally, Peer], Awaitable[str]]


async def _associated(t: Tally, peer: Peer, context_id: int) -> int | None:
    """Associate; the PDU length to write, or None if `context_id` was not accepted."""
    ac = await peer.associate(t.called_ae)
    if context_id not in pdus.accepted_contexts(ac):
        return None
    return pdus.write_pdu_length(ac)


async def _send_all(peer: Peer, pieces: list[bytes]) -> None:
    batch: list[bytes] = []
    for piece in pieces:
        batch.append(piece)
        if sum(map(len, batch)) >= BATCH:
            await peer.send(*batch)
            batch = []
    if batch:
        await peer.send(*batch)


def _status(t: Tally, command: Command) -> str:
    status = f"0x{command.status or 0:04X}"
    t.statuses[status] += 1
    return f"answered {status}"


# --------------------------------------------------------------------------- the bodies


async def deflate_bomb(t: Tally, peer: Peer) -> str:
    """C-STOREs (one after the other on the association) of a data set deflated from
    `size` MiB (mostly a private OB of zeros before the Study/Series UIDs) to ~1 KB/MiB."""
    pdu_length = await _associated(t, peer, DEFLATED_STORE_CONTEXT)
    if pdu_length is None:
        return NOT_ACCEPTED
    message_id = 0
    while True:
        message_id += 1
        uid = pdus.new_uid()
        await peer.send(pdata(DEFLATED_STORE_CONTEXT, COMMAND_LAST, pdus.store_rq(uid, message_id)))
        data = pdus.deflate_bomb(t.params.size, uid)
        await _send_all(peer, pdus.fragments(DEFLATED_STORE_CONTEXT, DATA_MORE, data, pdu_length))
        _status(t, await peer.response())


async def _stream(
    t: Tally, peer: Peer, context_id: int, command: bytes | None, control: int, end: bool
) -> str:
    """After `command` (if any), `size` bytes of PDVs with `control` (a data set
    starting with `stream_head`, or, without a command, zeros), the last one marked
    last if `end`; then wait for the response, or (not `end`) for the SCP to give up."""
    pdu_length = await _associated(t, peer, context_id)
    if pdu_length is None:
        return NOT_ACCEPTED
    total, sent = t.params.size, 0
    if command is not None:
        await peer.send(pdata(context_id, COMMAND_LAST, command))
        head = pdus.stream_head(total)
        await peer.send(pdata(context_id, control, head))
        sent = len(head)
    filler, room = pdus.filler_pdu(context_id, control, pdu_length)
    per_write = max(1, BATCH // len(filler))
    while total - sent > room:
        n = min(per_write, (total - sent - 1) // room)
        await peer.send(*[filler] * n)
        sent += n * room
    await peer.send(pdata(context_id, control | (DATA_LAST if end else 0), bytes(total - sent)))
    if not end:
        await peer.gone.wait()
        return peer.ending()
    return _status(t, await peer.response())


async def big_identifier(t: Tally, peer: Peer) -> str:
    """A C-FIND-RQ whose identifier is `size` bytes, streamed as fast as the SCP reads."""
    return await _stream(t, peer, FIND_CONTEXT, pdus.find_rq(), DATA_MORE, end=True)


async def echo_with_dataset(t: Tally, peer: Peer) -> str:
    """A C-ECHO-RQ that announces a data set, then `size` bytes of it."""
    return await _stream(t, peer, ECHO_CONTEXT, pdus.echo_rq_with_dataset(), DATA_MORE, end=True)


async def unterminated_command(t: Tally, peer: Peer) -> str:
    """Command PDVs, none marked last, `size` bytes in all; then wait."""
    return await _stream(t, peer, ECHO_CONTEXT, None, COMMAND_MORE, end=False)


async def tiny_pdvs(t: Tally, peer: Peer) -> str:
    """After a C-STORE-RQ, PDUs of `size` PDVs of `pdv_bytes` (1) each, as fast as the SCP
    reads them."""
    pdu_length = await _associated(t, peer, STORE_CONTEXT)
    if pdu_length is None:
        return NOT_ACCEPTED
    await peer.send(pdata(STORE_CONTEXT, COMMAND_LAST, pdus.store_rq(pdus.new_uid())))
    size = t.params.pdv_bytes
    count = min(t.params.size, pdu_length // (6 + size))
    flood = pdus.tiny_pdvs_pdu(STORE_CONTEXT, count, size)
    while True:
        await peer.send(flood)


async def dribble_store(t: Tally, peer: Peer) -> str:
    """After a C-STORE-RQ, its data set `pdv_bytes` (1) bytes, in one PDU, every `interval`
    seconds."""
    if await _associated(t, peer, STORE_CONTEXT) is None:
        return NOT_ACCEPTED
    await peer.send(pdata(STORE_CONTEXT, COMMAND_LAST, pdus.store_rq(pdus.new_uid())))
    started = time.monotonic()
    while True:
        await peer.send(pdata(STORE_CONTEXT, DATA_MORE, bytes(t.params.pdv_bytes)))
        if await peer.wait_gone(t.params.interval):
            t.closed_after_s.append(time.monotonic() - started)
            return peer.ending()


async def silent(t: Tally, peer: Peer) -> str:
    """Connect and send nothing."""
    await peer.gone.wait()
    return peer.ending()


async def dribble_rq(t: Tally, peer: Peer) -> str:
    """The A-ASSOCIATE-RQ, one byte every `interval` seconds."""
    for byte in pdus.association_request(t.called_ae):
        await peer.send(bytes((byte,)))
        if await peer.wait_gone(t.params.interval):
            return peer.ending()
    await peer.next_pdu()
    return "request-answered"


async def idle_assoc(t: Tally, peer: Peer) -> str:
    """Associate, then hold the association and send nothing."""
    await peer.associate(t.called_ae)
    t.associated += 1
    t.max_associated = max(t.max_associated, t.associated)
    try:
        await peer.gone.wait()
    finally:
        t.associated -= 1
    return peer.ending()


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Attack:
    name: str
    body: Body
    defaults: Params


ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack("deflate-bomb", deflate_bomb, Params(size=1024)),
        Attack("big-identifier", big_identifier, Params(size=300_000_000)),
        Attack("echo-with-dataset", echo_with_dataset, Params(size=100_000_000)),
        Attack("unterminated-command", unterminated_command, Params(size=100_000_000)),
        Attack("tiny-pdvs", tiny_pdvs, Params(size=1000)),
        Attack("tiny-pdvs-4", tiny_pdvs, Params(slots=4, size=1000)),
        Attack("silent-500", silent, Params(slots=500, reconnect_delay=1.0)),
        Attack("dribble-rq-500", dribble_rq, Params(slots=500, reconnect_delay=1.0)),
        Attack("idle-assoc-500", idle_assoc, Params(slots=500, reconnect_delay=1.0)),
        Attack("dribble-store", dribble_store, Params(reconnect_delay=1.0)),
        Attack("emfile-3000", silent, Params(slots=3000, reconnect_delay=1.0)),
        Attack("sigterm-sta2", silent, Params(slots=50, reconnect_delay=1.0)),
    )
}


# --------------------------------------------------------------------------- running one


async def _round(attack: Attack, t: Tally, source: str) -> str | None:
    """One connection of one slot: its outcome, or None if it could not connect."""
    try:
        peer = await Peer.connect(t.port, t.params.connect_timeout, source)
    except (OSError, TimeoutError) as exc:
        t.connect_failures += 1
        t.errors[type(exc).__name__] += 1
        return None
    t.connects += 1
    t.open += 1
    t.max_open = max(t.max_open, t.open)
    try:
        outcome = await attack.body(t, peer)
    except PeerGone:
        outcome = peer.ending()
    except Rejected:
        outcome = "rejected"
    except DicomError as exc:  # a response that does not decode
        outcome = "bad-response"
        t.errors[type(exc).__name__] += 1
    finally:
        t.open -= 1
        t.bytes_sent += peer.sent
        peer.close()
    if len(t.round_s) < 50:
        t.round_s.append(time.monotonic() - peer.connected_at)
    return outcome


async def _slot(attack: Attack, t: Tally, index: int) -> None:
    """Connect, attack, and again after each end, until cancelled."""
    source = pdus.attacker_address(index % t.params.addresses)
    while True:
        outcome = await _round(attack, t, source)
        if outcome is not None:
            t.outcomes[outcome] += 1
            if outcome == NOT_ACCEPTED:
                return  # no use trying again
        await asyncio.sleep(t.params.reconnect_delay)


async def run_attack(
    attack: Attack, t: Tally, seconds: float, stop: asyncio.Event
) -> dict[str, Any]:
    """Run `t.params.slots` slots for `seconds` (or until `stop`); the tally as JSON."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    slots = [loop.create_task(_slot(attack, t, i)) for i in range(t.params.slots)]
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
    open_at_end = t.open
    for task in slots:
        task.cancel()
    await asyncio.wait(slots, timeout=10)
    for task in slots:
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            t.errors[f"slot failed: {type(exc).__name__}: {exc}"] += 1
    return t.summary(open_at_end, time.monotonic() - started)


def _raise_nofile() -> None:
    """Thousands of connections need more descriptors than the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attack", required=True, choices=sorted(ATTACKS))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--called-ae", default=pdus.CALLED_AE)
    p.add_argument("--slots", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--reconnect-delay", type=float)
    p.add_argument("--interval", type=float)
    p.add_argument("--pdv-bytes", type=int)
    p.add_argument("--addresses", type=int)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    attack = ATTACKS[args.attack]
    names = ("slots", "size", "reconnect_delay", "interval", "pdv_bytes", "addresses")
    overrides = {k: getattr(args, k) for k in names}
    params = replace(attack.defaults, **{k: v for k, v in overrides.items() if v is not None})
    _raise_nofile()
    tally = Tally(args.port, args.called_ae, params)

    async def prepare() -> None:
        if attack.body is deflate_bomb:
            pdus.deflate_bomb(1, pdus.new_uid())  # builds the cached block of zeros

    async def work(stop: asyncio.Event) -> dict[str, Any]:
        return await run_attack(attack, tally, args.seconds, stop)

    asyncio.run(serve_side(prepare, work))


if __name__ == "__main__":
    main()
