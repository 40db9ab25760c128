"""The walks every received instance takes (scan_elements, check_whole), cut everywhere."""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import struct
from collections.abc import Callable

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from adicom import elements
from adicom.diskinstance import DiskInstance
from adicom.diskstorage import DiskStorage
from adicom.elements import (
    DataSetTruncated,
    _scan_unordered,
    check_whole,
    scan_elements,
)
from adicom.fileformat import (
    encode_dataset,
)
from adicom.storage import StoreContext, _store_context

IMPLICIT, EXPLICIT, BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"


def instance(undefined: bool) -> Dataset:
    """A small instance: short and long VRs, a nested sequence, pixel data last."""
    inner = Dataset()
    inner.CodeValue = "1"
    inner.ConceptNameCodeSequence = Sequence([Dataset()])
    inner.ConceptNameCodeSequence[0].CodeMeaning = "x" * 21
    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    dataset.SOPInstanceUID = "1.2.3.4.5"
    dataset.StudyDate = "20240101"
    dataset.ProcedureCodeSequence = Sequence([inner, Dataset()])  # (0008,1032)
    dataset.PatientName = "Doe^John"
    dataset.PatientComments = "y" * 9  # (0010,4000) LT
    dataset.StudyInstanceUID = "1.2.3"
    dataset.SeriesInstanceUID = "1.2.3.1"
    dataset.InstanceNumber = 7
    dataset.Rows = 2
    dataset.Columns = 2
    dataset.PixelData = b"\x01\x02" * 4
    dataset["PixelData"].VR = "OW"
    if undefined:
        dataset["ProcedureCodeSequence"].is_undefined_length = True
        inner["ConceptNameCodeSequence"].is_undefined_length = True
    return dataset


def element_ends(dataset: Dataset, syntax: str) -> list[int]:
    """Where each top-level element ends in the encoded data set (each encoded alone)."""
    ends, at = [], 0
    for element in dataset:
        alone = Dataset()
        alone.add(element)
        at += len(encode_dataset(alone, syntax))
        ends.append(at)
    return ends


WANTED_SETS = [
    frozenset({0x00080018, 0x0020000D, 0x0020000E}),
    # Absent tags (before, between and after those present), the first and the
    # last element, a sequence, pixel data.
    frozenset({0x00080005, 0x00080017, 0x00100011, 0x0020000D}),
    frozenset({0x00081032, 0x00104000, 0x7FE00010}),
    frozenset({0x00080016}),
    frozenset({0x00000001, 0x7FE00011}),
]


