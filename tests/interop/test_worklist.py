"""Modality Worklist: adicom's SCU against DCMTK wlmscpfs, and adicom's matching beside it.

The worklist is DCMTK's own example database (its ``wklist*.dump`` files,
converted with ``dump2dcm``, when the package ships them) and items made
here with pydicom (Latin-1 names, a station with two AE titles, steps
around midnight, one file a bare data set). DCMTK's wlmscpfs serves them
from its data folder; :class:`adicom.worklist.WorklistFolder` reads the same
folder.

- adicom as SCU: ``DicomClient.find_worklist`` and ``qrscu.find(model=
  "worklist")`` against wlmscpfs, checked against the values written into
  the files, refusals (0xA900) and an early stop (C-CANCEL) included.
- Cross-check: the same queries (DCMTK's own example queries, ``wlistqry*``,
  and more) to wlmscpfs and to ``WorklistFolder.find`` give the same items
  with the same values, where DCMTK follows PS3.4.
- DCMTK's findscu as the SCU gets the same answers from
  ``adicom.Server(on_worklist=WorklistFolder.find)`` as from wlmscpfs.

Where they differ (``test_known_differences`` pins each case, both sides):

- Person names: wlmscpfs matches case-sensitively; adicom does not. PS3.4
  C.2.2.2.1 and C.2.2.2.4 leave case to the SCP for PN: both conform.
- Wildcards in Patient ID (LO) and Modality (CS): wlmscpfs takes ``*`` and
  ``?`` literally there; PS3.4 C.2.2.2.4 makes them wildcards in every text
  VR but dates, times and numbers. adicom follows the standard.
- Study Instance UID: wlmscpfs does not match on it (an optional matching
  key it leaves out, so every item matches, and a wildcard in it passes);
  adicom matches it (List of UID matching) and refuses a wildcard in a UID
  with 0xA900 (C.2.2.2.4 excludes UIDs).
- A single time: wlmscpfs fills it out with zeros and compares exactly
  (``16`` is 16:00:00 and does not match 16:30:00); adicom takes a time by
  its precision (``16`` is the hour), as PS3.5 6.2 makes ``HH`` and ``HHMM``
  whole values (and as adicom's archive does). The standard's "match
  exactly" can be read either way.
- A date range open on one side with a time bound on the other side
  (``-19951231`` with ``090000-``): wlmscpfs then matches date and time
  separately; adicom keeps them one range, the open side open. The
  combined rule of C.2.2.2.5 does not spell out these cases.
- A query in a character set other than the files' (UTF-8 against Latin-1):
  wlmscpfs compares bytes and finds nothing; adicom compares characters
  (C.2.2.2: the character set says how values are encoded, it is never
  matched).
- Answers: wlmscpfs returns every step of a matching item and fills an
  empty sequence key with all the step attributes it knows (empty when the
  item lacks them); adicom returns the matching steps only (C.2.2.2.6) and a
  universal sequence key gets the steps as held. wlmscpfs also refuses (by
  default) files without exactly one step and the other Type 1 keys.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

import adicom
from adicom import qrscu
from adicom.errors import DimseError
from adicom.fileformat import EXPLICIT_VR_LITTLE_ENDIAN, decode_dataset, encode_dataset
from adicom.models import DicomNode, WorklistQuery
from adicom.qrscp import QRContext, QueryFailed
from adicom.values import element
from adicom.worklist import MODALITY_WORKLIST_FIND, WorklistFolder
from tests.interop import peers
from tests.interop.peers import HOST

pytestmark = pytest.mark.interop

AET = "WLSCP"
CALLING_AE = "ADICOM"
EXAMPLES = Path("/usr/share/doc/dcmtk/examples")
CONTEXT = QRContext(CALLING_AE, AET, MODALITY_WORKLIST_FIND, (HOST, 0), 1)


# --------------------------------------------------------------------------
# The worklist


def generated_item(
    accession: str,
    name: str,
    patient_id: str,
    modality: str,
    station: str | list[str],
    day: str,
    time: str,
    **more: Any,
) -> Dataset:
    """A worklist item complete enough for wlmscpfs (every Type 1 key of Table K.6-1)."""
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 100"
    item.AccessionNumber = accession
    item.PatientName = name
    item.PatientID = patient_id
    item.PatientBirthDate = "19700101"
    item.PatientSex = "O"
    item.StudyInstanceUID = "1.2.826.0.1.3680043.10.1066." + str(int(accession[3:]))
    item.RequestedProcedureID = "RP" + accession
    item.RequestedProcedureDescription = "Procedure " + accession
    item.ReferencedStudySequence = []
    item.ReferencedPatientSequence = []
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = day
    step.ScheduledProcedureStepStartTime = time
    step.ScheduledProcedureStepDescription = "Step " + accession
    step.ScheduledProcedureStepID = "SPS" + accession
    step.ScheduledPerformingPhysicianName = "Sørensen^Åse"
    step.ScheduledStationName = "ROOM " + modality
    for keyword, value in more.items():
        setattr(step, keyword, value)
    item.ScheduledProcedureStepSequence = [step]
    return item


GENERATED = [
    generated_item("ADI001", "Müller^Hans", "PAT-1", "CT", "CT1", "20240101", "070000"),
    generated_item("ADI002", "Müller^Anna", "PAT-2", "CT", "CT1", "20240101", "090000"),
    generated_item("ADI003", "Smith^John", "PAT-3", "MR", "MR1", "20240102", "030000"),
    generated_item("ADI004", "Smith^Jane", "PAT-4", "MR", ["MR1", "MR2"], "20240103", "163000"),
    generated_item("ADI005", "Doe^John", "PAT-5", "US", "US1", "20240103", "180000"),
    generated_item("ADI006", "Doe^Jane^^^", "PAT-6", "CT", "CT2", "20240104", "100000"),
]


@dataclass
class Worklist:
    """The data folder of wlmscpfs (``root``) and the items' folder (``root / AET``)."""

    root: Path
    folder: Path
    #: Accession numbers of DCMTK's example items (none if the package lacks them).
    samples: list[str]
    #: DCMTK's example queries, converted, by name.
    queries: dict[str, Path]


