"""``adicom serve --storage`` (the reference archive) driven by real peers.

One ``adicom serve --storage DIR --move-dest ADICOM-DEST=... --move-dest
STORESCP-DEST=...`` process per module (conftest ``serve_seeded``), seeded
over C-STORE by DCMTK storescu (patients QR-P1 and SV-P3) and pynetdicom's
storage SCU (QR-P2) with the archive of qr_peers.SERVE_PATIENTS: QR-P1 and
QR-P2 with two studies of two series of three instances each (CT and MR
explicit VR little endian, RT Plan implicit VR little endian, Secondary
Capture JPEG lossless), SV-P3 ("gamma^Gina") with one two-instance CT series.

Every cell checks content against what was seeded:
- seeding: the storage folder holds exactly the seeded instances, at
  {Study}/{Series}/{SOP}.dcm, each equal element by element (the JPEG ones
  byte for byte, in their own syntax), with the storing peer's AE title;
- DCMTK findscu (-S and -P; PATIENT, STUDY, SERIES, IMAGE; by Patient ID,
  wildcard and case-insensitive Patient's Name, Study Date single value and
  ranges, a list of Study Instance UIDs), responses written with -X and read
  with pydicom: the UIDs and values equal the seeded ones;
- DCMTK getscu (study and series, -S and -P, into a folder with -od): the
  received files equal the seeded ones;
- DCMTK movescu to DCMTK storescp and to an in-process adicom Server, both
  registered with --move-dest; to an unknown destination: 0xA801;
- pynetdicom SCU (scripts/pynetdicom_qr_scu.py): C-FIND study root, C-GET
  with storage contexts and SCP role selection, C-MOVE (and 0xA801);
- bad identifiers from real peers (a malformed date, a SERIES query without
  Study Instance UID, a SERIES retrieve without it): a failure status, and
  the next association works.

DCMTK tools run at ``-d`` so that the status of every DIMSE response can be
read from their log (qr_peers.dcmtk_dimse_messages).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

import adicom
from adicom import DiskStorage
from tests.interop import data, peers
from tests.interop.conftest import SERVE_DEST_ADICOM, SERVE_DEST_STORESCP
from tests.interop.qr_peers import (
    DimseMessage,
    Seeded,
    ServeArchive,
    dcmtk_dimse_messages,
    dcmtk_storescp_on,
)

pytestmark = pytest.mark.interop

HOST = peers.HOST
TEST_DEADLINE = 60.0
TOOL_TIMEOUT = "20"  # seconds, for DCMTK's -to/-ta/-td

SUCCESS = 0x0000
PENDING = 0xFF00
WARNING = 0xB000
UNKNOWN_DESTINATION = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900

Keys = Mapping[str, str | None]


# --------------------------------------------------------------------------
# Running the peers


def _key_args(level: str, keys: Keys) -> list[str]:
    args = ["-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in keys.items():
        args += ["-k", keyword if value is None else f"{keyword}={value}"]
    return args


def _model_flag(model: str) -> str:
    return {"study": "-S", "patient": "-P"}[model]


def _dcmtk_common(serve: ServeArchive, calling_ae: str) -> list[str]:
    t = TOOL_TIMEOUT
    return ["-d", "-to", t, "-ta", t, "-td", t, "-aet", calling_ae, "-aec", serve.aet]


class ToolRun:
    """A DCMTK tool that ran: its output and the DIMSE responses it logged."""

    def __init__(self, finished: peers.Finished, response_type: str) -> None:
        self.finished = finished
        self.responses = [
            m
            for m in dcmtk_dimse_messages(finished.stdout + finished.stderr)
            if m.direction == "INCOMING" and m.type == response_type
        ]

    @property
    def final(self) -> DimseMessage:
        assert self.responses, f"no response logged\n{self.describe()}"
        return self.responses[-1]

    @property
    def status(self) -> int | None:
        return self.final.status

    def describe(self) -> str:
        return self.finished.describe()


class FindRun(ToolRun):
    def __init__(self, finished: peers.Finished, outdir: Path) -> None:
        super().__init__(finished, "C-FIND RSP")
        self.matches = [pydicom.dcmread(p) for p in sorted(outdir.glob("rsp*.dcm"))]


def findscu(serve: ServeArchive, model: str, level: str, keys: Keys, outdir: Path) -> FindRun:
    """DCMTK findscu, each response written to ``outdir`` (-X) and read back."""
    outdir.mkdir(parents=True, exist_ok=True)
    argv = [
        peers.require_dcmtk("findscu"),
        *_dcmtk_common(serve, "DCMTK-FIND"),
        _model_flag(model),
        "-X",
        "-od",
        str(outdir),
        *_key_args(level, keys),
        HOST,
        str(serve.port),
    ]
    return FindRun(peers.run(argv), outdir)


def getscu(
    serve: ServeArchive,
    model: str,
    level: str,
    keys: Keys,
    outdir: Path,
    options: Sequence[str] = (),
) -> ToolRun:
    outdir.mkdir(parents=True, exist_ok=True)
    argv = [
        peers.require_dcmtk("getscu"),
        *_dcmtk_common(serve, "DCMTK-GET"),
        _model_flag(model),
        *options,
        "-od",
        str(outdir),
        *_key_args(level, keys),
        HOST,
        str(serve.port),
    ]
    return ToolRun(peers.run(argv), "C-GET RSP")


def movescu_argv(serve: ServeArchive, model: str, level: str, keys: Keys, dest: str) -> list[str]:
    return [
        peers.require_dcmtk("movescu"),
        *_dcmtk_common(serve, "DCMTK-MOVE"),
        _model_flag(model),
        "-aem",
        dest,
        *_key_args(level, keys),
        HOST,
        str(serve.port),
    ]


def movescu(serve: ServeArchive, model: str, level: str, keys: Keys, dest: str) -> ToolRun:
    return ToolRun(peers.run(movescu_argv(serve, model, level, keys, dest)), "C-MOVE RSP")


async def movescu_async(
    serve: ServeArchive, model: str, level: str, keys: Keys, dest: str
) -> ToolRun:
    """movescu without blocking the loop (an in-process destination serves on it)."""
    finished = await peers.run_async(movescu_argv(serve, model, level, keys, dest))
    return ToolRun(finished, "C-MOVE RSP")


def pynetdicom_qr_argv(
    serve: ServeArchive,
    service: str,
    level: str,
    keys: Keys,
    *,
    model: str = "study",
    outdir: Path | None = None,
    store_contexts: Mapping[str, Sequence[str]] | None = None,
    move_dest: str | None = None,
) -> list[str]:
    """scripts/pynetdicom_qr_scu.py: one C-FIND, C-GET or C-MOVE on one association."""
    peers.require_pynetdicom()
    argv = [
        sys.executable,
        str(peers.SCRIPTS / "pynetdicom_qr_scu.py"),
        service,
        "--host",
        HOST,
        "--port",
        str(serve.port),
        "--aet",
        f"PYNET-{service.upper()}",
        "--aec",
        serve.aet,
        "--timeout",
        "20",
        "--model",
        model,
        "--level",
        level,
    ]
    for keyword, value in keys.items():
        argv += ["-k", keyword if value is None else f"{keyword}={value}"]
    if outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)
        argv += ["--output-directory", str(outdir)]
    for sop_class, syntaxes in (store_contexts or {}).items():
        argv += ["--store-context", f"{sop_class}={','.join(syntaxes)}"]
    if move_dest is not None:
        argv += ["--move-dest", move_dest]
    return argv


def parse_pynetdicom_qr(finished: peers.Finished) -> dict[str, Any]:
    """The JSON line of scripts/pynetdicom_qr_scu.py; the association must have worked."""
    lines = [ln for ln in finished.stdout.splitlines() if ln.strip()]
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise peers.PeerError(
            f"pynetdicom Q/R SCU printed no JSON\n{finished.describe()}"
        ) from None
    assert result["established"] and not result["aborted"], finished.describe()
    assert result["final_status"] is not None, f"no final response\n{finished.describe()}"
    return result


def pynetdicom_matches(result: Mapping[str, Any]) -> list[Dataset]:
    return [
        Dataset.from_json(r["identifier"])
        for r in result["responses"]
        if r["status"] == PENDING and r["identifier"] is not None
    ]


# --------------------------------------------------------------------------
# Checks


def hex_status(status: int | None) -> str:
    return "none" if status is None else f"0x{status:04X}"


def is_failure(status: int | None) -> bool:
    """A failure for a bad identifier (PS3.4 C.4): 0xA900, or 0xCxxx (unable to process)."""
    return status is not None and (
        status == IDENTIFIER_DOES_NOT_MATCH or 0xC000 <= status <= 0xCFFF
    )


def unique_by(matches: Iterable[Dataset], keyword: str) -> dict[str, Dataset]:
    """Index the matches by ``keyword``; adicom answers each entity once."""
    found: dict[str, Dataset] = {}
    for ds in matches:
        key = str(ds.get(keyword, ""))
        assert key not in found, f"{keyword} {key} returned twice"
        found[key] = ds
    return found


def check_find_ok(run: FindRun) -> None:
    assert run.finished.returncode == 0, run.describe()
    assert run.status == SUCCESS, f"final status {hex_status(run.status)}\n{run.describe()}"
    pending = [m.status for m in run.responses[:-1]]
    assert pending == [PENDING] * len(run.matches), f"{pending}\n{run.describe()}"


def check_studies(serve: ServeArchive, matches: Sequence[Dataset], expected: set[str]) -> None:
    """The matches are the studies ``expected``, with their seeded attributes."""
    archive = serve.archive
    found = unique_by(matches, "StudyInstanceUID")
    assert set(found) == expected
    for uid, ds in found.items():
        seeded = archive.first(study_instance_uid=uid)
        assert ds.QueryRetrieveLevel == "STUDY"
        assert str(ds.PatientID) == seeded.patient_id
        assert str(ds.PatientName) == seeded.patient_name
        assert str(ds.StudyDate) == seeded.study_date
        assert str(ds.StudyID) == seeded.study_id
        assert str(ds.AccessionNumber) == seeded.accession_number
        if "NumberOfStudyRelatedInstances" in ds:
            assert int(ds.NumberOfStudyRelatedSeries) == len(archive.series(uid))
            assert int(ds.NumberOfStudyRelatedInstances) == len(archive.in_study(uid))


def check_received(files: Mapping[str, Path], expected: Sequence[Seeded], **kwargs: Any) -> None:
    """``files`` (by SOP Instance UID) are exactly ``expected``, each equal to the seeded one."""
    wanted = {s.sop_instance_uid: s for s in expected}
    assert set(files) == set(wanted), (
        f"missing: {sorted(set(wanted) - set(files))}\n"
        f"unexpected: {sorted(set(files) - set(wanted))}"
    )
    for uid, path in files.items():
        data.assert_same_instance(wanted[uid].instance, path, **kwargs)


def check_retrieve_counts(run: ToolRun, expected: int) -> None:
    final = run.final
    assert run.status == SUCCESS, f"final status {hex_status(run.status)}\n{run.describe()}"
    assert (final.count("Completed"), final.count("Failed"), final.count("Warning")) == (
        expected,
        0,
        0,
    ), run.describe()


def storage_contexts(expected: Iterable[Seeded]) -> dict[str, list[str]]:
    """C-GET storage contexts: a compressed class only in its syntax, others uncompressed."""
    contexts: dict[str, list[str]] = {}
    for s in expected:
        if s.instance.compressed:
            contexts[s.instance.sop_class_uid] = [s.instance.transfer_syntax]
        else:
            contexts[s.instance.sop_class_uid] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return contexts


@contextlib.asynccontextmanager
async def adicom_destination(serve: ServeArchive, root: Path) -> AsyncIterator[adicom.Server]:
    """The in-process adicom Server that ``adicom serve`` knows as ADICOM-DEST."""
    port = serve.move_destinations[SERVE_DEST_ADICOM]
    async with adicom.Server(
        SERVE_DEST_ADICOM, host=HOST, port=port, storage=DiskStorage(root)
    ) as server:
        yield server


def disk_files(root: Path) -> dict[str, Path]:
    """What DiskStorage stored under ``root``, each at its layout path, by SOP Instance UID."""
    assert not (root / ".incoming").exists() or not any((root / ".incoming").iterdir())
    files = data.received_files(root)
    for uid, path in files.items():
        assert path.parent.parent.parent == root and path.name == f"{uid}.dcm", path
    return files


def serve_alive(serve: ServeArchive) -> None:
    assert serve.peer.proc.poll() is None, f"adicom serve exited\n{serve.describe()}"


# --------------------------------------------------------------------------
# Seeding (C-STORE from DCMTK storescu and pynetdicom)


def test_seeded_instances_stored(serve_seeded: ServeArchive) -> None:
    """The storage folder holds exactly the seeded instances, as sent, at the layout."""
    serve = serve_seeded
    stored = {
        p
        for p in serve.storage.rglob("*.dcm")
        if ".incoming" not in p.relative_to(serve.storage).parts
    }
    expected = {data.layout_path(serve.storage, s.instance): s for s in serve.archive.instances}
    assert stored == set(expected), (
        f"missing: {sorted(map(str, set(expected) - stored))}\n"
        f"unexpected: {sorted(map(str, stored - set(expected)))}"
    )
    assert len(serve.archive.instances) == 26
    for path, seeded in expected.items():
        # storescu and pynetdicom were made to propose each file's own syntax.
        data.assert_same_instance(
            seeded.instance,
            path,
            same_transfer_syntax=True,
            calling_ae=serve.seeded_by[seeded.sop_instance_uid],
        )
    assert set(serve.seeded_by.values()) == {"SEED-DCMTK", "SEED-PYNET"}


# --------------------------------------------------------------------------
# DCMTK findscu

STUDY_KEYS: dict[str, str | None] = {
    "StudyInstanceUID": None,
    "PatientID": None,
    "PatientName": None,
    "StudyDate": None,
    "StudyID": None,
    "AccessionNumber": None,
    "NumberOfStudyRelatedSeries": None,
    "NumberOfStudyRelatedInstances": None,
}


def test_findscu_patients(serve_seeded: ServeArchive, tmp_path: Path) -> None:
    archive = serve_seeded.archive
    keys = {
        "PatientID": None,
        "PatientName": None,
        "NumberOfPatientRelatedStudies": None,
        "NumberOfPatientRelatedInstances": None,
    }
    run = findscu(serve_seeded, "patient", "PATIENT", keys, tmp_path)
    check_find_ok(run)
    found = unique_by(run.matches, "PatientID")
    assert {pid: str(ds.PatientName) for pid, ds in found.items()} == archive.patients()
    for pid, ds in found.items():
        assert ds.QueryRetrieveLevel == "PATIENT"
        assert int(ds.NumberOfPatientRelatedStudies) == len(archive.studies(pid))
        n = sum(1 for s in archive.instances if s.patient_id == pid)
        assert int(ds.NumberOfPatientRelatedInstances) == n


@pytest.mark.parametrize("model", ["study", "patient"])
def test_findscu_studies_of_patient(serve_seeded: ServeArchive, model: str, tmp_path: Path) -> None:
    run = findscu(serve_seeded, model, "STUDY", {**STUDY_KEYS, "PatientID": "QR-P1"}, tmp_path)
    check_find_ok(run)
    check_studies(serve_seeded, run.matches, serve_seeded.archive.studies("QR-P1"))


@pytest.mark.parametrize(
    ("pattern", "patient_id"),
    [("Be*", "QR-P2"), ("?lpha^A*", "QR-P1"), ("GAMMA^*", "SV-P3"), ("*a^*n*", None)],
    ids=["prefix", "question-mark", "case-insensitive", "inner"],
)
def test_findscu_studies_by_name_wildcard(
    serve_seeded: ServeArchive, pattern: str, patient_id: str | None, tmp_path: Path
) -> None:
    archive = serve_seeded.archive
    run = findscu(serve_seeded, "study", "STUDY", {**STUDY_KEYS, "PatientName": pattern}, tmp_path)
    check_find_ok(run)
    # "*a^*n*": Alpha^Anna, Beta^Bruno and gamma^Gina all have "a^" then an "n".
    expected = archive.studies(patient_id) if patient_id else archive.studies()
    check_studies(serve_seeded, run.matches, expected)


@pytest.mark.parametrize(
    ("dates", "studies"),
    [
        ("20210101-20221231", [("QR-P1", "20210610"), ("QR-P2", "20220315")]),
        ("20230101-", [("QR-P2", "20230920"), ("SV-P3", "20240229")]),
        ("-20200131", [("QR-P1", "20200105")]),
        ("20240229", [("SV-P3", "20240229")]),
        ("20000101-20001231", []),
    ],
)
def test_findscu_studies_by_date(
    serve_seeded: ServeArchive, dates: str, studies: list[tuple[str, str]], tmp_path: Path
) -> None:
    archive = serve_seeded.archive
    run = findscu(serve_seeded, "study", "STUDY", {**STUDY_KEYS, "StudyDate": dates}, tmp_path)
    check_find_ok(run)
    check_studies(serve_seeded, run.matches, {archive.study_of(p, d) for p, d in studies})


def test_findscu_study_uid_list(serve_seeded: ServeArchive, tmp_path: Path) -> None:
    archive = serve_seeded.archive
    wanted = {archive.study_of("QR-P1", "20200105"), archive.study_of("SV-P3", "20240229")}
    keys = {**STUDY_KEYS, "StudyInstanceUID": "\\".join(sorted(wanted))}
    run = findscu(serve_seeded, "study", "STUDY", keys, tmp_path)
    check_find_ok(run)
    check_studies(serve_seeded, run.matches, wanted)


@pytest.mark.parametrize("model", ["study", "patient"])
def test_findscu_series(serve_seeded: ServeArchive, model: str, tmp_path: Path) -> None:
    archive = serve_seeded.archive
    study = archive.study_of("QR-P2", "20220315")
    keys: dict[str, str | None] = {
        "StudyInstanceUID": study,
        "SeriesInstanceUID": None,
        "Modality": None,
        "SeriesNumber": None,
        "NumberOfSeriesRelatedInstances": None,
    }
    if model == "patient":
        keys["PatientID"] = "QR-P2"
    run = findscu(serve_seeded, model, "SERIES", keys, tmp_path)
    check_find_ok(run)
    found = unique_by(run.matches, "SeriesInstanceUID")
    assert set(found) == archive.series(study)
    for uid, ds in found.items():
        seeded = archive.first(series_instance_uid=uid)
        assert ds.QueryRetrieveLevel == "SERIES"
        assert str(ds.StudyInstanceUID) == study
        assert str(ds.Modality) == seeded.modality
        assert int(ds.SeriesNumber) == seeded.series_number
        assert int(ds.NumberOfSeriesRelatedInstances) == len(archive.in_series(uid))


@pytest.mark.parametrize("model", ["study", "patient"])
def test_findscu_images(serve_seeded: ServeArchive, model: str, tmp_path: Path) -> None:
    archive = serve_seeded.archive
    study = archive.study_of("QR-P1", "20210610")
    series = archive.series_of(study, "jpeg")
    keys: dict[str, str | None] = {
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "SOPInstanceUID": None,
        "SOPClassUID": None,
        "InstanceNumber": None,
    }
    if model == "patient":
        keys["PatientID"] = "QR-P1"
    run = findscu(serve_seeded, model, "IMAGE", keys, tmp_path)
    check_find_ok(run)
    found = unique_by(run.matches, "SOPInstanceUID")
    expected = {s.sop_instance_uid: s for s in archive.in_series(series)}
    assert set(found) == set(expected)
    for uid, ds in found.items():
        assert ds.QueryRetrieveLevel == "IMAGE"
        assert str(ds.SeriesInstanceUID) == series
        assert str(ds.SOPClassUID) == expected[uid].instance.sop_class_uid
        assert int(ds.InstanceNumber) == expected[uid].instance_number


# --------------------------------------------------------------------------
# DCMTK getscu


@pytest.mark.parametrize(
    ("model", "patient_id", "date"),
    [("study", "QR-P1", "20200105"), ("patient", "QR-P2", "20230920")],
    ids=["study-root", "patient-root"],
)
def test_getscu_study(
    serve_seeded: ServeArchive, model: str, patient_id: str, date: str, tmp_path: Path
) -> None:
    """An uncompressed study (CT+MR, CT+RT Plan), into a folder with -od."""
    archive = serve_seeded.archive
    study = archive.study_of(patient_id, date)
    expected = archive.in_study(study)
    keys: dict[str, str | None] = {"StudyInstanceUID": study}
    if model == "patient":
        keys = {"PatientID": patient_id, **keys}
    run = getscu(serve_seeded, model, "STUDY", keys, tmp_path)
    assert run.finished.returncode == 0, run.describe()
    check_retrieve_counts(run, len(expected))
    check_received(data.received_files(tmp_path), expected)


def test_getscu_series(serve_seeded: ServeArchive, tmp_path: Path) -> None:
    archive = serve_seeded.archive
    study = archive.study_of("SV-P3", "20240229")
    series = archive.series_of(study, "ct")
    expected = archive.in_series(series)
    keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    run = getscu(serve_seeded, "study", "SERIES", keys, tmp_path)
    assert run.finished.returncode == 0, run.describe()
    check_retrieve_counts(run, len(expected))
    check_received(data.received_files(tmp_path), expected)


def test_getscu_jpeg_series_prefer_lossless(serve_seeded: ServeArchive, tmp_path: Path) -> None:
    """getscu +xs proposes JPEG lossless first: the JPEG instances must come back.

    getscu offers each storage class with [JPEG lossless, explicit LE, big
    endian, implicit LE] and the SCP role; the archive holds the Secondary
    Captures in JPEG lossless only, so it has to take that syntax to send them.
    """
    archive = serve_seeded.archive
    study = archive.study_of("QR-P2", "20220315")
    series = archive.series_of(study, "jpeg")
    expected = archive.in_series(series)
    keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    run = getscu(serve_seeded, "study", "SERIES", keys, tmp_path, options=["+xs"])
    assert run.finished.returncode == 0, run.describe()
    check_retrieve_counts(run, len(expected))
    check_received(data.received_files(tmp_path), expected)


# --------------------------------------------------------------------------
# DCMTK movescu


def test_movescu_study_to_storescp(serve_seeded: ServeArchive, tmp_path: Path) -> None:
    """QR-P2's first study (MR, JPEG lossless) to DCMTK storescp (+xa, bit-preserving)."""
    archive = serve_seeded.archive
    study = archive.study_of("QR-P2", "20220315")
    expected = archive.in_study(study)
    port = serve_seeded.move_destinations[SERVE_DEST_STORESCP]
    with dcmtk_storescp_on(port, tmp_path, SERVE_DEST_STORESCP) as scp:
        run = movescu(
            serve_seeded, "study", "STUDY", {"StudyInstanceUID": study}, SERVE_DEST_STORESCP
        )
        assert run.finished.returncode == 0, f"{run.describe()}\n{scp.describe()}"
    check_retrieve_counts(run, len(expected))
    check_received(data.received_files(tmp_path), expected)


