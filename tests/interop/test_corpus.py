"""pydicom's whole test corpus through the reference archive, with real peers.

``adicom serve --storage`` receives every file of pydicom's ``test_files``
and ``charset_files`` (tests/interop/corpus.py) and must keep each instance
exactly, refuse what cannot be archived with its reason, and give every
instance back unchanged:

- **refusals**: ``adicom store`` on both folders; its summary names each
  file of corpus.REFUSED with its reason (skipped by the sender, or the
  archive's failure status and comment), and nothing else fails;
- **storing** (one archive per round of distinct SOP Instance UIDs):
  DCMTK ``storescu`` on its default options for uncompressed files, and for
  a compressed or deflated file the option that proposes its syntax first
  with the uncompressed ones in the same context (``-xy +C``, ``-xw +C``...);
  then ``adicom store`` of the same files, which replaces each copy; after
  each sender the archive's files equal the corpus files (data elements and
  pixel data), with the sender's AE title in their file meta;
- **retrieving**: ``adicom get``, DCMTK ``getscu`` (one run per stored
  transfer syntax, proposing it) and ``movescu`` (accepting every syntax)
  each bring back every instance of the round unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import re
import subprocess
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import pydicom
import pytest

from tests.interop import corpus, data, peers, qr_peers

pytestmark = pytest.mark.interop

HOST = peers.HOST
ARCHIVE_AE = "ADICOM"
STORESCU_AE = "CORPUS-DCMTK"
ADICOM_STORE_AE = "CORPUS-ADICOM"
MOVE_AE = "CORPUS-MOVE"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
TIMEOUT = 120.0

#: storescu's option proposing a syntax first, with the uncompressed ones.
STORESCU_OPTION = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
}

#: Corpus files DCMTK's storescu cannot send, and why (its own parser
#: refuses them while "checking input files"); adicom store sends them.
DCMTK_CANNOT_SEND = {
    "test_files/SC_rgb_jpeg.dcm": "Unknown Tag & Data (4544,4952) larger",
    # Its data set is in implicit VR though the syntax is RLE (explicit VR):
    # DCMTK reads every element as UN and finds no SOP class.
    "test_files/rtdose_rle.dcm": "missing SOP class (or instance)",
    "test_files/rtdose_rle_1frame.dcm": "missing SOP class (or instance)",
}

ROUNDS = corpus.rounds(corpus.instances())


# --------------------------------------------------------------------------
# Senders


def storescu(port: int, items: Sequence[corpus.CorpusInstance]) -> tuple[dict[str, str], str]:
    """Send with DCMTK storescu: the response each file got, by corpus name, and the log.

    One storescu run per proposal (``-nh``: go on after a failure); a file
    storescu never sends has no entry.
    """
    log = []
    groups: dict[tuple[str, ...], list[corpus.CorpusInstance]] = collections.defaultdict(list)
    for item in items:
        option = STORESCU_OPTION.get(item.transfer_syntax)
        groups[(option, "+C") if option else ()].append(item)
    answers: dict[str, str] = {}
    for options, group in groups.items():
        by_path = {str(item.path): item.name for item in group}
        argv = peers.dcmtk_storescu_argv(
            port, STORESCU_AE, ARCHIVE_AE, list(by_path), options=["-nh", *options]
        )
        finished = peers.run(argv, timeout=TIMEOUT)
        log.append(finished.stdout + finished.stderr)
        sending = None
        for line in (finished.stdout + finished.stderr).splitlines():
            if m := re.match(r"I: Sending file: (.*)$", line):
                sending = by_path.get(m.group(1))
            elif (m := re.match(r"I: Received Store Response \((.*)\)$", line)) and sending:
                answers[sending] = m.group(1)
                sending = None
        assert finished.returncode == 0 or answers, finished.describe()
    return answers, "\n".join(log)


def adicom_store(port: int, paths: Iterable[Path], aet: str = ADICOM_STORE_AE) -> peers.Finished:
    """``adicom store`` (quiet: the summary and what failed or was skipped)."""
    argv = [
        *peers.adicom_cli(),
        "store",
        "-q",
        "--aet",
        aet,
        "--aec",
        ARCHIVE_AE,
        HOST,
        str(port),
        *(str(p) for p in paths),
    ]
    return peers.run(argv, timeout=TIMEOUT)


def store_summary(finished: peers.Finished) -> dict[str, str]:
    """What ``adicom store`` said about each file it did not send successfully."""
    said: dict[str, str] = {}
    for line in (finished.stdout + finished.stderr).splitlines():
        if m := re.match(r"\s+(?:failed|skipped): (/.+?): (.*)$", line):
            said[corpus.name_of(Path(m.group(1)))] = m.group(2)
    return said


def as_dcmtk_sends(
    items: Iterable[corpus.CorpusInstance], folder: Path
) -> list[corpus.CorpusInstance]:
    """The instances as DCMTK re-encodes them, to compare what storescu sent with.

    storescu does not send a file's bytes: it parses the file and encodes
    the data set again, in the accepted syntax (explicit VR little endian
    for an uncompressed file here: it proposes that first). On the way it
    recalculates group lengths, drops trailing padding, writes encapsulated
    Pixel Data as OB, trims padding-only values. ``dcmconv`` (same library,
    ``-p``: no padding, ``+te`` for uncompressed files) gives the same data
    set, which the archive must then hold (decoded values compared when
    storescu chose another uncompressed syntax than dcmconv's).
    """
    folder.mkdir(parents=True, exist_ok=True)
    dcmconv = peers.require_dcmtk("dcmconv")
    converted = []
    for n, item in enumerate(items):
        out = folder / f"{n}.dcm"
        options = ["-p"] if item.compressed else ["-p", "+te"]
        finished = peers.run([dcmconv, *options, str(item.path), str(out)])
        assert finished.returncode == 0, finished.describe()
        ts = corpus.transfer_syntax_of(out)
        converted.append(dataclasses.replace(item, path=out, transfer_syntax=ts))
    return converted


# --------------------------------------------------------------------------
# Retrievers

#: getscu's option preferring a syntax for what it receives (explicit VR
#: little endian: none, its default), so each instance comes back as stored.
#: Implicit VR has none: getscu's ``+xi`` proposes explicit VR little endian
#: only (DCMTK 3.6.7), so the archive converts, and values are compared decoded.
GETSCU_OPTION = {ts: "+" + option[1:] for ts, option in STORESCU_OPTION.items()} | {
    "1.2.840.10008.1.2.2": "+xb",
}


def adicom_get(port: int, studies: Sequence[str], out: Path) -> peers.Finished:
    """``adicom get`` of whole studies (a list of Study Instance UIDs) into ``out``."""
    argv = [
        *peers.adicom_cli(),
        "get",
        "--aet",
        "CORPUS-ADI-GET",
        "--aec",
        ARCHIVE_AE,
        "-k",
        "StudyInstanceUID=" + "\\".join(studies),
        "--out",
        str(out),
        HOST,
        str(port),
    ]
    return peers.run(argv, timeout=TIMEOUT)


def getscu(port: int, studies: Sequence[str], out: Path, option: str | None) -> peers.Finished:
    """DCMTK getscu of whole studies (a list of Study Instance UIDs) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        peers.require_dcmtk("getscu"),
        "-d",
        "-aet",
        "CORPUS-GET",
        "-aec",
        ARCHIVE_AE,
        "-S",
        "+B",  # write what arrived, as it arrived
        *([option] if option else []),
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID=" + "\\".join(studies),
        HOST,
        str(port),
    ]
    finished = peers.run(argv, timeout=TIMEOUT)
    assert finished.returncode == 0, finished.describe()
    return finished