def dump_to_dicom(dump: Path, out: Path) -> None:
    """Convert one of DCMTK's dump files with DCMTK's dump2dcm (gzipped or not)."""
    binary = peers.require_dcmtk("dump2dcm")
    if dump.suffix == ".gz":
        # Beside the data folder, not in it (wlmscpfs and adicom would look at it).
        scratch = out.parent.parent / "dumps"
        scratch.mkdir(exist_ok=True)
        plain = scratch / dump.name.removesuffix(".gz")
        plain.write_bytes(gzip.decompress(dump.read_bytes()))
        dump = plain
    finished = peers.run([binary, str(dump), str(out)])
    if finished.returncode != 0 or not out.exists():
        raise peers.PeerError(f"dump2dcm failed\n{finished.describe()}")


def examples(kind: str) -> list[Path]:
    found = sorted((EXAMPLES / kind).rglob("*.dump*"))
    return [path for path in found if path.name.endswith((".dump", ".dump.gz"))]


@pytest.fixture(scope="module")
def worklist(tmp_path_factory: pytest.TempPathFactory) -> Worklist:
    root = tmp_path_factory.mktemp("wlmscpfs")
    folder = root / AET
    folder.mkdir()
    samples: list[str] = []
    if peers.dcmtk_binary("dump2dcm") is not None:
        for dump in examples("wlistdb"):
            out = folder / (dump.name.split(".")[0] + ".wl")
            dump_to_dicom(dump, out)
            samples.append(str(pydicom.dcmread(out, force=True).AccessionNumber))
    for index, item in enumerate(GENERATED):
        path = folder / f"adicom{index}.wl"
        if index == len(GENERATED) - 1:
            # A bare data set, as dump2dcm -F writes: no preamble, no meta.
            pydicom.dcmwrite(path, item, implicit_vr=False, little_endian=True)
            continue
        item.file_meta = FileMetaDataset()
        item.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        item.file_meta.MediaStorageSOPClassUID = UID("1.2.276.0.7230010.3.1.0.1")
        item.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        item.save_as(path, enforce_file_format=True)
    queries: dict[str, Path] = {}
    if peers.dcmtk_binary("dump2dcm") is not None:
        converted = root / "queries"
        converted.mkdir()
        for dump in examples("wlistqry"):
            name = dump.name.split(".")[0]
            dump_to_dicom(dump, converted / f"{name}.dcm")
            queries[name] = converted / f"{name}.dcm"
    return Worklist(root, folder, samples, queries)


@pytest.fixture(scope="module")
def wlmscpfs(worklist: Worklist) -> Iterator[peers.Peer]:
    """wlmscpfs over the worklist, answering in each file's character set."""
    with peers.dcmtk_wlmscpfs(worklist.root, AET, ["--keep-char-set"]) as peer:
        yield peer


