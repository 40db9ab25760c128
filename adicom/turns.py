"""A budget of input work per turn of the event loop, shared by every association on it.

One loop serves every association, and asyncio runs each ready callback
once per turn (one pass over what ``select`` reported). When 1,000 peers
each send a 40 KB C-STORE at the same moment, one turn parses and files
all 1,000 instances, about half a second; a new association's C-ECHO waits
a whole turn for each of its round trips (connect, A-ASSOCIATE, the echo),
and so does everyone else. The per-callback bound of the PDU reader
(:data:`adicom.driver.PARSE_BUDGET`) does not help there: each callback is
small, there are just very many of them.

So each loop has a :class:`LoopTurns`, and every association's driver
charges it the time its input callbacks take. A turn's budget
(:attr:`LoopTurns.budget`) counts that input work and, once the loop is
busy, everything else the previous turn did (chiefly the handler tasks of
the messages parsed: a C-STORE's filing and its response), so a turn is
bounded as a whole. Once the budget is spent, input that arrives later in
the turn is not parsed: the bytes stay in the association's PDU reader (one
read at most, so nothing grows), the association stops reading (TCP pushes
back on its peer) and waits in a queue. The next turn begins with the
queues, within the budget:

- first the *sparse* associations, those that sent little lately (a new
  association, a probe's C-ECHO, a worklist query): each has a
  :class:`Share` of credit, :data:`CREDIT` bytes, that what it sends uses
  up and that comes back at :data:`REFILL` bytes per second; with credit
  left it is sparse, and the one with the most credit left goes first
  (least attained service first: when a thousand associations start
  storing at once, each has sent only its command yet, and a probe that
  sent less still goes before them). Bytes, not time: what a peer sends
  is what it asks of us, where the time an instance takes varies with the
  machine and the disk;
- then the *bulk* ones, round robin.

At least one of each is served per turn whatever the budget, so neither
starves (and a loop whose other work alone fills its turns, handlers that
compute for long between awaits, still reads its peers: one input of each
kind per turn; a larger budget then lets more through). And a sparse
association's input is parsed at once even when the budget is spent, until
the turn has taken twice the budget: its round trips then cost it no turn
more. An association that asks little is thus answered within a turn or
two however many bulk transfers share the loop, as a new flow is in a
fair-queuing router (fq_codel's "new flows" list is the same idea). Under
no load nothing changes: the budget is never reached, input is parsed in
the callback that received it, and the bookkeeping is a few arithmetic
operations per callback.

Turns are found without a callback in every turn: the turn-start callback
(:meth:`LoopTurns._turn`) is scheduled once a quarter of the budget is
charged or something waits, and reschedules itself while the loop stays
busy; so the charge of one "turn" may span a few quiet turns, never more
than a quarter budget of work.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from collections import deque
from collections.abc import Callable
from typing import Protocol

from adicom.deadlines import loop_clock
from adicom.pdu.reader import Staging

__all__ = ["CREDIT", "DEFAULT_TURN_BUDGET", "REFILL", "LoopTurns", "Share", "loop_turns"]

#: Seconds of work one loop turn does before further input waits for the
#: next turn (see the module's text). 0 or less: no budget.
DEFAULT_TURN_BUDGET = 0.002
#: Bytes an association may send ahead of bulk transfers while the loop is
#: busy: an A-ASSOCIATE-RQ with 128 presentation contexts (DCMTK storescu's
#: ~15 KB), C-ECHOs, queries; not a 40 KB C-STORE.
CREDIT = 16 * 1024
#: Credit coming back per second (a full CREDIT in ten seconds): an
#: association that waits that long between requests is sparse again; one
#: that stores an instance a second stays bulk.
REFILL = CREDIT / 10.0


class Deferred(Protocol):
    """What waits in a queue: an association's driver with input left to parse."""

    def _parse_deferred(self) -> None:
        """Parse what waits (charging the loop's turns), and read again or queue again."""


class Share:
    """One association's credit with its loop's turns (see the module's text)."""

    __slots__ = ("at", "credit")

    def __init__(self, now: float) -> None:
        #: Bytes it may still send ahead of bulk transfers.
        self.credit: float = CREDIT
        #: The loop time the credit was last brought up to date.
        self.at = now