@pytest.mark.anyio
async def test_movescu_series_to_adicom(serve_seeded: ServeArchive, tmp_path: Path) -> None:
    """QR-P1's RT Plan series (stored implicit VR) to an in-process adicom Server, patient root."""
    archive = serve_seeded.archive
    study = archive.study_of("QR-P1", "20210610")
    series = archive.series_of(study, "rtplan")
    expected = archive.in_series(series)
    keys = {"PatientID": "QR-P1", "StudyInstanceUID": study, "SeriesInstanceUID": series}
    with anyio.fail_after(TEST_DEADLINE):
        async with adicom_destination(serve_seeded, tmp_path):
            run = await movescu_async(serve_seeded, "patient", "SERIES", keys, SERVE_DEST_ADICOM)
    assert run.finished.returncode == 0, run.describe()
    check_retrieve_counts(run, len(expected))
    check_received(disk_files(tmp_path), expected, calling_ae=serve_seeded.aet)


def test_movescu_unknown_destination(serve_seeded: ServeArchive) -> None:
    study = serve_seeded.archive.study_of("QR-P1", "20200105")
    run = movescu(serve_seeded, "study", "STUDY", {"StudyInstanceUID": study}, "NOBODY-KNOWS")
    # movescu exits non-zero on a failed move and says why.
    assert run.finished.returncode != 0, run.describe()
    assert run.status == UNKNOWN_DESTINATION, run.describe()
    assert len(run.responses) == 1, run.describe()
    assert run.final.count("Completed") in (None, 0)
    assert "MoveDestinationUnknown" in run.finished.stdout + run.finished.stderr
    serve_alive(serve_seeded)


