"""Storage Commitment Push Model (PS3.4 Annex J): SCU and SCP, same and new association."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import re
import warnings

import pytest
from pydicom.dataset import Dataset

import adicom
from adicom.commitment import (
    FAILURES_EXIST,
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    SUCCESSFUL,
    CommitmentFailure,
    CommitmentReports,
    CommitmentResult,
    CommitmentSCP,
    InvalidCommitment,
    Reference,
    parse_request,
    parse_result,
    request_commitment,
    request_dataset,
    result_dataset,
)
from adicom.dimse import Status
from adicom.errors import DicomTimeout
from adicom.nservices import NRequest, NResponse, n_action, n_event_report
from adicom.presentation import DEFAULT_TRANSFER_SYNTAXES

pytestmark = pytest.mark.anyio

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
CONTEXTS = [(STORAGE_COMMITMENT, list(DEFAULT_TRANSFER_SYNTAXES))]
HELD = {"1.2.3.1": CT, "1.2.3.2": CT, "1.2.3.3": MR}


async def holds(sop_instance_uid: str) -> str | None:
    return HELD.get(sop_instance_uid)


def report_only_after(scp: CommitmentSCP) -> asyncio.Event:
    """Hold the SCP's reports until the event is set (the requestor has released by then)."""
    release = asyncio.Event()
    original = scp.report

    async def report_after_release(*args):  # type: ignore[no-untyped-def]
        await release.wait()
        await original(*args)

    scp.report = report_after_release  # type: ignore[method-assign]
    return release


def test_requests_and_results_round_trip() -> None:
    references = [Reference(CT, "1.2.3.1"), Reference(MR, "1.2.3.3")]
    assert parse_request(request_dataset(references, "1.2.9")) == ("1.2.9", references)
    result = CommitmentResult(
        "1.2.9",
        (Reference(CT, "1.2.3.1"),),
        (CommitmentFailure(MR, "1.2.3.3", 0x0112),),
        "ARCHIVE",
    )
    event, dataset = result_dataset(result)
    assert event == FAILURES_EXIST
    assert parse_result(event, dataset) == result
    assert result.failed[0].meaning == "no such object instance"
    everything = CommitmentResult("1.2.9", tuple(references), ())
    event, dataset = result_dataset(everything)
    assert event == SUCCESSFUL and "FailedSOPSequence" not in dataset
    assert parse_result(event, dataset).ok


@pytest.mark.parametrize(
    ("change", "status", "said"),
    [
        (lambda d: delattr(d, "TransactionUID"), Status.MISSING_ATTRIBUTE, "no TransactionUID"),
        (lambda d: setattr(d, "TransactionUID", "1.02.3"), Status.INVALID_ATTRIBUTE_VALUE, "UID"),
        (lambda d: delattr(d, "ReferencedSOPSequence"), Status.MISSING_ATTRIBUTE, "Sequence"),
        (lambda d: setattr(d, "ReferencedSOPSequence", []), 0x0121, "is empty"),
        (
            lambda d: delattr(d.ReferencedSOPSequence[0], "ReferencedSOPInstanceUID"),
            Status.MISSING_ATTRIBUTE,
            "no ReferencedSOPInstanceUID (0008,1155)",
        ),
    ],
)
def test_a_malformed_request_says_what_is_wrong(change, status, said) -> None:  # type: ignore[no-untyped-def]
    dataset = request_dataset([Reference(CT, "1.2.3.1")], "1.2.9")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid UID: as a peer might send
        change(dataset)
    with pytest.raises(InvalidCommitment, match=re.escape(said)) as error:
        parse_request(dataset)
    assert error.value.status == status


async def test_commitment_on_the_same_association() -> None:
    scp = CommitmentSCP(holds, ae_title="ARCHIVE")
    async with adicom.Server("ARCHIVE", port=0, n_handlers={STORAGE_COMMITMENT: scp}) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="ARCHIVE", contexts=CONTEXTS
        ) as assoc:
            result = await request_commitment(assoc, [(CT, "1.2.3.1"), (CT, "1.2.3.2")], timeout=10)
            assert result.ok and len(result.committed) == 2
            # One never received, one held under another class.
            result = await request_commitment(
                assoc, [(CT, "1.2.3.1"), (CT, "9.9.9"), (CT, "1.2.3.3")], timeout=10
            )
    assert not result.ok
    assert result.committed == (Reference(CT, "1.2.3.1"),)
    assert {(f.sop_instance_uid, f.reason) for f in result.failed} == {
        ("9.9.9", Status.NO_SUCH_SOP_INSTANCE),
        ("1.2.3.3", Status.CLASS_INSTANCE_CONFLICT),
    }