# --------------------------------------------------------------------------
# Asking each side


@contextlib.asynccontextmanager
async def associate(peer: peers.Peer) -> AsyncIterator[adicom.Association]:
    assert peer.port is not None
    async with adicom.connect(
        HOST,
        peer.port,
        calling_ae=CALLING_AE,
        called_ae=AET,
        contexts=qrscu.find_contexts("worklist"),
        timeout=30.0,
    ) as association:
        yield association


async def ask_wlmscpfs(peer: peers.Peer, query: Dataset) -> list[Dataset]:
    async with associate(peer) as association:
        async with qrscu.find(association, query, model="worklist") as results:
            answers = [answer async for answer in results]
        assert results.status == 0x0000
    return answers


async def ask_adicom(worklist: Worklist, query: Dataset) -> list[Dataset]:
    """WorklistFolder.find over the same files, the identifier as it comes off the wire."""
    received = decode_dataset(
        encode_dataset(query, EXPLICIT_VR_LITTLE_ENDIAN), EXPLICIT_VR_LITTLE_ENDIAN
    )
    folder = WorklistFolder(worklist.folder)
    return [answer async for answer in folder.find(received, CONTEXT)]


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(text(v) for v in value)
    return str(value).strip(" \0")


def describe(answer: Dataset, query: Dataset | None) -> dict[str, Any]:
    """What an answer says for the keys of ``query`` (all its values if None)."""
    said: dict[str, Any] = {}
    elements = list(query) if query is not None else list(answer)
    for key in elements:
        if key.tag in (0x00080005, 0x00080052):
            continue
        name = key.keyword or str(key.tag)
        got = answer.get(key.tag)
        if key.VR == "SQ":
            wanted = key.value[0] if query is not None and key.value and len(key.value[0]) else None
            items = [describe(item, wanted) for item in (got.value if got is not None else [])]
            # An item with nothing in it says nothing: wlmscpfs sends one, adicom none.
            said[name] = [item for item in items if any(item.values())]
        else:
            said[name] = text(got.value if got is not None else None)
    if query is None:
        said = {name: value for name, value in said.items() if value not in ("", [])}
    return said


def summary(answers: list[Dataset], query: Dataset) -> list[str]:
    """The answers as sorted JSON lines: comparable whatever the order of the files."""
    return sorted(json.dumps(describe(answer, query), sort_keys=True) for answer in answers)


def accessions(answers: list[Dataset]) -> list[str]:
    return sorted(text(answer.get("AccessionNumber")) for answer in answers)


STEP_KEYS = ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
             "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID")  # fmt: skip


def mwl(
    step: dict[str, str | None] | None = None, charset: str | None = None, **top: str | None
) -> Dataset:
    """A worklist identifier: the given keys, and the usual return keys empty."""
    query = Dataset()
    if charset:
        query.add(element("SpecificCharacterSet", charset))
    for keyword in ("AccessionNumber", "PatientName", "PatientID", "StudyInstanceUID",
                    "RequestedProcedureID"):  # fmt: skip
        query.add(element(keyword, None))
    for keyword, value in top.items():
        query.add(element(keyword, value))
    item = Dataset()
    for keyword in STEP_KEYS:
        item.add(element(keyword, None))
    for keyword, value in (step or {}).items():
        item.add(element(keyword, value))
    query.add(element("ScheduledProcedureStepSequence", [item]))
    return query


# --------------------------------------------------------------------------
# adicom as SCU


@pytest.mark.anyio
async def test_find_worklist_against_wlmscpfs(wlmscpfs: peers.Peer) -> None:
    assert wlmscpfs.port is not None
    client = adicom.DicomClient(CALLING_AE)
    peer = DicomNode(aet=AET, host=HOST, port=wlmscpfs.port)
    results = await client.find_worklist(
        WorklistQuery(modality="MR", scheduled_date="20240101-20240131"), peer
    )
    assert sorted(r.accession_number or "" for r in results) == ["ADI003", "ADI004"]
    by_accession = {r.accession_number: r for r in results}
    jane = by_accession["ADI004"]
    written = GENERATED[3]
    assert jane.patient_name == "Smith^Jane" and jane.patient_id == "PAT-4"
    assert jane.study_instance_uid == written.StudyInstanceUID
    assert jane.requested_procedure_id == "RPADI004"
    (step,) = jane.scheduled_procedure_steps
    assert step.modality == "MR"
    assert step.scheduled_station_ae_title == "MR1\\MR2"
    assert step.scheduled_procedure_step_start_date == "20240103"
    assert step.scheduled_procedure_step_start_time == "163000"
    assert step.scheduled_procedure_step_id == "SPSADI004"
    assert step.scheduled_performing_physician_name == "Sørensen^Åse"  # Latin-1 in the file