# --------------------------------------------------------------------------
# pynetdicom SCU


def test_pynetdicom_find_studies(serve_seeded: ServeArchive) -> None:
    archive = serve_seeded.archive
    argv = pynetdicom_qr_argv(serve_seeded, "find", "STUDY", {**STUDY_KEYS, "PatientID": "QR-P2"})
    result = parse_pynetdicom_qr(peers.run(argv))
    assert result["final_status"] == SUCCESS, result
    check_studies(serve_seeded, pynetdicom_matches(result), archive.studies("QR-P2"))


def test_pynetdicom_find_images_by_uid_list(serve_seeded: ServeArchive) -> None:
    archive = serve_seeded.archive
    study = archive.study_of("QR-P2", "20230920")
    series = archive.series_of(study, "ct")
    in_series = archive.in_series(series)
    wanted = {in_series[0].sop_instance_uid, in_series[2].sop_instance_uid}
    keys = {
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "SOPInstanceUID": "\\".join(sorted(wanted)),
        "InstanceNumber": None,
    }
    result = parse_pynetdicom_qr(peers.run(pynetdicom_qr_argv(serve_seeded, "find", "IMAGE", keys)))
    assert result["final_status"] == SUCCESS, result
    found = unique_by(pynetdicom_matches(result), "SOPInstanceUID")
    assert set(found) == wanted
    for uid, ds in found.items():
        assert int(ds.InstanceNumber) == archive.by_uid()[uid].instance_number