def outcome(call: Callable[..., object], *args: object, **kwargs: object) -> object:
    try:
        return call(*args, **kwargs)
    except DataSetTruncated as exc:
        return ("truncated", str(exc))
    except ValueError as exc:
        return ("not a data set", str(exc))


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, BIG])
@pytest.mark.parametrize("undefined", [False, True])
def test_scan_agrees_with_the_walk_by_lookup_on_every_prefix(syntax: str, undefined: bool) -> None:
    """The ordered walk finds, stops, resumes and fails where the set lookup walk does.

    The lookup walk stops once it found as many elements as it was asked
    for; the ordered one once it found or passed each: the same when asked
    for those the data set has (and to stop after the greatest tag wanted).
    """
    dataset = instance(undefined)
    data = encode_dataset(dataset, syntax)
    # What the walks can find: a sequence of undefined length they step over.
    tags = {int(element.tag) for element in dataset} - ({0x00081032} if undefined else set())
    implicit, little = syntax == IMPLICIT, syntax != BIG
    compared = 0
    for wanted, end, complete in itertools.product(
        WANTED_SETS, range(len(data) + 1), (False, True)
    ):
        cut = data[:end]
        fast: list[int] = []
        slow: list[int] = []
        got = outcome(scan_elements, cut, wanted, implicit=implicit, little=little,
                      complete=complete, resume=fast)  # fmt: skip
        expected = outcome(
            _scan_unordered, cut, wanted & tags, implicit, little, complete, slow, max(wanted)
        )
        assert (got, fast) == (expected, slow), (sorted(wanted), end, complete)
        compared += isinstance(got, dict) and bool(got)
    assert compared > 300  # many prefixes find something: the walks are compared at work


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, BIG])
@pytest.mark.parametrize("undefined", [False, True])
def test_a_view_is_scanned_as_its_bytes_whatever_its_prefix_holds(
    syntax: str, undefined: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A view (a receive buffer) is walked from a copy of its first bytes: the same outcome.

    The copied prefix may end anywhere (inside a header, a value, a
    sequence): the walk of it ends as the data set's end would, and the
    whole view is walked then; found, resumed and refused alike.
    """
    data = encode_dataset(instance(undefined), syntax)
    implicit, little = syntax == IMPLICIT, syntax != BIG
    for prefix in (8, 37, 64, 200):
        monkeypatch.setattr(elements, "SCAN_PREFIX", prefix)
        for wanted, end, complete in itertools.product(
            WANTED_SETS, range(len(data) + 1), (False, True)
        ):
            cut = data[:end]
            as_bytes: list[int] = []
            as_view: list[int] = []
            expected = outcome(scan_elements, cut, wanted, implicit=implicit, little=little,
                               complete=complete, resume=as_bytes)  # fmt: skip
            got = outcome(scan_elements, memoryview(bytearray(cut)), wanted, implicit=implicit,
                          little=little, complete=complete, resume=as_view)  # fmt: skip
            assert (got, as_view) == (expected, as_bytes), (prefix, sorted(wanted), end, complete)
            if isinstance(got, dict):
                assert all(type(value) is bytes for value in got.values())


def encode_elements(elements: list[tuple[str, str]], syntax: str) -> bytes:
    """The data set of these (keyword, value) elements, in the order given."""
    parts = []
    for keyword, value in elements:
        alone = Dataset()
        setattr(alone, keyword, value)
        parts.append(encode_dataset(alone, syntax))
    return b"".join(parts)


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT])
def test_scan_reads_a_data_set_whose_tags_do_not_ascend(syntax: str) -> None:
    """PS3.5 7.1 wants tags ascending; one out of order is read by lookup, as it always was."""
    data = encode_elements(
        [("StudyDate", "20240101"), ("StudyInstanceUID", "1.2.3"), ("SOPInstanceUID", "1.2.3.4"),
         ("PatientID", "P"), ("SeriesInstanceUID", "1.2.3.1")],
        syntax,
    )  # fmt: skip
    wanted = frozenset({0x00080018, 0x0020000D, 0x0020000E})
    found = scan_elements(data, wanted, implicit=syntax == IMPLICIT, complete=True)
    assert found is not None
    assert {tag: value.rstrip(b"\0") for tag, value in found.items()} == {
        0x00080018: b"1.2.3.4",
        0x0020000D: b"1.2.3",
        0x0020000E: b"1.2.3.1",
    }


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, BIG])
@pytest.mark.parametrize("undefined", [False, True])
def test_check_whole_refuses_every_cut_between_element_ends(syntax: str, undefined: bool) -> None:
    """Whole exactly at an element's end; a cut anywhere else is DataSetTruncated."""
    dataset = instance(undefined)
    data = encode_dataset(dataset, syntax)
    ends = set(element_ends(dataset, syntax))
    assert max(ends) == len(data)
    implicit, little = syntax == IMPLICIT, syntax != BIG
    for end in range(1, len(data) + 1):
        try:
            check_whole(data[:end], implicit=implicit, little=little)
            whole = True
        except DataSetTruncated as exc:
            whole = False
            assert "cut short" in str(exc) or "ends inside" in str(exc)
        assert whole is (end in ends), end
    # From each element's start, too (where a scan resumes).
    for start in sorted(ends - {len(data)}):
        check_whole(data, implicit=implicit, little=little, start=start)
        with pytest.raises(DataSetTruncated):
            check_whole(data[:-1], implicit=implicit, little=little, start=start)


def test_check_whole_names_the_element_cut_short() -> None:
    data = encode_dataset(instance(False), EXPLICIT)
    with pytest.raises(DataSetTruncated) as caught:
        check_whole(data[:-3], implicit=False, little=True)
    assert caught.value.tag == 0x7FE00010
    assert "3 bytes of (7FE0,0010) missing" in str(caught.value)


def test_walks_refuse_bytes_that_are_no_data_set() -> None:
    junk = b"\x08\x00\x18\x00\x01\x02\x03\x04" * 4
    with pytest.raises(ValueError, match="no VR"):
        check_whole(junk, implicit=False, little=True)
    with pytest.raises(ValueError, match="no VR"):
        scan_elements(junk, frozenset({0x00100010}), implicit=False)


# -- a DiskInstance reads the data set as it streams in --------------------------------


def store(
    root: pathlib.Path, dataset: Dataset, data: bytes, pieces: list[int], syntax: str
) -> tuple[int, DiskInstance]:
    """Feed ``data`` to a DiskStorage cut at ``pieces``; the status and the instance."""
    disk = DiskStorage(root, write_behind=0)
    instance = disk.open(
        StoreContext("SCU", "STORE", str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), syntax)
    )
    assert isinstance(instance, DiskInstance)
    for start, end in itertools.pairwise([0, *pieces, len(data)]):
        instance.write(memoryview(data[start:end]))
    status = instance.finish_now()
    assert status is not None
    return status, instance