@pytest.mark.anyio
async def test_find_worklist_by_station_and_latin1_name(wlmscpfs: peers.Peer) -> None:
    assert wlmscpfs.port is not None
    client = adicom.DicomClient(CALLING_AE)
    peer = DicomNode(aet=AET, host=HOST, port=wlmscpfs.port)
    results = await client.find_worklist(WorklistQuery(scheduled_station_ae_title="MR2"), peer)
    assert [r.accession_number for r in results] == ["ADI004"]
    # wlmscpfs compares bytes: the key must be in the files' character set (see the module).
    query = mwl(charset="ISO_IR 100", PatientName="Müller^*")
    results = await client.find_worklist(query, peer)
    assert sorted(str(r.patient_name) for r in results) == ["Müller^Anna", "Müller^Hans"]
    assert all(r.dataset is not None and r.dataset.SpecificCharacterSet == "ISO_IR 100"
               for r in results)  # fmt: skip


@pytest.mark.anyio
async def test_find_worklist_raises_the_refusal(wlmscpfs: peers.Peer) -> None:
    assert wlmscpfs.port is not None
    client = adicom.DicomClient(CALLING_AE)
    peer = DicomNode(aet=AET, host=HOST, port=wlmscpfs.port)
    bad = mwl({"ScheduledProcedureStepStartDate": "2024XX01-"})
    with pytest.raises(DimseError) as caught:
        await client.find_worklist(bad, peer)
    assert caught.value.status == 0xA900
    assert "0xA900" in str(caught.value)


@pytest.mark.anyio
async def test_find_worklist_on_an_association_of_ones_own(wlmscpfs: peers.Peer) -> None:
    client = adicom.DicomClient(CALLING_AE)
    async with associate(wlmscpfs) as association:
        first = await client.find_worklist(
            WorklistQuery(patient_id="PAT-1"), association=association
        )
        second = await client.find_worklist(
            WorklistQuery(patient_id="PAT-5"), association=association
        )
    assert [r.accession_number for r in first] == ["ADI001"]
    assert [r.accession_number for r in second] == ["ADI005"]


@pytest.mark.anyio
async def test_stopping_early_cancels_and_the_association_goes_on(
    wlmscpfs: peers.Peer, worklist: Worklist
) -> None:
    async with associate(wlmscpfs) as association:
        async with qrscu.find(association, mwl(), model="worklist") as results:
            first = await anext(results)
        assert first.AccessionNumber
        async with qrscu.find(association, mwl(PatientID="PAT-2"), model="worklist") as again:
            answers = [answer async for answer in again]
    assert accessions(answers) == ["ADI002"]


# --------------------------------------------------------------------------
# Cross-check: the same queries to wlmscpfs and to WorklistFolder


@pytest.mark.anyio
async def test_both_serve_the_same_items(wlmscpfs: peers.Peer, worklist: Worklist) -> None:
    query = mwl()
    theirs, ours = await ask_wlmscpfs(wlmscpfs, query), await ask_adicom(worklist, query)
    expected = sorted([*worklist.samples, *(str(i.AccessionNumber) for i in GENERATED)])
    assert accessions(theirs) == expected
    assert summary(ours, query) == summary(theirs, query)


