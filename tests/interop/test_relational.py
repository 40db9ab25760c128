"""Query/Retrieve extended negotiation (PS3.4 C.5) with real peers, both roles.

adicom as SCP is ``adicom serve --storage DIR`` seeded by DCMTK storescu and
pynetdicom (conftest ``serve_seeded``); as SCU, ``adicom.connect`` with
``extended_negotiation``. What each peer does:

- DCMTK findscu (3.6.7) has no option to propose extended negotiation: its
  log says "Requested Extended Negotiation: None", so adicom serve agrees to
  nothing and answers a SERIES query without its study 0xA900 (hierarchical
  search), and the same query with the study's UID with its series;
- DCMTK dcmqrscp reads adicom's sub-item (its log shows the bytes) but
  answers none ("Accepted Extended Negotiation: none"): adicom agrees to
  nothing, and dcmqrscp refuses a SERIES query without its study (0xC000);
- pynetdicom as SCU proposes a sub-item (``ext_neg``) and sees adicom's
  answer (``assoc.acceptor.sop_class_extended``): relational C-FIND and
  C-GET answered when agreed, 0xA900 when not; a 7-byte offer gets a
  7-byte answer, 1 for what the archive performs;
- pynetdicom as SCP answers through its EVT_SOP_EXTENDED handler (or not at
  all): adicom agrees to exactly what it asked and was answered 1, and the
  relational identifier reaches pynetdicom's C-FIND handler unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

import adicom
from adicom import qrscu
from adicom.errors import DimseError
from adicom.negotiation import NO_QR_OPTIONS, QROptions, agreed_options
from tests.interop import peers, qr_peers
from tests.interop.qr_peers import ServeArchive, dcmtk_dimse_messages

pytestmark = pytest.mark.interop

HOST = peers.HOST
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
SUCCESS, PENDING = 0x0000, (0xFF00, 0xFF01)
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
TOOL_TIMEOUT = "20"
CT_IMAGE = qr_peers.CT_IMAGE
EXPLICIT = "1.2.840.10008.1.2.1"


def _key_args(level: str, keys: Mapping[str, str | None]) -> list[str]:
    args = ["-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in keys.items():
        args += ["-k", keyword if value is None else f"{keyword}={value}"]
    return args


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


async def _find(
    port: int, aet: str, query: Dataset, options: QROptions | None
) -> tuple[dict[str, QROptions], list[Dataset], int | None]:
    """adicom's C-FIND: what was agreed, the matches and the final status."""
    async with adicom.connect(
        HOST,
        port,
        called_ae=aet,
        contexts=qrscu.find_contexts("study"),
        extended_negotiation=options,
        timeout=20,
    ) as assoc:
        agreed = agreed_options(assoc.request, assoc.response)
        found: list[Dataset] = []
        try:
            async with qrscu.find(assoc, query) as results:
                found = [match async for match in results]
        except DimseError as exc:
            return agreed, found, exc.status
        return agreed, found, results.status


# --------------------------------------------------------------------------
# DCMTK findscu -> adicom serve


