"""Associations over TLS (PS3.15 B.9), both roles, and every way a handshake fails.

Certificates come from a throwaway CA made per test by trustme. Each failure
must end in a clear typed error on the client and a log line on the server,
which keeps serving the next (good) client.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trustme

import adicom
from adicom.errors import AssociationError, PeerUnreachable, TlsError
from adicom.pdu import UserIdentityRQ
from adicom.server import AssociationInfo
from adicom.tls import client_context, server_context
from tests.test_association import abort_behind_unread_data

pytestmark = pytest.mark.anyio


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    def __init__(self, folder: pathlib.Path, name: str = "ca") -> None:
        self.ca = trustme.CA(organization_name=f"adicom test {name}")
        self.ca_pem = folder / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        self.server_pem = folder / f"{name}-server.pem"
        server = self.ca.issue_cert("127.0.0.1", "localhost", common_name="ADICOM-SCP")
        server.private_key_and_cert_chain_pem.write_to_path(str(self.server_pem))
        self.client_pem = folder / f"{name}-client.pem"
        client = self.ca.issue_cert("modality1.example", common_name="MODALITY1")
        client.private_key_and_cert_chain_pem.write_to_path(str(self.client_pem))


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return Pki(tmp_path)


@asynccontextmanager
async def tls_server(context: ssl.SSLContext, **options: Any) -> AsyncIterator[adicom.Server]:
    async with adicom.Server("TLS-SCP", port=0, ssl=context, **options) as server:
        yield server


async def echo(server: adicom.Server, context: ssl.SSLContext | None) -> int:
    async with adicom.connect(
        "127.0.0.1", server.port, called_ae=server.ae_title, ssl=context, connect_timeout=5
    ) as assoc:
        return await assoc.echo()


async def test_an_association_runs_over_tls_with_the_profile(pki: Pki) -> None:
    async with tls_server(server_context(cert=pki.server_pem)) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="TLS-SCP", ssl=client_context(ca=pki.ca_pem)
        ) as assoc:
            assert await assoc.echo() == 0x0000
            tls = assoc.tls
            assert tls is not None
            assert tls.version in ("TLSv1.2", "TLSv1.3")  # never older (BCP 195)
            assert tls.peer_subject is not None and "CN=ADICOM-SCP" in tls.peer_subject
    assert server.stats["tls_failed"] == 0


async def test_plain_associations_have_no_tls_info() -> None:
    async with adicom.Server("PLAIN", port=0) as server:
        async with adicom.connect("127.0.0.1", server.port, called_ae="PLAIN") as assoc:
            assert assoc.tls is None


async def test_mutual_tls_tells_the_server_who_the_client_is(pki: Pki) -> None:
    seen: list[AssociationInfo] = []

    async def identity(request: UserIdentityRQ, info: AssociationInfo) -> bytes:
        seen.append(info)
        return b""

    context = server_context(cert=pki.server_pem, ca=pki.ca_pem, require_client_cert=True)
    async with tls_server(context, user_identity=identity) as server:
        client = client_context(ca=pki.ca_pem, cert=pki.client_pem)
        async with adicom.connect(
            "127.0.0.1",
            server.port,
            called_ae="TLS-SCP",
            ssl=client,
            user_identity=UserIdentityRQ(1, b"alice"),
        ) as assoc:
            assert await assoc.echo() == 0x0000
    (info,) = seen
    assert info.tls is not None and info.tls.peer_subject is not None
    assert "CN=MODALITY1" in info.tls.peer_subject


async def test_a_client_without_the_required_certificate_is_refused(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    context = server_context(cert=pki.server_pem, ca=pki.ca_pem, require_client_cert=True)
    async with tls_server(context) as server:
        with pytest.raises(TlsError, match="certificate"):
            await echo(server, client_context(ca=pki.ca_pem))
        # The server goes on serving whoever has one.
        assert await echo(server, client_context(ca=pki.ca_pem, cert=pki.client_pem)) == 0
    assert server.stats["tls_failed"] == 1
    assert any("TLS handshake with 127.0.0.1 failed" in r.getMessage() for r in caplog.records)


async def test_a_server_certificate_from_another_ca_is_not_trusted(
    pki: Pki, tmp_path: pathlib.Path
) -> None:
    other = Pki(tmp_path, "other")
    async with tls_server(server_context(cert=pki.server_pem)) as server:
        with pytest.raises(TlsError, match="not trusted"):
            await echo(server, client_context(ca=other.ca_pem))
        assert await echo(server, client_context(ca=pki.ca_pem)) == 0
    assert server.stats["tls_failed"] == 1


async def test_a_client_certificate_from_another_ca_is_refused(
    pki: Pki, tmp_path: pathlib.Path
) -> None:
    other = Pki(tmp_path, "other")
    context = server_context(cert=pki.server_pem, ca=pki.ca_pem, require_client_cert=True)
    async with tls_server(context) as server:
        with pytest.raises(TlsError):
            await echo(server, client_context(ca=pki.ca_pem, cert=other.client_pem))
        assert await echo(server, client_context(ca=pki.ca_pem, cert=pki.client_pem)) == 0
    assert server.stats["tls_failed"] == 1


async def test_plain_dicom_to_a_tls_port(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async with tls_server(server_context(cert=pki.server_pem)) as server:
        with pytest.raises(AssociationError, match="a port that wants TLS"):
            await echo(server, None)
        assert await echo(server, client_context(ca=pki.ca_pem)) == 0
    assert server.stats["tls_failed"] == 1
    assert any("the other plain DICOM" in r.getMessage() for r in caplog.records)


async def test_tls_to_a_plain_port(pki: Pki) -> None:
    async with adicom.Server("PLAIN", port=0) as server:
        with pytest.raises(TlsError, match="one side speaks TLS"):
            await echo(server, client_context(ca=pki.ca_pem))
        assert await echo(server, None) == 0


async def test_no_verification_is_possible_but_said(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "adicom")
    async with tls_server(server_context(cert=pki.server_pem)) as server:
        assert await echo(server, client_context(verify=False)) == 0
    assert any("without verifying" in r.getMessage() for r in caplog.records)


def test_contexts_refuse_what_the_profile_forbids(pki: Pki) -> None:
    for context in (client_context(ca=pki.ca_pem), server_context(cert=pki.server_pem)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_COMPRESSION
        ciphers = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert ciphers and all("GCM" in c or "CHACHA20" in c for c in ciphers)
        assert all(c.startswith(("ECDHE", "DHE")) for c in ciphers)
    with pytest.raises(ValueError, match="no CA"):
        server_context(cert=pki.server_pem, require_client_cert=True)
    with pytest.raises(ValueError, match="without its certificate"):
        client_context(key=pki.client_pem)


# --------------------------------------------------------------------------
# The command line


async def test_the_cli_speaks_tls_when_told(pki: Pki, tmp_path: pathlib.Path) -> None:
    from tests.test_cli import run_cli

    context = server_context(cert=pki.server_pem, ca=pki.ca_pem, require_client_cert=True)
    async with tls_server(context) as server:
        peer = ["--aec", "TLS-SCP", "127.0.0.1", str(server.port)]
        code, out, err = await run_cli(
            "echo", "--tls-ca", str(pki.ca_pem), "--tls-cert", str(pki.client_pem), *peer
        )
        assert code == 0 and "success" in out, err
        # Without a client certificate: refused, and the message says why.
        code, _, err = await run_cli("echo", "--tls-ca", str(pki.ca_pem), *peer)
        assert code == 1 and "client certificate" in err, err
        # Plain DICOM to the TLS port.
        code, _, err = await run_cli("echo", *peer)
        assert code == 1 and "wants TLS" in err, err
        # A file that is not there is a usage error, before anything is sent.
        missing = tmp_path / "missing.pem"
        code, _, err = await run_cli("echo", "--tls-ca", str(missing), *peer)
        assert code == 2 and f"no such file: {missing}" in err, err
        code, _, err = await run_cli("echo", "--tls-key", str(pki.client_pem), *peer)
        assert code == 2 and "--tls-key needs --tls-cert" in err, err
    async with tls_server(server_context(cert=pki.server_pem)) as server:
        # Not checking the server's certificate works, and says what it risks.
        peer = ["--aec", "TLS-SCP", "127.0.0.1", str(server.port)]
        code, out, err = await run_cli("echo", "--tls-no-verify", *peer)
        assert code == 0 and "success" in out, err
        assert "without verifying the server's certificate: anyone can pose as it" in err


async def test_serve_refuses_tls_options_without_a_certificate(pki: Pki) -> None:
    from tests.test_cli import run_cli

    code, _, err = await run_cli("serve", "--port", "0", "--tls-ca", str(pki.ca_pem))
    assert code == 2 and "--tls-ca needs --tls-cert" in err, err
    code, _, err = await run_cli("serve", "--port", "0", "--tls-cert", str(pki.ca_pem))
    assert code == 2 and "cannot set up TLS" in err, err


async def test_tls_to_a_scoped_ipv6_address_starts_no_thread(pki: Pki) -> None:
    # "fe80::1%eth0": asyncio's TLS connect would call getaddrinfo on its
    # executor (a thread); adicom connects the socket itself, then asks for
    # the handshake on it.
    import threading

    from tests.test_client_connect import link_local_addresses

    loopback = socket.if_nameindex()[0][1]
    async with tls_server(server_context(cert=pki.server_pem), host="::") as server:
        assert threading.active_count() == 1
        context = client_context(ca=pki.ca_pem)
        with pytest.raises(PeerUnreachable, match="unreachable"):
            async with adicom.connect(
                f"fe80::1%{loopback}", server.port, ssl=context, server_hostname="localhost"
            ):
                pass
        for address in link_local_addresses():
            async with adicom.connect(
                address,
                server.port,
                called_ae="TLS-SCP",
                ssl=context,
                server_hostname="localhost",
                connect_timeout=5,
            ) as assoc:
                assert await assoc.echo() == 0x0000
        assert threading.active_count() == 1


async def test_tls_to_another_numeric_form_of_an_address_starts_no_thread(pki: Pki) -> None:
    # "127.1": asyncio's TLS connect would look it up in its executor (a
    # thread); adicom.client.resolve gives it as 127.0.0.1, read without one.
    import threading

    async with tls_server(server_context(cert=pki.server_pem)) as server:
        assert threading.active_count() == 1
        async with adicom.connect(
            "127.1",
            server.port,
            called_ae="TLS-SCP",
            ssl=client_context(ca=pki.ca_pem),
            server_hostname="localhost",
        ) as assoc:
            assert await assoc.echo() == 0x0000
        assert threading.active_count() == 1


async def test_a_tls_close_behind_data_the_peer_never_reads_ends_at_artim(
    pki: Pki, tmp_path: pathlib.Path
) -> None:
    """An abort while the peer reads nothing, over TLS: ARTIM ends the connection.

    Left to asyncio, the TLS shutdown behind the unread data would wait
    30 s (its ssl_shutdown_timeout) for a peer that never reads.
    """
    context = server_context(cert=pki.server_pem)
    async with tls_server(context, storage=adicom.DiskStorage(tmp_path)) as server:
        await abort_behind_unread_data(server, ssl=client_context(ca=pki.ca_pem))


async def test_silent_peers_on_a_tls_port_are_evicted_for_room(pki: Pki) -> None:
    """Connections that never start the TLS handshake make room for new ones (--max-pending).

    Until the handshake ends such a connection has no transport: evicting
    it must close its socket (cancel its task), not wait for a handshake
    that never comes (ARTIM long, 30 s here).
    """
    context = server_context(cert=pki.server_pem)
    async with tls_server(context, max_pending=4, artim_timeout=30.0) as server:
        connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(12)]
        try:
            async with asyncio.timeout(5.0):
                while server.admission.pending > 4:
                    await asyncio.sleep(0.01)
            closed = 0
            for reader, _ in connections:
                try:
                    async with asyncio.timeout(0.1):
                        closed += await reader.read() == b""
                except TimeoutError:
                    pass  # still open: one of the four
                except ConnectionError:
                    closed += 1
            assert closed >= 8
        finally:
            for _, writer in connections:
                writer.close()


async def test_close_drops_a_tls_connection_that_never_asks_at_once(pki: Pki) -> None:
    """A TLS client handshakes, then sends and reads nothing: close(grace) ends it at once.

    Before an A-ASSOCIATE-RQ there is no association to give a grace to;
    a graceful TLS close would wait for the peer up to ARTIM (3 s here).
    """
    context = server_context(cert=pki.server_pem)
    async with tls_server(context, artim_timeout=3.0) as server:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_context(ca=pki.ca_pem)
        )
        async with asyncio.timeout(5.0):  # the server's side of the handshake done too
            while not server.associations or server.associations[0]._transport is None:
                await asyncio.sleep(0.01)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.close(grace=5.0)
        assert loop.time() - started < 1.5
        assert server.idle
        writer.transport.abort()


@pytest.mark.selector_loop_only
async def test_a_connection_evicted_as_its_handshake_ends_leaves_nothing_behind(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evicted in the moment its transport exists and its task has not resumed yet.

    If its close had begun (a first flight that was no A-ASSOCIATE-RQ),
    asyncio's cancelled connect would close the TLS transport a second
    time, which on 3.11 unlinks it: the socket closed under a transport
    still registered on the loop. The eviction drops the transport first.
    """
    from adicom.driver import Driver

    loop = asyncio.get_running_loop()
    made = Driver._connection_made
    served: list[Driver] = []

    def connection_made(self: Driver, transport: asyncio.Transport) -> None:
        made(self, transport)
        if not self.requestor and not served:
            served.append(self)
            loop.call_soon(evict, self)

    def evict(association: Any) -> None:
        association.close()  # a close already under way, as after AA-1
        (session,) = (
            s for held in server._by_host.values() for a, s in held.items() if a is association
        )
        server._evict(association, "127.0.0.1", session)

    monkeypatch.setattr(Driver, "_connection_made", connection_made)
    context = server_context(cert=pki.server_pem)
    async with tls_server(context) as server:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_context(ca=pki.ca_pem)
        )
        try:
            async with asyncio.timeout(5.0):
                while not served or not served[0].closed:
                    await asyncio.sleep(0.01)
                await server.wait_idle()
            assert (server.admission.pending, server.admission.associated) == (0, 0)
        finally:
            writer.transport.abort()
