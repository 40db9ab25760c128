"""Per-peer rules: who may associate, from where, with which certificate, to do what."""

from __future__ import annotations

import pathlib
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

import adicom
from adicom.archive import Archive
from adicom.errors import AssociationRejected
from adicom.pdu import RoleSelection
from adicom.peers import SERVICES, Peer, PeerRules, service_of
from adicom.presentation import DEFAULT_TRANSFER_SYNTAXES, VERIFICATION

pytestmark = pytest.mark.anyio

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
SYNTAXES = list(DEFAULT_TRANSFER_SYNTAXES)

GOOD = """
[peers.CT1]
hosts = ["127.0.0.1"]
may = ["echo", "store"]
on_duplicate = "reject"

[peers.VIEWER]
hosts = ["127.0.0.0/8", "::1"]
may = ["echo", "find", "get", "move"]
move_destination = "127.0.0.1:11113"

[peers.ELSEWHERE]
hosts = ["10.0.0.0/8"]
"""


def rules(tmp_path: pathlib.Path, text: str = GOOD) -> PeerRules:
    path = tmp_path / "peers.toml"
    path.write_text(text)
    return PeerRules.load(path)


def test_a_peers_file_is_read_and_checked(tmp_path: pathlib.Path) -> None:
    loaded = rules(tmp_path)
    assert set(loaded.peers) == {"CT1", "VIEWER", "ELSEWHERE"}
    assert loaded.peers["CT1"].may == {"echo", "store"}
    assert loaded.peers["ELSEWHERE"].may == SERVICES  # everything, when not said
    assert loaded.move_destinations() == {"VIEWER": ("127.0.0.1", 11113)}
    for text, said in (
        ('[peers.X]\nhosts = ["10.0.0.300"]\n', "hosts"),
        ('[peers.X]\nmay = ["delete"]\n', "may"),
        ('[peers.X]\nmove_destination = "host"\n', "move_destination"),
        ('[peers.X]\non_duplicate = "merge"\n', "on_duplicate"),
        ("[peers.X]\nport = 104\n", "unknown keys"),
        ("[peers.WAY-TOO-LONG-AE-TITLE]\n", "1 to 16 characters"),
        ("x = 1\n", "no [peers.AET] table"),
    ):
        with pytest.raises(ValueError, match=said.replace("[", r"\[").replace(".", r"\.")):
            rules(tmp_path, text)


def test_services_by_abstract_syntax() -> None:
    assert service_of(VERIFICATION) == "echo"
    assert service_of(CT) == "store"
    assert service_of("1.3.12.2.1107.5.9.1") == "store"  # private storage
    assert service_of(STUDY_FIND) == "find"
    assert service_of(STUDY_GET) == "get"
    assert service_of("1.2.840.10008.5.1.4.31") == "worklist"
    assert service_of("1.2.840.10008.1.20.1") == "commit"
    assert service_of("1.2.840.10008.3.1.2.3.3") == "mpps"
    assert service_of("1.2.840.10008.5.1.1.9") is None  # print management: none of ours
    viewer = Peer("VIEWER", may=frozenset({"get"}))
    assert viewer.allows(CT, scp_role=True) and not viewer.allows(CT)


async def test_only_known_peers_from_their_addresses_get_in(tmp_path: pathlib.Path) -> None:
    async with adicom.Server("ARCHIVE", port=0, peers=rules(tmp_path)) as server:

        async def echo(calling: str) -> int:
            async with adicom.connect(
                "127.0.0.1", server.port, calling_ae=calling, called_ae="ARCHIVE"
            ) as assoc:
                return await assoc.echo()

        assert await echo("CT1") == 0
        assert await echo("VIEWER") == 0
        for stranger in ("NOBODY", "ELSEWHERE"):  # unknown; known, but from 10.x only
            with pytest.raises(AssociationRejected) as refused:
                await echo(stranger)
            # PS3.8 Table 9-21: rejected-permanent, service-user, calling AE not recognized.
            assert (refused.value.result, refused.value.source, refused.value.reason) == (1, 1, 3)


