"""Query/Retrieve extended negotiation (PS3.4 C.5) and what the archive does with it.

Negotiation as pure functions first: what a requestor proposes, what an
acceptor answers per option (1, 0, or no sub-item at all), what both end up
agreeing, and sub-items that are odd or malformed. Then end to end, an
``adicom.Server`` serving the reference archive and ``adicom.connect``
asking for the options: relational queries and retrieval answered when
agreed and refused (0xA900, as before) when not; combined date-time range
matching; fuzzy person names; what a handler of its own sees in
``QRContext.options``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import pathlib
import struct
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom import qrscu
from adicom.archive import Archive
from adicom.archive.backends import open_index
from adicom.archive.index import fuzzy_name
from adicom.archive.matching import make_row
from adicom.errors import DimseError, RemoteProtocolError
from adicom.negotiation import (
    NO_QR_OPTIONS,
    SERVED_QR_OPTIONS,
    AcceptorPolicy,
    QROptions,
    agreed_options,
    build_request,
    decode_options,
    encode_options,
    negotiate,
    propose_options,
    requestor_agreement,
)
from adicom.pdu import (
    AAssociateAC,
    AAssociateRQ,
    PDUReader,
    SOPClassExtendedNegotiation,
)
from adicom.presentation import CT_IMAGE_STORAGE, VERIFICATION
from adicom.qrscp import QRContext
from tests import test_archive as tree
from tests.postgres import BACKENDS, index_for

IMPLICIT = "1.2.840.10008.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
COMPOSITE_GET = "1.2.840.10008.5.1.4.1.2.4.3"
IDENTIFIER_DOES_NOT_MATCH = 0xA900

RELATIONAL = QROptions(relational=True)
EVERYTHING = QROptions(*([True] * 7))

POLICY = AcceptorPolicy(
    ae_title="SCP",
    supported={
        sop: (IMPLICIT,)
        for sop in (VERIFICATION, STUDY_FIND, PATIENT_FIND, STUDY_MOVE, STUDY_GET, COMPOSITE_GET)
    },
)


def request(
    extended: Sequence[SOPClassExtendedNegotiation],
    sop_classes: Sequence[str] = (STUDY_FIND, STUDY_MOVE),
    called_ae: str = "SCP",
) -> AAssociateRQ:
    return build_request(
        calling_ae="SCU",
        called_ae=called_ae,
        contexts=[(sop, [IMPLICIT]) for sop in sop_classes],
        extended=extended,
    )


def answer(rq: AAssociateRQ, policy: AcceptorPolicy = POLICY) -> AAssociateAC:
    result = negotiate(rq, policy)
    assert isinstance(result, tuple), result
    response, agreement = result
    # Both sides agree on the same thing, read from the same two PDUs.
    assert dict(agreement.extended) == requestor_agreement(rq, response).extended
    return response


def answered(response: AAssociateAC) -> dict[str, bytes]:
    return {
        item.sop_class_uid: item.application_information
        for item in response.user_information.sop_class_extended
    }


def item(sop_class: str, information: bytes) -> SOPClassExtendedNegotiation:
    return SOPClassExtendedNegotiation(sop_class, information)


# --------------------------------------------------------------------------
# The field, byte by byte (PS3.4 Table C.5-1, C.5.2.1)


def test_the_find_field_has_one_byte_per_option_in_table_order() -> None:
    assert encode_options(STUDY_FIND, EVERYTHING) == b"\x01" * 7
    # As few bytes as carry what is asked: relational alone is the one byte
    # every edition knows.
    assert encode_options(STUDY_FIND, RELATIONAL) == b"\x01"
    assert encode_options(STUDY_FIND, QROptions(datetime_matching=True)) == b"\x00\x01"
    assert encode_options(STUDY_FIND, QROptions(timezone_adjustment=True)) == b"\x00\x00\x00\x01"
    assert encode_options(STUDY_FIND, NO_QR_OPTIONS) == b"\x00"
    assert encode_options(STUDY_FIND, RELATIONAL, length=4) == b"\x01\x00\x00\x00"
    assert decode_options(STUDY_FIND, b"\x00\x01\x01") == QROptions(
        datetime_matching=True, fuzzy_matching=True
    )


def test_the_retrieve_field_has_relational_retrieval_and_conversion_only() -> None:
    assert encode_options(STUDY_MOVE, EVERYTHING) == b"\x01\x01"
    assert decode_options(STUDY_GET, b"\x00\x01") == QROptions(enhanced_conversion=True)
    # Bytes past the known ones (a later edition's) are ignored.
    assert decode_options(STUDY_GET, b"\x01\x00\x01\x01") == RELATIONAL


def test_odd_fields_request_nothing_or_are_not_understood() -> None:
    # PS3.4 C.5.1.1: 0 or 1 only; anything else is not a request.
    assert decode_options(STUDY_FIND, b"\x02\xff") == NO_QR_OPTIONS
    # Table C.5-1 has at least one byte: an empty field is not understood.
    assert decode_options(STUDY_FIND, b"") is None
    # A class without Q/R extended negotiation (Y.5: nor Composite Instance Root).
    assert decode_options(CT_IMAGE_STORAGE, b"\x01") is None
    assert decode_options(COMPOSITE_GET, b"\x01") is None
    with pytest.raises(ValueError, match="no Query/Retrieve extended negotiation"):
        encode_options(CT_IMAGE_STORAGE, RELATIONAL)


def test_a_proposal_covers_the_proposed_query_retrieve_classes() -> None:
    proposed = [VERIFICATION, STUDY_FIND, STUDY_MOVE, CT_IMAGE_STORAGE, COMPOSITE_GET]
    items = propose_options(proposed, QROptions(relational=True, datetime_matching=True))
    assert items == (item(STUDY_FIND, b"\x01\x01"), item(STUDY_MOVE, b"\x01"))
    # Nothing a retrieve class has: no sub-item for it.
    assert propose_options(proposed, QROptions(fuzzy_matching=True)) == (
        item(STUDY_FIND, b"\x00\x00\x01"),
    )
    # By class: only those proposed.
    assert propose_options([STUDY_FIND], {STUDY_FIND: RELATIONAL, STUDY_GET: RELATIONAL}) == (
        item(STUDY_FIND, b"\x01"),
    )
    with pytest.raises(ValueError, match=CT_IMAGE_STORAGE):
        propose_options([CT_IMAGE_STORAGE], {CT_IMAGE_STORAGE: RELATIONAL})


# --------------------------------------------------------------------------
# The acceptor's answer and the agreement


def test_the_acceptor_answers_each_option_it_performs() -> None:
    rq = request(propose_options([STUDY_FIND, STUDY_MOVE], EVERYTHING))
    ac = answer(rq)
    # Offered 7 and 2 bytes: answered as long, 1 for what the archive does.
    assert answered(ac) == {STUDY_FIND: b"\x01\x01\x01\x00\x00\x00\x00", STUDY_MOVE: b"\x01\x00"}
    assert agreed_options(rq, ac) == {STUDY_FIND: SERVED_QR_OPTIONS, STUDY_MOVE: RELATIONAL}


def test_a_one_byte_offer_gets_a_one_byte_answer() -> None:
    rq = request([item(STUDY_FIND, b"\x01")])
    ac = answer(rq)
    assert answered(ac) == {STUDY_FIND: b"\x01"}
    assert agreed_options(rq, ac) == {STUDY_FIND: RELATIONAL}


def test_options_not_performed_are_answered_zero() -> None:
    # Timezone adjustment and Enhanced Multi-Frame Image Conversion: the
    # archive does neither.
    asked = QROptions(timezone_adjustment=True, enhanced_conversion=True)
    rq = request(propose_options([STUDY_FIND, STUDY_MOVE], asked))
    ac = answer(rq)
    assert answered(ac) == {STUDY_FIND: b"\x00\x00\x00\x00\x00", STUDY_MOVE: b"\x00\x00"}
    assert agreed_options(rq, ac) == {STUDY_FIND: NO_QR_OPTIONS, STUDY_MOVE: NO_QR_OPTIONS}
    # An acceptor that performs nothing answers every byte 0.
    quiet = answer(rq, AcceptorPolicy("SCP", POLICY.supported, qr_options=NO_QR_OPTIONS))
    assert set(answered(quiet).values()) == {b"\x00\x00\x00\x00\x00", b"\x00\x00"}


def test_no_proposal_no_answer() -> None:
    # PS3.4 C.5.1.1: sub-items absent from the request are omitted in the answer.
    rq = request([])
    ac = answer(rq)
    assert ac.user_information.sop_class_extended == ()
    assert agreed_options(rq, ac) == {}


def test_sub_items_the_acceptor_does_not_answer() -> None:
    rq = request(
        [
            item(CT_IMAGE_STORAGE, b"\x01"),  # not a Q/R class: not understood
            item(COMPOSITE_GET, b"\x01"),  # PS3.4 Y.5: no relational-retrieval
            item(STUDY_MOVE, b""),  # empty field
            item(PATIENT_FIND, b"\x01"),  # no context proposed for it
        ],
        sop_classes=(STUDY_FIND, STUDY_MOVE, COMPOSITE_GET, CT_IMAGE_STORAGE),
    )
    ac = answer(rq)
    assert ac.user_information.sop_class_extended == ()
    assert agreed_options(rq, ac) == {}


def test_a_context_not_accepted_gets_no_answer() -> None:
    narrow = AcceptorPolicy("SCP", {VERIFICATION: (IMPLICIT,), STUDY_MOVE: (IMPLICIT,)})
    rq = request(propose_options([STUDY_FIND, STUDY_MOVE], RELATIONAL))
    ac = answer(rq, narrow)
    assert [pc.result for pc in ac.presentation_contexts] == [3, 0]  # Find not supported
    assert answered(ac) == {STUDY_MOVE: b"\x01"}


def test_one_sub_item_per_class_the_first_counts() -> None:
    # PS3.7 D.3.3.5.1 allows one per SOP class.
    rq = request([item(STUDY_FIND, b"\x00\x01"), item(STUDY_FIND, b"\x01")])
    ac = answer(rq)
    assert ac.user_information.sop_class_extended == (item(STUDY_FIND, b"\x00\x01"),)
    assert agreed_options(rq, ac) == {STUDY_FIND: QROptions(datetime_matching=True)}


def test_the_requestor_agrees_only_to_what_it_asked_and_was_answered() -> None:
    rq = request(propose_options([STUDY_FIND, STUDY_MOVE], QROptions(relational=True)))

    def ac_with(*items: SOPClassExtendedNegotiation) -> AAssociateAC:
        base = answer(rq)
        user = replace(base.user_information, sop_class_extended=items)
        return replace(base, user_information=user)

    # Omitted: nothing agreed (the default conditions, C.5.1.1).
    assert requestor_agreement(rq, ac_with()).extended == {}
    # Answered 1 to what was not asked (date-time): not agreed; a class
    # not proposed: ignored; a shorter answer: the missing bytes are 0.
    odd = ac_with(
        item(STUDY_FIND, b"\x01\x01\x01"),
        item(PATIENT_FIND, b"\x01"),
        item(STUDY_MOVE, b""),
    )
    assert requestor_agreement(rq, odd).extended == {
        STUDY_FIND: RELATIONAL,
        STUDY_MOVE: NO_QR_OPTIONS,
    }
    assert requestor_agreement(rq, ac_with(item(STUDY_FIND, b"\x00"))).extended == {
        STUDY_FIND: NO_QR_OPTIONS
    }


# --------------------------------------------------------------------------
# On the wire


def wire(pdu: AAssociateRQ | AAssociateAC) -> AAssociateRQ | AAssociateAC:
    reader = PDUReader()
    reader.feed(pdu.encode())
    decoded = reader.next_pdu()
    assert isinstance(decoded, AAssociateRQ | AAssociateAC)
    return decoded


def test_the_sub_items_survive_the_wire_both_ways() -> None:
    long_field = b"\x01\x01\x00\x00\x00\x00\x00\x01\x01"  # two bytes past Table C.5-1
    rq = request([item(STUDY_FIND, long_field), item(STUDY_MOVE, b"\x01")])
    received = wire(rq)
    assert isinstance(received, AAssociateRQ)
    assert received.user_information.sop_class_extended == rq.user_information.sop_class_extended
    ac = answer(received)
    back = wire(ac)
    assert isinstance(back, AAssociateAC)
    # Answered with the 7 known bytes (PS3.4 C.5.1.1: a multi-byte offer may
    # get a shorter answer; the rest count as 0).
    assert answered(back) == {STUDY_FIND: b"\x01\x01\x00\x00\x00\x00\x00", STUDY_MOVE: b"\x01"}
    assert requestor_agreement(rq, back).extended == {
        STUDY_FIND: QROptions(relational=True, datetime_matching=True),
        STUDY_MOVE: RELATIONAL,
    }


def _with_bad_uid_length(rq: AAssociateRQ) -> bytes:
    """``rq`` encoded, its 0x56 sub-item's SOP class UID length past the item's end."""
    data = bytearray(rq.encode())
    uid = STUDY_FIND.encode()
    at = data.index(b"\x56\x00")
    item_length = struct.unpack(">H", data[at + 2 : at + 4])[0]
    assert data[at + 6 : at + 6 + len(uid)] == uid
    data[at + 4 : at + 6] = struct.pack(">H", item_length + 1)
    return bytes(data)


def test_a_sub_item_longer_inside_than_outside_is_a_protocol_error() -> None:
    data = _with_bad_uid_length(request([item(STUDY_FIND, b"\x01")]))
    reader = PDUReader()
    reader.feed(data)
    with pytest.raises(RemoteProtocolError):
        reader.next_pdu()


# --------------------------------------------------------------------------
# End to end: adicom.Server with the archive, adicom.connect


@pytest.fixture(params=BACKENDS)
async def archive(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> AsyncIterator[Archive]:
    root = tmp_path / "archive"
    tree.write_tree(root)
    archive = Archive(root, index=index_for(request))
    archive.scan = True  # the tree was written behind its back
    yield archive
    await archive.aclose()


@contextlib.asynccontextmanager
async def serving(
    archive: Archive, destinations: Mapping[str, tuple[str, int]] | None = None
) -> AsyncIterator[int]:
    await archive.open()
    async with adicom.Server("ARCHIVE", port=0, **archive.handlers(destinations)) as running:
        yield running.port


async def find_all(
    port: int,
    query: Dataset,
    options: QROptions | None,
    model: qrscu.Model = "study",
) -> tuple[list[Dataset], int | None]:
    """The matches and the final status of one C-FIND (a failure: no matches, its status)."""
    async with adicom.connect(
        "127.0.0.1",
        port,
        called_ae="ARCHIVE",
        contexts=qrscu.find_contexts(model),
        extended_negotiation=options,
    ) as assoc:
        found: list[Dataset] = []
        try:
            async with qrscu.find(assoc, query, model=model) as results:
                found = [match async for match in results]
        except DimseError as exc:
            return found, exc.status
        return found, results.status


IMAGES_OF_STUDY_A = tree.identifier("IMAGE", StudyInstanceUID=tree.TREE.uid["A"], SOPInstanceUID="")


@pytest.mark.anyio
async def test_an_image_query_naming_only_its_study(archive: Archive) -> None:
    async with serving(archive) as port:
        found, status = await find_all(port, IMAGES_OF_STUDY_A, RELATIONAL)
        assert status == 0x0000
        assert {str(d.SOPInstanceUID) for d in found} == tree.TREE.under("A")
        # Not negotiated: hierarchical search, refused as before.
        refused, status = await find_all(port, IMAGES_OF_STUDY_A, None)
        assert (refused, status) == ([], IDENTIFIER_DOES_NOT_MATCH)


@pytest.mark.anyio
async def test_a_series_query_without_its_study(archive: Archive) -> None:
    query = tree.identifier("SERIES", Modality="PT", SeriesInstanceUID="", StudyInstanceUID="")
    async with serving(archive) as port:
        found, status = await find_all(port, query, RELATIONAL)
        assert status == 0x0000
        assert [(tree.TREE.label[d.SeriesInstanceUID], tree.TREE.label[d.StudyInstanceUID])
                for d in found] == [("A2", "A")]  # fmt: skip
        # Asked for other options only: still hierarchical.
        refused, status = await find_all(port, query, QROptions(datetime_matching=True))
        assert (refused, status) == ([], IDENTIFIER_DOES_NOT_MATCH)


@pytest.mark.anyio
async def test_patient_root_studies_by_name_without_patient_id(archive: Archive) -> None:
    # Relational: keys of the level above (the patient's name), no Patient ID.
    query = tree.identifier("STUDY", PatientName="DOE^*", StudyInstanceUID="")
    async with serving(archive) as port:
        found, status = await find_all(port, query, RELATIONAL, model="patient")
        assert status == 0x0000
        assert tree.labels(found, "StudyInstanceUID") == {"A", "B"}
        refused, status = await find_all(port, query, None, model="patient")
        assert (refused, status) == ([], IDENTIFIER_DOES_NOT_MATCH)


@pytest.mark.anyio
async def test_a_relational_query_may_wildcard_its_own_unique_key(archive: Archive) -> None:
    # PS3.4 C.4.1.3.2.1: single value, wildcard or universal at the query level.
    prefix = tree.TREE.uid["B1.1"][:-3]
    query = tree.identifier("IMAGE", SOPInstanceUID=prefix + "*")
    async with serving(archive) as port:
        found, status = await find_all(port, query, RELATIONAL)
        assert status == 0x0000
        expected = {uid for uid in tree.TREE.label if uid.startswith(prefix)} & {
            str(d.SOPInstanceUID) for d in tree.TREE.instances
        }
        assert expected and {str(d.SOPInstanceUID) for d in found} == expected
        _, status = await find_all(port, query, None)
        assert status == IDENTIFIER_DOES_NOT_MATCH


@pytest.mark.anyio
async def test_relational_get_of_a_series_named_alone(archive: Archive) -> None:
    contexts, roles = qrscu.get_contexts()
    series = tree.identifier("SERIES", SeriesInstanceUID=tree.TREE.uid["A1"])
    async with serving(archive) as port:
        for options, expected in ((RELATIONAL, tree.TREE.under("A1")), (None, set())):
            memory = adicom.MemoryStorage()
            async with adicom.connect(
                "127.0.0.1",
                port,
                called_ae="ARCHIVE",
                contexts=contexts,
                roles=roles,
                extended_negotiation=options,
            ) as assoc:
                result = await qrscu.get(assoc, series, memory)
            assert {str(d.SOPInstanceUID) for d in memory.datasets} == expected
            assert result.status == (0x0000 if options else IDENTIFIER_DOES_NOT_MATCH)


@pytest.mark.anyio
async def test_relational_move_of_instances_named_alone(archive: Archive) -> None:
    received = adicom.MemoryStorage()
    wanted = [tree.TREE.uid["C1.1"], tree.TREE.uid["D1.1"]]  # two studies, two patients
    query = tree.identifier("IMAGE", SOPInstanceUID=wanted)
    async with adicom.Server("DEST", port=0, storage=received) as destination:
        destinations = {"DEST": ("127.0.0.1", destination.port)}
        async with serving(archive, destinations=destinations) as port:
            for options in (None, RELATIONAL):
                async with adicom.connect(
                    "127.0.0.1",
                    port,
                    called_ae="ARCHIVE",
                    contexts=qrscu.move_contexts(),
                    extended_negotiation=options,
                ) as assoc:
                    result = await qrscu.move(assoc, query, "DEST")
                if options is None:
                    assert result.status == IDENTIFIER_DOES_NOT_MATCH
                    assert received.datasets == []
    assert result.status == 0x0000
    assert sorted(str(d.SOPInstanceUID) for d in received.datasets) == sorted(wanted)


@pytest.mark.anyio
async def test_combined_date_time_range_matching(archive: Archive) -> None:
    # PS3.4 C.2.2.2.5.4: 2024-01-01 15:00 to 2024-03-01 10:00 as one range.
    # Study A is 2024-01-05 09:30, B 2024-02-10 14:30, D 2024-03-01 23:00.
    query = tree.identifier(
        "STUDY", StudyDate="20240101-20240301", StudyTime="1500-1000", StudyInstanceUID=""
    )
    async with serving(archive) as port:
        found, status = await find_all(port, query, QROptions(datetime_matching=True))
        assert status == 0x0000
        assert tree.labels(found, "StudyInstanceUID") == {"A", "B"}
        # Matched apart, no time of day is both after 15:00 and before 10:00.
        apart, status = await find_all(port, query, None)
        assert (apart, status) == ([], 0x0000)
        # One bound of each form: dates from 2024-02-10 14:00 on.
        since = tree.identifier(
            "STUDY", StudyDate="20240210-", StudyTime="1400-", StudyInstanceUID=""
        )
        found, _ = await find_all(port, since, QROptions(datetime_matching=True))
        assert tree.labels(found, "StudyInstanceUID") == {"B", "D"}


@pytest.mark.anyio
async def test_fuzzy_person_names_ignore_accents(archive: Archive, tmp_path: pathlib.Path) -> None:
    extra = copy.deepcopy(tree.TREE.by_uid(tree.TREE.uid["C1.1"]))
    extra.SpecificCharacterSet = "ISO_IR 100"
    extra.PatientName = "Müller^Jörg"
    extra.PatientID = "PAT9"
    extra.StudyInstanceUID, extra.SeriesInstanceUID = generate_uid(), generate_uid()
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    pydicom.dcmwrite(archive.root / "extra.dcm", extra, enforce_file_format=True)
    query = tree.identifier("STUDY", PatientName="MULLER^JORG", PatientID="")
    async with serving(archive) as port:
        found, status = await find_all(port, query, QROptions(fuzzy_matching=True))
        assert status == 0x0000
        assert [d.PatientID for d in found] == ["PAT9"]
        assert str(found[0].PatientName) == "Müller^Jörg"
        literal, status = await find_all(port, query, None)
        assert (literal, status) == ([], 0x0000)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_fuzzy_names_and_combined_precision_in_the_index(
    tmp_path: pathlib.Path, backend: str, request: pytest.FixtureRequest
) -> None:
    assert fuzzy_name("Mu\u0308ller^JÖRG^^") == fuzzy_name("MULLER^Jorg") == "muller^jorg"
    url = (
        f"sqlite:{tmp_path / 'index.sqlite'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres").new_database()
    )
    index = open_index(url)
    await index.connect()
    try:
        rows = []
        for uid, date, time in (("1.1", "20240105", ""), ("1.2", "20240105", "180030.25")):
            values = {"SOPInstanceUID": uid, "StudyInstanceUID": uid, "StudyDate": date}
            rows.append(make_row({**values, "StudyTime": time}, tmp_path / uid, IMPLICIT))
        await index.add_rows(rows)
        await index.commit()
        combined = QROptions(datetime_matching=True)
        keys = {"StudyDate": "20240105-20240105", "StudyTime": "1000-1800"}
        found = {f["StudyInstanceUID"] for f in await index.find("STUDY", keys, options=combined)}
        # A study without a time matches by its date; 18:00:30 is within "1800".
        assert found == {"1.1", "1.2"}
        keys = {"StudyDate": "20240105-20240105", "StudyTime": "1000-1759"}
        found = {f["StudyInstanceUID"] for f in await index.find("STUDY", keys, options=combined)}
        assert found == {"1.1"}
    finally:
        await index.aclose()


# --------------------------------------------------------------------------
# What a handler of its own sees, and what the client agreed


@pytest.mark.anyio
async def test_a_handler_sees_the_agreed_options_and_the_client_too() -> None:
    seen: list[QROptions] = []

    async def on_find(identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        seen.append(context.options)
        matches: tuple[Dataset, ...] = ()
        for match in matches:
            yield match

    asked = QROptions(relational=True, fuzzy_matching=True, timezone_adjustment=True)
    async with adicom.Server(
        "SCP", port=0, on_find=on_find, qr_options=SERVED_QR_OPTIONS
    ) as server:
        for options in (asked, None):
            async with adicom.connect(
                "127.0.0.1",
                server.port,
                called_ae="SCP",
                contexts=qrscu.find_contexts(),
                extended_negotiation=options,
            ) as assoc:
                agreed = agreed_options(assoc.request, assoc.response)
                async with qrscu.find(assoc, tree.identifier("STUDY")) as results:
                    assert [m async for m in results] == []
            # The Server's default policy answers what the archive performs.
            expected = QROptions(relational=True, fuzzy_matching=True) if options else None
            assert agreed.get(STUDY_FIND) == expected
    assert seen == [QROptions(relational=True, fuzzy_matching=True), NO_QR_OPTIONS]


@pytest.mark.anyio
async def test_a_malformed_sub_item_is_aborted_and_the_server_goes_on(archive: Archive) -> None:
    rq = request([item(STUDY_FIND, b"\x01")], sop_classes=(STUDY_FIND,), called_ae="ARCHIVE")
    async with serving(archive) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(_with_bad_uid_length(rq))
            async with asyncio.timeout(10):
                reply = await reader.read(64)
        finally:
            writer.close()
        # PS3.8 Table 9-26: an A-ABORT (type 07H), no A-ASSOCIATE-AC.
        assert reply[:1] == b"\x07", reply
        found, status = await find_all(port, IMAGES_OF_STUDY_A, RELATIONAL)
        assert status == 0x0000 and len(found) == 4
