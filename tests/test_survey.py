"""qrscu.survey reads each C-FIND match for its few keys where they lie, as decoding would."""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

import adicom
from adicom import qrscu
from adicom.dimse import Command, CommandField, Message
from adicom.errors import DimseError
from adicom.presentation import PresentationContext
from tests.test_dicomclient import Tree, build_tree

pytestmark = pytest.mark.anyio

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = ("1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3")
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG_LS = "1.2.840.10008.1.2.4.80"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def _matches(identifier: Dataset) -> list[Dataset]:
    """Two series; the first has two instances, the second one without its SOP class."""
    if identifier.QueryRetrieveLevel == "SERIES":
        out = []
        for series in SERIES:
            match = Dataset()
            match.QueryRetrieveLevel = "SERIES"
            match.StudyInstanceUID = STUDY
            match.SeriesInstanceUID = series
            out.append(match)
        return out
    out = []
    count = 2 if identifier.SeriesInstanceUID == SERIES[0] else 1
    for n in range(count):
        match = Dataset()
        # Elements before and between the keys the survey reads, a sequence
        # among them: the scan must step over them.
        match.SpecificCharacterSet = "ISO_IR 100"
        match.QueryRetrieveLevel = "IMAGE"
        if identifier.SeriesInstanceUID == SERIES[0]:
            match.SOPClassUID = CT
        match.SOPInstanceUID = f"{identifier.SeriesInstanceUID}.{n + 1}"
        match.ReferencedStudySequence = [Dataset()]
        match.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "1.2.3"
        if n == 1:
            match.AvailableTransferSyntaxUID = [JPEG_LS, EXPLICIT]  # two values
        match.StudyInstanceUID = STUDY
        match.SeriesInstanceUID = identifier.SeriesInstanceUID
        match.PatientName = "Ünicode^Name"
        out.append(match)
    return out


async def _on_find(identifier: Dataset, _context: Any) -> AsyncIterator[Dataset]:
    for match in _matches(identifier):
        yield match


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
async def test_a_survey_reads_the_keys_of_each_match(syntax: str) -> None:
    async with (
        adicom.Server("PACS", port=0, on_find=_on_find) as server,
        adicom.connect(
            "127.0.0.1", server.port, called_ae="PACS", contexts=[(STUDY_ROOT_FIND, [syntax])]
        ) as assoc,
    ):
        found = await qrscu.survey(assoc, STUDY)
    assert found.instances == {
        f"{SERIES[0]}.1": qrscu.HeldInstance(f"{SERIES[0]}.1", CT, (), SERIES[0]),
        f"{SERIES[0]}.2": qrscu.HeldInstance(f"{SERIES[0]}.2", CT, (JPEG_LS, EXPLICIT), SERIES[0]),
        f"{SERIES[1]}.1": qrscu.HeldInstance(f"{SERIES[1]}.1", "", (), SERIES[1]),
    }
    assert not found.complete  # an instance came without its SOP class


def _results(syntax: str) -> qrscu.FindResults:
    """FindResults over a stand-in association with one context in ``syntax``."""
    context = PresentationContext(1, UID(STUDY_ROOT_FIND), UID(syntax), 0)
    association: Any = SimpleNamespace(contexts={1: context})
    return qrscu.FindResults(association, Dataset())


def _reply(data: bytes | None) -> Message:
    return Message(1, Command(CommandField.C_FIND_RSP, status=0xFF00), data)


def _encoded(elements: list[tuple[int, str, bytes]], implicit: bool) -> bytes:
    """A data set by hand: each value as given, padding and all."""
    out = b""
    for tag, vr, value in elements:
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        length = (
            struct.pack("<L", len(value))
            if implicit
            else vr.encode() + struct.pack("<H", len(value))
        )
        out += head + length + value
    return out


def test_values_match_what_decoding_says() -> None:
    elements = [
        (0x00080016, "UI", CT.encode() + b"\0"),  # NUL padded, as PS3.5 6.2 says for UI
        (0x00080018, "UI", b"1.2.3\0"),
        (0x00080020, "DA", b"20240101"),
        (0x00083002, "UI", b"\\" + JPEG_LS.encode() + b"\0"),  # an empty first value
        (0x00100010, "PN", "Ünicode^Name".encode("latin-1")),
    ]
    tags = frozenset({0x00080016, 0x00080018, 0x00083002, 0x0020000E})
    for syntax in (EXPLICIT, IMPLICIT):
        results = _results(syntax)
        reply = _reply(_encoded(elements, syntax == IMPLICIT))
        decoded = results._decode(reply)
        expected = {tag: qrscu._text_values(decoded[tag].value) for tag in tags if tag in decoded}
        assert (
            results._values(reply, tags)
            == expected
            == {
                0x00080016: [CT],
                0x00080018: ["1.2.3"],
                0x00083002: [JPEG_LS],
            }
        )


def test_a_match_that_does_not_parse_is_the_peers_error() -> None:
    results = _results(EXPLICIT)
    with pytest.raises(DimseError, match="does not decode"):
        # A sequence of undefined length (before the key) cut short inside its item.
        broken = b"\x08\x00\x06\x00SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00ab"
        results._values(_reply(broken), frozenset({0x00080018}))
    with pytest.raises(DimseError, match="without identifier"):
        results._values(_reply(None), frozenset({0x00080018}))