def movescu(port: int, studies: Sequence[str], out: Path, move_port: int) -> peers.Finished:
    """DCMTK movescu of whole studies to itself (``+P``), accepting every syntax (``+xa``)."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        peers.require_dcmtk("movescu"),
        "-v",
        "-aet",
        MOVE_AE,
        "-aec",
        ARCHIVE_AE,
        "-aem",
        MOVE_AE,
        "+P",
        str(move_port),
        "+xa",
        "+B",  # write what arrived, as it arrived
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID=" + "\\".join(studies),
        HOST,
        str(port),
    ]
    # With +B, movescu 3.6.7 writes into its working folder, whatever -od says.
    with peers.running(argv, cwd=out) as peer:
        try:
            returncode = peer.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise peers.PeerError(f"movescu did not finish\n{peer.describe()}") from None
        finished = peers.Finished(peer.argv, returncode, peer.stdout(), peer.stderr())
    assert finished.returncode == 0, finished.describe()
    return finished


def by_stored_syntax(
    items: Iterable[corpus.CorpusInstance], held: dict[str, Path]
) -> dict[str, list[corpus.CorpusInstance]]:
    """The instances by the transfer syntax the archive holds each in."""
    groups: dict[str, list[corpus.CorpusInstance]] = collections.defaultdict(list)
    for item in items:
        groups[corpus.transfer_syntax_of(held[item.sop_instance_uid])].append(item)
    return dict(groups)


def studies_of(items: Iterable[corpus.CorpusInstance]) -> list[str]:
    return sorted({item.study_instance_uid for item in items})


def received(folder: Path) -> dict[str, Path]:
    """What a retriever wrote into ``folder``, by SOP Instance UID."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.received_files(folder)


