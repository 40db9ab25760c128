"""Modality Performed Procedure Step (PS3.4 Annex F): the SCP keeps steps and their states."""

from __future__ import annotations

import errno
import os
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pydicom
import pytest
from pydicom.dataset import Dataset

import adicom
from adicom.association import Association
from adicom.dimse import Status
from adicom.errors import DimseError
from adicom.mpps import MPPS, NO_LONGER_UPDATABLE, MppsStore, create_mpps, set_mpps
from adicom.nservices import n_create, n_set
from adicom.presentation import DEFAULT_TRANSFER_SYNTAXES

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def mpps_scp(store: MppsStore) -> AsyncIterator[Association]:
    async with adicom.Server("RIS", port=0, n_handlers={MPPS: store}) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, calling_ae="CT1", called_ae="RIS",
            contexts=[(MPPS, list(DEFAULT_TRANSFER_SYNTAXES))],
        ) as assoc:  # fmt: skip
            yield assoc


def step(**values: str) -> Dataset:
    dataset = Dataset()
    dataset.PatientName = "Doe^Jane"
    dataset.PatientID = "P1"
    dataset.Modality = "CT"
    dataset.PerformedProcedureStepID = "PPS1"
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    return dataset


async def test_a_step_goes_from_in_progress_to_completed_and_stays(
    tmp_path: pathlib.Path,
) -> None:
    store = MppsStore(tmp_path / "mpps")
    async with mpps_scp(store) as assoc:
        uid = await create_mpps(assoc, step())
        assert store.status(uid) == "IN PROGRESS"
        assert (tmp_path / "mpps" / f"{uid}.dcm").is_file()
        series = Dataset()
        series.SeriesInstanceUID = "1.2.3.4"
        update = Dataset()
        update.PerformedSeriesSequence = [series]
        await set_mpps(assoc, uid, update)
        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        await set_mpps(assoc, uid, done)
        assert store.status(uid) == "COMPLETED"
        # PS3.4 Table F.7.2-2: 0x0110 with Error ID 0xA710 once the step is final.
        again = await n_set(assoc, MPPS, uid, update)
        assert again.status == Status.PROCESSING_FAILURE
        assert again.command.error_id == NO_LONGER_UPDATABLE
        assert again.error_comment == "Performed Procedure Step Object may no longer be updated"
    kept = pydicom.dcmread(tmp_path / "mpps" / f"{uid}.dcm")
    assert kept.PerformedProcedureStepStatus == "COMPLETED"
    assert kept.PerformedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4"
    assert kept.SOPClassUID == MPPS and kept.SOPInstanceUID == uid
    # A restarted server knows the steps (and that this one is final).
    assert MppsStore(tmp_path / "mpps").status(uid) == "COMPLETED"


async def test_wrong_requests_get_the_standards_statuses(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = MppsStore(tmp_path / "mpps")
    async with mpps_scp(store) as assoc:
        uid = await create_mpps(assoc, step(), "1.2.826.0.1.3680043.8.498.7")
        assert uid == "1.2.826.0.1.3680043.8.498.7"  # the SCU's UID is kept
        cases = [
            (await n_create(assoc, MPPS, step(PerformedProcedureStepStatus="IN PROGRESS"), uid),
             Status.DUPLICATE_SOP_INSTANCE),
            (await n_create(assoc, MPPS, step(PerformedProcedureStepStatus="COMPLETED")),
             Status.INVALID_ATTRIBUTE_VALUE),
            (await n_create(assoc, MPPS, step()), Status.MISSING_ATTRIBUTE),
            (await n_set(assoc, MPPS, "1.2.3.999", step()), Status.NO_SUCH_SOP_INSTANCE),
            (await n_set(assoc, MPPS, uid, step(PerformedProcedureStepStatus="DONE")),
             Status.INVALID_ATTRIBUTE_VALUE),
        ]  # fmt: skip
        for result, status in cases:
            assert result.status == status, result
        assert store.status(uid) == "IN PROGRESS"  # none of that changed it
        discontinued = Dataset()
        discontinued.PerformedProcedureStepStatus = "DISCONTINUED"
        await set_mpps(assoc, uid, discontinued)
        with pytest.raises(DimseError, match="0x0110: MPPS N-SET failed"):
            await set_mpps(assoc, uid, discontinued)
    assert len(store.instances) == 1
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MPPS:")]
    assert len(said) == 6  # each refusal, once
    assert any("N-SET-RQ of 1.2.3.999 from CT1 refused: 0x0112" in line for line in said)


async def test_a_full_disk_fails_the_step_and_keeps_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MppsStore(tmp_path / "mpps")

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async with mpps_scp(store) as assoc:
        monkeypatch.setattr("adicom.mpps.os.replace", full)
        failed = await n_create(assoc, MPPS, step(PerformedProcedureStepStatus="IN PROGRESS"))
        assert failed.status == Status.PROCESSING_FAILURE
        assert "No space left on device" in (failed.error_comment or "")
        monkeypatch.undo()
        assert await create_mpps(assoc, step())  # the server serves on
    assert len(store.instances) == 1
    assert not list((tmp_path / "mpps").glob("*.tmp"))


async def test_the_number_of_steps_kept_is_bounded(tmp_path: pathlib.Path) -> None:
    store = MppsStore(tmp_path / "mpps", max_instances=2)
    async with mpps_scp(store) as assoc:
        for _ in range(2):
            await create_mpps(assoc, step())
        third = await n_create(assoc, MPPS, step(PerformedProcedureStepStatus="IN PROGRESS"))
        assert third.status == Status.RESOURCE_LIMITATION
    assert len(store.instances) == 2
