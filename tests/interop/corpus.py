"""pydicom's test corpus as real-world data for the archive's interop tests.

Every file in pydicom's ``test_files`` and ``charset_files`` folders is
either an instance the archive must keep and give back unchanged, or listed
in :data:`REFUSED` with the reason it is not archived (a README, a DICOMDIR,
a data set without Study Instance UID, a file cut short...). The list is
explicit so that a change of the archive's rules, or a new pydicom release,
shows up as a test failure rather than as a silently smaller corpus.

Several files share a SOP Instance UID (one image in several transfer
syntaxes), and the archive keeps one instance per UID, so the instances are
dealt into :func:`rounds`: no round holds a UID twice, and each round goes
into an archive of its own.

The instances are the files as pydicom ships them, not rewritten copies:
odd files stay odd.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import pydicom
import pydicom.data
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.interop import data

#: Where pydicom keeps its bundled files.
CORPUS_ROOT = Path(pydicom.data.__file__).resolve().parent
#: The folders of the corpus (the issue's "test_files and charset_files").
FOLDERS = ("test_files", "charset_files")

UNCOMPRESSED = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})

_NOT_DICOM = "not a DICOM file"
_NO_STUDY = "StudyInstanceUID is missing"
_NOT_INSTANCE = "not an instance"
_CUT_SHORT = "cut short"
_NO_META = "file meta information lacks"
_DICOMDIR = "a DICOMDIR"

#: Files that are not archived, with (a part of) the reason given for each:
#: by ``adicom store`` for what it does not send, by the archive's C-STORE
#: response for what it refuses.
REFUSED: dict[str, str] = {
    # Not DICOM at all.
    "charset_files/FileInfo.txt": _NOT_DICOM,
    "test_files/README.txt": _NOT_DICOM,
    "test_files/crayons.icc": _NOT_DICOM,
    "test_files/rtplan.dump": _NOT_DICOM,
    "test_files/rtstruct.dump": _NOT_DICOM,
    "test_files/test1.json": _NOT_DICOM,
    "test_files/test_PN.json": _NOT_DICOM,
    "test_files/zipMR.gz": _NOT_DICOM,
    "test_files/dicomdirtests/README.txt": _NOT_DICOM,
    "test_files/dicomdirtests/TINY_ALPHA/README": _NOT_DICOM,
    # Named like DICOM, but neither a file meta group nor a data set.
    "test_files/no_meta.dcm": "not a DICOM file, although named like one",
    # Media directories, not instances.
    "test_files/dicomdirtests/DICOMDIR": _DICOMDIR,
    "test_files/dicomdirtests/DICOMDIR-bigEnd": _DICOMDIR,
    "test_files/dicomdirtests/DICOMDIR-empty.dcm": _DICOMDIR,
    "test_files/dicomdirtests/DICOMDIR-implicit": _DICOMDIR,
    "test_files/dicomdirtests/DICOMDIR-nooffset": _DICOMDIR,
    "test_files/dicomdirtests/DICOMDIR-nopatient": _DICOMDIR,
    "test_files/dicomdirtests/DICOMDIR-reordered": _DICOMDIR,
    "test_files/dicomdirtests/TINY_ALPHA/DICOMDIR": _DICOMDIR,
    # A file meta group without SOP class, instance or transfer syntax.
    "test_files/empty_charset_LEI.dcm": _NO_META,
    "test_files/meta_missing_tsyntax.dcm": _NO_META,
    "test_files/nested_priv_SQ.dcm": _NO_META,
    # Data sets without any instance UID (an item, a private sequence).
    "charset_files/chrSQEncoding.dcm": _NOT_INSTANCE,
    "charset_files/chrSQEncoding1.dcm": _NOT_INSTANCE,
    "test_files/UN_sequence.dcm": _NOT_INSTANCE,
    "test_files/no_meta_group_length.dcm": _NOT_INSTANCE,
    "test_files/priv_SQ.dcm": _NOT_INSTANCE,
    # Instances without Study Instance UID (cannot be filed or retrieved).
    "test_files/JPEGLSNearLossless_08.dcm": _NO_STUDY,
    "test_files/JPEGLSNearLossless_16.dcm": _NO_STUDY,
    "test_files/SC_rgb_jls_lossy_line.dcm": _NO_STUDY,
    "test_files/SC_rgb_jls_lossy_sample.dcm": _NO_STUDY,
    # Files cut short: their last value is incomplete.
    "test_files/MR_truncated.dcm": _CUT_SHORT,
    "test_files/rtplan_truncated.dcm": _CUT_SHORT,
}


@dataclasses.dataclass(frozen=True)
class CorpusInstance:
    """One corpus file the archive must keep: where it is and what it holds."""

    name: str  # relative to CORPUS_ROOT, e.g. "test_files/CT_small.dcm"
    path: Path
    transfer_syntax: str  # of the file; "" for a file without file meta
    sop_class_uid: str
    sop_instance_uid: str  # the data set's (a file meta may disagree)
    study_instance_uid: str
    series_instance_uid: str

    @property
    def compressed(self) -> bool:
        """Encapsulated or deflated: must travel in its own transfer syntax."""
        return bool(self.transfer_syntax) and self.transfer_syntax not in UNCOMPRESSED

    def read(self) -> Dataset:
        """The file as pydicom reads it (forced: some have no preamble)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd files are the point here
            return pydicom.dcmread(self.path, force=True)