@pytest.mark.parametrize("model", ["study", "patient"])
def test_pynetdicom_get_study(serve_seeded: ServeArchive, model: str, tmp_path: Path) -> None:
    """QR-P1's second study: JPEG lossless Secondary Captures and implicit VR RT Plans."""
    archive = serve_seeded.archive
    study = archive.study_of("QR-P1", "20210610")
    expected = archive.in_study(study)
    keys: dict[str, str | None] = {"StudyInstanceUID": study}
    if model == "patient":
        keys = {"PatientID": "QR-P1", **keys}
    argv = pynetdicom_qr_argv(
        serve_seeded,
        "get",
        "STUDY",
        keys,
        model=model,
        outdir=tmp_path,
        store_contexts=storage_contexts(expected),
    )
    result = parse_pynetdicom_qr(peers.run(argv))
    final = result["responses"][-1]
    assert (result["final_status"], final["completed"], final["failed"]) == (
        SUCCESS,
        len(expected),
        0,
    ), result
    assert sorted(s["sop_instance_uid"] for s in result["stored"]) == sorted(
        s.sop_instance_uid for s in expected
    )
    check_received(data.received_files(tmp_path), expected)


@pytest.mark.anyio
async def test_pynetdicom_move_study_to_adicom(serve_seeded: ServeArchive, tmp_path: Path) -> None:
    """SV-P3's study and QR-P2's JPEG series, two C-MOVEs to the in-process Server."""
    archive = serve_seeded.archive
    study = archive.study_of("SV-P3", "20240229")
    other = archive.study_of("QR-P2", "20220315")
    series = archive.series_of(other, "jpeg")
    expected = archive.in_study(study) + archive.in_series(series)
    with anyio.fail_after(TEST_DEADLINE):
        async with adicom_destination(serve_seeded, tmp_path):
            results = [
                parse_pynetdicom_qr(
                    await peers.run_async(
                        pynetdicom_qr_argv(
                            serve_seeded, "move", level, keys, move_dest=SERVE_DEST_ADICOM
                        )
                    )
                )
                for level, keys in (
                    ("STUDY", {"StudyInstanceUID": study}),
                    ("SERIES", {"StudyInstanceUID": other, "SeriesInstanceUID": series}),
                )
            ]
    for result, count in zip(results, (2, 3), strict=True):
        final = result["responses"][-1]
        assert (result["final_status"], final["completed"], final["failed"]) == (
            SUCCESS,
            count,
            0,
        ), result
    check_received(disk_files(tmp_path), expected, calling_ae=serve_seeded.aet)


