"""The hand-written file format pieces against pydicom, which is the reference."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from adicom.elements import (
    scan_elements,
)
from adicom.fileformat import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    MAX_INFLATED,
    MEMO_TAGS,
    MEMO_VALUE,
    Inflater,
    Memo,
    decode_dataset,
    encode_dataset,
    encode_file_meta,
    inflate,
    is_valid_uid,
    read_file_meta,
)

SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]
WANTED = frozenset({0x00080018, 0x0020000D, 0x0020000E})


def nested(undefined: bool) -> Dataset:
    inner = Dataset()
    inner.CodeValue = "1"
    inner.ConceptNameCodeSequence = Sequence([Dataset()])
    inner.ConceptNameCodeSequence[0].CodeValue = "y" * 16
    inner.ConceptNameCodeSequence[0].CodeMeaning = "x" * 60
    dataset = Dataset()
    dataset.SOPInstanceUID = "1.2.3.4"
    dataset.ProcedureCodeSequence = Sequence([inner, Dataset()])  # (0008,1032)
    dataset.PatientName = "Doe^John"
    dataset.StudyInstanceUID = "1.2.3"
    dataset.SeriesInstanceUID = "1.2.3.1"
    dataset.InstanceNumber = 7
    if undefined:
        dataset["ProcedureCodeSequence"].is_undefined_length = True
        inner["ConceptNameCodeSequence"].is_undefined_length = True
    return dataset


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("undefined", [False, True])
def test_scan_steps_over_sequences_like_pydicom_reads_them(syntax: str, undefined: bool) -> None:
    dataset = nested(undefined)
    encoded = encode_dataset(dataset, syntax)
    found = scan_elements(
        encoded, WANTED, implicit=syntax == "1.2.840.10008.1.2", little=not syntax.endswith(".2.2")
    )
    assert found is not None
    assert {tag: value.rstrip(b"\0").decode() for tag, value in found.items()} == {
        0x00080018: "1.2.3.4",
        0x0020000D: "1.2.3",
        0x0020000E: "1.2.3.1",
    }
    # Cut short anywhere, it asks for more instead of guessing.
    for cut in range(0, len(encoded) - 40, 37):
        result = scan_elements(encoded[:cut], WANTED, implicit=syntax == "1.2.840.10008.1.2",
                               little=not syntax.endswith(".2.2"))  # fmt: skip
        assert result is None or set(result) <= WANTED


def test_scan_refuses_bytes_that_are_no_data_set() -> None:
    with pytest.raises(ValueError, match="no VR"):
        scan_elements(b"\x08\x00\x18\x00\x01\x02\x03\x04" * 4, WANTED, implicit=False)


@pytest.mark.parametrize("syntax", [*SYNTAXES, "1.2.840.10008.1.2.1.99"])
def test_encode_decode_round_trip(syntax: str) -> None:
    dataset = nested(True)
    decoded = decode_dataset(encode_dataset(dataset, syntax), syntax)
    assert decoded.SOPInstanceUID == "1.2.3.4" and decoded.InstanceNumber == 7
    assert decoded.ProcedureCodeSequence[0].ConceptNameCodeSequence[0].CodeMeaning == "x" * 60


def test_file_meta_is_what_pydicom_reads() -> None:
    meta = encode_file_meta(
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1",
        implementation_class_uid="1.2.3", implementation_version_name="ADICOM_010",
        source_ae="MODALITY",
    )  # fmt: skip
    body = encode_dataset(nested(False), "1.2.840.10008.1.2.1")
    read = pydicom.dcmread(io.BytesIO(meta + body))
    assert read.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert read.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert read.file_meta.FileMetaInformationGroupLength == len(meta) - 132 - 12
    values, offset = read_file_meta(io.BytesIO(meta + body))
    assert offset == len(meta) and values[0x00020010].rstrip(b"\0") == b"1.2.840.10008.1.2.1"


def test_file_meta_of_uids_of_every_length_reads_back_whatever_came_before() -> None:
    # What goes before (0002,0003)'s value is made once per length of it and
    # kept: each length, odd or even, again and in any order, and a UID too
    # long to keep one for, has the group length and the UID it should.
    uids = ["1." + "2" * (n - 2) for n in range(3, 70)]
    body = encode_dataset(nested(False), "1.2.840.10008.1.2.1")
    for uid in [*uids, *reversed(uids), "1." + "3" * 98]:
        for source_ae in ("MODALITY", "CT"):
            meta = encode_file_meta(
                "1.2.840.10008.5.1.4.1.1.2", uid, "1.2.840.10008.1.2.1",
                implementation_class_uid="1.2.3", source_ae=source_ae,
            )  # fmt: skip
            values, offset = read_file_meta(io.BytesIO(meta + body))
            assert offset == len(meta)
            assert values[0x00020003].rstrip(b"\0") == uid.encode()
            assert values[0x00020016].rstrip(b" ") == source_ae.encode()
            assert int.from_bytes(values[0x00020000], "little") == len(meta) - 132 - 12


def test_a_uid_is_valid_as_ps3_5_9_1_says() -> None:
    # The rules as plain code: digits in dotted components, none empty,
    # none with a leading 0 but "0" itself, at most 64 characters.
    def reference(value: str) -> bool:
        return len(value) <= 64 and all(
            part.isascii() and part.isdigit() and (part == "0" or part[0] != "0")
            for part in value.split(".")
        )

    rng = random.Random(9)
    candidates = ["", ".", "0", "00", "0.0", "1.", ".1", "1..2", "1.02", "1.20", "1.2" * 22]
    candidates += [
        "".join(rng.choice("0012..x") for _ in range(rng.randint(1, 12))) for _ in range(20000)
    ]
    for value in candidates:
        assert is_valid_uid(value) == reference(value), value


def test_read_file_meta_refuses_files_without_dicm() -> None:
    with pytest.raises(ValueError, match="DICM"):
        read_file_meta(io.BytesIO(bytes(200)))


def test_text_identifiers_encode_as_pydicom_does() -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = "Doe^John"
    identifier.StudyDate = "20240101-20240131"
    identifier.ModalitiesInStudy = ["CT", "MR"]
    identifier.NumberOfStudyRelatedSeries = 3
    identifier.StudyInstanceUID = "1.2.3"
    identifier.AccessionNumber = ""
    for syntax, implicit in (("1.2.840.10008.1.2", True), ("1.2.840.10008.1.2.1", False)):
        reference = DicomBytesIO()
        reference.is_little_endian, reference.is_implicit_VR = True, implicit
        write_dataset(reference, identifier)
        assert encode_dataset(identifier, syntax) == reference.getvalue()
    # Non-ASCII text needs the character set: pydicom's writer takes it.
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.PatientName = "Иванов^Иван"
    decoded = decode_dataset(
        encode_dataset(identifier, "1.2.840.10008.1.2.1"), "1.2.840.10008.1.2.1"
    )
    assert str(decoded.PatientName) == "Иванов^Иван"


@pytest.mark.parametrize("multi", [False, True], ids=["one value each", "several values"])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_text_identifiers_decode_as_pydicom_reads_them(syntax: str, multi: bool) -> None:
    from pydicom.filereader import read_dataset

    from adicom.fileformat import _decode_text_dataset

    match = Dataset()
    match.QueryRetrieveLevel = "SERIES"
    match.StudyInstanceUID = "1.2.3"
    match.SeriesNumber = 4
    match.NumberOfSeriesRelatedInstances = ""
    match.Modality = "CT"
    match.SeriesDescription = ""
    match.PatientName = "Doe^John"
    # Every text VR, empty ones, padding, a backslash in a text of one value;
    # and elements of several values, which go to pydicom's reader whole.
    match.RetrieveAETitle = " QR"
    match.PatientAge = "042Y"
    if multi:
        match.ModalitiesInStudy = ["CT ", "MR"]
        match.OtherPatientIDs = ["A", "B"]
        match.ReferringPhysicianName = ["Doe^A", "Roe^B"]
    match.StudyDate = "20240101"
    match.StudyTime = "101010.5"
    match.AcquisitionDateTime = "20240101101010"
    match.SliceThickness = "1.5"
    match.StudyDescription = "x" * 64
    match.ImageComments = "a\\b"
    match.StationName = "CT1"
    match.SeriesInstanceUID = ""
    match.AdditionalPatientHistory = "history"
    match.PixelDataProviderURL = "https://example.org/x"
    match.RetrieveURL = ""
    match.StrainAdditionalInformation = "note"  # UC
    match.TextValue = "long\\text"  # UT
    match.AccessionNumber = "  "  # padding only
    encoded = encode_dataset(match, syntax)
    implicit = syntax == "1.2.840.10008.1.2"
    reference = read_dataset(io.BytesIO(encoded), is_implicit_VR=implicit, is_little_endian=True)
    decoded = decode_dataset(encoded, syntax)
    assert list(decoded.keys()) == list(reference.keys())
    for tag in reference.keys():  # noqa: SIM118 - iterating a Dataset gives elements
        assert decoded[tag].VR == reference[tag].VR
        assert decoded[tag].value == reference[tag].value, tag
        assert type(decoded[tag].value) is type(reference[tag].value), tag
        assert vars(decoded[tag]).keys() == vars(reference[tag]).keys(), tag
        if isinstance(reference[tag].value, MultiValue):
            assert [type(v) for v in decoded[tag].value] == [type(v) for v in reference[tag].value]
    # The quick decoder took it (or left it to pydicom), as meant.
    assert (_decode_text_dataset(encoded, implicit) is None) is multi
    # What the Dataset holds besides its elements is what pydicom's reader
    # leaves in one (its original encoding too), its dicts none shared.
    assert {k: v for k, v in vars(decoded).items() if k != "_dict"} == {
        k: v for k, v in vars(reference).items() if k != "_dict"
    }
    again = decode_dataset(encoded, syntax)
    for name, value in vars(decoded).items():
        if isinstance(value, dict):
            assert value is not vars(again)[name], name
    decoded.PatientID = "new"  # and it takes elements as any Dataset does
    assert "PatientID" not in again and decoded.PatientID == "new"
    # A value pydicom cannot convert takes pydicom's own path, unchanged.
    broken = encoded.replace(b"4 ", b"4A")
    assert decode_dataset(broken, syntax).Modality == "CT"


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_a_memo_gives_what_decoding_each_match_alone_gives(syntax: str) -> None:
    memo: Memo = {}
    for n in range(5):
        match = Dataset()
        match.QueryRetrieveLevel = "IMAGE"
        match.StudyInstanceUID = "1.2.3"
        match.SOPInstanceUID = f"1.2.3.{n % 2}"  # new, then as before
        match.PatientName = "Doe^John"
        match.ImageComments = "x" * (MEMO_VALUE + 2)
        match.AccessionNumber = "" if n == 3 else "A1"
        encoded = encode_dataset(match, syntax)
        decoded = decode_dataset(encoded, syntax, memo)
        alone = decode_dataset(encoded, syntax)
        for element in alone:
            assert decoded[element.tag].VR == element.VR
            assert decoded[element.tag].value == element.value
            assert type(decoded[element.tag].value) is type(element.value)
        assert len(decoded) == len(alone)
        # Each match has elements of its own: changing one changes no other.
        decoded.StudyInstanceUID = "9.9"
        decoded.PatientName.components  # noqa: B018 - a PersonName caches what it parses
    # Short immutable values only; no PersonName (mutable), no long value.
    assert {key & 0xFFFFFFFF for key in memo} == {0x00080052, 0x0020000D, 0x00080018, 0x00080050}
    assert decode_dataset(encoded, syntax, memo).StudyInstanceUID == "1.2.3"


def test_a_memo_keeps_the_vr_the_element_came_with() -> None:
    # The same tag and bytes under another VR (explicit VR: the peer says
    # which) is another element.
    from pydicom.uid import UID

    memo: Memo = {}
    first = b"\x20\x00\x0d\x00UI\x04\x001.23"
    second = b"\x20\x00\x0d\x00LO\x04\x001.23"
    element = decode_dataset(first, "1.2.840.10008.1.2.1", memo)[0x0020000D]
    assert element.VR == "UI" and type(element.value) is UID
    element = decode_dataset(second, "1.2.840.10008.1.2.1", memo)[0x0020000D]
    assert element.VR == "LO" and type(element.value) is str


def test_a_memo_keeps_a_bounded_number_of_values() -> None:
    from pydicom.datadict import dictionary_has_tag, dictionary_VR

    memo: Memo = {}
    tags = [
        tag
        for tag in range(0x00080000, 0x00500000)
        if tag & 0x10000 == 0 and dictionary_has_tag(tag) and dictionary_VR(tag) == "LO"
    ][:200]
    assert len(tags) == 200
    for start in range(0, 200, 50):
        match = Dataset()
        for tag in tags[start : start + 50]:
            match.add_new(tag, "LO", "v")
        decoded = decode_dataset(
            encode_dataset(match, "1.2.840.10008.1.2"), "1.2.840.10008.1.2", memo
        )
        assert len(decoded) == 50
        assert len(memo) <= MEMO_TAGS


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_a_match_cut_short_is_an_error_not_a_shorter_match(syntax: str) -> None:
    match = Dataset()
    match.QueryRetrieveLevel = "IMAGE"
    match.SOPInstanceUID = "1.2.3.4.5.6.7.8"
    encoded = encode_dataset(match, syntax)
    memo: Memo = {}
    assert decode_dataset(encoded, syntax, memo).SOPInstanceUID == "1.2.3.4.5.6.7.8"
    # Inside each value (the memo's values too), and inside the second
    # element's header (a whole first element, then 2 or 7 bytes).
    first = len(encode_dataset(match[:0x00080019], syntax))  # SOP Instance UID
    for cut in (len(encoded) - 2, 12, 9, first + 2, first + 7):
        with pytest.raises(ValueError, match="ends inside"):
            decode_dataset(encoded[:cut], syntax, memo)
    # A few NUL bytes after the last element are padding, as pydicom reads them.
    for padding in (b"\0", b"\0\0", b"\0" * 7):
        padded = decode_dataset(encoded + padding, syntax, memo)
        assert padded.SOPInstanceUID == "1.2.3.4.5.6.7.8" and len(padded) == 2
    # A sequence of undefined length (implicit VR: no VR to tell) is pydicom's to read.
    assert decode_dataset(encode_dataset(nested(True), syntax), syntax).SOPInstanceUID == "1.2.3.4"


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]
)
def test_a_data_set_for_pydicom_cut_short_is_an_error_too(syntax: str) -> None:
    # Data sets the quick decoder leaves to pydicom's reader (big endian,
    # several values, a sequence), which keeps what there is of one cut short.
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    match = Dataset()
    match.ModalitiesInStudy = ["CT", "MR"]
    match.PatientID = "12345678"
    match.ReferencedStudySequence = [Dataset()]
    match.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "1.2.3"
    match.SOPInstanceUID = "1.2.3.4.5.6.7.8"
    fp = DicomBytesIO()
    fp.is_implicit_VR = syntax == "1.2.840.10008.1.2"
    fp.is_little_endian = syntax != "1.2.840.10008.1.2.2"
    write_dataset(fp, match)
    encoded = fp.getvalue()
    assert decode_dataset(encoded, syntax).SOPInstanceUID == "1.2.3.4.5.6.7.8"
    # Inside the last value, the last header, and the sequence.
    for cut in (len(encoded) - 2, len(encoded) - 20, 30):
        with pytest.raises(ValueError, match=r"ends inside|cut short"):
            decode_dataset(encoded[:cut], syntax)
    for padding in (b"\0", b"\0" * 7):
        assert decode_dataset(encoded + padding, syntax).PatientID == "12345678"
    with pytest.raises(ValueError, match="ends inside"):
        decode_dataset(encoded + b"\0\0x", syntax)


def test_data_sets_pydicom_reads_are_not_refused_by_the_walk() -> None:
    from io import BytesIO

    from pydicom.filereader import read_dataset

    pid = _explicit(0x00100020, "LO", b"1234")
    # (0008,1115) as UN of undefined length, its item in implicit VR (PS3.5 6.2.2).
    un = (
        struct.pack("<HH2s2xL", 0x0008, 0x1115, b"UN", 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + _implicit(0x00081150, b"1.2\0")
        + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    explicit = "1.2.840.10008.1.2.1"
    cases = [
        (un + pid, explicit),
        (pid + b"  ", explicit),  # space padding, as NUL padding
        (pid + bytes(16), explicit),  # a run of NUL bytes: no VR to walk, pydicom's to read
    ]
    for data, syntax in cases:
        reference = read_dataset(BytesIO(data), is_implicit_VR=False, is_little_endian=True)
        decoded = decode_dataset(data, syntax)
        assert decoded.PatientID == reference.PatientID == "1234"
        assert [e.tag for e in decoded] == [e.tag for e in reference]
    # Implicit VR sent on an explicit VR context (met in the wild): pydicom
    # reads it, and says so.
    data = _implicit(0x00080052, b"IMAGE ") + _implicit(0x00100020, b"1234")
    with pytest.warns(UserWarning, match="found implicit VR"):
        assert decode_dataset(data, explicit).PatientID == "1234"


def test_a_deflated_data_set_cut_short_is_an_error() -> None:
    match = Dataset()
    match.QueryRetrieveLevel = "IMAGE"
    match.PatientID = "12345678"
    match.SOPInstanceUID = "1.2.3.4.5.6.7.8"
    syntax = "1.2.840.10008.1.2.1.99"
    encoded = encode_dataset(match, syntax)
    assert decode_dataset(encoded, syntax).SOPInstanceUID == "1.2.3.4.5.6.7.8"
    for cut in (1, len(encoded) // 2, len(encoded) - 1):
        with pytest.raises(ValueError, match="deflate stream does not end"):
            decode_dataset(encoded[:cut], syntax)


def _explicit(tag: int, vr: str, raw: bytes) -> bytes:
    if vr in ("UC", "UR", "UT"):
        return struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw


def _implicit(tag: int, raw: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(raw)) + raw


@pytest.mark.parametrize(
    "element",
    [
        (0x00080054, "AE", b" QR "),  # leading spaces do not count
        (0x00081190, "UR", b"http://x/a\\b "),  # one value: a backslash is a character
        (0x00180050, "DS", b"  "),  # padding only: "", not None
        (0x00200013, "IS", b""),  # empty: None
        (0x00080018, "UI", b"\0\0"),  # padding only: UID("")
        (0x00080018, "UI", b"  "),
        (0x00080018, "UI", b""),  # empty: ""
        (0x00100020, "LO", b"ID \0"),
        (0x00100010, "PN", b"Doe^John "),  # its original bytes kept, as pydicom's
        (0x00100010, "PN", b""),
    ],
)
def test_single_text_values_decode_as_pydicom_reads_them(element: tuple[int, str, bytes]) -> None:
    from pydicom.filereader import read_dataset

    tag, vr, raw = element
    for syntax, data in (
        ("1.2.840.10008.1.2.1", _explicit(tag, vr, raw)),
        ("1.2.840.10008.1.2", _implicit(tag, raw)),
    ):
        implicit = syntax == "1.2.840.10008.1.2"
        reference = read_dataset(io.BytesIO(data), is_implicit_VR=implicit, is_little_endian=True)
        decoded = decode_dataset(data, syntax)
        assert decoded[tag].VR == reference[tag].VR
        assert decoded[tag].value == reference[tag].value
        assert type(decoded[tag].value) is type(reference[tag].value)
        original = getattr(reference[tag].value, "original_string", None)
        assert getattr(decoded[tag].value, "original_string", None) == original
        deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        if not implicit:  # deflated: the same, inflated (PS3.5 A.5)
            deflated = deflater.compress(data) + deflater.flush()
            again = decode_dataset(deflated, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
            assert again[tag].value == reference[tag].value
            assert type(again[tag].value) is type(reference[tag].value)
            again.save_as(io.BytesIO())  # its original encoding is known, as pydicom's


def test_a_memo_keeps_implicit_and_explicit_vr_apart() -> None:
    # A peer may answer on two contexts of one C-FIND: the VR an explicit VR
    # match said is not the dictionary's that an implicit VR one gets.
    memo: Memo = {}
    explicit = _explicit(0x00101010, "LO", b"042Y") + _explicit(0x0008FFF0, "LO", b"xy")
    implicit = _implicit(0x00101010, b"042Y") + _implicit(0x0008FFF0, b"xy")
    decode_dataset(explicit, "1.2.840.10008.1.2.1", memo)
    with pytest.warns(UserWarning, match="VR lookup failed"):
        with_memo = decode_dataset(implicit, "1.2.840.10008.1.2", memo)
    assert with_memo[0x00101010].VR == "AS" and with_memo[0x0008FFF0].VR == "UN"


def test_a_decimal_value_pydicom_cannot_convert_goes_to_its_reader() -> None:
    from pydicom import config

    data = _implicit(0x00180050, b"ae") + _implicit(0x00200010, b"\xe9\xe9")
    config.use_DS_decimal = True
    try:
        decoded = decode_dataset(data, "1.2.840.10008.1.2")
    finally:
        config.use_DS_decimal = False
    assert decoded.SliceThickness == "ae"  # kept as pydicom keeps it, unvalidated


def test_private_text_elements_know_their_creator() -> None:
    # pydicom ties a private element to its creator when it is set in a
    # Dataset (PS3.5 7.8.1): the quick decoder leaves them to pydicom.
    match = Dataset()
    match.StudyInstanceUID = "1.2.3"
    block = match.private_block(0x0009, "ACME", create=True)
    block.add_new(0x01, "LO", "value")
    encoded = encode_dataset(match, "1.2.840.10008.1.2.1")
    decoded = decode_dataset(encoded, "1.2.840.10008.1.2.1")
    assert decoded[0x00091001].private_creator == "ACME"
    assert decoded[0x00091001].value == "value"


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def test_a_deflate_bomb_is_refused_after_inflating_no_more_than_the_limit() -> None:
    bomb = _deflate(bytes(256 << 20))  # 256 MiB of zeros in ~250 KB
    assert len(bomb) < 1 << 20
    with pytest.raises(ValueError, match="inflates to more than 1024 bytes"):
        inflate(bomb, limit=1024)
    inflater = Inflater(4096)
    for start in range(0, len(bomb), 65536):  # fed as it would arrive
        inflater.feed(bomb[start : start + 65536])
    assert inflater.full and len(inflater.out) == 4096


def test_a_deflated_identifier_decodes_within_the_limit() -> None:
    identifier = Dataset()
    identifier.PatientName = "Doe^Jane"
    identifier.QueryRetrieveLevel = "PATIENT"
    encoded = encode_dataset(identifier, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    decoded = decode_dataset(encoded, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    assert decoded.PatientName == "Doe^Jane"
    with pytest.raises(ValueError, match="inflates to more than"):
        decode_dataset(_deflate(bytes(MAX_INFLATED + 1)), DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)


def test_bytes_that_are_not_deflate_data_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="does not inflate"):
        Inflater(100).feed(b"\xff" * 64)