async def test_a_peer_gets_contexts_only_for_what_it_may_do(tmp_path: pathlib.Path) -> None:
    archive = Archive(tmp_path / "archive")
    await archive.open()
    try:
        async with adicom.Server(
            "ARCHIVE", port=0, peers=rules(tmp_path), **archive.handlers()
        ) as server:
            proposed: list[tuple[str, list[str]]] = [
                (VERIFICATION, SYNTAXES), (CT, SYNTAXES), (STUDY_FIND, SYNTAXES),
                (STUDY_GET, SYNTAXES),
            ]  # fmt: skip

            async def accepted(calling: str, **options: Any) -> set[str]:
                async with adicom.connect(
                    "127.0.0.1", server.port, calling_ae=calling, called_ae="ARCHIVE",
                    contexts=proposed, **options,
                ) as assoc:  # fmt: skip
                    found = assoc.contexts.values()
                    rejected = {c.result for c in found if c.result != 0}
                    assert rejected <= {1}  # PS3.8 Table 9-18: user-rejection
                    return {str(c.abstract_syntax) for c in found if c.result == 0}

            assert await accepted("CT1") == {VERIFICATION, CT}
            # The viewer may get: a storage context with the SCP role is its way back.
            roles = [RoleSelection(CT, True, True)]
            assert await accepted("VIEWER", roles=roles) == {
                VERIFICATION,
                CT,
                STUDY_FIND,
                STUDY_GET,
            }
            assert await accepted("VIEWER") == {VERIFICATION, STUDY_FIND, STUDY_GET}
    finally:
        archive.close()


async def test_a_certificate_rule_needs_that_certificate(tmp_path: pathlib.Path) -> None:
    from adicom.tls import client_context, server_context
    from tests.test_tls import Pki

    pki = Pki(tmp_path)  # its client certificate says CN=MODALITY1
    peers = PeerRules()
    peers.add(Peer("MODALITY1", certificate="CN=MODALITY1"))
    peers.add(Peer("IMPOSTOR", certificate="CN=IMPOSTOR"))
    context = server_context(cert=pki.server_pem, ca=pki.ca_pem)
    async with adicom.Server("ARCHIVE", port=0, peers=peers, ssl=context) as server:

        async def echo(calling: str, with_certificate: bool) -> int:
            cert = pki.client_pem if with_certificate else None
            async with adicom.connect(
                "127.0.0.1", server.port, calling_ae=calling, called_ae="ARCHIVE",
                ssl=client_context(ca=pki.ca_pem, cert=cert),
            ) as assoc:  # fmt: skip
                return await assoc.echo()

        assert await echo("MODALITY1", True) == 0
        for calling, with_certificate in (("MODALITY1", False), ("IMPOSTOR", True)):
            with pytest.raises(AssociationRejected):
                await echo(calling, with_certificate)


async def test_the_duplicate_policy_is_per_peer(tmp_path: pathlib.Path) -> None:
    from adicom.cli.serve import _duplicate_policy

    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    dataset = pydicom.dcmread(path)
    peers = rules(tmp_path, GOOD + '\n[peers.PACS2]\nhosts = ["127.0.0.1"]\n')
    archive = Archive(tmp_path / "archive")
    archive.storage.duplicate_policy = _duplicate_policy(peers)
    await archive.open()
    try:
        async with adicom.Server("ARCHIVE", port=0, peers=peers, **archive.handlers()) as server:

            async def send(calling: str) -> int | None:
                (result,) = await adicom.store(
                    "127.0.0.1", server.port, [dataset], calling_ae=calling, called_ae="ARCHIVE"
                )
                return result.status

            assert await send("CT1") == 0x0000
            assert await send("CT1") == 0x0111  # CT1: on_duplicate = "reject"
            assert await send("PACS2") == 0x0000  # the server's default: replace
    finally:
        archive.close()


async def test_serve_reports_a_bad_peers_file(tmp_path: pathlib.Path) -> None:
    from tests.test_cli import run_cli

    bad = tmp_path / "peers.toml"
    bad.write_text('[peers.X]\nmay = ["delete"]\n')
    code, _, err = await run_cli("serve", "--port", "0", "--peers", str(bad))
    assert code == 2 and "peers.X.may" in err, err