# --------------------------------------------------------------------------
# The archive


def serve(storage: Path, move_port: int) -> contextlib.AbstractContextManager[peers.Peer]:
    """``adicom serve --storage`` with one move destination."""
    return qr_peers.adicom_serve_archive(storage, {MOVE_AE: move_port}, ARCHIVE_AE)


def archive_files(storage: Path) -> dict[str, Path]:
    """The archive's instance files by SOP Instance UID (hidden work folders left out)."""
    files = [p for p in storage.rglob("*.dcm") if not any(part.startswith(".") for part in p.parts)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd corpus files stay odd in the archive
        return data.index_by_instance_uid(sorted(files))


# --------------------------------------------------------------------------
# Tests


def test_every_corpus_file_is_an_instance_or_refused_for_a_stated_reason(
    tmp_path: Path,
) -> None:
    # The list of refusals is kept by hand; a file it names must exist.
    names = {corpus.name_of(p) for p in corpus.corpus_files()}
    assert set(corpus.REFUSED) <= names, set(corpus.REFUSED) - names
    folders = [corpus.CORPUS_ROOT / folder for folder in corpus.FOLDERS]
    with serve(tmp_path / "archive", peers.free_port()) as archive:
        assert archive.port is not None
        finished = adicom_store(archive.port, folders)
        # After all that, a query still answers every study of the corpus.
        argv = [*peers.adicom_cli(), "find", "--json", "-L", "STUDY", "--aec", ARCHIVE_AE]
        found = peers.run([*argv, HOST, str(archive.port)], timeout=TIMEOUT)
        assert found.returncode == 0, f"{found.describe()}\n{archive.describe()}"
        studies = {row["study_instance_uid"] for row in json.loads(found.stdout)}
        assert studies == {item.study_instance_uid for item in corpus.instances()}
    said = store_summary(finished)
    # Everything refused is named with its reason; nothing else failed.
    wrong = {
        name: said.get(name, "(sent)")
        for name, reason in corpus.REFUSED.items()
        if reason not in said.get(name, "")
    }
    assert not wrong, f"refused without the expected reason:\n{wrong}\n{finished.describe()}"
    unexpected = sorted(set(said) - set(corpus.REFUSED))
    assert not unexpected, f"failed or skipped: {unexpected}\n{finished.describe()}"
    assert finished.returncode == 1  # something failed: the files refused
    sent = len(corpus.instances())
    assert re.search(rf"\b{sent} sent\b", finished.stdout + finished.stderr), finished.describe()
    # The archive holds one instance per SOP Instance UID of the corpus.
    held = archive_files(tmp_path / "archive")
    assert set(held) == {item.sop_instance_uid for item in corpus.instances()}


@pytest.mark.parametrize("number", range(len(ROUNDS)), ids=lambda n: f"round{n}")
def test_corpus_round_stored_by_storescu_and_adicom_store(number: int, tmp_path: Path) -> None:
    items = ROUNDS[number]
    storage = tmp_path / "archive"
    move_port = peers.free_port()
    with serve(storage, move_port) as archive:
        assert archive.port is not None
        answers, log = storescu(archive.port, items)
        failed = {name: answer for name, answer in answers.items() if answer != "Success"}
        assert not failed, f"storescu: not stored: {failed}\n{archive.describe()}"
        unsent = {item.name for item in items} - set(answers)
        assert unsent == {item.name for item in items if item.name in DCMTK_CANNOT_SEND}
        for name in unsent:
            assert DCMTK_CANNOT_SEND[name] in log, f"{name}: storescu did not say why\n{log}"
        sent = [item for item in items if item.name in answers]
        corpus.check_files(
            as_dcmtk_sends(sent, tmp_path / "dcmtk"),
            archive_files(storage),
            "sent by storescu",
            calling_ae=STORESCU_AE,
        )

        finished = adicom_store(archive.port, [item.path for item in items])
        assert finished.returncode == 0, f"{finished.describe()}\n{archive.describe()}"
        corpus.check_files(
            items,
            archive_files(storage),
            "sent by adicom store",
            calling_ae=ADICOM_STORE_AE,
            same_transfer_syntax=True,
        )
        held = archive_files(storage)

        for ts, group in by_stored_syntax(items, held).items():
            out = tmp_path / f"getscu-{ts}"
            getscu(archive.port, studies_of(group), out, GETSCU_OPTION.get(ts))
            corpus.check_files(
                group,
                received(out),
                f"retrieved by getscu in {ts}",
                same_transfer_syntax=ts != IMPLICIT_VR_LITTLE_ENDIAN,
            )

        out = tmp_path / "adicom-get"
        finished = adicom_get(archive.port, studies_of(items), out)
        assert finished.returncode == 0, f"{finished.describe()}\n{archive.describe()}"
        corpus.check_files(
            items, received(out), "retrieved by adicom get", same_transfer_syntax=True
        )

        out = tmp_path / "movescu"
        movescu(archive.port, studies_of(items), out, move_port)
        corpus.check_files(items, received(out), "retrieved by movescu", same_transfer_syntax=True)


# --------------------------------------------------------------------------
# Character sets: names as dcmqrscp gives them

CHARSET_ROUNDS = corpus.rounds(i for i in corpus.instances() if i.name.startswith("charset_files/"))


def findscu_names(port: int, aet: str, out: Path, name: str = "") -> dict[str, str]:
    """Study-level C-FIND in UTF-8 (ISO_IR 192): Patient's Name by Study Instance UID."""
    out.mkdir(parents=True)
    argv = [
        peers.require_dcmtk("findscu"),
        "-S",
        "-aec",
        aet,
        "-X",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "SpecificCharacterSet=ISO_IR 192",
        "-k",
        "StudyInstanceUID",
        "-k",
        f"PatientName={name}",
        HOST,
        str(port),
    ]
    finished = peers.run(argv, timeout=TIMEOUT)
    assert finished.returncode == 0, finished.describe()
    names = {}
    for path in sorted(out.glob("rsp*.dcm")):
        answer = pydicom.dcmread(path)
        names[str(answer.StudyInstanceUID)] = str(answer.get("PatientName", ""))
    return names


@pytest.mark.parametrize("number", range(len(CHARSET_ROUNDS)), ids=lambda n: f"round{n}")
def test_charset_names_are_those_dcmqrscp_gives(number: int, tmp_path: Path) -> None:
    items = CHARSET_ROUNDS[number]
    expected = {item.study_instance_uid: str(item.read().PatientName) for item in items}
    assert any(not name.isascii() for name in expected.values())  # the point of these files
    paths = [str(item.path) for item in items]
    with serve(tmp_path / "archive", peers.free_port()) as archive, peers.dcmtk_dcmqrscp() as qr:
        assert archive.port is not None and qr.port is not None
        for port, aet in ((archive.port, ARCHIVE_AE), (qr.port, "DCMQRSCP")):
            argv = peers.dcmtk_storescu_argv(port, STORESCU_AE, aet, paths)
            finished = peers.run(argv, timeout=TIMEOUT)
            assert finished.returncode == 0, finished.describe()
        ours = findscu_names(archive.port, ARCHIVE_AE, tmp_path / "ours")
        theirs = findscu_names(qr.port, "DCMQRSCP", tmp_path / "theirs")
        assert ours == theirs == expected

        # A query in UTF-8 for a name stored in another character set finds it.
        for study, name in expected.items():
            found = findscu_names(archive.port, ARCHIVE_AE, tmp_path / study, name)
            assert list(found) == [study], (name, found)