def test_findscu_negotiates_nothing_so_the_search_is_hierarchical(
    serve_seeded: ServeArchive, tmp_path: Path
) -> None:
    archive = serve_seeded.archive
    study = archive.study_of("QR-P1", "20200105")

    def findscu(keys: Mapping[str, str | None], outdir: Path) -> tuple[str, list[Any]]:
        outdir.mkdir()
        t = TOOL_TIMEOUT
        argv = [
            peers.require_dcmtk("findscu"),
            *("-d", "-to", t, "-ta", t, "-td", t, "-aet", "DCMTK-FIND", "-aec", serve_seeded.aet),
            *("-S", "-X", "-od", str(outdir)),
            *_key_args("SERIES", keys),
            HOST,
            str(serve_seeded.port),
        ]
        finished = peers.run(argv)
        log = finished.stdout + finished.stderr
        statuses = [
            m.status
            for m in dcmtk_dimse_messages(log)
            if m.direction == "INCOMING" and m.type == "C-FIND RSP"
        ]
        matches = [pydicom.dcmread(p) for p in sorted(outdir.glob("rsp*.dcm"))]
        assert statuses and statuses[-1] is not None, finished.describe()
        return log, [statuses[-1], matches]

    keys: dict[str, str | None] = {"SeriesInstanceUID": None, "Modality": "CT"}
    log, (status, matches) = findscu(keys, tmp_path / "relational")
    # DCMTK 3.6.7's findscu proposes no SOP class extended negotiation.
    assert re.search(r"Requested Extended Negotiation:\s*none", log, re.IGNORECASE), log
    assert re.search(r"Accepted Extended Negotiation:\s*none", log, re.IGNORECASE), log
    assert "Requested Extended Negotiation:\nD:   =" not in log, log
    assert (status, matches) == (IDENTIFIER_DOES_NOT_MATCH, []), log

    log, (status, matches) = findscu({**keys, "StudyInstanceUID": study}, tmp_path / "hierarchy")
    assert status == SUCCESS, log
    expected = {s.series_instance_uid for s in archive.in_study(study) if s.modality == "CT"}
    assert expected and {str(m.SeriesInstanceUID) for m in matches} == expected


# --------------------------------------------------------------------------
# adicom -> DCMTK dcmqrscp

RELATIONAL_PATIENTS = (
    qr_peers.PatientSpec(
        "REL-P1", "Rel^One", (qr_peers.StudySpec("20200105", ("ct", "mr"), per_series=2),)
    ),
)


@pytest.fixture(scope="module")
def dcmqrscp_logged(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[peers.Peer, qr_peers.Archive]]:
    """DCMTK dcmqrscp at -d (its log shows the negotiation), seeded by storescu."""
    binary = peers.require_dcmtk("dcmqrscp")
    peers.require_dcmtk("storescu")
    tmp = tmp_path_factory.mktemp("dcmqrscp-relational")
    archive = qr_peers.build_archive(tmp / "files", RELATIONAL_PATIENTS)
    (tmp / "db").mkdir()
    port, aet = peers.free_port(), "DCMQRSCP"
    config = tmp / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort  = {port}\nMaxPDUSize      = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\n{aet}  {tmp / 'db'}  RW  (100, 64mb)  ANY\nAETable END\n"
    )
    argv = [binary, "-d", "--config", str(config), str(port)]
    with peers.running(argv, name="DCMTK dcmqrscp -d", cwd=tmp) as peer:
        peer.port, peer.aet = port, aet
        peers.wait_for_port(HOST, port, peers.READY_TIMEOUT, peer)
        qr_peers.seed_with_storescu(port, aet, archive.instances, "SEEDER")
        yield peer, archive


@pytest.mark.anyio
async def test_dcmqrscp_reads_adicoms_proposal_and_answers_none(
    dcmqrscp_logged: tuple[peers.Peer, qr_peers.Archive],
) -> None:
    peer, archive = dcmqrscp_logged
    assert peer.port is not None and peer.aet is not None
    study = next(iter(archive.studies()))
    asked = QROptions(relational=True, datetime_matching=True)
    query = _identifier("SERIES", SeriesInstanceUID="", Modality="CT")
    agreed, found, status = await _find(peer.port, peer.aet, query, asked)
    log = peer.stdout() + peer.stderr()
    # dcmqrscp decoded the sub-item: the class and both bytes; it answered none.
    requested = re.search(
        r"Requested Extended Negotiation:\s*\n.*\(1\.2\.840\.10008\.5\.1\.4\.1\.2\.2\.1\)\s*\n"
        r".*\[0x01, 0x01\]",
        log,
    )
    assert requested is not None, peer.describe()
    accepted = re.compile(r"Accepted Extended Negotiation:(.*)").search(log, requested.end())
    assert accepted is not None and accepted[1].strip() == "none", peer.describe()
    # Nothing agreed; dcmqrscp searches hierarchically and refuses the query.
    assert agreed == {}
    assert (found, status) == ([], UNABLE_TO_PROCESS)
    # With the study's UID it answers (same association settings).
    agreed, found, status = await _find(
        peer.port,
        peer.aet,
        _identifier("SERIES", StudyInstanceUID=study, SeriesInstanceUID="", Modality="CT"),
        asked,
    )
    assert status == SUCCESS
    expected = {s.series_instance_uid for s in archive.in_study(study) if s.modality == "CT"}
    assert {str(d.SeriesInstanceUID) for d in found} == expected