CROSS_CHECK: dict[str, Dataset] = {
    "patient name": mwl(PatientName="VIVALDI^ANTONIO"),
    "patient name wildcard": mwl(PatientName="*^John*"),
    "patient name ?": mwl(PatientName="Smith^J?n?"),
    "latin-1 patient name": mwl(charset="ISO_IR 100", PatientName="Müller^Hans"),
    "patient id": mwl(PatientID="AV35674"),
    "accession number": mwl(AccessionNumber="ADI003"),
    "requested procedure id": mwl(RequestedProcedureID="RP454G234"),
    "modality": mwl({"Modality": "CT"}),
    "station AE title, multi-valued items": mwl({"ScheduledStationAETitle": "AA32"}),
    "station AE title, second value": mwl({"ScheduledStationAETitle": "MR2"}),
    "performing physician": mwl({"ScheduledPerformingPhysicianName": "JOHNSON"}),
    "date": mwl({"ScheduledProcedureStepStartDate": "19960406"}),
    "date range": mwl({"ScheduledProcedureStepStartDate": "19960101-19960430"}),
    "date from": mwl({"ScheduledProcedureStepStartDate": "20240102-"}),
    "date until": mwl({"ScheduledProcedureStepStartDate": "-19951231"}),
    "time range": mwl({"ScheduledProcedureStepStartTime": "120000-170000"}),
    "time from": mwl({"ScheduledProcedureStepStartTime": "160000-"}),
    "date and time, one range": mwl(
        {
            "ScheduledProcedureStepStartDate": "19960101-19960430",
            "ScheduledProcedureStepStartTime": "120000-170000",
        }
    ),
    "date and time across days": mwl(
        {
            "ScheduledProcedureStepStartDate": "20240101-20240103",
            "ScheduledProcedureStepStartTime": "080000-170000",
        }
    ),
    "one date, a time range": mwl(
        {
            "ScheduledProcedureStepStartDate": "20240103",
            "ScheduledProcedureStepStartTime": "160000-170000",
        }
    ),
    "both open after": mwl(
        {
            "ScheduledProcedureStepStartDate": "20240103-",
            "ScheduledProcedureStepStartTime": "170000-",
        }
    ),
    "keys at both levels": mwl({"Modality": "MR"}, PatientName="Smith*"),
    "no match": mwl({"Modality": "DD"}),
    "universal asterisk": mwl(PatientName="*", ReferringPhysicianName="*"),
    "more return keys": mwl(
        {"ScheduledProcedureStepDescription": None, "ScheduledPerformingPhysicianName": None},
        PatientBirthDate=None,
        PatientSex=None,
        RequestedProcedureDescription=None,
        ReferringPhysicianName=None,
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(CROSS_CHECK))
async def test_same_answers_as_wlmscpfs(
    name: str, wlmscpfs: peers.Peer, worklist: Worklist
) -> None:
    query = CROSS_CHECK[name]
    theirs, ours = await ask_wlmscpfs(wlmscpfs, query), await ask_adicom(worklist, query)
    assert accessions(ours) == accessions(theirs)
    assert summary(ours, query) == summary(theirs, query)


@pytest.mark.anyio
async def test_dcmtk_example_queries_give_the_same_answers(
    wlmscpfs: peers.Peer, worklist: Worklist
) -> None:
    if not worklist.queries:
        pytest.skip("DCMTK's example worklist queries are not installed")
    compared = 0
    for name, path in sorted(worklist.queries.items()):
        read = pydicom.dcmread(path, force=True)
        query = Dataset({tag: read[tag] for tag in read.keys()})  # noqa: SIM118 (no file meta)
        theirs, ours = await ask_wlmscpfs(wlmscpfs, query), await ask_adicom(worklist, query)
        assert accessions(ours) == accessions(theirs), name
        assert summary(ours, query) == summary(theirs, query), name
        compared += 1
    assert compared == len(worklist.queries) >= 10


@pytest.mark.anyio
async def test_both_refuse_an_invalid_date_with_0xA900(
    wlmscpfs: peers.Peer, worklist: Worklist
) -> None:
    query = mwl({"ScheduledProcedureStepStartDate": "1996XX01-"})
    with pytest.raises(DimseError) as theirs:
        await ask_wlmscpfs(wlmscpfs, query)
    with pytest.raises(QueryFailed) as ours:
        await ask_adicom(worklist, query)
    assert theirs.value.status == ours.value.status == 0xA900


# --------------------------------------------------------------------------
# Where they differ (see the module's documentation for who is right)

ALL = "every item"
DATE, TIME = "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"

#: name: (query, what wlmscpfs answers, what adicom answers), in accession
#: numbers of the items made here (DCMTK's examples left aside), ALL when
#: the key is not matched at all, or the status of a refusal.
KNOWN_DIFFERENCES: dict[str, tuple[Dataset, str | list[str], int | list[str]]] = {
    "person name case": (
        mwl(charset="ISO_IR 100", PatientName="müller*"),
        [],
        ["ADI001", "ADI002"],
    ),
    "person name, empty trailing components": (mwl(PatientName="Doe^Jane"), [], ["ADI006"]),
    "wildcard in Patient ID (LO)": (mwl(PatientID="PAT-?"), [], [f"ADI00{n}" for n in range(1, 7)]),
    "wildcard in Modality (CS)": (mwl({"Modality": "U?"}), [], ["ADI005"]),
    "Study Instance UID": (
        mwl(StudyInstanceUID=str(GENERATED[2].StudyInstanceUID)),
        ALL,
        ["ADI003"],
    ),
    "wildcard in a UID": (mwl(StudyInstanceUID="1.2.*"), ALL, 0xA900),
    "Scheduled Station Name": (mwl({"ScheduledStationName": "ROOM US"}), ALL, ["ADI005"]),
    "single time by its precision": (mwl({TIME: "16"}), [], ["ADI004"]),
    "open date range, time on the other side": (
        mwl({DATE: "-20240102", TIME: "080000-"}),
        ["ADI002"],
        ["ADI001", "ADI002", "ADI003"],
    ),
    "key in UTF-8, files in Latin-1": (
        mwl(charset="ISO_IR 192", PatientName="Müller*"),
        [],
        ["ADI001", "ADI002"],
    ),
}


def ours_only(answers: list[Dataset]) -> list[str]:
    return [number for number in accessions(answers) if number.startswith("ADI")]


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(KNOWN_DIFFERENCES))
async def test_known_differences(name: str, wlmscpfs: peers.Peer, worklist: Worklist) -> None:
    query, dcmtk_answer, adicom_answer = KNOWN_DIFFERENCES[name]
    theirs = await ask_wlmscpfs(wlmscpfs, query)
    if dcmtk_answer == ALL:
        everything = await ask_wlmscpfs(wlmscpfs, mwl())
        assert accessions(theirs) == accessions(everything)
    else:
        assert ours_only(theirs) == dcmtk_answer
    if isinstance(adicom_answer, int):
        with pytest.raises(QueryFailed) as refused:
            await ask_adicom(worklist, query)
        assert refused.value.status == adicom_answer
    else:
        assert ours_only(await ask_adicom(worklist, query)) == adicom_answer


