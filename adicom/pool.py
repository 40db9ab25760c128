"""An association pool: open associations kept for the next call to the same peer.

Opening an association costs a TCP connection, an A-ASSOCIATE exchange and,
with TLS, a handshake: a few milliseconds on a LAN, more across a WAN, and
many times the cost of one small C-FIND. :class:`AssociationPool` keeps
associations open after use, per key (the peer, our AE title and the
presentation contexts and roles they agreed), and hands them to the next
call with the same key.

- At most ``max_per_key`` associations per key, ``max_total`` in all; a call
  beyond waits for one to come back (an idle one of another key is
  released to make room).
- An idle association is released after ``idle_timeout`` seconds, and one
  the peer ended meanwhile is dropped, never handed out.
- An association a call ended with an error is not reused: it is released
  (or aborted, when releasing is not possible) and the next call opens a
  new one.
- :meth:`AssociationPool.aclose` releases everything; so does leaving
  ``async with AssociationPool()``. Calls may share a pool under
  ``asyncio.gather``: each holds its association alone while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from types import TracebackType

from adicom.association import Association

__all__ = ["AssociationPool"]

log = logging.getLogger("adicom")


@dataclass(slots=True)
class _Idle:
    association: Association
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class AssociationPool:
    """Keeps associations open for reuse (see the module's text)."""

    def __init__(
        self, *, max_per_key: int = 4, max_total: int = 32, idle_timeout: float = 30.0
    ) -> None:
        if max_per_key < 1 or max_total < max_per_key:
            raise ValueError("max_per_key must be at least 1 and max_total at least max_per_key")
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
        self.max_per_key = max_per_key
        self.max_total = max_total
        self.idle_timeout = idle_timeout
        # Per key: the idle associations, most recently used last.
        self._idle: dict[Hashable, list[_Idle]] = {}
        # Per key: how many are open (idle or in use).
        self._open: dict[Hashable, int] = {}
        self._lru: OrderedDict[Hashable, None] = OrderedDict()
        self._changed = asyncio.Condition()
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        #: How many associations were opened, and how many calls reused one.
        self.stats = {"opened": 0, "reused": 0, "discarded": 0, "expired": 0}

    @property
    def open_count(self) -> int:
        """Associations open now, idle or in use."""
        return sum(self._open.values())

    async def __aenter__(self) -> AssociationPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def lease(
        self, key: Hashable, opener: Callable[[], Awaitable[Association]]
    ) -> AsyncIterator[Association]:
        """An association for ``key``: an idle one, else one ``opener`` opens.

        It comes back to the pool when the block ends normally; after an
        error it is released and forgotten.
        """
        if self._closed:
            raise RuntimeError("the association pool is closed")
        association = await self._take(key, opener)
        try:
            yield association
        except BaseException:
            async with self._changed:
                self._discard(key, association)
                self._changed.notify_all()
            raise
        async with self._changed:
            self._give_back(key, association)
            self._changed.notify_all()

    async def _take(
        self, key: Hashable, opener: Callable[[], Awaitable[Association]]
    ) -> Association:
        async with self._changed:
            while True:
                idle = self._idle.get(key)
                while idle:
                    entry = idle.pop()
                    if entry.timer is not None:
                        entry.timer.cancel()
                    if entry.association.is_established:
                        self.stats["reused"] += 1
                        self._lru.move_to_end(key)
                        return entry.association
                    self._forget(key)  # the peer ended it meanwhile
                if self._open.get(key, 0) < self.max_per_key and (
                    self.open_count < self.max_total or self._evict_one()
                ):
                    self._open[key] = self._open.get(key, 0) + 1
                    self._lru[key] = None
                    self._lru.move_to_end(key)
                    break
                await self._changed.wait()
        try:
            association = await opener()
        except BaseException:
            async with self._changed:
                self._forget(key)
            raise
        self.stats["opened"] += 1
        return association

    def _give_back(self, key: Hashable, association: Association) -> None:
        if self._closed or not association.is_established:
            self._discard(key, association)
            return
        entry = _Idle(association)
        entry.timer = asyncio.get_running_loop().call_later(
            self.idle_timeout, self._expire, key, entry
        )
        self._idle.setdefault(key, []).append(entry)

    def _discard(self, key: Hashable, association: Association) -> None:
        """Forget an association that ended a call with an error (released in the background)."""
        self.stats["discarded"] += 1
        self._forget(key)
        self._release_later(association)

    def _expire(self, key: Hashable, entry: _Idle) -> None:
        idle = self._idle.get(key, [])
        if entry in idle:
            idle.remove(entry)
            self.stats["expired"] += 1
            self._forget(key)
            self._release_later(entry.association)
            self._notify()

    def _evict_one(self) -> bool:
        """Release the least recently used idle association of any key; False if none."""
        key = next((k for k in self._lru if self._idle.get(k)), None)
        if key is None:
            return False
        entry = self._idle[key].pop(0)
        if entry.timer is not None:
            entry.timer.cancel()
        self._forget(key)
        self._release_later(entry.association)
        return True

    def _forget(self, key: Hashable) -> None:
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
            self._idle.pop(key, None)
            self._lru.pop(key, None)

    def _release_later(self, association: Association) -> None:
        task = asyncio.get_running_loop().create_task(_release(association))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _notify(self) -> None:
        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.get_running_loop().create_task(wake())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Release every idle association; those in use are released when they come back."""
        self._closed = True
        for key, idle in list(self._idle.items()):
            for entry in idle:
                if entry.timer is not None:
                    entry.timer.cancel()
                self._release_later(entry.association)
                self._forget(key)
        self._idle.clear()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=15)


async def _release(association: Association) -> None:
    """Release, or abort when the association cannot be released (bounded)."""
    try:
        if association.is_established:
            await association.release(timeout=5.0)
    except Exception as exc:
        log.debug("releasing a pooled association: %s", exc)
        association.abort()