def test_pynetdicom_move_unknown_destination(serve_seeded: ServeArchive) -> None:
    study = serve_seeded.archive.study_of("QR-P2", "20230920")
    argv = pynetdicom_qr_argv(
        serve_seeded, "move", "STUDY", {"StudyInstanceUID": study}, move_dest="NOBODY-KNOWS"
    )
    result = parse_pynetdicom_qr(peers.run(argv))
    assert result["final_status"] == UNKNOWN_DESTINATION, result
    assert len(result["responses"]) == 1, result
    assert result["responses"][0]["completed"] in (None, 0), result


# --------------------------------------------------------------------------
# Bad identifiers from real peers


@pytest.mark.parametrize(
    ("model", "level", "keys"),
    [
        ("study", "STUDY", {"StudyInstanceUID": None, "StudyDate": "2024-01-01"}),
        ("study", "SERIES", {"SeriesInstanceUID": None, "Modality": None}),
        ("study", "STUDY", {"StudyInstanceUID": "2.25.*"}),
        ("patient", "STUDY", {"StudyInstanceUID": None}),
        ("study", "PATIENT", {"PatientID": None}),
    ],
    ids=[
        "malformed-date",
        "series-without-study-uid",
        "wildcard-uid",
        "patient-root-without-patient-id",
        "patient-level-in-study-root",
    ],
)
def test_findscu_bad_identifier(
    serve_seeded: ServeArchive, model: str, level: str, keys: Keys, tmp_path: Path
) -> None:
    """A failure status, no match; then a good query on a new association works."""
    run = findscu(serve_seeded, model, level, keys, tmp_path / "bad")
    assert is_failure(run.status), f"status {hex_status(run.status)}\n{run.describe()}"
    assert len(run.responses) == 1 and not run.matches, run.describe()
    serve_alive(serve_seeded)
    again = findscu(
        serve_seeded, "study", "STUDY", {**STUDY_KEYS, "PatientID": "SV-P3"}, tmp_path / "good"
    )
    check_find_ok(again)
    check_studies(serve_seeded, again.matches, serve_seeded.archive.studies("SV-P3"))


def test_getscu_series_without_study_uid(serve_seeded: ServeArchive, tmp_path: Path) -> None:
    archive = serve_seeded.archive
    study = archive.study_of("SV-P3", "20240229")
    series = archive.series_of(study, "ct")
    run = getscu(serve_seeded, "study", "SERIES", {"SeriesInstanceUID": series}, tmp_path / "bad")
    assert is_failure(run.status), f"status {hex_status(run.status)}\n{run.describe()}"
    assert not data.received_files(tmp_path / "bad")
    serve_alive(serve_seeded)
    keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    again = getscu(serve_seeded, "study", "SERIES", keys, tmp_path / "good")
    check_retrieve_counts(again, len(archive.in_series(series)))
    check_received(data.received_files(tmp_path / "good"), archive.in_series(series))