def corpus_files() -> list[Path]:
    """Every file of the corpus folders, recursively, in a stable order."""
    return sorted(p for folder in FOLDERS for p in (CORPUS_ROOT / folder).rglob("*") if p.is_file())


def transfer_syntax_of(path: Path) -> str:
    """The transfer syntax in the file meta of the file at ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.file_meta.TransferSyntaxUID)


def name_of(path: Path) -> str:
    """The corpus name of ``path`` (relative to pydicom's data folder)."""
    return path.resolve().relative_to(CORPUS_ROOT).as_posix()


@functools.cache
def instances() -> tuple[CorpusInstance, ...]:
    """The corpus files that are not in :data:`REFUSED`, read once."""
    found = []
    for path in corpus_files():
        name = name_of(path)
        if name in REFUSED:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        found.append(
            CorpusInstance(
                name=name,
                path=path,
                transfer_syntax=ts,
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
            )
        )
    return tuple(found)


def rounds(items: Iterable[CorpusInstance]) -> list[list[CorpusInstance]]:
    """Deal the instances so that no round holds a SOP Instance UID twice."""
    dealt: list[list[CorpusInstance]] = []
    seen: list[set[str]] = []
    for item in items:
        n = next((i for i, uids in enumerate(seen) if item.sop_instance_uid not in uids), None)
        if n is None:
            n = len(dealt)
            seen.append(set())
            dealt.append([])
        seen[n].add(item.sop_instance_uid)
        dealt[n].append(item)
    return dealt


def differences(
    sent: CorpusInstance,
    received: Path,
    *,
    calling_ae: str | None = None,
    same_transfer_syntax: bool = False,
) -> list[str]:
    """How the file ``received`` differs from ``sent``; [] when it is the same instance.

    Same data elements with the same values (encoded bytes when the transfer
    syntax is the same, so compressed pixel data must be byte-identical;
    decoded values across uncompressed syntaxes, byte-swapped across an
    endianness change), and a file meta naming the instance, in the sent
    file's syntax when it is compressed (or ``same_transfer_syntax``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = pydicom.dcmread(received)
    meta = got.file_meta
    received_ts = str(meta.get("TransferSyntaxUID", ""))
    sent_ts = sent.transfer_syntax or received_ts  # no file meta: as negotiated
    problems = []
    if meta.get("MediaStorageSOPInstanceUID") != sent.sop_instance_uid:
        problems.append(f"file meta names {meta.get('MediaStorageSOPInstanceUID')}")
    if meta.get("MediaStorageSOPClassUID") != sent.sop_class_uid:
        problems.append(f"file meta names SOP class {meta.get('MediaStorageSOPClassUID')}")
    if calling_ae is not None:
        source = str(meta.get("SourceApplicationEntityTitle", "")).strip()
        if source != calling_ae:
            problems.append(f"file meta source AE {source!r}, not {calling_ae!r}")
    if (sent.compressed or same_transfer_syntax) and received_ts != sent_ts:
        problems.append(f"transfer syntax {received_ts}, sent as {sent_ts}")
    elif received_ts != sent_ts and received_ts not in UNCOMPRESSED:
        problems.append(f"transfer syntax {received_ts} for a {sent_ts} instance")
    if problems:
        return problems
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom on odd values, as it decodes them
        return data.compare_datasets(sent.read(), got, sent_ts, received_ts)


def check_files(
    expected: Sequence[CorpusInstance],
    received: dict[str, Path],
    what: str,
    *,
    calling_ae: str | None = None,
    same_transfer_syntax: bool = False,
) -> None:
    """Fail unless every expected instance is in ``received`` (by UID) and the same."""
    problems = []
    for item in expected:
        path = received.get(item.sop_instance_uid)
        if path is None:
            problems.append(f"{item.name}: not received")
            continue
        found = differences(
            item, path, calling_ae=calling_ae, same_transfer_syntax=same_transfer_syntax
        )
        problems += [f"{item.name}: {p}" for p in found]
    if problems:
        raise AssertionError(
            f"{what}: {len(problems)} problems in {len(expected)} instances:\n  "
            + "\n  ".join(problems)
        )
