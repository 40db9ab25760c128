"""adicom.sync.DicomClient: the async client's methods, blocking, a loop per call, no threads.

The peers run in subprocesses (``adicom serve``): a blocking call holds the
test's only thread, so nothing in this process could answer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

import adicom
from adicom import sync
from adicom.models import (
    DicomNode,
    ImageQuery,
    PatientQuery,
    SeriesQuery,
    StudyQuery,
    WorklistQuery,
)
from adicom.pool import AssociationPool
from adicom.retry import RetryPolicy
from adicom.storescu import StoreResult

FACADE_ONLY = {"from_client", "async_client"}


def public(cls: type[Any]) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


COROUTINE_METHODS = sorted(
    name
    for name in public(adicom.DicomClient)
    if inspect.iscoroutinefunction(getattr(adicom.DicomClient, name))
)


# --------------------------------------------------------------------------
# The same API


def test_the_facade_has_every_public_method_of_the_async_client() -> None:
    assert public(sync.DicomClient) - FACADE_ONLY == public(adicom.DicomClient)
    assert {"echo", "find_studies", "get_study", "move_study", "store", "commit"} <= set(
        COROUTINE_METHODS
    )
    assert {"store_many", "get_studies", "move_studies"} <= set(COROUTINE_METHODS)


def test_every_method_has_its_typed_line_in_the_class_body() -> None:
    # _complete() made these at run time; type checkers cannot see them.
    missing = sorted(sync._GENERATED)
    assert not missing, (
        f"adicom/sync.py: add to class DicomClient, for each of {missing}, a line "
        "'name = _blocking(AsyncDicomClient.name)' (or _rewrapping for a method "
        "returning a client)"
    )


@pytest.mark.parametrize("name", sorted(public(adicom.DicomClient)))
def test_each_method_takes_what_the_async_one_takes(name: str) -> None:
    mine, theirs = getattr(sync.DicomClient, name), getattr(adicom.DicomClient, name)
    assert list(inspect.signature(mine).parameters.values()) == list(
        inspect.signature(theirs).parameters.values()
    )
    assert not inspect.iscoroutinefunction(mine)
    assert mine.__doc__ and theirs.__doc__
    assert mine.__doc__.splitlines()[0] == theirs.__doc__.splitlines()[0]
    assert mine.__module__ == "adicom.sync"


def test_the_constructor_takes_what_the_async_one_takes() -> None:
    assert inspect.signature(sync.DicomClient) == inspect.signature(adicom.DicomClient)
    client = sync.DicomClient("CLARINET", 32768, dimse_timeout=5.0, timeout=60.0)
    wrapped = client.async_client
    assert isinstance(wrapped, adicom.DicomClient)
    assert (wrapped.calling_aet, wrapped.max_pdu) == ("CLARINET", 32768)
    assert (wrapped.dimse_timeout, wrapped.timeout) == (5.0, 60.0)
    assert repr(client) == "adicom.sync.DicomClient(calling_aet='CLARINET')"
    with pytest.raises(ValidationError, match="AE title"):
        sync.DicomClient("A\\B")


def test_from_client_and_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = adicom.DicomClient("MINE", dimse_timeout=3.0)
    assert sync.DicomClient.from_client(configured).async_client is configured
    monkeypatch.setenv("ADICOM_AET", "SCRIPT")
    monkeypatch.setenv("ADICOM_DIMSE_TIMEOUT", "7.5")
    client = sync.DicomClient.from_settings()
    assert isinstance(client, sync.DicomClient)
    assert (client.async_client.calling_aet, client.async_client.dimse_timeout) == ("SCRIPT", 7.5)
    settings = adicom.DicomSettings(aet="GIVEN")
    assert sync.DicomClient.from_settings(settings).async_client.calling_aet == "GIVEN"


def test_with_retry_gives_a_blocking_client() -> None:
    policy = RetryPolicy(attempts=3)
    client = sync.DicomClient("CLARINET")
    retrying = client.with_retry(policy)
    assert isinstance(retrying, sync.DicomClient) and retrying is not client
    assert retrying.async_client.retry is policy
    assert client.async_client.retry is not policy


def test_a_pool_is_refused() -> None:
    # A pool keeps associations on the loop that opened them; each call here
    # has a loop of its own, closed when the call returns.
    pool = AssociationPool()
    with pytest.raises(ValueError, match="pool= keeps associations open between calls"):
        sync.DicomClient("CLARINET", pool=pool)
    with pytest.raises(ValueError, match=r"use adicom\.DicomClient with the pool"):
        sync.DicomClient.from_client(adicom.DicomClient(pool=pool))


class FakeClient:
    """A stand-in for adicom.DicomClient, to check what _complete() makes of each kind."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.pool = None

    @classmethod
    def make(cls, name: str) -> FakeClient:
        """Build one."""
        return cls(name)

    async def ask(self, x: int) -> str:
        """A coroutine method."""
        assert threading.active_count() == 1
        await asyncio.sleep(0)
        return f"{self.name}:{x}"

    def renamed(self, name: str) -> FakeClient:
        """A copy under another name."""
        return FakeClient(name)

    def size(self) -> int:
        """Anything else."""
        return len(self.name)

    @property
    def upper(self) -> str:
        """Not a method: left alone."""
        return self.name.upper()