async def test_the_report_comes_on_a_new_association_when_the_first_has_ended() -> None:
    """The SCU released after the N-ACTION-RSP: the SCP opens one to it (PS3.4 J.3.3.1.2)."""
    reports = CommitmentReports()
    async with adicom.Server(
        "MODALITY",
        port=0,
        n_handlers={STORAGE_COMMITMENT: reports.handler},
        scp_role_classes=[STORAGE_COMMITMENT],
    ) as listener:
        scp = CommitmentSCP(
            holds, ae_title="ARCHIVE", destinations={"MODALITY": ("127.0.0.1", listener.port)}
        )
        release = report_only_after(scp)
        async with adicom.Server("ARCHIVE", port=0, n_handlers={STORAGE_COMMITMENT: scp}) as server:
            result = reports.expect("1.2.9.1")
            async with adicom.connect(
                "127.0.0.1", server.port, calling_ae="MODALITY", called_ae="ARCHIVE",
                contexts=CONTEXTS,
            ) as assoc:  # fmt: skip
                information = request_dataset([Reference(CT, "1.2.3.1")], "1.2.9.1")
                answer = await n_action(
                    assoc, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1, information
                )
                assert answer.ok
            release.set()
            async with asyncio.timeout(10):
                committed = await result
    assert committed.ok and committed.committed == (Reference(CT, "1.2.3.1"),)


async def test_a_report_nobody_can_receive_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "adicom")
    scp = CommitmentSCP(holds, ae_title="ARCHIVE")  # no destinations
    release = report_only_after(scp)
    async with adicom.Server("ARCHIVE", port=0, n_handlers={STORAGE_COMMITMENT: scp}) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, calling_ae="GONE", called_ae="ARCHIVE", contexts=CONTEXTS
        ) as assoc:
            information = request_dataset([Reference(CT, "1.2.3.1")], "1.2.9.2")
            await n_action(assoc, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1, information)
        release.set()
        async with asyncio.timeout(10):
            await server.wait_idle()
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "cannot report transaction 1.2.9.2 to GONE" in said


async def test_bad_requests_get_the_standards_status_and_the_server_serves_on() -> None:
    scp = CommitmentSCP(holds, ae_title="ARCHIVE")
    async with adicom.Server("ARCHIVE", port=0, n_handlers={STORAGE_COMMITMENT: scp}) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="ARCHIVE", contexts=CONTEXTS
        ) as assoc:
            good = request_dataset([Reference(CT, "1.2.3.1")], "1.2.9.3")
            empty = request_dataset([], "1.2.9.4")
            no_uid = Dataset()
            no_uid.ReferencedSOPSequence = good.ReferencedSOPSequence
            cases = [
                (STORAGE_COMMITMENT_INSTANCE, 1, empty, 0x0121),
                (STORAGE_COMMITMENT_INSTANCE, 1, no_uid, Status.MISSING_ATTRIBUTE),
                (STORAGE_COMMITMENT_INSTANCE, 1, None, Status.MISSING_ATTRIBUTE),
                (STORAGE_COMMITMENT_INSTANCE, 7, good, Status.NO_SUCH_ACTION_TYPE),
                ("1.2.3.4.5", 1, good, Status.NO_SUCH_SOP_INSTANCE),
            ]
            for instance, action, information, status in cases:
                answer = await n_action(assoc, STORAGE_COMMITMENT, instance, action, information)
                assert answer.status == status, (instance, action, answer)
            assert (await request_commitment(assoc, [(CT, "1.2.3.1")], timeout=10)).ok


