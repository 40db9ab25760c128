"""DIMSE-N (issue 14) with pynetdicom in both roles, each side a real process or socket.

adicom as SCU (``adicom.nservices``, ``request_commitment``, ``create_mpps``)
against scripts/pynetdicom_n_scp.py; pynetdicom as SCU
(scripts/pynetdicom_n_scu.py) against ``adicom serve --storage DIR``, whose
archive serves Storage Commitment and MPPS. What pynetdicom (3.0) does, as
these tests found it:

- its handlers run in the association's reactor thread, and
  ``send_n_event_report`` pauses that reactor: a report on the same
  association has to be sent from another thread, which then runs once the
  N-ACTION-RSP is out;
- ``send_n_event_report`` ignores role selection; an AE proposing the SCP
  role for Storage Commitment uses ``build_role(scu_role=False, scp_role=True)``,
  one accepting it ``add_supported_context(scu_role=False, scp_role=True)``;
- as a requestor it serves an N-EVENT-REPORT on its association through an
  ``EVT_N_EVENT_REPORT`` handler given to ``associate``, unless its
  A-RELEASE-RQ is already out: from then on it ignores P-DATA;
- its N-SET status carries the Error ID (0000,0903); ``send_n_create`` does
  not return the response's Affected SOP Instance UID (the script reads it
  from the command set, EVT_DIMSE_RECV).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset

import adicom
from adicom.commitment import (
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    CommitmentFailure,
    CommitmentReports,
    Reference,
    request_commitment,
    request_dataset,
)
from adicom.errors import DimseError
from adicom.mpps import MPPS, create_mpps, set_mpps
from adicom.nservices import n_action, n_create, n_delete, n_event_report, n_get, n_set
from adicom.presentation import DEFAULT_TRANSFER_SYNTAXES
from tests.interop import data, peers, qr_peers

pytestmark = pytest.mark.interop

HOST = peers.HOST
SYNTAXES = list(DEFAULT_TRANSFER_SYNTAXES)
FILM_SESSION = "1.2.840.10008.5.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
#: Generous, bounded waits for a report (adicom's CommitmentSCP waits 30 s for an answer).
REPORT_WAIT = 15.0
#: The AE title (and port, reserved per module) at which the pynetdicom SCU listens.
LISTENER_AE = "PYNET-LISTEN"

# Statuses (PS3.7 Annex C, PS3.4 Tables F.7.2-2 and J.3-1).
SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
NO_SUCH_INSTANCE = 0x0112
NO_SUCH_EVENT_TYPE = 0x0113
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
NO_SUCH_ACTION_TYPE = 0x0123
NO_LONGER_UPDATABLE = 0xA710


# --------------------------------------------------------------------------
# The pynetdicom peers


@contextlib.contextmanager
def pynetdicom_n_scp(*options: str, aet: str = "PYNET-N") -> Iterator[peers.Peer]:
    """scripts/pynetdicom_n_scp.py, listening when it yields."""
    peers.require_pynetdicom()
    port = peers.free_port()
    argv = [
        sys.executable,
        str(peers.SCRIPTS / "pynetdicom_n_scp.py"),
        *("--host", HOST, "--port", str(port), "--aet", aet),
        *options,
    ]
    with peers.running(argv, name="pynetdicom N SCP") as peer:
        peer.port, peer.aet = port, aet
        peers.wait_for_port(HOST, port, peers.READY_TIMEOUT, peer)
        yield peer


def scp_lines(peer: peers.Peer, event: str | None = None) -> list[dict[str, Any]]:
    """What the pynetdicom SCP printed (one JSON object a line), of one kind or all."""
    lines = [json.loads(line) for line in peer.stdout().splitlines() if line.startswith("{")]
    return [line for line in lines if event is None or line["event"] == event]


async def wait_for_lines(
    peer: peers.Peer, event: str, count: int = 1, timeout: float = REPORT_WAIT
) -> list[dict[str, Any]]:
    """The lines of this kind the SCP printed, once there are ``count`` (bounded, not blocking).

    pynetdicom prints a report's line once adicom's answer is in, which may be
    after adicom's side has its result.
    """
    with anyio.move_on_after(timeout):
        while len(found := scp_lines(peer, event)) < count:
            await anyio.sleep(0.02)
        return found
    raise peers.PeerError(f"not {count} {event!r} lines within {timeout:g} s\n{peer.describe()}")


def poll_lines(
    peer: peers.Peer, event: str, count: int, timeout: float = REPORT_WAIT
) -> list[dict[str, Any]]:
    """wait_for_lines for a test without an event loop."""
    deadline = time.monotonic() + timeout
    while len(found := scp_lines(peer, event)) < count:
        if time.monotonic() >= deadline:
            raise peers.PeerError(f"not {count} {event!r} lines in time\n{peer.describe()}")
        time.sleep(0.02)
    return found


def run_n_scu(
    port: int,
    aec: str,
    steps: Sequence[dict[str, Any]],
    workdir: Path,
    *,
    aet: str = "PYNET-SCU",
    listen: int | None = None,
) -> dict[str, Any]:
    """scripts/pynetdicom_n_scu.py running ``steps`` on one association; its JSON."""
    peers.require_pynetdicom()
    path = workdir / f"steps-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(list(steps)))
    argv = [
        sys.executable,
        str(peers.SCRIPTS / "pynetdicom_n_scu.py"),
        *("--host", HOST, "--port", str(port), "--aet", aet, "--aec", aec),
        *("--timeout", "20", "--steps", str(path)),
    ]
    if listen is not None:
        argv += ["--listen", str(listen)]
    finished = peers.run(argv, timeout=60)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    assert lines, finished.describe()
    result: dict[str, Any] = json.loads(lines[-1])
    assert result["established"], finished.describe()
    result["describe"] = finished.describe()
    return result


def commitment_request(references: Sequence[tuple[str, str]], transaction: str | None) -> Dataset:
    """Action Information of a Storage Commitment request, as a peer may send it."""
    information = Dataset()
    if transaction is not None:
        information.TransactionUID = transaction
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    information.ReferencedSOPSequence = items
    return information


def references(dataset: Dataset, keyword: str) -> list[tuple[str, ...]]:
    """(class, instance[, failure reason]) of each item of a commitment result sequence."""
    found = []
    for item in dataset.get(keyword) or []:
        row: tuple[str, ...] = (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
        if "FailureReason" in item:
            row += (f"0x{int(item.FailureReason):04X}",)
        found.append(row)
    return found


def mpps_step(**values: str) -> Dataset:
    step = Dataset()
    step.PatientName = "Doe^Jane"
    step.PatientID = "NSVC-1"
    step.Modality = "CT"
    step.PerformedProcedureStepID = "PPS-1"
    for keyword, value in values.items():
        setattr(step, keyword, value)
    return step


def _connect(peer: peers.Peer, *classes: str, calling_ae: str = "ADICOM-SCU") -> Any:
    assert peer.port is not None and peer.aet is not None
    return adicom.connect(
        HOST,
        peer.port,
        calling_ae=calling_ae,
        called_ae=peer.aet,
        contexts=[(uid, SYNTAXES) for uid in classes],
        timeout=20,
    )


# --------------------------------------------------------------------------
# 1. adicom as SCU, pynetdicom as SCP: the six services


@pytest.mark.anyio
async def test_the_six_n_services_against_pynetdicom() -> None:
    with pynetdicom_n_scp() as scp:
        async with _connect(scp, MPPS, FILM_SESSION) as assoc:
            # N-CREATE without a UID: pynetdicom's handler makes one.
            created = await n_create(
                assoc, MPPS, mpps_step(PerformedProcedureStepStatus="IN PROGRESS")
            )
            assert created.status == SUCCESS, created
            uid = created.sop_instance_uid
            assert uid and uid == scp_lines(scp, "N-CREATE")[0]["created"]
            assert created.dataset is not None
            assert created.dataset.PatientName == "Doe^Jane"
            assert created.dataset.PerformedProcedureStepStatus == "IN PROGRESS"

            got = await n_get(assoc, MPPS, uid, [0x00400252, 0x00100020])
            assert got.status == SUCCESS and got.dataset is not None
            assert sorted(int(e.tag) for e in got.dataset) == [0x00100020, 0x00400252]
            assert (got.dataset.PatientID, got.dataset.PerformedProcedureStepStatus) == (
                "NSVC-1",
                "IN PROGRESS",
            )

            done = Dataset()
            done.PerformedProcedureStepStatus = "COMPLETED"
            changed = await n_set(assoc, MPPS, uid, done)
            assert changed.status == SUCCESS and changed.sop_instance_uid == uid
            assert changed.dataset is not None
            assert changed.dataset.PerformedProcedureStepStatus == "COMPLETED"
            everything = await n_get(assoc, MPPS, uid)  # no list: every attribute
            assert everything.dataset is not None
            assert everything.dataset.PerformedProcedureStepStatus == "COMPLETED"
            assert everything.dataset.PerformedProcedureStepID == "PPS-1"

            # A failure status is a result, not an exception; its Error ID comes along.
            final = await n_set(assoc, MPPS, uid, done)
            assert (final.status, final.command.error_id) == (
                PROCESSING_FAILURE,
                NO_LONGER_UPDATABLE,
            )
            assert final.error_comment == "Performed Procedure Step Object may no longer be updated"
            assert not final.ok and final.dataset is None

            reported = await n_event_report(assoc, MPPS, uid, 1, done)
            assert reported.status == SUCCESS and reported.command.event_type_id == 1
            assert reported.dataset is not None
            assert reported.dataset.PerformedProcedureStepStatus == "COMPLETED"
            unknown_event = await n_event_report(assoc, MPPS, uid, 5, done)
            assert unknown_event.status == NO_SUCH_EVENT_TYPE
            assert unknown_event.error_comment == "no event type 5"

            # Basic Film Session: our own UID, N-ACTION, N-DELETE.
            film = "1.2.826.0.1.3680043.8.498.1401"
            made = await n_create(assoc, FILM_SESSION, Dataset(), film)
            assert (made.status, made.sop_instance_uid) == (SUCCESS, film)
            acted = await n_action(assoc, FILM_SESSION, film, 1)
            assert acted.status == SUCCESS and acted.command.action_type_id == 1
            assert acted.dataset is not None and acted.dataset.TextValue == f"action 1 on {film}"
            refused = await n_action(assoc, FILM_SESSION, film, 9)
            assert (refused.status, refused.error_comment) == (
                NO_SUCH_ACTION_TYPE,
                "no action type 9",
            )
            assert (await n_delete(assoc, FILM_SESSION, film)).status == SUCCESS
            again = await n_delete(assoc, FILM_SESSION, film)
            assert (again.status, again.error_comment) == (NO_SUCH_INSTANCE, "no instance")
            gone = await n_get(assoc, FILM_SESSION, film)
            assert (gone.status, gone.error_comment) == (NO_SUCH_INSTANCE, f"no instance {film}")
            with pytest.raises(DimseError, match="0x0112"):
                gone.check()
            # The association is still good for more.
            assert (await n_get(assoc, MPPS, uid, [0x00400252])).ok

        seen = scp_lines(scp)
    assert [line["event"] for line in seen] == [
        "N-CREATE", "N-GET", "N-SET", "N-GET", "N-SET", "N-EVENT-REPORT", "N-EVENT-REPORT",
        "N-CREATE", "N-ACTION", "N-ACTION", "N-DELETE", "N-DELETE", "N-GET", "N-GET",
    ]  # fmt: skip
    # pynetdicom read what adicom put in each command and data set.
    assert all(line["calling_ae"] == "ADICOM-SCU" for line in seen)
    assert len({line["message_id"] for line in seen}) == len(seen)
    assert [line["sop_class"] for line in seen[:7]] == [MPPS] * 7
    assert seen[0]["sop_instance"] is None
    assert {line["sop_instance"] for line in seen[1:7]} == {uid}
    assert {line["sop_instance"] for line in seen[7:13]} == {film}
    sent = Dataset.from_json(seen[0]["dataset"])
    assert sent == mpps_step(PerformedProcedureStepStatus="IN PROGRESS")
    assert seen[1]["attributes"] == [0x00400252, 0x00100020]
    assert seen[3]["attributes"] == []
    assert Dataset.from_json(seen[2]["dataset"]) == done
    assert [line.get("event_type") for line in seen[5:7]] == [1, 5]
    assert [line.get("action_type") for line in seen[8:10]] == [1, 9]
    assert [line["status"] for line in seen] == [
        SUCCESS, SUCCESS, SUCCESS, SUCCESS, PROCESSING_FAILURE, SUCCESS, NO_SUCH_EVENT_TYPE,
        SUCCESS, SUCCESS, NO_SUCH_ACTION_TYPE, SUCCESS, NO_SUCH_INSTANCE, NO_SUCH_INSTANCE,
        SUCCESS,
    ]  # fmt: skip


@pytest.mark.anyio
async def test_adicom_reports_an_mpps_to_pynetdicom() -> None:
    """create_mpps / set_mpps against a pynetdicom MPPS SCP (PS3.4 F.7)."""
    with pynetdicom_n_scp() as scp:
        async with _connect(scp, MPPS) as assoc:
            uid = await create_mpps(assoc, mpps_step())
            series = Dataset()
            series.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1402"
            more = Dataset()
            more.PerformedSeriesSequence = [series]
            assert (await set_mpps(assoc, uid, more)).status == SUCCESS
            done = Dataset()
            done.PerformedProcedureStepStatus = "COMPLETED"
            assert (await set_mpps(assoc, uid, done)).status == SUCCESS
            with pytest.raises(DimseError, match="0x0110: MPPS N-SET failed") as error:
                await set_mpps(assoc, uid, done)
            assert error.value.status == PROCESSING_FAILURE
            # Not IN PROGRESS at creation: pynetdicom's 0x0106 is raised too.
            with pytest.raises(DimseError, match="0x0106"):
                await create_mpps(assoc, mpps_step(PerformedProcedureStepStatus="COMPLETED"))
            raw = await n_set(assoc, MPPS, uid, done)
            assert (raw.status, raw.command.error_id) == (PROCESSING_FAILURE, NO_LONGER_UPDATABLE)
        creates = scp_lines(scp, "N-CREATE")
        sets = scp_lines(scp, "N-SET")
    # create_mpps added the status to what it was given; pynetdicom made the UID.
    assert creates[0]["created"] == uid
    assert Dataset.from_json(creates[0]["dataset"]).PerformedProcedureStepStatus == "IN PROGRESS"
    assert [line["status"] for line in creates] == [SUCCESS, INVALID_ATTRIBUTE_VALUE]
    first = Dataset.from_json(sets[0]["dataset"])
    assert first.PerformedSeriesSequence[0].SeriesInstanceUID == series.SeriesInstanceUID
    assert [line["status"] for line in sets] == [
        SUCCESS, SUCCESS, PROCESSING_FAILURE, PROCESSING_FAILURE,
    ]  # fmt: skip


# --------------------------------------------------------------------------
# 2. Storage Commitment: adicom as SCU, pynetdicom as SCP


HELD = "1.2.826.0.1.3680043.8.498.1501"
NOT_HELD = "1.2.826.0.1.3680043.8.498.1502"


@pytest.mark.anyio
async def test_commitment_reported_on_the_same_association() -> None:
    with pynetdicom_n_scp("--hold", HELD, "--report", "same") as scp:
        async with _connect(scp, STORAGE_COMMITMENT) as assoc:
            result = await request_commitment(
                assoc, [(CT, HELD), (CT, NOT_HELD)], timeout=REPORT_WAIT
            )
            everything = await request_commitment(assoc, [(CT, HELD)], timeout=REPORT_WAIT)
            # pynetdicom refuses another action type: a status, not an exception.
            other = await n_action(
                assoc,
                STORAGE_COMMITMENT,
                STORAGE_COMMITMENT_INSTANCE,
                2,
                request_dataset([Reference(CT, HELD)], "1.2.826.0.1.3680043.8.498.1503"),
            )
        reports = await wait_for_lines(scp, "report", 2)
        actions = scp_lines(scp, "N-ACTION")
    assert result.committed == (Reference(CT, HELD),)
    assert result.failed == (CommitmentFailure(CT, NOT_HELD, NO_SUCH_INSTANCE),)
    assert result.retrieve_ae_title == "PYNET-N"
    assert everything.ok and everything.committed == (Reference(CT, HELD),)
    assert (other.status, other.error_comment) == (NO_SUCH_ACTION_TYPE, "no action type 2")
    # pynetdicom sent each report on the association and adicom answered it 0x0000.
    assert [(r["via"], r["status"], r["event_type"]) for r in reports] == [
        ("same", SUCCESS, 2),
        ("same", SUCCESS, 1),
    ]
    assert [r["transaction_uid"] for r in reports] == [
        result.transaction_uid,
        everything.transaction_uid,
    ]
    sent = Dataset.from_json(actions[0]["dataset"])
    assert sent.TransactionUID == result.transaction_uid
    assert references(sent, "ReferencedSOPSequence") == [(CT, HELD), (CT, NOT_HELD)]
    assert actions[0]["sop_instance"] == STORAGE_COMMITMENT_INSTANCE


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["new", "after-release"])
async def test_commitment_reported_on_a_new_association(when: str) -> None:
    """pynetdicom opens an association to adicom's server proposing the SCP role (PS3.4 J.3.3.1.3).

    ``new``: while adicom's request_commitment keeps its association open;
    ``after-release``: once adicom released it right after the N-ACTION-RSP.
    """
    reports = CommitmentReports()
    async with adicom.Server(
        "MODALITY",
        host=HOST,
        port=0,
        n_handlers={STORAGE_COMMITMENT: reports.handler},
        scp_role_classes=[STORAGE_COMMITMENT],
    ) as listener:
        report_to = f"MODALITY={HOST}:{listener.port}"
        options = ("--hold", HELD, "--report", when, "--report-to", report_to)
        with pynetdicom_n_scp(*options) as scp:
            async with _connect(scp, STORAGE_COMMITMENT, calling_ae="MODALITY") as assoc:
                if when == "new":
                    result = await request_commitment(
                        assoc, [(CT, HELD), (CT, NOT_HELD)], reports=reports, timeout=REPORT_WAIT
                    )
                else:
                    transaction = "1.2.826.0.1.3680043.8.498.1504"
                    waiting = reports.expect(transaction)
                    information = request_dataset(
                        [Reference(CT, HELD), Reference(CT, NOT_HELD)], transaction
                    )
                    answer = await n_action(
                        assoc, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1, information
                    )
                    assert answer.status == SUCCESS
            if when == "after-release":
                with anyio.fail_after(REPORT_WAIT):
                    result = await waiting
            (line,) = await wait_for_lines(scp, "report")
    assert result.committed == (Reference(CT, HELD),)
    assert result.failed == (CommitmentFailure(CT, NOT_HELD, NO_SUCH_INSTANCE),)
    # pynetdicom's requestor side: the SCP role was granted, not the SCU role.
    assert line["established"] and line["via"] == when
    assert line["roles"] == {"scu": False, "scp": True}
    assert (line["status"], line["event_type"]) == (SUCCESS, 2)
    assert line["transaction_uid"] == result.transaction_uid


@pytest.mark.anyio
async def test_a_refused_scp_role_leaves_pynetdicom_no_role_yet_its_report_is_taken() -> None:
    """Pinned as found: a Server without ``scp_role_classes`` still takes the report.

    adicom answers the proposal (SCU 0, SCP 1) with (0, 0), so pynetdicom's
    context has neither role (PS3.7 D.3.3.4); pynetdicom sends its
    N-EVENT-REPORT anyway (it ignores roles for that service), and adicom's
    server serves it: ``scp_role_classes`` decides the answer to the role
    proposal, not which requests are served.
    """
    reports = CommitmentReports()
    async with adicom.Server(
        "MODALITY", host=HOST, port=0, n_handlers={STORAGE_COMMITMENT: reports.handler}
    ) as listener:
        report_to = f"MODALITY={HOST}:{listener.port}"
        with pynetdicom_n_scp("--hold", HELD, "--report", "new", "--report-to", report_to) as scp:
            async with _connect(scp, STORAGE_COMMITMENT, calling_ae="MODALITY") as assoc:
                result = await request_commitment(
                    assoc, [(CT, HELD)], reports=reports, timeout=REPORT_WAIT
                )
            (line,) = await wait_for_lines(scp, "report")
    assert line["roles"] == {"scu": False, "scp": False}
    assert (line["status"], line["event_type"]) == (SUCCESS, 1)
    assert result.ok and result.committed == (Reference(CT, HELD),)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("event_type", "status"), [(7, NO_SUCH_EVENT_TYPE), (2, MISSING_ATTRIBUTE)]
)
async def test_a_malformed_report_is_refused_and_the_wait_goes_on(
    event_type: int, status: int
) -> None:
    """Event type 7, or 2 without a Failed SOP Sequence (all were held): PS3.4 J.3.3.

    adicom answers pynetdicom's report with a failure and keeps waiting for a
    good one, which never comes: request_commitment ends in its timeout.
    """
    options = ("--hold", HELD, "--report", "same", "--report-event-type", str(event_type))
    with pynetdicom_n_scp(*options) as scp:
        async with _connect(scp, STORAGE_COMMITMENT) as assoc:
            with pytest.raises(adicom.errors.DicomTimeout, match="no storage commitment result"):
                await request_commitment(assoc, [(CT, HELD)], timeout=2.0)
            # The association still works: the next request is answered.
            other = await n_action(
                assoc, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 2, Dataset()
            )
            assert other.status == NO_SUCH_ACTION_TYPE
        reports = await wait_for_lines(scp, "report")
    assert [(r["via"], r["event_type"], r["status"]) for r in reports] == [
        ("same", event_type, status)
    ]


@pytest.mark.parametrize("how", ["same", "new"])
def test_adicom_commit_command_against_pynetdicom(how: str, tmp_path: Path) -> None:
    """``adicom commit FILES`` (a process) asks pynetdicom about what the files are."""
    held = data.write_sample(data.SPECS_BY_LABEL["explicit-le"], tmp_path)
    missing = data.write_sample(data.SPECS_BY_LABEL["implicit-le"], tmp_path)
    listen = peers.free_port()
    options = ("--hold", held.sop_instance_uid, "--report", how)
    with pynetdicom_n_scp(*options, "--report-to", f"MODALITY={HOST}:{listen}") as scp:
        assert scp.port is not None

        def commit(*paths: Path) -> peers.Finished:
            return peers.run(
                [
                    *peers.adicom_cli(), "commit", "--aet", "MODALITY", "--aec", "PYNET-N",
                    "--listen", str(listen), "--wait", str(REPORT_WAIT), "--timeout", "20",
                    HOST, str(scp.port), *map(str, paths),
                ]
            )  # fmt: skip

        both = commit(held.path, missing.path)
        only_held = commit(held.path)
        # What the commands said first: a report missing below is then told
        # apart from a command that failed.
        assert both.returncode == 1, both.describe()
        assert only_held.returncode == 0, only_held.describe()
        reports = poll_lines(scp, "report", 2)
    lines = both.stdout.splitlines()
    assert lines[0].split() == ["committed", held.sop_instance_uid], both.describe()
    assert lines[1].split(maxsplit=2) == [
        "FAILED",
        f"{missing.sop_instance_uid}:",
        "no such object instance (0x0112)",
    ]
    assert lines[2].startswith("adicom commit: 1 committed, 1 not (transaction ")
    assert only_held.stdout.splitlines()[0].split() == ["committed", held.sop_instance_uid]
    assert [(r["via"], r["status"], r["event_type"]) for r in reports] == [
        (how, SUCCESS, 2),
        (how, SUCCESS, 1),
    ], scp.describe()
    if how == "new":
        assert all(r["roles"] == {"scu": False, "scp": True} for r in reports)
        # The command's listener let pynetdicom release what it reported on.
        assert all(r["released"] for r in reports), reports


# --------------------------------------------------------------------------
# 3-5. pynetdicom as SCU, ``adicom serve --storage`` as SCP


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[peers.Peer, Path, int]]:
    """``adicom serve --storage`` knowing the pynetdicom SCU's listening address.

    Yields the peer, its storage folder and the port reserved for the SCU.
    """
    peers.require_pynetdicom()
    storage = tmp_path_factory.mktemp("nservices") / "storage"
    listen = peers.free_port()
    with qr_peers.adicom_serve_archive(storage, {LISTENER_AE: listen}) as peer:
        yield peer, storage, listen


def _store_and_commit(
    instance: data.Instance, transaction: str, action: str = "action"
) -> list[dict[str, Any]]:
    return [
        {"op": "store", "path": str(instance.path)},
        {
            "op": action,
            "class": STORAGE_COMMITMENT,
            "instance": STORAGE_COMMITMENT_INSTANCE,
            "type": 1,
            "dataset": commitment_request(
                [(instance.sop_class_uid, instance.sop_instance_uid), (CT, NOT_HELD)],
                transaction,
            ).to_json_dict(),
        },
    ]


def _check_report(report: dict[str, Any], instance: data.Instance, transaction: str) -> None:
    """One committed (the stored instance), one failed 0x0112 (never sent): PS3.4 J.3.3."""
    assert (report["sop_class"], report["sop_instance"]) == (
        STORAGE_COMMITMENT,
        STORAGE_COMMITMENT_INSTANCE,
    )
    assert report["event_type"] == 2
    result = Dataset.from_json(report["dataset"])
    assert result.TransactionUID == transaction
    assert references(result, "ReferencedSOPSequence") == [
        (instance.sop_class_uid, instance.sop_instance_uid)
    ]
    assert references(result, "FailedSOPSequence") == [(CT, NOT_HELD, "0x0112")]


@pytest.fixture
def ct(tmp_path: Path) -> data.Instance:
    """CT_small with a fresh SOP Instance UID."""
    return data.write_sample(data.SPECS_BY_LABEL["explicit-le"], tmp_path)


def test_pynetdicom_gets_the_report_on_its_association(
    serve: tuple[peers.Peer, Path, int], ct: data.Instance, tmp_path: Path
) -> None:
    peer, _, _ = serve
    assert peer.port is not None
    transaction = "1.2.826.0.1.3680043.8.498.1601"
    steps = [
        *_store_and_commit(ct, transaction),
        {"op": "wait-reports", "count": 1, "timeout": REPORT_WAIT},
        {"op": "echo"},
    ]
    out = run_n_scu(peer.port, "ADICOM", steps, tmp_path)
    described = f"{out['describe']}\n{peer.describe()}"
    assert [s["status"] for s in out["steps"]] == [SUCCESS, SUCCESS, None, SUCCESS], described
    action = out["steps"][1]["command"]
    assert action["ActionTypeID"] == 1, described
    assert action["AffectedSOPInstanceUID"] == STORAGE_COMMITMENT_INSTANCE
    (report,) = out["reports"]
    assert report["via"] == "association", described
    # adicom asked as the acceptor on pynetdicom's own association (default roles).
    assert report["roles"] == {"scu": True, "scp": False}
    _check_report(report, ct, transaction)


def test_pynetdicom_released_at_once_gets_the_report_on_a_new_association(
    serve: tuple[peers.Peer, Path, int], ct: data.Instance, tmp_path: Path
) -> None:
    """The SCU goes away before any report; adicom reports to its --move-dest address.

    pynetdicom's A-RELEASE-RQ follows the N-ACTION-RSP with its reactor
    paused, so a report adicom sends on the association meanwhile goes
    unanswered (pynetdicom ignores P-DATA while releasing): adicom must give
    that one up when the release comes, not wait out its 30 s, and open an
    association to the SCU, which accepts only the SCP role for adicom.
    """
    peer, _, listen = serve
    assert peer.port is not None
    transaction = "1.2.826.0.1.3680043.8.498.1602"
    steps = [
        *_store_and_commit(ct, transaction, action="action-then-release"),
        {"op": "wait-reports", "count": 1, "timeout": REPORT_WAIT},
    ]
    out = run_n_scu(peer.port, "ADICOM", steps, tmp_path, aet=LISTENER_AE, listen=listen)
    described = f"{out['describe']}\n{peer.describe()}"
    assert [s["status"] for s in out["steps"]] == [SUCCESS, SUCCESS, None], described
    # Under load adicom's report may reach the association before
    # pynetdicom's A-RELEASE-RQ does: either route is right (PS3.4 J.3.3.1.2).
    # pynetdicom may then run its handler for it and never answer (its reactor
    # is paused into the release): a report adicom got no response to is
    # sent again on a new association, so the SCU may see it twice, the
    # second time on its listener. On the listener adicom is the SCP.
    routes = [report["via"] for report in out["reports"]]
    assert routes in (["listener"], ["association"], ["association", "listener"]), described
    report = out["reports"][-1]
    if report["via"] == "listener":
        assert report["calling_ae"] == "ADICOM"
        # pynetdicom acts as the SCU of the class there: adicom took the SCP role.
        assert report["roles"] == {"scu": True, "scp": False}
    _check_report(report, ct, transaction)


def test_pynetdicom_releasing_plainly_gets_the_report_once(
    serve: tuple[peers.Peer, Path, int], ct: data.Instance, tmp_path: Path
) -> None:
    """A plain release right after the N-ACTION-RSP races adicom's report.

    pynetdicom may serve the report on the association before its release
    starts, or ignore it once the release has started; either way exactly one
    report must reach it.
    """
    peer, _, listen = serve
    assert peer.port is not None
    transaction = "1.2.826.0.1.3680043.8.498.1603"
    steps = [
        *_store_and_commit(ct, transaction),
        {"op": "release"},
        {"op": "wait-reports", "count": 1, "timeout": REPORT_WAIT},
    ]
    out = run_n_scu(peer.port, "ADICOM", steps, tmp_path, aet=LISTENER_AE, listen=listen)
    described = f"{out['describe']}\n{peer.describe()}"
    assert [s["status"] for s in out["steps"][:2]] == [SUCCESS, SUCCESS], described
    (report,) = out["reports"]
    assert report["via"] in ("association", "listener"), described
    _check_report(report, ct, transaction)


def test_pynetdicom_mpps_on_the_archive(
    serve: tuple[peers.Peer, Path, int], tmp_path: Path
) -> None:
    """N-CREATE IN PROGRESS, N-SET, N-SET COMPLETED, then a final step refuses changes."""
    peer, storage, _ = serve
    assert peer.port is not None
    series = Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1701"
    more = Dataset()
    more.PerformedSeriesSequence = [series]
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    own = "1.2.826.0.1.3680043.8.498.1702"

    def step(op: str, instance: str | None, dataset: Dataset | None) -> dict[str, Any]:
        return {
            "op": op,
            "class": MPPS,
            "instance": instance,
            "dataset": None if dataset is None else dataset.to_json_dict(),
        }

    steps = [
        step("create", None, mpps_step(PerformedProcedureStepStatus="IN PROGRESS")),
        step("set", "$created", more),
        step("set", "$created", done),
        step("set", "$created", more),
        step("create", own, mpps_step(PerformedProcedureStepStatus="COMPLETED")),
        step("set", "1.2.826.0.1.3680043.8.498.1799", done),
        step("create", own, mpps_step(PerformedProcedureStepStatus="IN PROGRESS")),
    ]
    out = run_n_scu(peer.port, "ADICOM", steps, tmp_path)
    described = f"{out['describe']}\n{peer.describe()}"
    statuses = [s["status"] for s in out["steps"]]
    assert statuses == [
        SUCCESS, SUCCESS, SUCCESS, PROCESSING_FAILURE, INVALID_ATTRIBUTE_VALUE,
        NO_SUCH_INSTANCE, SUCCESS,
    ], described  # fmt: skip
    created = out["steps"][0]["command"]["AffectedSOPInstanceUID"]
    assert created and created != own
    # pynetdicom sees adicom's Error ID and comment (PS3.4 Table F.7.2-2).
    final = out["steps"][3]["command"]
    assert final["ErrorID"] == NO_LONGER_UPDATABLE, described
    assert final["ErrorComment"] == "Performed Procedure Step Object may no longer be updated"
    assert out["steps"][6]["command"]["AffectedSOPInstanceUID"] == own
    kept = pydicom.dcmread(storage / ".mpps" / f"{created}.dcm")
    assert kept.PerformedProcedureStepStatus == "COMPLETED"
    assert kept.PerformedSeriesSequence[0].SeriesInstanceUID == series.SeriesInstanceUID
    assert (kept.PatientID, kept.SOPClassUID, kept.SOPInstanceUID) == ("NSVC-1", MPPS, created)
    assert pydicom.dcmread(storage / ".mpps" / f"{own}.dcm").PerformedProcedureStepStatus == (
        "IN PROGRESS"
    )


def test_bad_commitment_requests_are_answered_and_the_server_serves_on(
    serve: tuple[peers.Peer, Path, int], ct: data.Instance, tmp_path: Path
) -> None:
    """PS3.4 J.3.2.1.3 / PS3.7 10.1.4.1.10: each gets its status, nothing breaks."""
    peer, _, _ = serve
    assert peer.port is not None

    def action(dataset: Dataset | None, action_type: int = 1, instance: str | None = None) -> Any:
        return {
            "op": "action",
            "class": STORAGE_COMMITMENT,
            "instance": instance or STORAGE_COMMITMENT_INSTANCE,
            "type": action_type,
            "dataset": None if dataset is None else dataset.to_json_dict(),
        }

    good = [(CT, NOT_HELD)]
    steps = [
        action(commitment_request([], "1.2.826.0.1.3680043.8.498.1801")),
        action(commitment_request(good, None)),
        action(commitment_request(good, "1.2.826.0.1.3680043.8.498.1802"), action_type=2),
        action(None),
        action(commitment_request(good, "1.2.826.0.1.3680043.8.498.1803"), instance="1.2.3.4"),
        {"op": "echo"},
        *_store_and_commit(ct, "1.2.826.0.1.3680043.8.498.1804"),
        {"op": "wait-reports", "count": 1, "timeout": REPORT_WAIT},
    ]
    out = run_n_scu(peer.port, "ADICOM", steps, tmp_path)
    described = f"{out['describe']}\n{peer.describe()}"
    statuses = [s["status"] for s in out["steps"]]
    assert statuses == [
        MISSING_ATTRIBUTE_VALUE, MISSING_ATTRIBUTE, NO_SUCH_ACTION_TYPE, MISSING_ATTRIBUTE,
        NO_SUCH_INSTANCE, SUCCESS, SUCCESS, SUCCESS, None,
    ], described  # fmt: skip
    commands = [s["command"] for s in out["steps"]]
    assert "Referenced SOP Sequence is empty" in commands[0]["ErrorComment"], described
    assert "TransactionUID" in commands[1]["ErrorComment"], described
    assert commands[2]["ActionTypeID"] == 2  # echoed even when refused (PS3.7 10.3.4)
    # Only the good request was reported, on the association.
    (report,) = out["reports"]
    _check_report(report, ct, "1.2.826.0.1.3680043.8.498.1804")
    # A fresh association is served too.
    echo = peers.run(peers.adicom_echo_argv(peer.port, "ECHO-SCU", "ADICOM"))
    assert echo.returncode == 0, f"{echo.describe()}\n{peer.describe()}"
    assert peer.proc.poll() is None