# --------------------------------------------------------------------------
# pynetdicom SCU -> adicom serve


def pynetdicom_scu(
    serve: ServeArchive,
    service: str,
    level: str,
    keys: Sequence[str],
    ext: str | None,
    store_contexts: Sequence[str] = (),
) -> dict[str, Any]:
    peers.require_pynetdicom()
    argv = [
        sys.executable,
        str(peers.SCRIPTS / "pynetdicom_relational_scu.py"),
        service,
        *("--port", str(serve.port), "--aec", serve.aet, "--timeout", "20"),
        *("--level", level),
    ]
    for key in keys:
        argv += ["-k", key]
    if ext is not None:
        argv += ["--ext", ext]
    for spec in store_contexts:
        argv += ["--store-context", spec]
    finished = peers.run(argv)
    lines = finished.stdout.strip().splitlines()
    assert lines, finished.describe()
    result: dict[str, Any] = json.loads(lines[-1])
    assert result["established"], finished.describe()
    result["describe"] = finished.describe()
    return result


def _matches(result: Mapping[str, Any], keyword: str) -> set[str]:
    found = set()
    for response in result["responses"]:
        if response["status"] in PENDING:
            ds = Dataset.from_json(response["identifier"])
            found.add(str(ds[keyword].value))
    return found


@pytest.mark.parametrize(
    ("offer", "answer"),
    [("01", "01"), ("0101", "0101"), ("01010101010101", "01010100000000")],
    ids=["relational", "relational+datetime", "all-seven-bytes"],
)
def test_pynetdicom_relational_find(serve_seeded: ServeArchive, offer: str, answer: str) -> None:
    archive = serve_seeded.archive
    study = archive.study_of("QR-P2", "20220315")
    keys = [f"StudyInstanceUID={study}", "SOPInstanceUID="]
    result = pynetdicom_scu(serve_seeded, "find", "IMAGE", keys, offer)
    # adicom answers as many bytes as offered (PS3.4 C.5.1.1), 1 for what
    # it performs: relational, combined date-time, fuzzy names.
    assert result["acceptor_extended"] == {STUDY_FIND: answer}, result["describe"]
    assert result["final_status"] == SUCCESS, result["describe"]
    expected = {s.sop_instance_uid for s in archive.in_study(study)}
    assert _matches(result, "SOPInstanceUID") == expected


def test_pynetdicom_without_the_offer_is_refused(serve_seeded: ServeArchive) -> None:
    study = serve_seeded.archive.study_of("QR-P2", "20220315")
    keys = [f"StudyInstanceUID={study}", "SOPInstanceUID="]
    result = pynetdicom_scu(serve_seeded, "find", "IMAGE", keys, None)
    assert result["acceptor_extended"] == {}
    assert result["final_status"] == IDENTIFIER_DOES_NOT_MATCH, result["describe"]
    assert _matches(result, "SOPInstanceUID") == set()
    # An offer answered 0: not agreed either (date-time matching alone).
    result = pynetdicom_scu(serve_seeded, "find", "IMAGE", keys, "0001")
    assert result["acceptor_extended"] == {STUDY_FIND: "0001"}
    assert result["final_status"] == IDENTIFIER_DOES_NOT_MATCH, result["describe"]


def _pixel_hash(path: Path) -> str:
    return hashlib.sha256(bytes(pydicom.dcmread(path).PixelData)).hexdigest()