async def _classless(identifier: Dataset, _context: Any) -> AsyncIterator[Dataset]:
    """A peer that does not return SOP Class UID (an optional key), 50 instances."""
    for n in range(50):
        match = Dataset()
        match.QueryRetrieveLevel = "IMAGE"
        match.SOPInstanceUID = f"{SERIES[0]}.{n + 1}"
        match.StudyInstanceUID = STUDY
        match.SeriesInstanceUID = SERIES[0]
        yield match


async def test_a_survey_for_the_offer_stops_at_a_first_match_without_class() -> None:
    async with (
        adicom.Server("PACS", port=0, on_find=_classless) as server,
        adicom.connect(
            "127.0.0.1", server.port, called_ae="PACS", contexts=qrscu.find_contexts()
        ) as assoc,
    ):
        whole = await qrscu.survey(assoc, STUDY, SERIES[0])
        stopped = await qrscu.survey(assoc, STUDY, SERIES[0], until_classless=True)
        # The C-CANCEL ended that C-FIND cleanly: the association goes on.
        again = await qrscu.survey(assoc, STUDY, SERIES[0])
    assert len(whole.instances) == 50 and not whole.complete and not whole.stopped
    assert all(held.sop_class_uid == "" for held in whole.instances.values())
    assert stopped.stopped and not stopped.complete and stopped.instances == {}
    assert again.instances == whole.instances


async def test_a_get_from_a_peer_that_hides_classes_offers_the_common_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="adicom")
    tree = Tree(build_tree())
    series = [
        d for d in tree.instances if d.SeriesInstanceUID == tree.instances[0].SeriesInstanceUID
    ]

    async def find_without_class(identifier: Dataset, context: Any) -> AsyncIterator[Dataset]:
        async for match in tree.find(identifier, context):
            if "SOPClassUID" in match:
                del match.SOPClassUID
            yield match

    async with adicom.Server(
        "HIDING", port=0, on_find=find_without_class, on_get=tree.retrieve
    ) as server:
        hiding = adicom.DicomNode(aet="HIDING", host="127.0.0.1", port=server.port)
        result = await adicom.DicomClient().get_series_to_memory(
            str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID), hiding
        )
    assert result.status == "success" and result.num_completed == len(series)
    assert {str(d.SOPInstanceUID) for d in result.instances} == {
        str(d.SOPInstanceUID) for d in series
    }
    assert "the C-FIND does not say SOP classes; offering the common ones" in caplog.text


async def test_a_client_remembers_a_peer_that_hides_classes_and_asks_it_no_more() -> None:
    tree = Tree(build_tree())
    first = tree.instances[0]
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    finds: list[str] = []

    async def find_without_class(identifier: Dataset, context: Any) -> AsyncIterator[Dataset]:
        finds.append(str(identifier.QueryRetrieveLevel))
        async for match in tree.find(identifier, context):
            if "SOPClassUID" in match:
                del match.SOPClassUID
            yield match

    async with (
        adicom.Server("HIDING", port=0, on_find=find_without_class, on_get=tree.retrieve) as server,
        adicom.Server("HIDING", port=0, on_find=find_without_class, on_get=tree.retrieve) as twin,
    ):
        hiding = adicom.DicomNode(aet="HIDING", host="127.0.0.1", port=server.port)
        client = adicom.DicomClient()
        one = await client.get_series_to_memory(study, series, hiding)
        asked = len(finds)
        two = await client.get_series_to_memory(study, series, hiding)
        # The same client, the same peer: no C-FIND the second time.
        assert len(finds) == asked == 1
        # Another peer (the same title at another port) is asked.
        other = adicom.DicomNode(aet="HIDING", host="127.0.0.1", port=twin.port)
        await client.get_series_to_memory(study, series, other)
        assert len(finds) == 2
        # A new client knows nothing yet; a note that has run out is forgotten.
        await adicom.DicomClient().get_series_to_memory(study, series, hiding)
        assert len(finds) == 3
        client._classless.seconds = 0.0
        client._classless.note(hiding)
        await client.get_series_to_memory(study, series, hiding)
        assert len(finds) == 4
    assert one.num_completed == two.num_completed > 0 and one.status == two.status == "success"


def test_peer_memory_keeps_the_latest_few_for_a_while() -> None:
    from adicom.clientbase import PeerMemory

    memory = PeerMemory(seconds=600.0, limit=2)
    peers = [adicom.DicomNode(aet=f"P{n}", host="127.0.0.1", port=104) for n in range(3)]
    assert not memory.knows(peers[0])
    for peer in peers:
        memory.note(peer)
    assert [memory.knows(p) for p in peers] == [False, True, True]
    memory.note(peers[1])  # noted again: now the latest, so P2 goes first
    memory.note(peers[0])
    assert [memory.knows(p) for p in peers] == [True, True, False]
    memory.forget(peers[1])
    assert not memory.knows(peers[1])
    memory.seconds = 0.0
    memory.note(peers[2])
    assert not memory.knows(peers[2])
