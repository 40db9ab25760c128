"""DIMSE-N (PS3.7 Chapter 10): the command codec, the SCU functions, the SCP handlers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

import adicom
from adicom.dimse import Command, CommandField, Limits, Status
from adicom.fileformat import IMPLICIT_VR_LITTLE_ENDIAN
from adicom.nservices import (
    NRequest,
    NResponse,
    answer_n,
    n_action,
    n_create,
    n_delete,
    n_event_report,
    n_get,
    n_set,
)
from adicom.presentation import DEFAULT_TRANSFER_SYNTAXES, VERIFICATION

pytestmark = pytest.mark.anyio

MPPS = "1.2.840.10008.3.1.2.3.3"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
SYNTAXES = list(DEFAULT_TRANSFER_SYNTAXES)


# -- the command codec ---------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [f for f in CommandField if f.is_n],
    ids=lambda f: f.name,
)
def test_every_n_command_round_trips(field: CommandField) -> None:
    command = Command(
        field,
        message_id=None if field & 0x8000 else 7,
        message_id_being_responded_to=7 if field & 0x8000 else None,
        requested_sop_class_uid=MPPS,
        requested_sop_instance_uid="1.2.3.4",
        event_type_id=2,
        action_type_id=1,
        attribute_identifier_list=(0x00100010, 0x00400270),
    )
    decoded = Command.decode(command.encode())
    assert decoded == command
    assert decoded.name == field.name.replace("_", "-")
    assert decoded.sop_class_uid == MPPS and decoded.sop_instance_uid == "1.2.3.4"


def test_the_n_elements_are_where_ps3_7_puts_them() -> None:
    # PS3.7 Table E.1-1: (0000,1002) Event Type ID, (0000,1005) Attribute
    # Identifier List (AT), (0000,1008) Action Type ID, each in tag order.
    raw = Command(
        CommandField.N_GET_RQ,
        message_id=1,
        attribute_identifier_list=(0x00100010,),
        event_type_id=3,
        action_type_id=4,
    ).encode()
    assert b"\x00\x00\x02\x10\x02\x00\x00\x00\x03\x00" in raw
    assert b"\x00\x00\x05\x10\x04\x00\x00\x00\x10\x00\x10\x00" in raw
    assert b"\x00\x00\x08\x10\x02\x00\x00\x00\x04\x00" in raw
    assert raw.index(b"\x00\x00\x02\x10") < raw.index(b"\x00\x00\x05\x10")
    assert raw.index(b"\x00\x00\x05\x10") < raw.index(b"\x00\x00\x08\x10")


@given(st.lists(st.integers(0, 0xFFFFFFFF), max_size=20))
def test_attribute_lists_of_any_tags_round_trip(tags: list[int]) -> None:
    command = Command(CommandField.N_GET_RQ, message_id=1, attribute_identifier_list=tuple(tags))
    assert Command.decode(command.encode()).attribute_identifier_list == tuple(tags)


def test_an_attribute_list_of_odd_length_is_malformed() -> None:
    raw = bytearray(Command(CommandField.N_GET_RQ, message_id=1).encode())
    element = b"\x00\x00\x05\x10\x06\x00\x00\x00" + b"\x10\x00\x10\x00\x20\x00"
    raw += element
    raw[8:12] = (int.from_bytes(raw[8:12], "little") + len(element)).to_bytes(4, "little")
    with pytest.raises(adicom.errors.RemoteProtocolError, match=r"\(0000,1005\) has 6 bytes"):
        Command.decode(bytes(raw))


def test_c_commands_are_not_n() -> None:
    assert not any(f.is_n for f in CommandField if f.name.startswith("C_"))
    assert all(f.is_n for f in CommandField if f.name.startswith("N_"))


# -- SCU and SCP ----------------------------------------------------------------


class Mpps:
    """A toy N-service SCP: instances by UID, every N request."""

    def __init__(self) -> None:
        self.instances: dict[str, Dataset] = {}
        self.requests: list[NRequest] = []

    async def __call__(self, request: NRequest) -> NResponse:
        self.requests.append(request)
        uid = request.sop_instance_uid
        field = request.field
        if field == CommandField.N_CREATE_RQ:
            uid = uid or "1.2.826.0.1.3680043.8.498.1"
            if uid in self.instances:
                return NResponse(Status.DUPLICATE_SOP_INSTANCE)
            self.instances[uid] = request.dataset or Dataset()
            return NResponse(sop_instance_uid=uid, dataset=self.instances[uid])
        if uid not in self.instances:
            return NResponse(Status.NO_SUCH_SOP_INSTANCE, error_comment=f"no instance {uid}")
        held = self.instances[uid]
        if field == CommandField.N_SET_RQ:
            assert request.dataset is not None
            held.update(request.dataset)
            return NResponse()
        if field == CommandField.N_GET_RQ:
            wanted = request.command.attribute_identifier_list or [e.tag for e in held]
            reply = Dataset()
            for tag in wanted:
                if tag in held:
                    reply.add(held[tag])
            return NResponse(dataset=reply)
        if field == CommandField.N_DELETE_RQ:
            del self.instances[uid]
            return NResponse()
        if field == CommandField.N_ACTION_RQ:
            reply = Dataset()
            reply.Manufacturer = f"action {request.command.action_type_id}"
            return NResponse(dataset=reply)
        return NResponse(Status.NO_SUCH_EVENT_TYPE)


async def test_the_six_n_services_as_scu_and_scp() -> None:
    scp = Mpps()
    async with adicom.Server("N-SCP", port=0, n_handlers={MPPS: scp}) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="N-SCP", contexts=[(MPPS, SYNTAXES)]
        ) as assoc:
            attributes = Dataset()
            attributes.PerformedProcedureStepStatus = "IN PROGRESS"
            attributes.PatientName = "Doe^Jane"
            created = await n_create(assoc, MPPS, attributes)
            assert created.ok and created.sop_instance_uid == "1.2.826.0.1.3680043.8.498.1"
            assert created.dataset is not None and created.dataset.PatientName == "Doe^Jane"
            uid = created.sop_instance_uid
            again = await n_create(assoc, MPPS, attributes, uid)
            assert again.status == Status.DUPLICATE_SOP_INSTANCE and not again.ok

            change = Dataset()
            change.PerformedProcedureStepStatus = "COMPLETED"
            assert (await n_set(assoc, MPPS, uid, change)).ok
            got = await n_get(assoc, MPPS, uid, [0x00400252])
            assert got.ok and got.dataset is not None
            assert got.dataset.PerformedProcedureStepStatus == "COMPLETED"
            assert "PatientName" not in got.dataset  # only what was asked for

            action = await n_action(assoc, MPPS, uid, 5)
            assert action.dataset is not None and action.dataset.Manufacturer == "action 5"
            assert action.command.action_type_id == 5  # echoed (PS3.7 10.3.4)
            report = await n_event_report(assoc, MPPS, uid, 9)
            assert report.status == Status.NO_SUCH_EVENT_TYPE
            assert report.command.event_type_id == 9

            assert (await n_delete(assoc, MPPS, uid)).ok
            gone = await n_get(assoc, MPPS, uid)
            assert gone.status == Status.NO_SUCH_SOP_INSTANCE
            assert gone.error_comment == f"no instance {uid}"
            with pytest.raises(adicom.errors.DimseError, match="0x0112: N-GET failed"):
                gone.check()
    # The SCP saw Requested UIDs in N-GET/SET/ACTION/DELETE, Affected in the others.
    fields = [r.field for r in scp.requests]
    assert fields[0] == CommandField.N_CREATE_RQ
    set_request = scp.requests[fields.index(CommandField.N_SET_RQ)].command
    assert set_request.requested_sop_instance_uid == uid
    assert set_request.affected_sop_instance_uid is None


async def test_a_failing_handler_and_a_bad_data_set_are_answered_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: NRequest) -> NResponse:
        raise RuntimeError("bug")

    async with adicom.Server("N-SCP", port=0, n_handlers={MPPS: broken}) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="N-SCP",
            contexts=[(MPPS, [IMPLICIT_VR_LITTLE_ENDIAN]), (VERIFICATION, SYNTAXES)],
        ) as assoc:  # fmt: skip
            failed = await n_create(assoc, MPPS, Dataset())
            assert failed.status == Status.PROCESSING_FAILURE
            # A data set that is not one: the SCP answers, the association goes on.
            command = Command(
                CommandField.N_SET_RQ,
                requested_sop_class_uid=MPPS,
                requested_sop_instance_uid="1.2.3",
                command_data_set_type=0,
            )
            context = assoc.context_for(MPPS).context_id
            # (0008,1115) a sequence of undefined length whose item runs off the end.
            garbage = b"\x08\x00\x15\x11\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00abc"
            operation = await assoc.start_operation(context, command, garbage)
            response = await operation.result()
            assert response.status == Status.PROCESSING_FAILURE
            assert "does not parse" in (response.error_comment or "")
            assert await assoc.echo() == 0
    assert any("the N-CREATE-RQ handler failed" in r.getMessage() for r in caplog.records)


async def test_a_sop_class_without_a_handler_is_not_accepted() -> None:
    async with adicom.Server("N-SCP", port=0, n_handlers={MPPS: Mpps()}) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="N-SCP",
            contexts=[(MPPS, SYNTAXES), (COMMITMENT, SYNTAXES)],
        ) as assoc:  # fmt: skip
            accepted = {str(c.abstract_syntax) for c in assoc.contexts.values() if c.accepted}
            assert accepted == {MPPS}
            with pytest.raises(adicom.errors.DicomError, match=COMMITMENT):
                await n_action(assoc, COMMITMENT, COMMITMENT_INSTANCE, 1)


async def test_an_event_report_comes_back_on_the_same_association() -> None:
    """The SCP reports later (``then``), as Storage Commitment does (PS3.4 J.3.3)."""
    reported = asyncio.Event()

    async def commit(request: NRequest) -> NResponse:
        async def report() -> None:
            result = Dataset()
            result.TransactionUID = request.dataset.TransactionUID  # type: ignore[union-attr]
            answer = await n_event_report(
                request.association, COMMITMENT, COMMITMENT_INSTANCE, 1, result
            )
            assert answer.ok
            reported.set()

        return NResponse(then=report)

    async with adicom.Server("N-SCP", port=0, n_handlers={COMMITMENT: commit}) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="N-SCP", contexts=[(COMMITMENT, SYNTAXES)]
        ) as assoc:
            request = Dataset()
            request.TransactionUID = "1.2.3.99"
            assert (await n_action(assoc, COMMITMENT, COMMITMENT_INSTANCE, 1, request)).ok
            async with asyncio.timeout(10):
                message = await assoc.receive_request()
            assert message is not None
            assert message.command.command_field == CommandField.N_EVENT_REPORT_RQ
            seen: list[Any] = []

            async def take(report: NRequest) -> NResponse:
                seen.append(report.dataset)
                return NResponse()

            await answer_n(assoc, message, take)
            assert seen[0].TransactionUID == "1.2.3.99"
            async with asyncio.timeout(10):
                await reported.wait()


async def test_n_data_sets_have_their_own_limit() -> None:
    """Larger than an identifier may be (a commitment lists a study), but bounded."""
    scp = Mpps()
    limits = Limits(max_dataset=1024, max_n_dataset=32 * 1024)
    async with adicom.Server("N-SCP", port=0, n_handlers={MPPS: scp}, limits=limits) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="N-SCP", contexts=[(MPPS, SYNTAXES)]
        ) as assoc:
            attributes = Dataset()
            # beyond max_dataset, within max_n_dataset:
            attributes.add_new(0x00204000, "UT", "x" * 20_000)
            assert (await n_create(assoc, MPPS, attributes, "1.2.3.1")).ok
            attributes.add_new(0x00204000, "UT", "x" * 40_000)
            with pytest.raises(adicom.errors.DicomError):
                await n_create(assoc, MPPS, attributes, "1.2.3.2")
            assert not assoc.is_established
    assert list(scp.instances) == ["1.2.3.1"]


async def test_work_left_for_later_is_bounded() -> None:
    """A peer sending request after request cannot pile up work that outlives it (0x0213)."""
    go = asyncio.Event()
    done: list[int] = []

    async def later_handler(request: NRequest) -> NResponse:
        async def report() -> None:
            await go.wait()
            done.append(1)

        return NResponse(then=report)

    async with adicom.Server(
        "N-SCP", port=0, n_handlers={MPPS: later_handler}, max_background=2
    ) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="N-SCP", contexts=[(MPPS, SYNTAXES)]
        ) as assoc:
            statuses = [(await n_action(assoc, MPPS, "1.2.3", 1)).status for _ in range(4)]
            assert statuses == [0, 0, Status.RESOURCE_LIMITATION, Status.RESOURCE_LIMITATION]
            go.set()
            async with asyncio.timeout(10):
                while len(done) < 2:
                    await asyncio.sleep(0.01)
            assert (await n_action(assoc, MPPS, "1.2.3", 1)).status == 0  # room again
