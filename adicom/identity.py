"""User identity negotiation (PS3.7 D.3.3.7): checking who a requestor says it is.

A requestor may send a user identity sub-item in its A-ASSOCIATE-RQ: a
username (type 1), a username and passcode (2), or a token: Kerberos (3),
SAML (4), JWT (5). The acceptor decides; when it refuses, it rejects the
association (PS3.8 Table 9-21: rejected-permanent, service-user,
no-reason-given, the only reason the standard has for it). When the
requestor asked for a positive response, an accepted identity is confirmed
in the A-ASSOCIATE-AC (with the server response of a token, if any).

:class:`Users` checks names and passwords against a users file (TOML)::

    [users.modality1]                 # a username alone is enough
    [users.alice]
    password = "scrypt$12$8$1$<salt>$<hash>"   # adicom hash-password

Passwords are kept as salted scrypt hashes (``hashlib.scrypt``, standard
library). scrypt runs on the event loop, so its cost is modest by default
(2**12, about 13 ms here; the cost is in each hash, ``--cost`` raises it);
a name and password once accepted are remembered (as a keyed digest) so a
modality's next associations cost nothing, and failed checks from one
address are limited (5 a minute) so wrong passwords cannot hold the loop.
Tokens are not checked by adicom itself: give :func:`identity_hook` a
``tokens`` callback that verifies them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import time
import tomllib
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from adicom.pdu import UserIdentityRQ

if TYPE_CHECKING:  # the server builds on this module; only its type is needed here
    from adicom.server import AssociationInfo

__all__ = [
    "IDENTITY_TYPES",
    "TokenVerifier",
    "Users",
    "check_password",
    "hash_password",
    "identity_hook",
    "read_password_file",
]

log = logging.getLogger("adicom")

#: PS3.7 Table D.3-14, User-Identity-Type.
IDENTITY_TYPES = {
    1: "username",
    2: "username and passcode",
    3: "Kerberos service ticket",
    4: "SAML assertion",
    5: "JSON Web Token",
}

#: Default scrypt cost, as a power of two (see the module's note).
DEFAULT_COST = 12

#: Checks a token (types 3-5): the server response to send back (b"" for
#: none) to accept, None to refuse.
TokenVerifier = Callable[[UserIdentityRQ, "AssociationInfo"], Awaitable[bytes | None]]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, cost: int = DEFAULT_COST) -> str:
    """A salted scrypt hash of ``password`` for a users file: ``scrypt$cost$r$p$salt$hash``."""
    if not 10 <= cost <= 20:
        raise ValueError(f"scrypt cost {cost} is out of range; allowed: 10 to 20 (2**cost)")
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=2**cost, r=8, p=1, maxmem=2**31 - 1, dklen=32
    )
    return f"scrypt${cost}$8$1${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` (a :func:`hash_password` result) was made of."""
    try:
        scheme, cost, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=2 ** int(cost),
            r=int(r),
            p=int(p),
            maxmem=2**31 - 1,
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


class Users:
    """The users an acceptor knows: names, and for some a password hash.

    Load them from a TOML file (:meth:`load`) or give them as a mapping of
    name -> hash (None: the name alone identifies the user).
    """

    #: Failed checks allowed from one address per minute, before refusing unchecked.
    MAX_FAILURES = 5

    def __init__(self, users: Mapping[str, str | None]) -> None:
        self.users = dict(users)
        self._key = os.urandom(32)  # for remembering accepted passwords, this process only
        self._accepted: set[bytes] = set()
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Users:
        """Read a users file (TOML, ``[users.NAME]`` tables with an optional ``password``)."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"users file {os.fspath(path)}: {exc}") from None
        table = data.get("users")
        if not isinstance(table, dict):
            raise ValueError(f"users file {os.fspath(path)}: no [users.NAME] table")
        users: dict[str, str | None] = {}
        for name, entry in table.items():
            if not isinstance(entry, dict):
                raise ValueError(f"users file {os.fspath(path)}: users.{name} is not a table")
            password = entry.get("password")
            if password is not None and (
                not isinstance(password, str) or not password.startswith("scrypt$")
            ):
                raise ValueError(
                    f"users file {os.fspath(path)}: users.{name}.password is not a hash "
                    "made by `adicom hash-password`"
                )
            users[name] = password
        return cls(users)

    def check(self, identity: UserIdentityRQ, address: str = "") -> str | None:
        """The user name if the identity is accepted; None (and why, logged) if not."""
        kind = IDENTITY_TYPES.get(identity.identity_type, f"type {identity.identity_type}")
        if identity.identity_type not in (1, 2):
            log.warning("user identity refused from %s: %s is not checked here", address, kind)
            return None
        name = identity.primary_field.decode("utf-8", "replace")
        if name not in self.users:
            log.warning("user identity refused from %s: unknown user %r", address, name)
            return None
        stored = self.users[name]
        if stored is None:
            return name  # known by name alone
        if identity.identity_type != 2:
            log.warning("user identity refused from %s: %r needs a password", address, name)
            return None
        remembered = hmac.new(
            self._key, name.encode() + b"\0" + identity.secondary_field, "sha256"
        ).digest()
        if remembered in self._accepted:
            return name
        failures = self._failures[address]
        now = time.monotonic()
        while failures and now - failures[0] > 60:
            failures.popleft()
        if len(failures) >= self.MAX_FAILURES:
            log.warning(
                "user identity refused from %s unchecked: %d wrong passwords in the last minute",
                address,
                len(failures),
            )
            return None
        if check_password(identity.secondary_field.decode("utf-8", "replace"), stored):
            self._accepted.add(remembered)
            return name
        failures.append(now)
        log.warning("user identity refused from %s: wrong password for %r", address, name)
        return None


def identity_hook(
    users: Users | None = None, tokens: TokenVerifier | None = None
) -> Callable[[UserIdentityRQ, AssociationInfo], Awaitable[bytes | None]]:
    """A ``Server(user_identity=...)`` hook: names and passwords by ``users``, tokens by ``tokens``.

    Either may be left out: what it would decide is then refused.
    """

    async def hook(identity: UserIdentityRQ, info: AssociationInfo) -> bytes | None:
        address = info.address[0] if info.address else ""
        if identity.identity_type in (1, 2):
            if users is None:
                return None
            return b"" if users.check(identity, address) is not None else None
        if tokens is None:
            kind = IDENTITY_TYPES.get(identity.identity_type, f"type {identity.identity_type}")
            log.warning("user identity refused from %s: no verifier for a %s", address, kind)
            return None
        return await tokens(identity, info)

    return hook


def read_password_file(path: Path) -> str:
    """A password from the first line of a file (so it is in no command line)."""
    return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