async def test_no_result_in_time_is_a_timeout() -> None:
    async def silent(request: NRequest) -> NResponse:
        return NResponse()  # takes the request, never reports

    async with adicom.Server("ARCHIVE", port=0, n_handlers={STORAGE_COMMITMENT: silent}) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="ARCHIVE", contexts=CONTEXTS
        ) as assoc:
            with pytest.raises(DicomTimeout, match="no storage commitment result"):
                await request_commitment(assoc, [(CT, "1.2.3.1")], timeout=0.3)
    with pytest.raises(ValueError, match="at least one instance"):
        await request_commitment(assoc, [], timeout=1)


async def test_the_scp_role_for_commitment_is_granted_only_where_configured() -> None:
    """PS3.4 J.3.3.1.3: the SCU accepts an association where the SCP proposes the SCP role."""
    from adicom.pdu import RoleSelection

    roles = [RoleSelection(STORAGE_COMMITMENT, scu_role=False, scp_role=True)]
    reports = CommitmentReports()
    for granted in (True, False):
        async with adicom.Server(
            "MODALITY",
            port=0,
            n_handlers={STORAGE_COMMITMENT: reports.handler},
            scp_role_classes=[STORAGE_COMMITMENT] if granted else [],
        ) as listener:
            async with adicom.connect(
                "127.0.0.1", listener.port, called_ae="MODALITY", contexts=CONTEXTS, roles=roles
            ) as assoc:
                context = assoc.context_for(STORAGE_COMMITMENT)
                assert context.scp_role is granted


async def test_the_archive_commits_to_what_it_holds(tmp_path: pathlib.Path) -> None:
    """End to end: C-STORE, then commitment of that and of what never came (PS3.4 J.3.3)."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from adicom.archive import Archive

    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    dataset = dcmread(path)
    archive = Archive(tmp_path / "archive")
    await archive.open()
    try:
        async with adicom.Server(
            "ARCHIVE", port=0, **archive.handlers(ae_title="ARCHIVE")
        ) as server:
            (stored,) = await adicom.store("127.0.0.1", server.port, [dataset], called_ae="ARCHIVE")
            assert stored.ok
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="ARCHIVE", contexts=CONTEXTS
            ) as assoc:
                result = await request_commitment(
                    assoc,
                    [(dataset.SOPClassUID, dataset.SOPInstanceUID), (CT, "1.2.3.404")],
                    timeout=10,
                )
            # The file is gone behind the archive's back: it no longer holds it.
            (tmp_path / "archive" / dataset.StudyInstanceUID / dataset.SeriesInstanceUID
             / f"{dataset.SOPInstanceUID}.dcm").unlink()  # fmt: skip
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="ARCHIVE", contexts=CONTEXTS
            ) as assoc:
                after = await request_commitment(
                    assoc, [(dataset.SOPClassUID, dataset.SOPInstanceUID)], timeout=10
                )
    finally:
        archive.close()
    assert result.committed == (Reference(dataset.SOPClassUID, dataset.SOPInstanceUID),)
    assert [(f.sop_instance_uid, f.reason) for f in result.failed] == [("1.2.3.404", 0x0112)]
    assert [f.reason for f in after.failed] == [0x0112]


async def test_the_archive_keeps_mpps_apart_from_its_instances(tmp_path: pathlib.Path) -> None:
    from adicom.archive import Archive
    from adicom.mpps import MPPS, create_mpps

    archive = Archive(tmp_path / "archive")
    await archive.open()
    try:
        async with adicom.Server("ARCHIVE", port=0, **archive.handlers()) as server:
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="ARCHIVE",
                contexts=[(MPPS, list(DEFAULT_TRANSFER_SYNTAXES))],
            ) as assoc:  # fmt: skip
                step = Dataset()
                step.PatientID = "P1"
                uid = await create_mpps(assoc, step)
    finally:
        archive.close()
    assert (tmp_path / "archive" / ".mpps" / f"{uid}.dcm").is_file()
    reopened = Archive(tmp_path / "archive")
    try:
        await reopened.open()
        assert await reopened.index.count() == 0  # an MPPS is not an instance of the archive
    finally:
        reopened.close()


async def test_the_client_and_the_cli_ask_for_commitment(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DicomClient.commit with a listener of its own, and `adicom commit` (exit 0 / 1).

    The archive's report on a new association is answered and its sending
    ends without a warning.
    """
    caplog.set_level(logging.INFO, "adicom")
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from adicom.archive import Archive
    from adicom.models import DicomNode
    from tests.test_cli import free_port, run_cli

    ct, mr = str(get_testdata_file("CT_small.dcm")), str(get_testdata_file("MR_small.dcm"))
    listen = free_port()
    archive = Archive(tmp_path / "archive")
    await archive.open()
    try:
        handlers = archive.handlers({"CLIENT": ("127.0.0.1", listen)}, ae_title="ARCHIVE")
        # This SCP reports on a new association only: to the client's listener.
        scp = handlers["n_handlers"][STORAGE_COMMITMENT]
        scp.same_association = False
        async with adicom.Server("ARCHIVE", port=0, **handlers) as server:
            peer = DicomNode(aet="ARCHIVE", host="127.0.0.1", port=server.port)
            client = adicom.DicomClient("CLIENT")
            (stored,) = await client.store([ct], peer)
            result = await client.commit(
                [stored, dcmread(mr)], peer, timeout=10, listen_port=listen, listen_host="127.0.0.1"
            )
            assert result.committed == (Reference(stored.sop_class_uid, stored.sop_instance_uid),)
            assert [f.reason for f in result.failed] == [Status.NO_SUCH_SOP_INSTANCE]
            async with asyncio.timeout(10):
                await server.wait_idle()  # the reporting task has ended
            said = [r.getMessage() for r in caplog.records]
            assert f"storage commitment of {result.transaction_uid} reported to CLIENT" in said
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING], said

            scp.same_association = True  # the CLI waits on its association
            where = ["--aec", "ARCHIVE", "127.0.0.1", str(server.port)]
            code, out, err = await run_cli("commit", *where, ct)
            assert code == 0, err
            assert f"committed  {stored.sop_instance_uid}" in out
            assert "1 committed, 0 not" in out
            code, out, err = await run_cli("commit", *where, ct, mr)
            assert code == 1 and "no such object instance (0x0112)" in out, out + err
            code, _, err = await run_cli("commit", *where, str(tmp_path / "nothing"))
            assert code == 2 and "no such file or folder" in err
    finally:
        archive.close()


