"""Retries: which failures are worth another try, and how long to wait before it.

A :class:`RetryPolicy` says how many attempts an operation gets, how the
waits between them grow (exponential backoff with jitter, so that many
clients failing together do not come back together), and the deadline of
all attempts together. :func:`retry_reason` says whether a failure is worth
another try, and why:

- the peer was unreachable (refused, no route, name unknown for now);
- it rejected the association as transient (PS3.8 Table 9-21, result 2:
  busy, local limit exceeded);
- the association was aborted or the connection lost before a result;
- a timeout, for operations that may be repeated without harm (C-ECHO,
  C-FIND; a retrieve or store retries only what did not complete).

A permanent rejection, a failure status the peer answered, or a local
error is never retried: the same request would get the same answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from adicom.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectionClosed,
    DicomTimeout,
    PeerUnreachable,
)

__all__ = ["NO_RETRY", "RetryPolicy", "retry_reason", "retrying"]

log = logging.getLogger("adicom")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to try again.

    ``attempts`` counts every try (1: no retry). The wait before try ``n``
    (n >= 2) is ``backoff * multiplier ** (n - 2)``, at most ``max_delay``,
    then scaled by a random factor in [1 - jitter, 1]. ``deadline`` (None:
    none) bounds all tries and waits together, in seconds from the first;
    no try starts after it. ``timeouts`` retries timeouts (of operations
    that may be repeated).
    """

    attempts: int = 3
    backoff: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 10.0
    jitter: float = 0.5
    deadline: float | None = 120.0
    timeouts: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.backoff < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("backoff and max_delay must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter}")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError(f"deadline must be positive, not {self.deadline}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before try ``attempt`` (2 for the first retry)."""
        base = min(self.backoff * self.multiplier ** max(attempt - 2, 0), self.max_delay)
        factor = 1 - self.jitter * (rng or random).random()
        return base * factor


#: Try once.
NO_RETRY = RetryPolicy(attempts=1)


def retry_reason(
    error: BaseException, *, idempotent: bool = True, timeouts: bool = True
) -> str | None:
    """Why ``error`` is worth another try, or None when it is not."""
    if isinstance(error, PeerUnreachable):
        return "the peer was unreachable"
    if isinstance(error, AssociationRejected):
        return "the peer rejected the association for now" if error.transient else None
    if isinstance(error, AssociationAborted | ConnectionClosed):
        return "the association was lost before a result"
    if isinstance(error, DicomTimeout):
        return "it timed out" if idempotent and timeouts else None
    return None


async def retrying(
    policy: RetryPolicy,
    operation: Callable[[], Awaitable[T]],
    what: str,
    *,
    idempotent: bool = True,
) -> T:
    """Run ``operation`` until it succeeds, fails for good, or the policy gives up.

    Each retry is logged with its reason; the last failure is raised as it was.
    """
    started = time.monotonic()
    attempt = 1
    while True:
        try:
            return await operation()
        except Exception as exc:
            reason = retry_reason(exc, idempotent=idempotent, timeouts=policy.timeouts)
            wait = policy.delay(attempt + 1)
            if reason is None or attempt >= policy.attempts:
                raise
            if policy.deadline is not None and (
                time.monotonic() - started + wait >= policy.deadline
            ):
                raise
            attempt += 1
            log.warning(
                "%s failed (%s: %s); try %d of %d in %.1f s",
                what,
                reason,
                exc,
                attempt,
                policy.attempts,
                wait,
            )
            await asyncio.sleep(wait)