class LoopTurns:
    """The input budget of one event loop's turns, and the associations waiting for it.

    Get the loop's with :func:`loop_turns`. ``budget`` is in seconds and can
    be changed at any time (``adicom serve --turn-budget``); 0 or less turns
    the budget off.
    """

    __slots__ = (
        "__weakref__",
        "_bulk",
        "_deferrals",
        "_loop",
        "_order",
        "_precharge",
        "_scheduled",
        "_sparse",
        "_started",
        "budget",
        "clock",
        "spent",
        "staging",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: float = DEFAULT_TURN_BUDGET):
        # The loop weakly, as the registry (loop_turns) keys it: a value that
        # held its key would keep every loop that ever ran an association
        # (asyncio.run per operation, as adicom.sync does: a loop each).
        self._loop = weakref.ref(loop)
        #: The loop's clock (adicom.deadlines.loop_clock), found once per loop.
        self.clock = _weak_clock(loop)
        self.budget = budget
        #: Work charged since the last turn started (seconds).
        self.spent = 0.0
        self._scheduled = False
        # When the last turn of a busy run started, what it was charged at
        # its start for the turn before it, and how many inputs it deferred.
        self._started: float | None = None
        self._precharge = 0.0
        self._deferrals = 0
        self._order = itertools.count()  # first come, first served among equals
        self._sparse: list[tuple[float, int, Deferred]] = []  # a heap
        self._bulk: deque[Deferred] = deque()
        #: The receive buffer the loop's associations share (reads are copied
        #: out in the callback that made them: see adicom.pdu.reader.Staging).
        self.staging = Staging()

    @property
    def exhausted(self) -> bool:
        """True when input arriving now waits for a later turn."""
        return 0.0 < self.budget <= self.spent

    @property
    def waiting(self) -> int:
        """How many associations wait with input for a later turn."""
        return len(self._sparse) + len(self._bulk)

    def share(self) -> Share:
        """A new association's :class:`Share`, with full credit."""
        return Share(self.clock())

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` of input work done now."""
        self.spent += seconds
        if not self._scheduled and self.spent * 4.0 >= self.budget > 0.0:
            self._scheduled = True
            self._schedule()

    def must_wait(self, share: Share, now: float) -> bool:
        """With the budget spent, must the input of ``share``'s association wait a turn.

        Not if it is sparse and the sparse ones have not taken a second
        budget in this turn: its round trip then costs no turn more.
        """
        credit = share.credit + (now - share.at) * REFILL
        share.credit = credit if credit < CREDIT else CREDIT
        share.at = now
        return credit <= 0.0 or self.spent >= 2.0 * self.budget

    def defer(self, driver: Deferred, share: Share) -> None:
        """``driver`` has input to parse in a later turn (and stopped reading)."""
        now = self.clock()
        credit = share.credit + (now - share.at) * REFILL
        share.credit = credit = credit if credit < CREDIT else CREDIT
        share.at = now
        self._deferrals += 1
        if credit > 0.0:
            # Ordered by the credit as capped: two associations with full
            # credit go first come first served, whatever the clock read.
            heapq.heappush(self._sparse, (-credit, next(self._order), driver))
        else:
            self._bulk.append(driver)
        if not self._scheduled:
            self._scheduled = True
            self._schedule()

    def _schedule(self) -> None:
        loop = self._loop()
        if loop is not None:  # else nothing is left to run a turn for
            loop.call_soon(self._turn)

    def _turn(self) -> None:
        # Scheduled from the previous turn, so it runs first in this one,
        # before the callbacks of what select() reported.
        self._scheduled = False
        now = self.clock()
        budget = self.budget if self.budget > 0.0 else float("inf")
        charged = self.spent - self._precharge  # input work since the last start
        # Busy: the previous turn deferred input or parsed much. Then this
        # runs at the start of every turn, and so knows each turn's length.
        busy = self._deferrals > 0 or charged * 4.0 >= budget
        self._deferrals = 0
        started = self._started
        # What the previous turn did besides input (handler tasks, writes,
        # the deferring itself) counts against this one: the more the
        # handlers took, the less new input is parsed, and the less they
        # take next turn.
        other = 0.0 if started is None else max(0.0, (now - started) - charged)
        self._precharge = self.spent = other if other < budget else budget
        sparse, bulk = self._sparse, self._bulk
        if sparse:
            heapq.heappop(sparse)[2]._parse_deferred()
            while sparse and self.spent < budget:
                heapq.heappop(sparse)[2]._parse_deferred()
        if bulk:
            bulk.popleft()._parse_deferred()
            while bulk and self.spent < budget:
                bulk.popleft()._parse_deferred()
        if busy or sparse or bulk or self._scheduled:
            self._started = now
            if not self._scheduled:
                self._scheduled = True
                self._schedule()
        else:
            self._started = None  # the next start is found lazily: its turn's length is not


def _weak_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop_clock(loop)``, not holding ``loop`` where that is ``loop.time`` itself (uvloop)."""
    clock = loop_clock(loop)
    if getattr(clock, "__self__", None) is not loop:
        return clock  # time.monotonic (asyncio's), or a clock of its own
    time_of: Callable[[object], float] = type(loop).time
    loop_ref = weakref.ref(loop)

    def now() -> float:
        return time_of(loop_ref())  # only read while its loop runs

    return now


_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopTurns] = (
    weakref.WeakKeyDictionary()
)


def loop_turns(loop: asyncio.AbstractEventLoop | None = None) -> LoopTurns:
    """The :class:`LoopTurns` of ``loop`` (the running loop by default), made on first use."""
    if loop is None:
        loop = asyncio.get_running_loop()
    turns = _TURNS.get(loop)
    if turns is None:
        turns = _TURNS[loop] = LoopTurns(loop)
    return turns
