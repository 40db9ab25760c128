"""``adicom demo``: the reference README's story, run end to end on this machine.

It starts the reference archive on a free loopback port in a temporary
folder, stores sample data made from pydicom's bundled test files (three
patients, each a study of two series), then, with :class:`DicomClient`:
echo, find studies, find series, get a study to disk, get a series to
memory, and move a study to a second local storage SCP. Every step checks
what it got against what was stored; the exit code is 0 only if all did.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from adicom.archive import Archive
from adicom.dicomclient import DicomClient
from adicom.models import DicomNode, SeriesQuery, StudyQuery
from adicom.server import Server
from adicom.storage import MemoryStorage
from adicom.storescu import store

__all__ = ["run_demo"]

T = TypeVar("T")

# (test file, patient ID, patient name, study date)
_SOURCES = (
    ("CT_small.dcm", "DEMO-001", "Ivanov^Ivan", "20240105"),
    ("MR_small.dcm", "DEMO-002", "Petrova^Anna", "20240118"),
    ("SC_rgb_jpeg_gdcm.dcm", "DEMO-003", "Doe^John", "20240203"),
)
SERIES_PER_STUDY = 2
INSTANCES_PER_SERIES = 3


def sample_data() -> list[Dataset]:
    """Three patients, one study each, two series of three instances, with fresh UIDs."""
    out: list[Dataset] = []
    for name, patient_id, patient_name, date in _SOURCES:
        path = get_testdata_file(name)
        if path is None:
            raise RuntimeError(f"pydicom's test file {name} is missing")
        template = pydicom.dcmread(path)
        study = generate_uid()
        for series_number in range(1, SERIES_PER_STUDY + 1):
            series = generate_uid()
            for instance_number in range(1, INSTANCES_PER_SERIES + 1):
                dataset = copy.deepcopy(template)
                dataset.PatientID = patient_id
                dataset.PatientName = patient_name
                dataset.StudyInstanceUID = study
                dataset.StudyDate = date
                dataset.StudyDescription = f"adicom demo ({name})"
                dataset.SeriesInstanceUID = series
                dataset.SeriesNumber = series_number
                dataset.InstanceNumber = instance_number
                dataset.SOPInstanceUID = generate_uid()
                dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
                out.append(dataset)
    return out


class StepFailed(Exception):
    """A demo step got something other than what was stored."""


@dataclass
class _Report:
    ok: int = 0
    failed: int = 0

    async def step(self, title: str, action: Callable[[], Awaitable[tuple[T, str]]]) -> T | None:
        """Run one step, print its line, and return its value (None if it failed)."""
        started = time.perf_counter()
        try:
            value, detail = await action()
        except Exception as exc:
            self.failed += 1
            print(f"  FAILED  {title}: {exc}")
            return None
        elapsed = (time.perf_counter() - started) * 1000
        self.ok += 1
        print(f"  ok      {title:<42} {elapsed:8.1f} ms   {detail}")
        return value


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


@dataclass
class _Demo:
    """What the steps share: the sample data, the archive's address, the client."""

    instances: list[Dataset]
    root: Path
    port: int
    pacs: DicomNode
    client: DicomClient
    received: MemoryStorage
    by_study: dict[str, list[Dataset]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for dataset in self.instances:
            self.by_study.setdefault(dataset.StudyInstanceUID, []).append(dataset)

    async def load(self) -> tuple[None, str]:
        results = await store(
            "127.0.0.1", self.port, self.instances, calling_ae="DEMO-CLIENT", called_ae="DEMO-PACS"
        )
        _check(
            len(results) == len(self.instances) and all(r.ok for r in results),
            f"{sum(r.ok for r in results)} of {len(self.instances)} instances stored",
        )
        return None, f"{len(results)} instances, {len(self.by_study)} patients"

    async def echo(self) -> tuple[None, str]:
        _check(await self.client.echo(self.pacs), "C-ECHO failed")
        return None, "status 0x0000"

    async def find_studies(self) -> tuple[list[str], str]:
        studies = await self.client.find_studies(
            StudyQuery(study_date="20240101-20240131"), self.pacs
        )
        uids = sorted(s.study_instance_uid for s in studies)
        expected = sorted(
            uid for uid, items in self.by_study.items() if items[0].StudyDate < "20240201"
        )
        _check(uids == expected, f"found {uids}, expected {expected}")
        names = ", ".join(sorted(str(s.patient_name) for s in studies))
        return uids, f"{len(studies)} studies in January 2024: {names}"

    async def find_series(self, study: str) -> tuple[list[str], str]:
        series = await self.client.find_series(SeriesQuery(study_instance_uid=study), self.pacs)
        uids = sorted(s.series_instance_uid for s in series)
        expected = sorted({d.SeriesInstanceUID for d in self.by_study[study]})
        _check(uids == expected, "the series do not match what was stored")
        counts = [s.number_of_series_related_instances for s in series]
        return uids, f"{len(series)} series, {counts} instances"

    async def get_to_disk(self, study: str) -> tuple[None, str]:
        result = await self.client.get_study(study, self.pacs, self.root / "retrieved")
        got = {pydicom.dcmread(p).SOPInstanceUID for p in result.paths}
        want = {d.SOPInstanceUID for d in self.by_study[study]}
        _check(
            result.status == "success" and got == want,
            f"{result.status}, {len(got)} of {len(want)} instances",
        )
        return None, f"{result.num_completed} files in {self.root / 'retrieved'}"

    async def get_to_memory(self, study: str, series: str) -> tuple[None, str]:
        result = await self.client.get_series_to_memory(study, series, self.pacs)
        sent = {d.SOPInstanceUID: d for d in self.by_study[study] if d.SeriesInstanceUID == series}
        same = all(
            d.SOPInstanceUID in sent and d.PixelData == sent[d.SOPInstanceUID].PixelData
            for d in result.instances
        )
        _check(
            len(result.instances) == len(sent) and same,
            "the datasets differ from those stored",
        )
        return None, f"{len(result.instances)} datasets, pixel data identical"

    async def move(self, study: str) -> tuple[None, str]:
        result = await self.client.move_study(study, self.pacs, "DEMO-DEST")
        got = {d.SOPInstanceUID for d in self.received.datasets}
        want = {d.SOPInstanceUID for d in self.by_study[study]}
        _check(
            result.status == "success" and got == want,
            f"{result.status}; DEMO-DEST has {len(got)} of {len(want)}",
        )
        return None, f"{result.num_completed} instances now at DEMO-DEST"


async def run_demo() -> int:
    """Run the demo; return the exit code (0: every step checked out)."""
    instances = sample_data()
    report = _Report()
    with tempfile.TemporaryDirectory(prefix="adicom-demo-") as folder:
        root = Path(folder)
        archive = Archive(root / "archive")
        print(f"adicom demo: an archive in {root} and a second storage SCP, on loopback")
        await _serve_and_run(instances, root, archive, report)
        archive.close()
    total = report.ok + report.failed
    if report.failed:
        print(f"\nadicom demo: {report.failed} of {total} steps FAILED")
        return 1
    print(f"\nadicom demo: all {total} steps checked out")
    return 0


async def _serve_and_run(
    instances: list[Dataset], root: Path, archive: Archive, report: _Report
) -> None:
    """Start the destination and the archive on loopback, and run the steps against them."""
    received = MemoryStorage()
    async with Server("DEMO-DEST", host="127.0.0.1", port=0, storage=received) as dest:
        destinations = {"DEMO-DEST": ("127.0.0.1", dest.port)}
        async with Server(
            "DEMO-PACS", host="127.0.0.1", port=0, **archive.handlers(destinations)
        ) as server:
            demo = _Demo(
                instances=instances,
                root=root,
                port=server.port,
                pacs=DicomNode(aet="DEMO-PACS", host="127.0.0.1", port=server.port),
                client=DicomClient(calling_aet="DEMO-CLIENT"),
                received=received,
            )
            print(
                f"  archive DEMO-PACS on 127.0.0.1:{server.port}, "
                f"destination DEMO-DEST on 127.0.0.1:{dest.port}\n"
            )
            await _run_steps(demo, report)


async def _run_steps(demo: _Demo, report: _Report) -> None:
    """The README's story in order; a step that needs an earlier one's answer falls back."""
    await report.step("store the sample data (C-STORE)", demo.load)
    await report.step("echo the archive (C-ECHO)", demo.echo)
    studies = await report.step("find studies of January 2024 (C-FIND)", demo.find_studies)
    study = studies[0] if studies else next(iter(demo.by_study))
    series = await report.step(
        "find the series of a study (C-FIND)", lambda: demo.find_series(study)
    )
    await report.step("get the study to disk (C-GET)", lambda: demo.get_to_disk(study))
    if series:
        await report.step(
            "get a series to memory (C-GET)", lambda: demo.get_to_memory(study, series[0])
        )
    await report.step("move the study to DEMO-DEST (C-MOVE)", lambda: demo.move(study))