def test_complete_makes_each_kind_of_method() -> None:
    class Facade(sync.DicomClient):
        pass

    added = sync._complete(Facade, FakeClient)
    assert added == {"ask", "make", "renamed", "size"}
    made: Any = Facade.from_client(FakeClient("one"))  # type: ignore[arg-type]
    assert made.ask(2) == "one:2"
    assert isinstance(made.renamed("two"), Facade) and made.renamed("two").ask(3) == "two:3"
    assert made.size() == 3
    other: Any = Facade
    assert isinstance(other.make("three"), Facade) and other.make("three").ask(1) == "three:1"
    assert not hasattr(made, "upper")
    assert inspect.signature(made.ask) == inspect.signature(FakeClient("x").ask)
    assert made.ask.__doc__ == "A coroutine method."


# --------------------------------------------------------------------------
# Where it refuses


@pytest.mark.parametrize("name", COROUTINE_METHODS)
def test_refused_inside_a_running_event_loop(name: str) -> None:
    client = sync.DicomClient()

    async def inside() -> None:
        # The arguments do not matter: the refusal comes first, before any
        # coroutine is made (one never awaited would warn, and warnings fail).
        with pytest.raises(sync.RunningLoopError) as exc:
            getattr(client, name)()
        assert isinstance(exc.value, RuntimeError)
        message = str(exc.value)
        assert f"adicom.sync.DicomClient.{name}() was called inside a running event loop" in message
        assert "use adicom.DicomClient with await" in message
        assert f"await client.{name}(...)" in message

    asyncio.run(inside())


def test_association_is_refused() -> None:
    client = sync.DicomClient()
    node = DicomNode(aet="PACS", host="127.0.0.1", port=104)
    with pytest.raises(ValueError, match="association= belongs to the event loop"):
        client.find_studies(StudyQuery(), node, association=object())  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_errors_are_the_async_clients() -> None:
    client = sync.DicomClient(connect_timeout=5.0)
    with pytest.raises(adicom.PeerUnreachable, match="Connection refused"):
        client.echo(DicomNode(aet="NOBODY", host="127.0.0.1", port=free_port()))
    assert threading.active_count() == 1


SILENT_PEER = """
import os, signal, socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
connection.settimeout(30)
assert connection.recv(1)[0] == 0x01  # an A-ASSOCIATE-RQ, never answered
os.kill(int(sys.argv[1]), signal.SIGINT)  # Ctrl-C in the client's terminal
while connection.recv(65536):
    pass
print("closed", flush=True)
"""


