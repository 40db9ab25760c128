"""Who may hold a connection to a server, and how many: the server's own limits.

A TCP connection costs a socket, a task and buffers before it is an
association, and an association costs more. :class:`Admission` counts both,
in total and per peer address, so that neither silent connections nor one
busy address can lock every other peer out:

* connections still negotiating (no A-ASSOCIATE-RQ yet, or not yet
  answered) have a cap of their own, so they never take the room of
  associations, and when it is full the longest silent one makes room;
* associations have their cap (beyond it, A-ASSOCIATE-RJ "local limit
  exceeded", transient: PS3.8 Table 9-21);
* one address holds at most so many connections of either kind;
* a connection whose association has ended (released, rejected or
  aborted) but which the peer has not closed yet gives its association's
  place back at once and waits for the close (PS3.8 9.1.5: ARTIM bounds
  that wait) as a connection not associated: it still counts against the
  caps on those and on its address, and it is the first to be closed when
  either is full, so a peer that never closes cannot pile up sockets.

A connection over a cap before its A-ASSOCIATE-RQ is closed at once (there
is nothing to answer yet); each refusal is logged once per interval, not once
per connection, so a flood cannot fill the log either.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

__all__ = ["Admission", "RateLimitedLog"]

log = logging.getLogger("adicom")


class RateLimitedLog:
    """Log a warning at most once per ``interval`` seconds per key, with the count since."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, message: str, *args: object) -> None:
        """Log ``message`` now, or count it if ``key`` was logged within the interval."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        if more:
            log.warning(message + " (and %d more like it)", *args, more)
        else:
            log.warning(message, *args)


class Admission:
    """Counts connections and associations, in total and per address, against caps.

    ``max_pending`` bounds connections not yet associated, ``max_associations``
    associations, ``max_per_address`` both together for one peer address
    (None for any of them: no limit). When the connections not yet
    associated fill their cap, the one that has waited longest without
    sending its A-ASSOCIATE-RQ is closed to make room: a peer that means to
    associate sends its request at once, one that holds a silent connection
    is the one that waits, so a flood of silent connections (even from many
    addresses) cannot keep a real peer out.
    """

    def __init__(
        self,
        *,
        max_associations: int | None = 500,
        max_pending: int | None = 128,
        max_per_address: int | None = 64,
    ) -> None:
        self.max_associations = max_associations
        self.max_pending = max_pending
        self.max_per_address = max_per_address
        self.pending = 0
        self.associated = 0
        # A plain dict: Counter's __missing__ is a Python call per new address.
        self._by_address: dict[str, int] = {}
        #: Connections that have not sent their A-ASSOCIATE-RQ, oldest first.
        self._silent: OrderedDict[int, Callable[[], None]] = OrderedDict()
        #: Connections whose association ended, waiting for the peer's close,
        #: oldest first: (address, close).
        self._closing: OrderedDict[int, tuple[str, Callable[[], None]]] = OrderedDict()
        #: Connections closed to make room, until their disconnect().
        self._evicted: set[int] = set()
        self._next_id = 0
        self.log = RateLimitedLog()

    def connect(self, address: str) -> int | str:
        """A connection from ``address`` opened: its ticket, or why it is refused."""
        held = self._by_address.get(address, 0)
        # A connection closed to make room still counts until its
        # disconnect(); the new one takes its place meanwhile.
        replaced = 0
        if self.max_per_address is not None and held >= self.max_per_address:
            ended = next((t for t, (a, _) in self._closing.items() if a == address), None)
            if ended is None:
                return f"{address} holds {held} connections (--max-per-address)"
            # One of its associations ended and it has not closed that
            # connection yet: that one goes.
            self._evict(ended, self._closing.pop(ended)[1])
            replaced = 1
        if self.max_pending is not None and self.pending - replaced >= self.max_pending:
            if self._closing:
                ticket, (_, close) = self._closing.popitem(last=False)
            elif self._silent:
                ticket, close = self._silent.popitem(last=False)
                self.log.warning(
                    "evicted",
                    "%d connections wait for their A-ASSOCIATE-RQ (--max-pending): closing the "
                    "oldest to make room",
                    self.pending,
                )
            else:
                return f"{self.pending} connections are still negotiating (--max-pending)"
            self._evict(ticket, close)
        self.pending += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        self._next_id += 1
        return self._next_id

    def _evict(self, ticket: int, close: Callable[[], None]) -> None:
        """Close ``ticket`` to make room; it counts until its disconnect()."""
        self._evicted.add(ticket)
        close()

    def silent(self, ticket: int, close: Callable[[], None]) -> None:
        """The connection ``ticket`` waits for its A-ASSOCIATE-RQ; ``close`` evicts it."""
        self._silent[ticket] = close

    def requested(self, ticket: int) -> None:
        """The connection ``ticket`` sent its A-ASSOCIATE-RQ: no longer evictable."""
        self._silent.pop(ticket, None)

    def associate(self) -> bool:
        """A negotiating connection asks to become an association: False when full."""
        if self.max_associations is not None and self.associated >= self.max_associations:
            return False
        self.pending -= 1
        self.associated += 1
        return True

    def closing(
        self, ticket: int, address: str, close: Callable[[], None], *, associated: bool
    ) -> None:
        """The association of ``ticket`` ended; its connection waits for the peer's close.

        Its association's place is free at once; until :meth:`disconnect`
        the connection counts as one not associated, and ``close`` ends it
        first when a cap is full (see the module's docstring).
        """
        self._silent.pop(ticket, None)
        if associated:
            self.associated -= 1
            self.pending += 1
        if ticket not in self._evicted:  # once closed to make room, not again
            self._closing[ticket] = (address, close)

    def disconnect(self, ticket: int, address: str, *, associated: bool) -> None:
        """A connection counted by :meth:`connect` ended (``associated``: still counted so)."""
        self._silent.pop(ticket, None)
        self._closing.pop(ticket, None)
        self._evicted.discard(ticket)
        if associated:
            self.associated -= 1
        else:
            self.pending -= 1
        held = self._by_address.get(address, 0) - 1
        if held > 0:
            self._by_address[address] = held
        else:
            self._by_address.pop(address, None)
