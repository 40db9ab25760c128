"""The audit trail: one JSON line per security-relevant event (PS3.15 A.5 names)."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import pathlib
import signal
import subprocess
import sys
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import adicom
from adicom.archive import Archive
from adicom.audit import MAX_KEYS, AuditLog, identifier_keys
from adicom.dimse import Limits
from adicom.errors import AssociationRejected, ConnectionClosed, TlsError
from adicom.identity import Users, hash_password, identity_hook
from adicom.pdu import UserIdentityRQ
from adicom.peers import Peer, PeerRules
from adicom.qrscu import find, find_contexts, get, get_contexts, move, move_contexts

pytestmark = pytest.mark.anyio


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def ct_small() -> Dataset:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return pydicom.dcmread(path)


def test_a_line_is_json_with_time_event_and_outcome(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.record("Query", keys={"PatientName": "Doe^J", "Modality": "CT"}, nothing=None)
    audit.close()
    again = AuditLog(path, patient_data=False)
    again.record("Query", keys={"PatientName": "Doe^J"})
    again.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["event"] == "Query" and first["outcome"] == "success"
    assert first["time"].endswith("+00:00")  # UTC
    assert first["keys"] == {"PatientName": "Doe^J", "Modality": "CT"}
    assert "nothing" not in first  # what is not known is left out
    assert second["keys"] == {"PatientName": "<left out>"}  # appended, patient data out


def test_identifier_keys_are_bounded() -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.ImageComments = "X" * 200
    identifier.StudyDate = ""  # a return key, not a matching one
    identifier.ReferencedSeriesSequence = [Dataset(), Dataset()]
    keys = identifier_keys(identifier)
    assert keys == {
        "ImageComments": "X" * 64,
        "QueryRetrieveLevel": "STUDY",
        "ReferencedSeriesSequence": "<2 item(s)>",
    }
    many = Dataset()
    for group in range(100):
        many.add_new((0x0011 + 2 * group, 0x0010), "LO", "private")
    assert len(identifier_keys(many)) == MAX_KEYS


async def test_the_server_audits_associations_instances_and_queries(
    tmp_path: pathlib.Path,
) -> None:
    stream = io.StringIO()
    peers = PeerRules()
    peers.add(Peer("CT1", hosts=(ipaddress.ip_network("127.0.0.1/32"),)))
    archive = Archive(tmp_path / "archive")
    await archive.open()
    dataset = ct_small()
    try:
        async with adicom.Server(
            "ARCHIVE", port=0, peers=peers, audit=AuditLog(stream), **archive.handlers()
        ) as server:
            with pytest.raises(AssociationRejected):
                await adicom.store(
                    "127.0.0.1", server.port, [dataset], calling_ae="NOBODY", called_ae="ARCHIVE"
                )
            (stored,) = await adicom.store(
                "127.0.0.1", server.port, [dataset], calling_ae="CT1", called_ae="ARCHIVE"
            )
            assert stored.ok
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.PatientName = "CompressedSamples^CT1"
            identifier.StudyInstanceUID = ""
            async with adicom.connect(
                "127.0.0.1", server.port, calling_ae="CT1", called_ae="ARCHIVE",
                contexts=find_contexts(),
            ) as assoc:  # fmt: skip
                matches = [m async for m in find(assoc, identifier)]
            assert len(matches) == 1
    finally:
        archive.close()

    events = lines(stream)
    assert [e["event"] for e in events] == [
        "Security Alert",
        "User Authentication",
        "DICOM Instances Transferred",
        "User Authentication",
        "Query",
    ]
    refused, accepted, instance, _, query = events
    assert refused["calling_ae"] == "NOBODY" and refused["called_ae"] == "ARCHIVE"
    assert refused["outcome"].startswith("failure: 'NOBODY' is not a known peer")
    assert "calling-AE-title-not-recognized" in refused["outcome"]
    assert refused["address"].startswith("127.0.0.1:")
    assert accepted["outcome"] == "success" and accepted["peer"] == "CT1"
    assert instance["outcome"] == "success" and instance["status"] == "0x0000"
    assert instance["sop_instance_uid"] == dataset.SOPInstanceUID
    assert instance["study_instance_uid"] == dataset.StudyInstanceUID
    assert instance["PatientID"] == dataset.PatientID
    assert query["service"] == "find"
    assert query["keys"] == {
        "QueryRetrieveLevel": "STUDY",
        "PatientName": "CompressedSamples^CT1",
    }


async def test_patient_data_can_be_left_out(tmp_path: pathlib.Path) -> None:
    stream = io.StringIO()
    archive = Archive(tmp_path / "archive")
    await archive.open()
    dataset = ct_small()
    try:
        async with adicom.Server(
            "ARCHIVE", port=0, audit=AuditLog(stream, patient_data=False), **archive.handlers()
        ) as server:
            await adicom.store("127.0.0.1", server.port, [dataset], called_ae="ARCHIVE")
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "PATIENT"
            identifier.PatientID = dataset.PatientID
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="ARCHIVE", contexts=find_contexts("patient")
            ) as assoc:
                assert len([m async for m in find(assoc, identifier, model="patient")]) == 1
    finally:
        archive.close()
    text = stream.getvalue()
    assert dataset.PatientID not in text and str(dataset.PatientName) not in text
    query = lines(stream)[-1]
    assert query["keys"] == {"QueryRetrieveLevel": "PATIENT", "PatientID": "<left out>"}


async def test_retrieves_are_audited_with_their_destination(tmp_path: pathlib.Path) -> None:
    stream = io.StringIO()
    archive = Archive(tmp_path / "archive")
    await archive.open()
    dataset = ct_small()
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = dataset.StudyInstanceUID
    try:
        async with adicom.Server(
            "ARCHIVE", port=0, audit=AuditLog(stream), **archive.handlers({})
        ) as server:
            await adicom.store("127.0.0.1", server.port, [dataset], called_ae="ARCHIVE")
            contexts, roles = get_contexts()
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="ARCHIVE",
                contexts=contexts + move_contexts(), roles=roles,
            ) as assoc:  # fmt: skip
                got = await get(assoc, identifier, adicom.MemoryStorage())
                assert got.completed == 1
                moved = await move(assoc, identifier, "NOWHERE")
                assert moved.status == 0xA801  # an unknown destination (PS3.4 C.4.2.1.5)
    finally:
        archive.close()
    retrieves = [e for e in lines(stream) if e["event"] == "Begin Transferring DICOM Instances"]
    assert [(e["service"], e.get("destination")) for e in retrieves] == [
        ("get", None),
        ("move", "NOWHERE"),
    ]
    assert all(e["keys"]["StudyInstanceUID"] == dataset.StudyInstanceUID for e in retrieves)


async def test_identities_are_named_and_secrets_never_written() -> None:
    stream = io.StringIO()
    users = Users({"alice": hash_password("wonderland", cost=2**4)})
    async with adicom.Server(
        "ID-SCP", port=0, user_identity=identity_hook(users), audit=AuditLog(stream)
    ) as server:

        async def echo(identity: UserIdentityRQ) -> None:
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="ID-SCP", user_identity=identity
            ) as assoc:
                assert await assoc.echo() == 0

        await echo(UserIdentityRQ(2, b"alice", b"wonderland"))
        with pytest.raises(AssociationRejected):
            await echo(UserIdentityRQ(2, b"alice", b"looking-glass"))
        with pytest.raises(AssociationRejected):
            await echo(UserIdentityRQ(5, b"header.payload.signature"))
    text = stream.getvalue()
    for secret in ("wonderland", "looking-glass", "header.payload"):
        assert secret not in text
    accepted, wrong, token = lines(stream)
    assert (accepted["event"], accepted["user"]) == ("User Authentication", "alice")
    assert (wrong["event"], wrong["user"]) == ("Security Alert", "alice")
    assert wrong["outcome"].startswith("failure: user identity not accepted")
    assert token["user"] == "<JWT>"


async def test_failed_tls_handshakes_and_refused_instances_are_audited(
    tmp_path: pathlib.Path,
) -> None:
    from adicom.tls import client_context, server_context
    from tests.test_tls import Pki

    pki = Pki(tmp_path)
    stream = io.StringIO()
    context = server_context(cert=pki.server_pem, ca=pki.ca_pem, require_client_cert=True)
    async with adicom.Server(
        "TLS-SCP",
        port=0,
        ssl=context,
        audit=AuditLog(stream),
        storage=adicom.MemoryStorage(),
        limits=Limits(max_instance=1024),
    ) as server:
        with pytest.raises((TlsError, ConnectionClosed)):  # plain DICOM on the TLS port
            await adicom.store("127.0.0.1", server.port, [ct_small()], called_ae="TLS-SCP")
        client = client_context(ca=pki.ca_pem, cert=pki.client_pem)
        (result,) = await adicom.store(
            "127.0.0.1", server.port, [ct_small()], called_ae="TLS-SCP", ssl=client
        )
        assert result.status == 0xA700  # larger than max_instance: refused as it came
        for _ in range(100):  # the failed handshake is logged when the server sees it
            if "TLS handshake" in stream.getvalue():
                break
            await asyncio.sleep(0.02)
    events = {e["event"]: e for e in lines(stream)}
    alert = events["Security Alert"]
    assert alert["outcome"].startswith("failure: TLS handshake")
    assert events["User Authentication"]["tls_subject"].endswith("CN=MODALITY1")
    instance = events["DICOM Instances Transferred"]
    assert instance["status"] == "0xA700" and instance["outcome"].startswith("failure")
    assert instance["sop_instance_uid"] == ct_small().SOPInstanceUID


async def test_serve_writes_the_audit_trail_and_warns_when_open(tmp_path: pathlib.Path) -> None:
    from tests.test_cli import run_cli

    code, _, err = await run_cli("serve", "--port", "0", "--audit-no-patient-data")
    assert code == 2 and "--audit-no-patient-data needs --audit FILE" in err, err

    audit = tmp_path / "audit.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", "--host", "0.0.0.0", "--port", "0",
        "--aet", "OPEN", "--audit", str(audit),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
            warning = (await process.stderr.readline()).decode()
        port = int(line.rsplit(":", 1)[1])
        assert "warning: 0.0.0.0 is reachable from other machines" in warning
        assert "--tls-cert or --peers" in warning
        async with adicom.connect("127.0.0.1", port, called_ae="OPEN") as assoc:
            assert await assoc.echo() == 0
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.communicate()
    (accepted,) = (json.loads(line) for line in audit.read_text().splitlines())
    assert accepted["event"] == "User Authentication" and accepted["called_ae"] == "OPEN"


async def test_serve_on_loopback_does_not_warn() -> None:
    from adicom.cli.serve import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.1.2.3")
    assert not _is_loopback("pacs.example.org")