def test_ctrl_c_cancels_the_call_and_closes_the_socket() -> None:
    # asyncio.run cancels the call's task at the first SIGINT; the call
    # cleans up (the socket closed) and KeyboardInterrupt reaches the caller.
    # A run started in the background (`cmd &`) ignores SIGINT: Ctrl-C
    # interrupts Python only with its default handler in place.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    peer = subprocess.Popen(
        [sys.executable, "-c", SILENT_PEER, str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert peer.stdout is not None
    try:
        port = int(peer.stdout.readline())
        client = sync.DicomClient(dimse_timeout=60.0)
        with pytest.raises(KeyboardInterrupt):
            client.echo(DicomNode(aet="SILENT", host="127.0.0.1", port=port))
        out, _ = peer.communicate(timeout=30)
    finally:
        peer.kill()
        peer.wait()
        peer.stdout.close()  # else a failure here warns in some later test's gc
        handler_after = signal.signal(signal.SIGINT, previous)
    assert out.strip() == "closed"
    assert handler_after is signal.default_int_handler
    assert threading.active_count() == 1


# --------------------------------------------------------------------------
# Against real peers


@contextlib.contextmanager
def adicom_serve(*args: str) -> Iterator[int]:
    """``adicom serve`` in a subprocess on a free port; yields the port."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "adicom", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert process.stdout is not None
        try:
            line = process.stdout.readline()
            assert "listening on" in line, line
            yield int(line.rsplit(":", 1)[1])
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=30)
            finally:
                process.kill()
            errors.seek(0)
            assert process.returncode == 0, errors.read().decode()


def worklist_item(folder: Path) -> None:
    """A CT scheduled for station CT1 on 2024-01-05 at 09:30."""
    item = Dataset()
    item.PatientName = "Doe^Jane"
    item.PatientID = "P-77"
    item.PatientBirthDate = "19700412"
    item.AccessionNumber = "ACC-77"
    item.StudyInstanceUID = generate_uid()
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledStationAETitle = "CT1"
    step.ScheduledProcedureStepID = "SPS-77"
    step.ScheduledProcedureStepStartDate = "20240105"
    step.ScheduledProcedureStepStartTime = "093000"
    item.ScheduledProcedureStepSequence = [step]
    item.file_meta = FileMetaDataset()
    item.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    item.file_meta.MediaStorageSOPClassUID = UID("1.2.276.0.7230010.3.1.0.1")
    item.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    item.save_as(folder / "ct1.wl", enforce_file_format=True)


def sample(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert isinstance(path, str)
    return pydicom.dcmread(path)


@dataclass
class Peers:
    pacs: DicomNode
    destination: DicomNode
    destination_folder: Path
    ct: Dataset
    mr: Dataset
    stored: list[StoreResult]


def only_thread(_: object) -> None:
    """A progress callback: it runs on the caller's thread, the only one."""
    assert threading.active_count() == 1
    assert threading.current_thread() is threading.main_thread()


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    root = tmp_path_factory.mktemp("sync")
    (root / "worklist").mkdir()
    worklist_item(root / "worklist")
    with adicom_serve("--aet", "DEST", "--storage", str(root / "dest")) as dest_port:
        with adicom_serve(
            "--aet", "PACS", "--storage", str(root / "pacs"), "--worklist", str(root / "worklist"),
            "--move-dest", f"DEST=127.0.0.1:{dest_port}",
        ) as pacs_port:  # fmt: skip
            pacs = DicomNode(aet="PACS", host="127.0.0.1", port=pacs_port)
            ct, mr = sample("CT_small.dcm"), sample("MR_small.dcm")
            stored = sync.DicomClient("SCRIPT").store([ct, mr], pacs, progress=only_thread)
            assert [r.status for r in stored] == [0, 0]
            yield Peers(
                pacs, DicomNode(aet="DEST", host="127.0.0.1", port=dest_port), root / "dest",
                ct, mr, stored,
            )  # fmt: skip


def test_echo_and_find_at_each_level(peers: Peers) -> None:
    client = sync.DicomClient("SCRIPT")
    assert client.echo(peers.pacs) is True
    patients = client.find_patients(PatientQuery(patient_id=""), peers.pacs)
    assert sorted(p.patient_id for p in patients) == ["1CT1", "4MR1"]
    # Python dates in the query, Python dates beside the text in the results.
    studies = client.find_studies(
        StudyQuery(study_date=(date(2004, 1, 1), date(2004, 6, 30)), study_time=(time(7), None)),
        peers.pacs,
    )
    assert [s.patient_id for s in studies] == ["1CT1"]
    assert (studies[0].study_date, studies[0].study_date_value) == ("20040119", date(2004, 1, 19))
    assert studies[0].study_time_value == time(7, 27, 30)
    series = client.find_series(
        SeriesQuery(study_instance_uid=peers.ct.StudyInstanceUID), peers.pacs
    )
    assert [s.series_instance_uid for s in series] == [peers.ct.SeriesInstanceUID]
    images = client.find_images(
        ImageQuery(
            study_instance_uid=peers.ct.StudyInstanceUID,
            series_instance_uid=peers.ct.SeriesInstanceUID,
        ),
        peers.pacs,
    )
    assert [i.sop_instance_uid for i in images] == [peers.ct.SOPInstanceUID]
    assert threading.active_count() == 1


def test_find_worklist(peers: Peers) -> None:
    client = sync.DicomClient("CT1")
    (item,) = client.find_worklist(
        WorklistQuery(scheduled_station_ae_title="CT1", scheduled_date=date(2024, 1, 5)),
        peers.pacs,
    )
    assert item.patient_id == "P-77" and item.patient_birth_date_value == date(1970, 4, 12)
    (step,) = item.scheduled_procedure_steps
    assert step.scheduled_procedure_step_start_date_value == date(2024, 1, 5)
    assert step.scheduled_procedure_step_start_time_value == time(9, 30)
    later = WorklistQuery(scheduled_date=(date(2024, 1, 6), None))
    assert client.find_worklist(later, peers.pacs) == []


def test_get_to_disk_and_to_memory(peers: Peers, tmp_path: Path) -> None:
    client = sync.DicomClient("SCRIPT")
    ct = peers.ct
    study = client.get_study(ct.StudyInstanceUID, peers.pacs, tmp_path / "s", progress=only_thread)
    assert study.status == "success" and study.num_completed == 1
    assert pydicom.dcmread(study.paths[0]).SOPInstanceUID == ct.SOPInstanceUID
    series = client.get_series(ct.StudyInstanceUID, ct.SeriesInstanceUID, peers.pacs, tmp_path)
    image = client.get_image(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, peers.pacs, tmp_path
    )
    assert series.num_completed == image.num_completed == 1
    in_memory = client.get_study_to_memory(peers.mr.StudyInstanceUID, peers.pacs)
    assert in_memory.instances[0].PixelData == peers.mr.PixelData
    in_memory = client.get_series_to_memory(ct.StudyInstanceUID, ct.SeriesInstanceUID, peers.pacs)
    assert in_memory.instances[0].SOPInstanceUID == ct.SOPInstanceUID
    assert threading.active_count() == 1


def test_move_and_commit(peers: Peers) -> None:
    client = sync.DicomClient("SCRIPT")
    ct, mr = peers.ct, peers.mr
    moved = [
        client.move_study(mr.StudyInstanceUID, peers.pacs, "DEST", progress=only_thread),
        client.move_series(ct.StudyInstanceUID, ct.SeriesInstanceUID, peers.pacs, "DEST"),
        client.move_image(
            ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, peers.pacs, "DEST"
        ),
    ]
    assert [m.num_completed for m in moved] == [1, 1, 1]
    kept = {pydicom.dcmread(p).SOPInstanceUID for p in peers.destination_folder.rglob("*.dcm")}
    assert kept == {ct.SOPInstanceUID, mr.SOPInstanceUID}
    unknown = client.move_study(ct.StudyInstanceUID, peers.pacs, "STRANGER")
    assert unknown.status == "failure_0xA801"
    # Storage Commitment, the result awaited on the association.
    result = client.commit(peers.stored, peers.pacs, timeout=30.0)
    assert {r.sop_instance_uid for r in result.committed} == {
        ct.SOPInstanceUID,
        mr.SOPInstanceUID,
    }
    assert not result.failed
    assert threading.active_count() == 1


def test_batches(peers: Peers, tmp_path: Path) -> None:
    client = sync.DicomClient("SCRIPT")
    ct, mr = peers.ct, peers.mr
    stored = client.store_many([ct, mr], peers.pacs, concurrency=2, progress=only_thread)
    assert (stored.sent, stored.failed) == (2, 0)
    studies = [ct.StudyInstanceUID, mr.StudyInstanceUID]
    got = client.get_studies(
        studies, peers.pacs, tmp_path, progress=lambda uid, result: only_thread(result)
    )
    assert got.ok and got.num_completed == 2
    moved = client.move_studies(studies, peers.pacs, "DEST", concurrency=1)
    assert moved.ok and moved.num_completed == 2
    assert threading.active_count() == 1


def test_each_call_has_a_loop_of_its_own(peers: Peers) -> None:
    client = sync.DicomClient("SCRIPT")
    assert client.echo(peers.pacs) and client.echo(peers.pacs)
    # asyncio.run closed its loop and left none behind for this thread.
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()