def stored_files(root: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in root.rglob("*.dcm") if ".incoming" not in p.parts]


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, BIG])
@pytest.mark.parametrize("undefined", [False, True])
def test_an_instance_in_pieces_cut_anywhere_is_stored_whole(
    tmp_path: pathlib.Path, syntax: str, undefined: bool
) -> None:
    """Two pieces, the cut at each byte (inside headers, values, sequences): stored, the same."""
    dataset = instance(undefined)
    data = encode_dataset(dataset, syntax)
    series_end = data.find(b"1.2.3.1\0") + 8  # the last UID the layout wants
    kept = 0
    for cut in range(len(data) + 1):
        root = tmp_path / str(cut)
        status, stored = store(root, dataset, data, [cut], syntax)
        assert status == 0, (cut, stored.error)
        assert stored.values["SOPInstanceUID"] == "1.2.3.4.5"
        assert stored.values["SeriesInstanceUID"] == "1.2.3.1"
        (path,) = stored_files(root)
        assert path.read_bytes().endswith(data)
        # Read as it came (the UIDs all in the first piece), or kept and read at the end.
        if cut >= series_end:
            assert stored._found is not None, cut
        kept += stored._found is None
    assert kept > 100  # the other way is taken too


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, BIG])
@pytest.mark.parametrize("undefined", [False, True])
def test_an_instance_cut_short_is_refused_however_it_came(
    tmp_path: pathlib.Path, syntax: str, undefined: bool
) -> None:
    """Cut anywhere after its UIDs, in one piece or two: 0xC000, nothing filed."""
    dataset = instance(undefined)
    data = encode_dataset(dataset, syntax)
    ends = set(element_ends(dataset, syntax))
    after_uids = min(end for end in ends if end > data.find(b"1.2.3.1"))
    refused = 0
    for length in range(after_uids, len(data)):
        if length in ends:
            continue  # whole as far as anyone can tell: an element ends there
        cut = data[:length]
        for pieces in ([], [after_uids + (length - after_uids) // 2], [length - 1]):
            root = tmp_path / f"{length}-{pieces}"
            status, stored = store(root, dataset, cut, pieces, syntax)
            assert status == 0xC000, (length, pieces)
            assert stored_files(root) == []
            refused += 1
    assert refused > 100
    # The message names the element cut short (here the pixel data).
    status, stored = store(tmp_path / "last", dataset, data[:-3], [len(data) // 2], syntax)
    assert status == 0xC000 and stored.offending_element == 0x7FE00010
    assert "3 bytes of (7FE0,0010) missing" in (stored.error or "")


def test_an_instance_whose_first_piece_lacks_its_uids_is_read_when_whole(
    tmp_path: pathlib.Path,
) -> None:
    """The UIDs past the first piece: kept in the head and read at the end, as before."""
    dataset = instance(True)
    data = encode_dataset(dataset, EXPLICIT)
    status, stored = store(tmp_path, dataset, data, [40, 41, 300], EXPLICIT)
    assert status == 0, stored.error
    assert stored.values["StudyInstanceUID"] == "1.2.3"
    assert stored._found is None  # the head was read, not the pieces


def test_a_file_name_keeps_checked_uids_and_makes_other_values_safe(tmp_path: pathlib.Path) -> None:
    """Values the storage checked as UIDs go into the name as they are; others are made safe."""
    disk = DiskStorage(tmp_path, "{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm")
    assert disk.valid_uid("1.2.3") and disk.valid_uid("1.2.3.4")
    assert not disk.valid_uid("../1.2")
    values = {"PatientID": "../../etc", "StudyInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"}
    name = disk.final_name(values)
    assert name == f"{tmp_path}/.._.._etc/1.2.3/1.2.3.4.dcm"  # one component, no ".."
    values["PatientID"] = ".."
    assert disk.final_name(values) == f"{tmp_path}/_../1.2.3/1.2.3.4.dcm"
    values["PatientID"] = ""
    assert disk.final_name(values).startswith(f"{tmp_path}/unknown/")


def test_the_context_made_per_instance_is_the_frozen_store_context() -> None:
    """Made slot by slot on the hot path: equal, hashable and frozen as StoreContext(...)."""
    args = ("SCU", "STORE", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", EXPLICIT, ("127.0.0.1", 104), 7)
    made = _store_context(*args)
    built = StoreContext(*args)
    assert type(made) is StoreContext
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.sop_instance_uid = "1.2"  # type: ignore[misc]
    assert made.file_meta() == built.file_meta()


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, BIG])
@pytest.mark.parametrize("first", [None, 1, 2, 5])
def test_a_group_0002_is_told_from_the_first_bytes_in_every_syntax(
    tmp_path: pathlib.Path, syntax: str, first: int | None
) -> None:
    """A data set that starts with group 0002 (in its own byte order) has it dropped: 0xB006.

    The usual start is told from two bytes without a walk; these must be
    the group's in the data set's byte order, big endian included.
    """
    dataset = instance(False)
    data = encode_dataset(dataset, syntax)
    order = ">" if syntax == BIG else "<"
    value = b"9.9.9.9\0"  # another instance's UID, never to be filed
    meta = struct.pack(order + "HH2sH", 0x0002, 0x0003, b"UI", len(value)) + value
    status, stored = store(
        tmp_path / "meta", dataset, meta + data, [] if first is None else [first], syntax
    )
    assert status == 0xB006, stored.error
    (path,) = stored_files(tmp_path / "meta")
    assert path.read_bytes().endswith(data) and value not in path.read_bytes()
    # Without it: stored as it came, nothing dropped.
    status, stored = store(
        tmp_path / "plain", dataset, data, [] if first is None else [first], syntax
    )
    assert status == 0, stored.error
