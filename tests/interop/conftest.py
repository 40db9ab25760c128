"""Fixtures of the interoperability tests: the async backend and the peer servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.interop import data, peers, qr_peers


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pynetdicom_scp() -> Iterator[peers.Peer]:
    """A pynetdicom Verification SCP process (checks the called AE title)."""
    with peers.pynetdicom_echo_scp() as peer:
        yield peer


@pytest.fixture
def dcmtk_storescp() -> Iterator[peers.Peer]:
    """A DCMTK storescp process (accepts any called AE title)."""
    with peers.dcmtk_storescp() as peer:
        yield peer


@pytest.fixture
def dcmtk_dcmqrscp() -> Iterator[peers.Peer]:
    """A DCMTK dcmqrscp process (checks the called AE title)."""
    with peers.dcmtk_dcmqrscp() as peer:
        yield peer


@pytest.fixture
def adicom_serve() -> Iterator[peers.Peer]:
    """``adicom serve`` as a process, AE title "ADICOM"."""
    with peers.adicom_serve("ADICOM") as peer:
        yield peer


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, data.Instance]:
    """pydicom's bundled files, one per transfer syntax, with fresh UIDs, by label."""
    return data.write_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def big_instance(tmp_path_factory: pytest.TempPathFactory) -> data.Instance:
    """A 200 MiB multi-frame Secondary Capture instance (explicit VR LE), written once."""
    return data.write_big_instance(tmp_path_factory.mktemp("big") / "big.dcm")


# --------------------------------------------------------------------------
# Query/retrieve SCPs (test_qr.py): seeded once per session


@pytest.fixture(scope="session")
def qr_archive(tmp_path_factory: pytest.TempPathFactory) -> qr_peers.Archive:
    """The instances seeded into the Q/R SCPs (files with fresh UIDs)."""
    return qr_peers.build_archive(tmp_path_factory.mktemp("qr-archive"))


@pytest.fixture(scope="session")
def qr_move_destination() -> qr_peers.MoveDestination:
    """The move destination both Q/R SCPs know; tests serve it while they move."""
    return qr_peers.MoveDestination(qr_peers.MOVE_AE, peers.free_port())


@pytest.fixture(scope="session")
def dcmqrscp_seeded(
    qr_archive: qr_peers.Archive, qr_move_destination: qr_peers.MoveDestination
) -> Iterator[qr_peers.QrScp]:
    """DCMTK dcmqrscp holding ``qr_archive``."""
    with qr_peers.dcmqrscp(qr_archive, qr_move_destination) as scp:
        yield scp


@pytest.fixture(scope="session")
def pynetdicom_qrscp_seeded(
    qr_archive: qr_peers.Archive, qr_move_destination: qr_peers.MoveDestination
) -> Iterator[qr_peers.QrScp]:
    """pynetdicom's qrscp app holding ``qr_archive``."""
    with qr_peers.pynetdicom_qrscp(qr_archive, qr_move_destination) as scp:
        yield scp


# --------------------------------------------------------------------------
# ``adicom serve --storage`` as the Q/R SCP (test_serve.py): seeded once per module

#: The move destinations ``adicom serve`` is started with (--move-dest).
SERVE_DEST_ADICOM = "ADICOM-DEST"
SERVE_DEST_STORESCP = "STORESCP-DEST"


@pytest.fixture(scope="module")
def serve_seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[qr_peers.ServeArchive]:
    """``adicom serve`` with two move destinations, seeded by storescu and pynetdicom.

    The destinations' ports are reserved here; a test serves one (an
    in-process adicom Server, or DCMTK storescp) while it moves.
    """
    destinations = {
        SERVE_DEST_ADICOM: peers.free_port(),
        SERVE_DEST_STORESCP: peers.free_port(),
    }
    with qr_peers.serve_archive(tmp_path_factory.mktemp("serve"), destinations) as serve:
        yield serve