@pytest.mark.anyio
async def test_a_universal_step_key_is_answered_differently(
    wlmscpfs: peers.Peer, worklist: Worklist
) -> None:
    query = Dataset()
    query.add(element("AccessionNumber", "ADI001"))
    query.add(element("ScheduledProcedureStepSequence", []))
    (theirs,) = await ask_wlmscpfs(wlmscpfs, query)
    (ours,) = await ask_adicom(worklist, query)
    (their_step,) = theirs.ScheduledProcedureStepSequence
    (our_step,) = ours.ScheduledProcedureStepSequence
    # The same values ...
    assert describe(our_step, None) == describe(their_step, None)
    assert our_step.ScheduledProcedureStepID == "SPSADI001"
    # ... but wlmscpfs adds the step attributes it knows, empty (End Date here).
    assert "ScheduledProcedureStepEndDate" in their_step
    assert not their_step.ScheduledProcedureStepEndDate
    assert "ScheduledProcedureStepEndDate" not in our_step


# --------------------------------------------------------------------------
# DCMTK findscu as the SCU: adicom.Server(on_worklist=) beside wlmscpfs


async def findscu(port: int, query: Dataset, workdir: Path) -> list[Dataset]:
    """DCMTK findscu -W with ``query``; the answers it wrote (rsp0001.dcm, ...)."""
    binary = peers.require_dcmtk("findscu")
    workdir.mkdir()
    request = workdir / "query.dcm"
    pydicom.dcmwrite(request, query, implicit_vr=False, little_endian=True)
    out = workdir / "answers"
    out.mkdir()
    argv = [binary, "-W", "-aet", "FINDSCU", "-aec", AET, "-X", "-od", str(out),
            HOST, str(port), str(request)]  # fmt: skip
    finished = await peers.run_async(argv)
    assert finished.returncode == 0, finished.describe()
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


FINDSCU_QUERIES = [
    "patient name wildcard",
    "latin-1 patient name",
    "station AE title, multi-valued items",
    "date and time across days",
    "more return keys",
]


@pytest.mark.anyio
async def test_findscu_gets_the_same_answers_from_adicom_and_wlmscpfs(
    wlmscpfs: peers.Peer, worklist: Worklist, tmp_path: Path
) -> None:
    assert wlmscpfs.port is not None
    folder = WorklistFolder(worklist.folder)
    async with adicom.Server(AET, host=HOST, port=0, on_worklist=folder.find) as server:
        for index, name in enumerate(FINDSCU_QUERIES):
            query = CROSS_CHECK[name]
            ours = await findscu(server.port, query, tmp_path / f"adicom{index}")
            theirs = await findscu(wlmscpfs.port, query, tmp_path / f"dcmtk{index}")
            assert ours, name  # every one of these queries has matches
            assert summary(ours, query) == summary(theirs, query), name
