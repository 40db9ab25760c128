"""The base of :class:`adicom.DicomClient`: its options, retry policy and associations."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from ssl import SSLContext
from typing import Any, Self

from adicom.association import Association
from adicom.client import connect, open_association
from adicom.events import Hooks
from adicom.models import (
    DicomNode,
)
from adicom.pdu import RoleSelection, UserIdentityRQ
from adicom.pool import AssociationPool
from adicom.qrscu import Model
from adicom.retry import NO_RETRY, RetryPolicy
from adicom.settings import DicomSettings

log = logging.getLogger("adicom")


class PeerMemory:
    """Peers noted for a while: each for ``seconds``, the latest ``limit`` of them.

    What a client learned about a peer's behaviour (not its data), so that
    the next call does not ask again: entries older than ``seconds`` are
    forgotten when next looked at, and beyond ``limit`` peers the oldest
    note goes.
    """

    def __init__(self, seconds: float = 600.0, limit: int = 64) -> None:
        self.seconds = seconds
        self.limit = limit
        self._noted: dict[tuple[str, int, str], float] = {}

    @staticmethod
    def _key(peer: DicomNode) -> tuple[str, int, str]:
        return (peer.host, peer.port, peer.aet)

    def note(self, peer: DicomNode) -> None:
        """Remember ``peer`` from now on, for ``seconds``."""
        key = self._key(peer)
        self._noted.pop(key, None)
        self._noted[key] = time.monotonic() + self.seconds
        while len(self._noted) > self.limit:
            del self._noted[next(iter(self._noted))]

    def knows(self, peer: DicomNode) -> bool:
        """Whether ``peer`` was noted less than ``seconds`` ago."""
        key = self._key(peer)
        until = self._noted.get(key)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self._noted[key]
            return False
        return True

    def forget(self, peer: DicomNode) -> None:
        """Drop what was noted about ``peer``."""
        self._noted.pop(self._key(peer), None)


class ClientBase:
    """What every DicomClient call stands on: the options, and how it gets an association."""

    def __init__(
        self,
        calling_aet: str = "ADICOM",
        max_pdu: int = 16384,
        *,
        connect_timeout: float = 10.0,
        dimse_timeout: float = 30.0,
        timeout: float | None = None,
        get_sop_classes: Sequence[str] | None = None,
        get_offer: Mapping[str, Sequence[str]] | None = None,
        get_all_syntaxes: bool = False,
        model: Model = "study",
        ssl: SSLContext | None = None,
        user_identity: UserIdentityRQ | None = None,
        retry: RetryPolicy = NO_RETRY,
        pool: AssociationPool | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        DicomNode(aet=calling_aet, host="localhost", port=104)  # validates the AE title
        self.calling_aet = calling_aet.strip()
        self.max_pdu = max_pdu
        self.connect_timeout = connect_timeout
        self.dimse_timeout = dimse_timeout
        #: Default bound of a whole operation (None: none beyond dimse_timeout per response).
        self.timeout = timeout
        self.get_sop_classes = None if get_sop_classes is None else tuple(get_sop_classes)
        self.get_offer = (
            None if get_offer is None else {sop: list(ts) for sop, ts in get_offer.items()}
        )
        self.get_all_syntaxes = get_all_syntaxes
        self.model: Model = model
        #: TLS for every association (:func:`adicom.tls.client_context`); None: plain TCP.
        self.ssl = ssl
        #: Sent in every A-ASSOCIATE-RQ (PS3.7 D.3.3.7); None: no user identity.
        self.user_identity = user_identity
        #: When to try again (see :mod:`adicom.retry`); each call may override it.
        self.retry = retry
        #: Where associations are kept for the next call (None: one per call).
        self.pool = pool
        #: Event hooks of every association the client opens (see :mod:`adicom.events`).
        self.hooks = hooks
        # Peers whose C-FIND did not name the SOP class of an instance when
        # a C-GET asked what to offer: the next C-GET offers the common
        # classes without asking (see RetrieveMethods._get_contexts).
        self._classless = PeerMemory()

    @classmethod
    def from_settings(cls, settings: DicomSettings | None = None) -> Self:
        """A client configured from ``ADICOM_*`` environment variables."""
        settings = settings or DicomSettings()
        return cls(
            settings.aet,
            settings.max_pdu,
            connect_timeout=settings.connect_timeout,
            dimse_timeout=settings.dimse_timeout,
            ssl=settings.client_ssl_context(),
            retry=settings.retry_policy(),
        )

    def with_retry(self, retry: RetryPolicy) -> Self:
        """A copy of the client that retries as ``retry`` says: ``client.with_retry(p).echo(n)``."""
        clone = copy.copy(self)
        clone.retry = retry
        return clone

    def _retry(self, association: Association | None = None) -> RetryPolicy:
        """The policy of a call: none on an association the caller opened (it cannot reopen)."""
        return NO_RETRY if association is not None else self.retry

    @contextlib.asynccontextmanager
    async def _association(
        self,
        peer: DicomNode,
        contexts: list[tuple[str, list[str]]],
        roles: Sequence[RoleSelection] = (),
        association: Association | None = None,
    ) -> AsyncIterator[Association]:
        if association is not None:
            yield association
            return
        options: dict[str, Any] = {
            "calling_ae": self.calling_aet,
            "called_ae": peer.aet,
            "contexts": contexts,
            "roles": roles,
            "max_pdu": self.max_pdu,
            "connect_timeout": self.connect_timeout,
            "timeout": self.dimse_timeout,
            "ssl": self.ssl,
            "user_identity": self.user_identity,
            "hooks": self.hooks,
        }
        if self.pool is None:
            async with connect(peer.host, peer.port, **options) as opened:
                yield opened
            return
        # The same peer, as the same AE, with the same contexts and roles:
        # an association another call left open serves this one too.
        key = (
            peer.host,
            peer.port,
            peer.aet,
            self.calling_aet,
            tuple((abstract, tuple(syntaxes)) for abstract, syntaxes in contexts),
            tuple(roles),
            self.max_pdu,
            id(self.ssl),
            self.user_identity,
            id(self.hooks),
        )

        async def opener() -> Association:
            return await open_association(peer.host, peer.port, **options)

        async with self.pool.lease(key, opener) as leased:
            yield leased
