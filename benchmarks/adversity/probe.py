"""The well-behaved peer: is the SCP still serving others while it is attacked?

    python -m benchmarks.adversity.probe --port P --seconds 8

An adicom client from 127.0.0.1. Before READY it opens one association and
has one C-ECHO answered. After GO, for `seconds`:

- on that association a C-ECHO every 20 ms (the next one starts on schedule,
  or at once when the previous one took longer), each latency recorded; one
  that fails or takes more than ECHO_TIMEOUT counts as a failure and the
  association is opened again;
- every 250 ms a NEW association (connect, one C-ECHO, release) in a task of
  its own, bounded by FRESH_TIMEOUT: refused (A-ASSOCIATE-RJ), failed (timeout,
  reset, abort) or answered.

Then ``RESULT {json}``: p50/p99/max of the echo latencies, counts, and the
errors seen, by kind.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import adicom
from adicom.errors import AssociationRejected, DicomError
from benchmarks.adversity.pdus import CALLED_AE
from benchmarks.adversity.peer import HOST, percentile, serve_side

ECHO_INTERVAL = 0.020
FRESH_INTERVAL = 0.250
ECHO_TIMEOUT = 5.0
FRESH_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
PROBE_AE = "PROBE"


@dataclass
class ProbeStats:
    latencies_s: list[float] = field(default_factory=list)
    echo_failures: int = 0
    reassociations: int = 0
    fresh_ok: int = 0
    fresh_refused: int = 0
    fresh_failed: int = 0
    fresh_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def error(self, where: str, exc: BaseException) -> None:
        self.errors[f"{where}: {type(exc).__name__}: {str(exc)[:80]}"] += 1

    def summary(self, seconds: float) -> dict[str, Any]:
        lat = sorted(x * 1000 for x in self.latencies_s)
        fresh = sorted(x * 1000 for x in self.fresh_s)

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "seconds": round(seconds, 3),
            "echoes_answered": len(lat),
            "echo_failures": self.echo_failures,
            "reassociations": self.reassociations,
            "p50_ms": ms(percentile(lat, 0.50)),
            "p99_ms": ms(percentile(lat, 0.99)),
            "max_ms": ms(lat[-1] if lat else None),
            "fresh_attempts": self.fresh_ok + self.fresh_refused + self.fresh_failed,
            "fresh_ok": self.fresh_ok,
            "fresh_refused": self.fresh_refused,
            "fresh_failed": self.fresh_failed,
            "fresh_p50_ms": ms(percentile(fresh, 0.50)),
            "fresh_max_ms": ms(fresh[-1] if fresh else None),
            "errors": dict(self.errors.most_common(20)),
        }


async def _open(port: int) -> adicom.Association:
    return await adicom.open_association(
        HOST,
        port,
        calling_ae=PROBE_AE,
        called_ae=CALLED_AE,
        connect_timeout=CONNECT_TIMEOUT,
        timeout=ECHO_TIMEOUT,
    )


async def _echo(assoc: adicom.Association) -> float:
    started = time.perf_counter()
    async with asyncio.timeout(ECHO_TIMEOUT):
        await assoc.echo()
    return time.perf_counter() - started


class Probe:
    def __init__(self, port: int) -> None:
        self.port = port
        self.stats = ProbeStats()
        self.assoc: adicom.Association | None = None

    async def prepare(self) -> None:
        """The steady association, and one echo answered on it."""
        self.assoc = await _open(self.port)
        await _echo(self.assoc)

    async def steady(self, until: float, stop: asyncio.Event) -> None:
        """A C-ECHO every ECHO_INTERVAL on one association, reopened after a failure."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while loop.time() < until and not stop.is_set():
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due + ECHO_INTERVAL, loop.time())
            try:
                if self.assoc is None:
                    self.stats.reassociations += 1
                    self.assoc = await _open(self.port)
                self.stats.latencies_s.append(await _echo(self.assoc))
            except (DicomError, OSError, TimeoutError) as exc:
                self.stats.echo_failures += 1
                self.stats.error("echo", exc)
                if self.assoc is not None:
                    self.assoc.abort()
                    self.assoc = None
        if self.assoc is not None:
            try:
                await self.assoc.release(ECHO_TIMEOUT)
            except (DicomError, OSError):
                self.assoc.abort()

    async def fresh_once(self) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(FRESH_TIMEOUT):
                async with adicom.connect(
                    HOST,
                    self.port,
                    calling_ae=PROBE_AE,
                    called_ae=CALLED_AE,
                    connect_timeout=CONNECT_TIMEOUT,
                    timeout=FRESH_TIMEOUT,
                ) as assoc:
                    await assoc.echo()
        except AssociationRejected as exc:
            self.stats.fresh_refused += 1
            self.stats.error("new association", exc)
        except (DicomError, OSError, TimeoutError) as exc:
            self.stats.fresh_failed += 1
            self.stats.error("new association", exc)
        else:
            self.stats.fresh_ok += 1
            self.stats.fresh_s.append(time.perf_counter() - started)

    async def fresh(self, until: float, stop: asyncio.Event) -> None:
        """A new association every FRESH_INTERVAL, each in its own task; all awaited."""
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        due = loop.time()
        while loop.time() < until and not stop.is_set():
            tasks.append(loop.create_task(self.fresh_once()))
            due += FRESH_INTERVAL
            await asyncio.sleep(max(0.0, due - loop.time()))
        if tasks:
            await asyncio.wait(tasks)  # each ends within FRESH_TIMEOUT

    async def run(self, seconds: float, stop: asyncio.Event) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        until = started + seconds
        await asyncio.gather(self.steady(until, stop), self.fresh(until, stop))
        return self.stats.summary(loop.time() - started)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    args = p.parse_args(argv)
    probe = Probe(args.port)

    async def work(stop: asyncio.Event) -> dict[str, Any]:
        return await probe.run(args.seconds, stop)

    asyncio.run(serve_side(probe.prepare, work))


if __name__ == "__main__":
    main()
