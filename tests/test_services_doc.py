"""docs/services.md: the modality's day runs against a real `adicom serve`."""

from __future__ import annotations

import asyncio
import pathlib
import re
import signal
import subprocess
import sys
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from adicom.models import DicomNode

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "services.md"


def worked_example() -> str:
    (code,) = re.findall(r"^```py\n(.*?)^```", DOC.read_text(), re.S | re.M)
    return str(code)


def worklist_item(folder: pathlib.Path) -> str:
    """A scheduled CT for station CT1, as a RIS would leave it for wlmscpfs."""
    item = Dataset()
    item.PatientName = "Doe^Jane"
    item.PatientID = "P-77"
    item.AccessionNumber = "ACC-77"
    item.StudyInstanceUID = generate_uid()
    item.RequestedProcedureID = "RP-77"
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledStationAETitle = "CT1"
    step.ScheduledProcedureStepID = "SPS-77"
    step.ScheduledProcedureStepStartDate = "20261129"
    item.ScheduledProcedureStepSequence = [step]
    item.file_meta = FileMetaDataset()
    item.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    item.file_meta.MediaStorageSOPClassUID = UID("1.2.276.0.7230010.3.1.0.1")
    item.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    item.save_as(folder / "ct1.wl", enforce_file_format=True)
    return str(item.StudyInstanceUID)


@pytest.mark.anyio
async def test_a_modalitys_day_against_adicom_serve(tmp_path: pathlib.Path) -> None:
    storage, worklist = tmp_path / "archive", tmp_path / "worklist"
    worklist.mkdir()
    study = worklist_item(worklist)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", "--aet", "PACS", "--host", "127.0.0.1",
        "--port", "0", "--storage", str(storage), "--worklist", str(worklist),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        port = int(line.rsplit(":", 1)[1])
        namespace: dict[str, Any] = {"__name__": "services_doc"}
        exec(compile(worked_example(), "services.md", "exec"), namespace)
        async with asyncio.timeout(60):
            await namespace["a_day_at_the_ct"](DicomNode(aet="PACS", host="127.0.0.1", port=port))
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    # What the archive kept: the image in the scheduled study, the step completed.
    (image,) = [p for p in storage.rglob("*.dcm") if ".mpps" not in p.parts]
    assert pydicom.dcmread(image).StudyInstanceUID == study
    (step,) = (storage / ".mpps").glob("*.dcm")
    kept = pydicom.dcmread(step)
    assert kept.PerformedProcedureStepStatus == "COMPLETED"
    assert kept.ScheduledStepAttributesSequence[0].AccessionNumber == "ACC-77"
    assert (
        kept.PerformedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(image).SeriesInstanceUID
    )
