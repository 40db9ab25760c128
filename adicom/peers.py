"""Per-peer rules: who may associate, from where, and to do what.

A peers file (TOML) names each peer by its AE title::

    [peers.CT1]
    hosts = ["10.0.0.5"]                 # addresses or networks (CIDR); none: any
    certificate = "CN=ct1.hospital"      # with TLS: its certificate's subject must hold this
    may = ["echo", "store"]              # echo store find get move worklist commit mpps; none: all
    on_duplicate = "replace"             # what a second copy it sends does (archive)

    [peers.VIEWER]
    hosts = ["10.0.2.0/24"]
    may = ["echo", "find", "get", "move"]
    move_destination = "10.0.2.15:11112" # it can be sent to by C-MOVE
    on_duplicate = "reject"

With rules, a calling AE title the file does not name is rejected (PS3.8
Table 9-21: rejected-permanent, service-user, calling-AE-title-not-recognized),
and so is a known title from another address or with another certificate:
an AE title alone is something anyone can write. A peer's association gets
presentation contexts only for what it may do; the others are answered
"user-rejection" (PS3.8 Table 9-18, result 1). The move destinations of the
file join those of ``adicom serve --move-dest``.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field

from adicom.presentation import (
    MPPS,
    QR_FIND_SOP_CLASSES,
    QR_GET_SOP_CLASSES,
    QR_MOVE_SOP_CLASSES,
    STORAGE_COMMITMENT,
    VERIFICATION,
    WORKLIST_FIND,
    may_be_storage,
)

__all__ = ["SERVICES", "Peer", "PeerRules", "service_of"]

#: What a peer may be allowed to do.
SERVICES = frozenset({"echo", "store", "find", "get", "move", "worklist", "commit", "mpps"})
_DUPLICATES = frozenset({"replace", "keep", "reject"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def service_of(abstract_syntax: str) -> str | None:
    """The service a presentation context's abstract syntax belongs to (None: another)."""
    if abstract_syntax == VERIFICATION:
        return "echo"
    if abstract_syntax in QR_FIND_SOP_CLASSES:
        return "find"
    if abstract_syntax in QR_GET_SOP_CLASSES:
        return "get"
    if abstract_syntax in QR_MOVE_SOP_CLASSES:
        return "move"
    if abstract_syntax == WORKLIST_FIND:
        return "worklist"
    if abstract_syntax == STORAGE_COMMITMENT:
        return "commit"
    if abstract_syntax == MPPS:
        return "mpps"
    if may_be_storage(abstract_syntax):
        return "store"
    return None


@dataclass(frozen=True)
class Peer:
    """One known application entity and what it may do."""

    ae_title: str
    #: Where it may connect from; empty: anywhere.
    hosts: tuple[Network, ...] = ()
    #: With TLS: a part its certificate's subject must hold ("CN=ct1").
    certificate: str | None = None
    #: What it may do (of :data:`SERVICES`).
    may: frozenset[str] = SERVICES
    #: Where a C-MOVE sends to it, when it is a move destination.
    move_destination: tuple[str, int] | None = None
    #: The archive's policy for a second copy it sends (None: the server's).
    on_duplicate: str | None = None

    def from_address(self, host: str) -> bool:
        """Whether ``host`` is one of its addresses."""
        if not self.hosts:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.hosts)

    def allows(self, abstract_syntax: str, scp_role: bool = False) -> bool:
        """Whether a presentation context for ``abstract_syntax`` serves what it may do.

        A storage context in which it takes the SCP role is a C-GET's way
        back: it needs "get", not "store".
        """
        service = service_of(abstract_syntax)
        if service == "store" and scp_role:
            return "get" in self.may
        return service is not None and service in self.may


@dataclass
class PeerRules:
    """The known peers, by AE title; with rules, unknown ones are refused."""

    peers: dict[str, Peer] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PeerRules:
        """Read a peers file (TOML, ``[peers.AET]`` tables; see the module's note)."""
        where = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"peers file {where}: {exc}") from None
        table = data.get("peers")
        if not isinstance(table, dict) or not table:
            raise ValueError(f"peers file {where}: no [peers.AET] table")
        rules = cls()
        for title, entry in table.items():
            if not isinstance(entry, dict):
                raise ValueError(f"peers file {where}: peers.{title} is not a table")
            rules.add(_peer(title, entry, f"peers file {where}: peers.{title}"))
        return rules

    def add(self, peer: Peer) -> None:
        """Know ``peer`` (replacing what was known of its AE title)."""
        if not 0 < len(peer.ae_title) <= 16:
            raise ValueError(f"AE title must be 1 to 16 characters, not {peer.ae_title!r}")
        self.peers[peer.ae_title] = peer

    def admit(self, calling_ae: str, host: str, subject: str | None) -> Peer | str:
        """The peer a request comes from, or why it is refused."""
        peer = self.peers.get(calling_ae.strip())
        if peer is None:
            return f"{calling_ae!r} is not a known peer"
        if not peer.from_address(host):
            return f"{calling_ae!r} may not connect from {host}"
        if peer.certificate is not None and (subject is None or peer.certificate not in subject):
            shown = subject or "no certificate"
            return (
                f"{calling_ae!r} must present a certificate with {peer.certificate!r}, not {shown}"
            )
        return peer

    def move_destinations(self) -> dict[str, tuple[str, int]]:
        """AE title -> (host, port) of the peers that are C-MOVE destinations."""
        return {
            title: peer.move_destination
            for title, peer in self.peers.items()
            if peer.move_destination is not None
        }


def _peer(title: str, entry: Mapping[str, object], where: str) -> Peer:
    unknown = set(entry) - {"hosts", "certificate", "may", "move_destination", "on_duplicate"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    hosts = entry.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ValueError(f"{where}.hosts: a list of addresses or networks")
    try:
        networks = tuple(ipaddress.ip_network(h, strict=False) for h in hosts)
    except ValueError as exc:
        raise ValueError(f"{where}.hosts: {exc}") from None
    may = entry.get("may", sorted(SERVICES))
    if not isinstance(may, list) or not set(may) <= SERVICES:
        raise ValueError(f"{where}.may: a list of {', '.join(sorted(SERVICES))}")
    certificate = entry.get("certificate")
    if certificate is not None and not isinstance(certificate, str):
        raise ValueError(f"{where}.certificate: a text the certificate's subject holds")
    on_duplicate = entry.get("on_duplicate")
    if on_duplicate is not None and on_duplicate not in _DUPLICATES:
        raise ValueError(f"{where}.on_duplicate: one of {', '.join(sorted(_DUPLICATES))}")
    destination = entry.get("move_destination")
    address = None
    if destination is not None:
        host, _, port = str(destination).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{where}.move_destination: HOST:PORT, not {destination!r}")
        address = (host, int(port))
    return Peer(
        title,
        networks,
        certificate,
        frozenset(may),
        address,
        on_duplicate if isinstance(on_duplicate, str) else None,
    )