async def test_the_clients_listener_lets_a_slow_reporter_release(tmp_path: pathlib.Path) -> None:
    """The reporting peer releases its association a while after our response (as pynetdicom's
    thread does): DicomClient.commit's listener waits for that release instead of aborting."""
    from adicom.models import DicomNode
    from adicom.pdu import RoleSelection
    from tests.test_cli import free_port

    listen = free_port()
    roles = [RoleSelection(STORAGE_COMMITMENT, scu_role=False, scp_role=True)]
    outcome: list[str] = []

    async def report(information: Dataset) -> None:
        _, references = parse_request(information)
        result = CommitmentResult(str(information.TransactionUID), tuple(references), ())
        event, dataset = result_dataset(result)
        try:
            async with adicom.connect(
                "127.0.0.1", listen, called_ae="CLIENT", contexts=CONTEXTS, roles=roles
            ) as reporting:
                answer = await n_event_report(
                    reporting, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, event, dataset
                )
                await asyncio.sleep(0.3)  # the client has its result and leaves meanwhile
                held = "still open" if reporting.is_established else "aborted"
            outcome.append(f"0x{answer.status:04X}, {held}, released")
        except adicom.errors.DicomError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    async def action(request: NRequest) -> NResponse:
        assert request.dataset is not None
        information = request.dataset
        return NResponse(then=lambda: report(information))

    async with adicom.Server("SCP", port=0, n_handlers={STORAGE_COMMITMENT: action}) as scp:
        client = adicom.DicomClient("CLIENT")
        peer = DicomNode(aet="SCP", host="127.0.0.1", port=scp.port)
        result = await client.commit(
            [(CT, "1.2.3.4")], peer, timeout=10, listen_port=listen, listen_host="127.0.0.1"
        )
        assert result.committed == (Reference(CT, "1.2.3.4"),)
        async with asyncio.timeout(10):
            await scp.wait_idle()
    assert outcome == ["0x0000, still open, released"]