@pytest.mark.parametrize("offer", ["01", None], ids=["relational", "not-offered"])
def test_pynetdicom_relational_get_of_a_series(
    serve_seeded: ServeArchive, offer: str | None
) -> None:
    archive = serve_seeded.archive
    study = archive.study_of("SV-P3", "20240229")
    series = archive.series_of(study, "ct")
    result = pynetdicom_scu(
        serve_seeded,
        "get",
        "SERIES",
        [f"SeriesInstanceUID={series}"],
        offer,
        store_contexts=[f"{CT_IMAGE}={EXPLICIT},1.2.840.10008.1.2"],
    )
    stored = {s["sop_instance_uid"]: s["pixel_sha256"] for s in result["stored"]}
    if offer is None:
        assert result["acceptor_extended"] == {}
        assert result["final_status"] == IDENTIFIER_DOES_NOT_MATCH, result["describe"]
        assert stored == {}
        return
    assert result["acceptor_extended"] == {STUDY_GET: "01"}, result["describe"]
    assert result["final_status"] == SUCCESS, result["describe"]
    expected = {s.sop_instance_uid: _pixel_hash(s.instance.path) for s in archive.in_series(series)}
    assert len(expected) == 2 and stored == expected


# --------------------------------------------------------------------------
# adicom -> pynetdicom SCP


@contextlib.contextmanager
def pynetdicom_relational_scp(answer: str | None) -> Iterator[peers.Peer]:
    peers.require_pynetdicom()
    port, aet = peers.free_port(), "PYNETDICOM-SCP"
    argv = [
        sys.executable,
        str(peers.SCRIPTS / "pynetdicom_relational_scp.py"),
        *("--host", HOST, "--port", str(port), "--aet", aet),
    ]
    if answer is not None:
        argv += ["--answer", answer]
    with peers.running(argv, name="pynetdicom relational SCP") as peer:
        peer.port, peer.aet = port, aet
        peers.wait_for_port(HOST, port, peers.READY_TIMEOUT, peer)
        yield peer


def _events(peer: peers.Peer, kind: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in peer.stdout().splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == kind]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "agreed"),
    [
        ("0100", {STUDY_FIND: QROptions(relational=True)}),
        ("0101", {STUDY_FIND: QROptions(relational=True, datetime_matching=True)}),
        # More bytes than offered, 1s where nothing was asked: ignored.
        ("01010101", {STUDY_FIND: QROptions(relational=True, datetime_matching=True)}),
        ("00", {STUDY_FIND: NO_QR_OPTIONS}),
        (None, {}),
    ],
    ids=["relational-only", "both", "longer-answer", "zero", "no-answer"],
)
async def test_adicom_asks_pynetdicom(answer: str | None, agreed: dict[str, QROptions]) -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    asked = QROptions(relational=True, datetime_matching=True)
    with pynetdicom_relational_scp(answer) as peer:
        assert peer.port is not None and peer.aet is not None
        query = _identifier("IMAGE", StudyInstanceUID=study, SOPInstanceUID="")
        got, found, status = await _find(peer.port, peer.aet, query, asked)
        assert got == agreed, peer.describe()
        # pynetdicom saw adicom's two bytes for the Study Root Find class.
        assert _events(peer, "extended") == [
            {"event": "extended", "app_info": {STUDY_FIND: "0101"}}
        ], peer.describe()
        # The identifier reached its handler as sent, and its match came back.
        (seen,) = _events(peer, "find")
        received = Dataset.from_json(seen["identifier"])
        assert seen["sop_class"] == STUDY_FIND
        assert (received.QueryRetrieveLevel, received.StudyInstanceUID) == ("IMAGE", study)
        assert received.SOPInstanceUID == ""
    assert status == SUCCESS
    assert [(d.StudyInstanceUID, d.SOPInstanceUID) for d in found] == [(study, "1.2.3.1")]
