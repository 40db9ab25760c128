"""C-ECHO between adicom and real peers (pynetdicom, DCMTK), adicom on at least one side.

Matrix:
- adicom -> adicom (in process; also checks that no thread is ever started)
- adicom -> pynetdicom SCP, DCMTK storescp, DCMTK dcmqrscp
- pynetdicom SCU, DCMTK echoscu -> adicom SCP, in process (adicom.Server) and
  as the CLI process (``adicom serve``)
- rejection of a wrong called AE title, (result 1, source 1, reason 7), in
  both directions with each peer. DCMTK's storescp accepts any called AE title
  and has no option to check it (only --refuse, which rejects everything with
  reason 1), so the DCMTK SCP of the rejection cells is dcmqrscp, which checks
  the called AE title against its configured AETable.
- ``adicom echo`` (CLI) against each peer SCP, and ``adicom serve`` stopping
  cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

import adicom
from adicom.errors import AssociationRejected
from tests.interop import peers

pytestmark = pytest.mark.interop

HOST = peers.HOST
ADICOM_AE = "ADICOM"
PEER_SCU_AE = "PEER-SCU"
WRONG_AE = "WRONG-AE"
# PS3.8 Table 9-21: rejected-permanent, by the service-user,
# called-AE-title-not-recognized.
CALLED_AE_REJECTED = (1, 1, 7)
TEST_DEADLINE = 60.0


# --------------------------------------------------------------------------
# Fixtures and helpers

_SCP_FACTORIES = {
    "pynetdicom": peers.pynetdicom_echo_scp,
    "dcmtk-storescp": peers.dcmtk_storescp,
    "dcmtk-dcmqrscp": peers.dcmtk_dcmqrscp,
}


@pytest.fixture(params=["pynetdicom", "dcmtk-storescp", "dcmtk-dcmqrscp"])
def peer_scp(request: pytest.FixtureRequest) -> Iterator[peers.Peer]:
    """Each peer SCP in turn, listening."""
    with _SCP_FACTORIES[request.param]() as peer:
        yield peer


@pytest.fixture(params=["pynetdicom", "dcmtk-dcmqrscp"])
def checking_peer_scp(request: pytest.FixtureRequest) -> Iterator[peers.Peer]:
    """Each peer SCP that rejects a wrong called AE title, in turn."""
    with _SCP_FACTORIES[request.param]() as peer:
        yield peer


def _require_scu(kind: str) -> None:
    if kind == "pynetdicom":
        peers.require_pynetdicom()
    else:
        peers.require_dcmtk("echoscu")


class _AdicomSCP:
    def __init__(self, port: int, process: peers.Peer | None) -> None:
        self.port = port
        self.process = process

    def describe(self) -> str:
        if self.process is None:
            return "adicom SCP: in process"
        return self.process.describe()


@contextlib.asynccontextmanager
async def adicom_scp(kind: str, aet: str = ADICOM_AE) -> AsyncIterator[_AdicomSCP]:
    """An adicom SCP, either in process (adicom.Server) or as ``adicom serve``."""
    if kind == "in-process":
        async with adicom.Server(ae_title=aet, host=HOST, port=0) as server:
            yield _AdicomSCP(server.port, None)
    else:
        # Blocks the loop for the start-up (bounded); nothing else runs yet.
        with peers.adicom_serve(aet) as process:
            yield _AdicomSCP(process.port or 0, process)


def _rejection(exc: AssociationRejected) -> tuple[int, int, int]:
    return (exc.result, exc.source, exc.reason)


# --------------------------------------------------------------------------
# adicom <-> adicom


@pytest.mark.anyio
async def test_adicom_echo_to_adicom_is_threadless() -> None:
    assert threading.active_count() == 1, threading.enumerate()
    with anyio.fail_after(TEST_DEADLINE):
        async with adicom.Server(ae_title=ADICOM_AE, host=HOST, port=0) as server:
            assert threading.active_count() == 1, threading.enumerate()
            async with adicom.connect(
                HOST, server.port, calling_ae="CLIENT", called_ae=ADICOM_AE, timeout=10.0
            ) as assoc:
                assert threading.active_count() == 1, threading.enumerate()
                assert await assoc.echo() == 0x0000
                assert threading.active_count() == 1, threading.enumerate()
                # A second echo on the same association.
                assert await assoc.echo() == 0x0000
            assert threading.active_count() == 1, threading.enumerate()
    assert threading.active_count() == 1, threading.enumerate()


@pytest.mark.anyio
async def test_adicom_rejected_by_adicom() -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with adicom.Server(ae_title=ADICOM_AE, host=HOST, port=0) as server:
            with pytest.raises(AssociationRejected) as info:
                async with adicom.connect(
                    HOST, server.port, calling_ae="CLIENT", called_ae=WRONG_AE, timeout=10.0
                ) as assoc:
                    await assoc.echo()
            assert _rejection(info.value) == CALLED_AE_REJECTED
            # The server still serves after rejecting.
            async with adicom.connect(
                HOST, server.port, calling_ae="CLIENT", called_ae=ADICOM_AE, timeout=10.0
            ) as assoc:
                assert await assoc.echo() == 0x0000


# --------------------------------------------------------------------------
# adicom SCU -> peer SCP


@pytest.mark.anyio
async def test_adicom_echo_to_peer(peer_scp: peers.Peer) -> None:
    assert peer_scp.port is not None and peer_scp.aet is not None
    with anyio.fail_after(TEST_DEADLINE):
        try:
            async with adicom.connect(
                HOST, peer_scp.port, calling_ae=ADICOM_AE, called_ae=peer_scp.aet, timeout=10.0
            ) as assoc:
                status = await assoc.echo()
        except Exception as exc:
            raise AssertionError(f"{exc!r}\n{peer_scp.describe()}") from exc
    assert status == 0x0000, peer_scp.describe()


@pytest.mark.anyio
async def test_adicom_rejected_by_peer(checking_peer_scp: peers.Peer) -> None:
    assert checking_peer_scp.port is not None
    with anyio.fail_after(TEST_DEADLINE), pytest.raises(AssociationRejected) as info:
        async with adicom.connect(
            HOST, checking_peer_scp.port, calling_ae=ADICOM_AE, called_ae=WRONG_AE, timeout=10.0
        ) as assoc:
            await assoc.echo()
    assert _rejection(info.value) == CALLED_AE_REJECTED, checking_peer_scp.describe()


# --------------------------------------------------------------------------
# peer SCU -> adicom SCP (in process and as `adicom serve`)


@pytest.mark.anyio
@pytest.mark.parametrize("scp_kind", ["in-process", "cli"])
@pytest.mark.parametrize("scu", ["pynetdicom", "dcmtk"])
async def test_peer_echo_to_adicom(scu: str, scp_kind: str) -> None:
    _require_scu(scu)
    with anyio.fail_after(TEST_DEADLINE):
        async with adicom_scp(scp_kind) as scp:
            argv = peers.echo_scu_argv(scu, scp.port, PEER_SCU_AE, ADICOM_AE)
            finished = await peers.run_async(argv)
            outcome = peers.parse_echo_scu(scu, finished)
            assert outcome.ok, f"{finished.describe()}\n{scp.describe()}"
            assert outcome.rejected is None


@pytest.mark.anyio
@pytest.mark.parametrize("scp_kind", ["in-process", "cli"])
@pytest.mark.parametrize("scu", ["pynetdicom", "dcmtk"])
async def test_peer_rejected_by_adicom(scu: str, scp_kind: str) -> None:
    _require_scu(scu)
    with anyio.fail_after(TEST_DEADLINE):
        async with adicom_scp(scp_kind) as scp:
            argv = peers.echo_scu_argv(scu, scp.port, PEER_SCU_AE, WRONG_AE)
            finished = await peers.run_async(argv)
            outcome = peers.parse_echo_scu(scu, finished)
            assert not outcome.ok, f"{finished.describe()}\n{scp.describe()}"
            assert outcome.rejected == CALLED_AE_REJECTED, (
                f"{finished.describe()}\n{scp.describe()}"
            )
            # Still serving after the rejection.
            argv = peers.echo_scu_argv(scu, scp.port, PEER_SCU_AE, ADICOM_AE)
            finished = await peers.run_async(argv)
            outcome = peers.parse_echo_scu(scu, finished)
            assert outcome.ok, f"{finished.describe()}\n{scp.describe()}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_adicom_serve_stops_cleanly_on_signal(adicom_serve: peers.Peer, sig: int) -> None:
    assert adicom_serve.port is not None
    finished = peers.run(peers.dcmtk_echoscu_argv(adicom_serve.port, PEER_SCU_AE, ADICOM_AE))
    assert peers.parse_dcmtk_echoscu(finished).ok, (
        f"{finished.describe()}\n{adicom_serve.describe()}"
    )
    rc = adicom_serve.signal_and_wait(sig)
    assert rc == 0, adicom_serve.describe()
    assert "Traceback" not in adicom_serve.stderr(), adicom_serve.describe()


# --------------------------------------------------------------------------
# `adicom echo` (CLI) -> peer SCP


def test_adicom_cli_echo_to_peer(peer_scp: peers.Peer) -> None:
    assert peer_scp.port is not None and peer_scp.aet is not None
    finished = peers.run(peers.adicom_echo_argv(peer_scp.port, ADICOM_AE, peer_scp.aet))
    assert finished.returncode == 0, f"{finished.describe()}\n{peer_scp.describe()}"


def test_adicom_cli_echo_rejected_by_peer(checking_peer_scp: peers.Peer) -> None:
    assert checking_peer_scp.port is not None
    finished = peers.run(peers.adicom_echo_argv(checking_peer_scp.port, ADICOM_AE, WRONG_AE))
    assert finished.returncode == 1, f"{finished.describe()}\n{checking_peer_scp.describe()}"
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.describe()
    assert "rejected" in lines[0], finished.describe()
    assert "called-AE-title-not-recognized" in lines[0], finished.describe()
