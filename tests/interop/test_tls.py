"""DICOM over TLS with real peers: DCMTK (+tls) and pynetdicom (ssl_context), both roles.

A throwaway CA (trustme) issues the certificates of ``adicom serve``, of the
peers and of the clients, as separate key and certificate PEM files (what
DCMTK's ``+tls KEY CERT`` takes). DCMTK runs on its default TLS profile,
Non-downgrading BCP 195 (PS3.15 B.9), and as an SCP it requires a client
certificate by default: mutual authentication.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator

import pydicom
import pytest
import trustme

from tests.interop import data, peers

pytestmark = pytest.mark.interop

HOST = peers.HOST


class Files:
    """PEM files of a CA and the certificates it issued, key and certificate apart."""

    def __init__(self, folder: pathlib.Path) -> None:
        ca = trustme.CA(organization_name="adicom interop")
        self.ca = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        for name, common_name in (("server", "ADICOM-SCP"), ("client", "ADICOM-SCU")):
            issued = ca.issue_cert(HOST, "localhost", common_name=common_name)
            issued.private_key_pem.write_to_path(str(folder / f"{name}.key"))
            issued.cert_chain_pems[0].write_to_path(str(folder / f"{name}.crt"))
        self.folder = folder

    def key(self, name: str) -> str:
        return str(self.folder / f"{name}.key")

    def cert(self, name: str) -> str:
        return str(self.folder / f"{name}.crt")

    def dcmtk(self, name: str) -> list[str]:
        """DCMTK's options: our key and certificate, and the CA to trust."""
        return ["+tls", self.key(name), self.cert(name), "+cf", str(self.ca)]

    def adicom_client(self) -> list[str]:
        return [
            "--tls-ca",
            str(self.ca),
            "--tls-cert",
            self.cert("client"),
            "--tls-key",
            self.key("client"),
        ]


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Files:
    return Files(tmp_path)


@contextlib.contextmanager
def serve_tls(pki: Files, storage: pathlib.Path | None = None) -> Iterator[peers.Peer]:
    """``adicom serve`` over TLS, client certificates required."""
    port = peers.free_port()
    argv = [
        *peers.adicom_cli(),
        "serve",
        "--aet",
        "ADICOM",
        "--host",
        HOST,
        "--port",
        str(port),
        "--tls-cert",
        pki.cert("server"),
        "--tls-key",
        pki.key("server"),
        "--tls-ca",
        str(pki.ca),
        "--tls-require-client-cert",
    ]
    if storage is not None:
        argv += ["--storage", str(storage)]
    with peers.running(argv, name="adicom serve --tls-cert") as peer:
        peer.port, peer.aet = port, "ADICOM"
        peers.wait_for_port(HOST, port, peers.READY_TIMEOUT, peer)
        yield peer


def dcmtk(tool: str, *args: str) -> peers.Finished:
    return peers.run([peers.require_dcmtk(tool), "-v", "-to", "10", "-ta", "10", *args])


def test_dcmtk_echoscu_and_storescu_to_adicom_serve_over_tls(
    pki: Files, tmp_path: pathlib.Path
) -> None:
    sample = data.bundled_file("CT_small.dcm")
    with serve_tls(pki, tmp_path / "archive") as serve:
        port = str(serve.port)
        echo = dcmtk("echoscu", *pki.dcmtk("client"), "-aec", "ADICOM", HOST, port)
        assert echo.returncode == 0, f"{echo.describe()}\n{serve.describe()}"
        stored = dcmtk("storescu", *pki.dcmtk("client"), "-aec", "ADICOM", HOST, port, str(sample))
        assert stored.returncode == 0, f"{stored.describe()}\n{serve.describe()}"
        assert "Received Store Response (Success)" in stored.stdout + stored.stderr
        # Plain DICOM to the TLS port fails, and the server goes on.
        plain = dcmtk("echoscu", "-aec", "ADICOM", HOST, port)
        assert plain.returncode != 0
        again = dcmtk("echoscu", *pki.dcmtk("client"), "-aec", "ADICOM", HOST, port)
        assert again.returncode == 0, f"{again.describe()}\n{serve.describe()}"
        found = dcmtk(
            "findscu", *pki.dcmtk("client"), "-S", "-aec", "ADICOM",
            "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", HOST, port,
        )  # fmt: skip
        assert found.returncode == 0, f"{found.describe()}\n{serve.describe()}"
        assert "Received Final Find Response (Success)" in found.stdout + found.stderr
        assert "TLS handshake with 127.0.0.1 failed" in serve.stderr()
    (kept,) = [p for p in (tmp_path / "archive").rglob("*.dcm") if ".incoming" not in p.parts]
    original = pydicom.dcmread(sample)
    assert pydicom.dcmread(kept).SOPInstanceUID == original.SOPInstanceUID


def test_adicom_echo_and_store_to_dcmtk_storescp_over_tls(pki: Files) -> None:
    sample = data.bundled_file("CT_small.dcm")
    with peers.dcmtk_storescp(options=pki.dcmtk("server")) as scp:
        assert scp.port is not None and scp.workdir is not None
        peer = ["--aec", "STORESCP", HOST, str(scp.port)]
        echo = peers.run([*peers.adicom_cli(), "echo", *pki.adicom_client(), *peer])
        assert echo.returncode == 0, f"{echo.describe()}\n{scp.describe()}"
        stored = peers.run([*peers.adicom_cli(), "store", *pki.adicom_client(), *peer, str(sample)])
        assert stored.returncode == 0, f"{stored.describe()}\n{scp.describe()}"
        # storescp requires a client certificate (its default, -rc).
        refused = peers.run([*peers.adicom_cli(), "echo", "--tls-ca", str(pki.ca), *peer])
        assert refused.returncode == 1 and "certificate" in refused.stderr, refused.describe()
        received = data.received_files(scp.workdir)
    assert list(received) == [pydicom.dcmread(sample).SOPInstanceUID]


def test_pynetdicom_over_tls_both_ways(pki: Files) -> None:
    # pynetdicom SCU -> adicom serve (mutual TLS).
    with serve_tls(pki) as serve:
        assert serve.port is not None
        tls = [
            "--tls-ca",
            str(pki.ca),
            "--tls-cert",
            pki.cert("client"),
            "--tls-key",
            pki.key("client"),
        ]
        argv = peers.pynetdicom_echo_scu_argv(serve.port, "PYNET-SCU", "ADICOM", tls=tls)
        outcome = peers.parse_pynetdicom_scu(peers.run(argv))
        assert outcome.ok, f"{outcome}\n{serve.describe()}"
    # adicom echo -> pynetdicom SCP (client certificates required).
    scp_tls = [
        "--tls-cert", pki.cert("server"), "--tls-key", pki.key("server"),
        "--tls-ca", str(pki.ca), "--tls-require-client-cert",
    ]  # fmt: skip
    with peers.pynetdicom_echo_scp("PYNET-SCP", tls=scp_tls) as scp:
        assert scp.port is not None
        echo = peers.run(
            [*peers.adicom_cli(), "echo", *pki.adicom_client(), "--aec", "PYNET-SCP",
             HOST, str(scp.port)]
        )  # fmt: skip
        assert echo.returncode == 0, f"{echo.describe()}\n{scp.describe()}"
