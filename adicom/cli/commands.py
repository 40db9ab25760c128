"""The client commands: echo, store, find (worklist too), get, move, commit; demo, hash-password."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from adicom.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    ae_title_arg,
    client_ssl,
    key_options,
    make_client,
    non_negative_arg,
    offer_arg,
    peer_answer,
    peer_node,
    peer_options,
    positive_arg,
    print_table,
    query_model,
    retry_policy,
    uid_arg,
    user_identity,
    validated,
)
from adicom.client import connect
from adicom.commitment import Reference
from adicom.demo import run_demo
from adicom.dicomclient import DicomClient
from adicom.dimse import StatusCategory, describe_status, status_category
from adicom.identity import (
    hash_password,
)
from adicom.models import (
    RetrieveResult,
    WorklistQuery,
)
from adicom.progress import Progress
from adicom.qrscu import RetrieveProgress
from adicom.retry import retrying
from adicom.storescu import StoreResult, iter_files, store


def add_echo(commands: Commands) -> None:
    """The ``echo`` command's options."""
    echo = commands.add_parser("echo", help="send a C-ECHO (verify a peer is there)")
    peer_options(echo, timeout=10.0)
    echo.add_argument("-n", "--repeat", type=int, default=1, help="C-ECHOs to send")


def add_store(commands: Commands) -> None:
    """The ``store`` command's options."""
    store = commands.add_parser(
        "store",
        help="send DICOM files (C-STORE)",
        description="Send DICOM files and folders (searched recursively). Files that are not "
        "DICOM are skipped with a warning, a failed instance does not stop the others, and an "
        "association the peer aborts is replaced by a new one. Ends with a summary; exits 1 if "
        "anything failed or could not be read.",
    )
    peer_options(store)
    store.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress (a bar on a terminal, a line every 5 s otherwise); only the summary "
        "and what failed or was skipped",
    )
    store.add_argument(
        "--reconnect",
        type=non_negative_arg,
        default=3,
        metavar="N",
        help="after the peer aborts or closes the association, open a new one for the rest, "
        "up to N failed associations in a row; 0: stop at the first (default: %(default)s)",
    )
    store.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")


def add_find(commands: Commands) -> None:
    """The ``find`` command's options."""
    find = commands.add_parser("find", help="query a peer (C-FIND), like DCMTK's findscu")
    peer_options(find)
    find.add_argument(
        "-L",
        "--level",
        type=str.upper,
        default="STUDY",
        choices=["PATIENT", "STUDY", "SERIES", "IMAGE"],
        help="query level",
    )
    find.add_argument(
        "-k",
        "--key",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a matching key by DICOM keyword, e.g. -k PatientID=123 "
        "(-k Keyword alone asks for it back)",
    )
    find.add_argument(
        "-W",
        "--worklist",
        action="store_true",
        help="query the Modality Worklist (PS3.4 K.6) instead of the Q/R model: keys such "
        "as PatientID, AccessionNumber, Modality, ScheduledStationAETitle, "
        "ScheduledProcedureStepStartDate (-L is ignored)",
    )
    find.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_commit(commands: Commands) -> None:
    """The ``commit`` command's options."""
    commit = commands.add_parser(
        "commit",
        help="ask a peer to commit to holding instances (Storage Commitment)",
        description="Ask the peer whether it holds these DICOM files (searched recursively in "
        "folders), by Storage Commitment (PS3.4 Annex J), and print what it commits to and "
        "what not. The result is awaited on the association and, with --listen, on "
        "associations the peer opens to us. Exits 1 unless it commits to every instance.",
    )
    peer_options(commit)
    commit.add_argument(
        "--listen",
        type=int,
        metavar="PORT",
        help="also receive the result on associations the peer opens to PORT (it must know "
        "our --aet at this machine's address and that port)",
    )
    commit.add_argument(
        "--wait",
        type=positive_arg,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the result (default: %(default)s)",
    )
    commit.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")


def add_retrieve(commands: Commands, name: str, text: str) -> None:
    """The options of ``get`` or ``move`` (``name``)."""
    retrieve = commands.add_parser(name, help=text)
    peer_options(retrieve)
    retrieve.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress (a bar on a terminal, a line every 5 s otherwise); only the summary",
    )
    retrieve.add_argument(
        "-k",
        "--key",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="StudyInstanceUID=..., SeriesInstanceUID=..., "
        "SOPInstanceUID=... (the level follows from the deepest given); "
        "StudyInstanceUID=A\\B retrieves several studies, one after the other",
    )
    if name == "get":
        retrieve.add_argument(
            "--out", required=True, metavar="DIR", help="folder for the retrieved files"
        )
        offer = retrieve.add_argument_group(
            "what the C-GET offers to receive",
            "By default an IMAGE level C-FIND first asks the peer which SOP classes (and, if "
            "it says, transfer syntaxes) the study, series or instance holds, and each is "
            "offered with the SCP role; if the peer does not answer it, the common storage "
            "classes are offered.",
        )
        offer.add_argument(
            "--offer",
            action="append",
            type=offer_arg,
            metavar="SOP_CLASS_UID[=TS,TS]",
            help="offer this storage SOP class, in these transfer syntaxes (default: every "
            "syntax pydicom knows), instead of asking the peer (repeatable)",
        )
        offer.add_argument(
            "--offer-all-syntaxes",
            action="store_true",
            help="offer every transfer syntax pydicom knows for each class, whatever the peer "
            "says it holds (as many contexts of their own as PS3.8's 128 leave room for)",
        )
    else:
        retrieve.add_argument(
            "--dest",
            required=True,
            type=ae_title_arg,
            help="the destination AE title (known to the peer)",
        )


async def run_echo(args: argparse.Namespace) -> int:
    """``adicom echo``: C-ECHO, ``--repeat`` times on one association."""
    started = time.perf_counter()

    async def once() -> None:
        async with connect(
            args.host,
            args.port,
            calling_ae=args.aet,
            called_ae=args.aec,
            connect_timeout=args.timeout,
            timeout=args.timeout,
            ssl=client_ssl(args),
            user_identity=user_identity(args),
        ) as association:
            for _ in range(args.repeat):
                await association.echo()

    await retrying(retry_policy(args), once, f"C-ECHO to {args.aec}")
    elapsed = time.perf_counter() - started
    print(f"C-ECHO to {args.aec} at {args.host}:{args.port}: success ({elapsed * 1000:.1f} ms)")
    return EXIT_OK


def _store_outcome(result: StoreResult) -> tuple[str, str]:
    """The kind of one result ("sent", "warned", "failed", "skipped") and what to say of it."""
    if result.skipped == "unreadable":
        return "skipped", f"(unreadable) {result.error or ''}"
    if result.skipped is not None:
        return "skipped", result.error or ""
    if result.status is None or not result.ok:
        return "failed", result.error or ""
    if status_category(result.status) is StatusCategory.WARNING:
        return "warned", f"0x{result.status:04X} {describe_status(result.status)}"
    return "sent", ""


async def run_store(args: argparse.Namespace) -> int:
    """``adicom store``: send files and folders, then a summary of what went and what not."""
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"adicom store: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_FAILED
    # A file named on the command line that is not DICOM was meant to be
    # sent: that is a failure; one met in a folder is only skipped.
    named = {os.fspath(p) for p in args.paths if Path(p).is_file()}
    started = time.perf_counter()
    count = failures = 0
    shown = Progress("C-STORE", sum(1 for _ in iter_files(args.paths)), quiet=args.quiet)

    def progress(result: StoreResult) -> None:
        nonlocal count, failures
        count += 1
        kind, reason = _store_outcome(result)
        if kind in ("failed", "skipped"):
            failures += 1
            if shown.is_bar:
                shown.note(f"{kind}: {result.source}: {reason}")
        shown.update(count, failed=failures)

    async def once() -> list[StoreResult]:
        return await store(
            args.host,
            args.port,
            args.paths,
            calling_ae=args.aet,
            called_ae=args.aec,
            connect_timeout=args.timeout,
            timeout=args.timeout,
            progress=progress,
            reconnects=max(args.reconnect, args.retries),
            ssl=client_ssl(args),
            user_identity=user_identity(args),
        )

    with peer_answer(), shown:
        # Retried whole only while nothing was sent: after that, --reconnect.
        results = await retrying(
            retry_policy(args), once, f"C-STORE to {args.aec}", idempotent=False
        )
    elapsed = time.perf_counter() - started
    kinds: dict[str, list[tuple[StoreResult, str]]] = {
        "sent": [], "warned": [], "failed": [], "skipped": []
    }  # fmt: skip
    for result in results:
        kind, reason = _store_outcome(result)
        kinds[kind].append((result, reason))
    # Unreadable: looks like DICOM but cannot be read, or named and not DICOM.
    unreadable = [
        result
        for result, _ in kinds["skipped"]
        if result.skipped == "unreadable" or result.source in named
    ]
    print(
        f"adicom store: {len(kinds['sent'])} sent, {len(kinds['warned'])} warned, "
        f"{len(kinds['failed'])} failed, {len(kinds['skipped'])} skipped"
        + (f" ({len(unreadable)} unreadable)" if unreadable else "")
        + f" to {args.aec} at {args.host}:{args.port} in {elapsed:.2f} s"
    )
    for kind in ("warned", "failed", "skipped"):
        for result, reason in kinds[kind]:
            print(f"  {kind}: {result.source}: {reason}")
    return EXIT_FAILED if kinds["failed"] or unreadable else EXIT_OK


async def run_find(args: argparse.Namespace) -> int:
    """``adicom find``: query at a level (or the worklist) and print a table or JSON."""
    if args.worklist:
        return await _find_worklist(args)
    query = query_model(args.level, args.key)
    client = make_client(args)
    finders = {
        "PATIENT": client.find_patients, "STUDY": client.find_studies,
        "SERIES": client.find_series, "IMAGE": client.find_images,
    }  # fmt: skip
    with peer_answer():
        results = await finders[args.level](query, peer_node(args))  # type: ignore[operator]
        rows = [r.model_dump(mode="json") for r in results]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, keep=key_options(args.key)[1])
        incomplete = sum(r.missing_unique_key for r in results)
        missing = ""
        if incomplete:
            # The matches are shown (their key empty) and each was logged.
            keyword = type(results[0]).keywords[type(results[0]).unique_key]
            missing = f" ({incomplete} without {keyword})"
        print(f"adicom find: {len(rows)} {args.level.lower()} match(es){missing}")
    return EXIT_OK


async def _find_worklist(args: argparse.Namespace) -> int:
    named = {**WorklistQuery.keywords, **WorklistQuery.step_keywords}
    fields = {keyword: name for name, keyword in named.items()}
    matching, returned = key_options(args.key)
    typed: dict[str, object] = {fields[k]: v for k, v in matching.items() if k in fields}
    extra = {k: v for k, v in matching.items() if k not in fields}
    values = {**typed, "extra_keys": extra, "return_keys": returned}
    query = validated(WorklistQuery, values, named)
    with peer_answer():
        results = await make_client(args).find_worklist(query, peer_node(args))
        rows = []
        for result in results:
            row = result.model_dump(mode="json", exclude={"scheduled_procedure_steps"})
            step = result.scheduled_procedure_steps[0] if result.scheduled_procedure_steps else None
            if step is not None:
                row |= {k: v for k, v in step.model_dump(mode="json").items() if k != "extra"}
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
        print(f"adicom find: {len(rows)} worklist item(s)")
    return EXIT_OK


async def run_commit(args: argparse.Namespace) -> int:
    """``adicom commit``: Storage Commitment of the files' instances."""
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise argparse.ArgumentTypeError(f"no such file or folder: {', '.join(missing)}")
    references = []
    for path in iter_files(args.paths):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_UIDS)
            references.append(Reference(str(header.SOPClassUID), str(header.SOPInstanceUID)))
        except Exception as exc:  # pydicom raises many kinds on bad files
            print(f"adicom commit: skipped {path}: not a DICOM instance ({exc})", file=sys.stderr)
    if not references:
        raise argparse.ArgumentTypeError("no DICOM instance among the paths")
    with peer_answer():
        result = await make_client(args).commit(
            references, peer_node(args), timeout=args.wait, listen_port=args.listen
        )
    for reference in result.committed:
        print(f"committed  {reference.sop_instance_uid}")
    for failure in result.failed:
        print(f"FAILED     {failure.sop_instance_uid}: {failure.meaning} (0x{failure.reason:04X})")
    print(
        f"adicom commit: {len(result.committed)} committed, {len(result.failed)} not "
        f"(transaction {result.transaction_uid})"
    )
    return EXIT_OK if result.ok else EXIT_FAILED


#: What ``commit`` reads of each file.
_UIDS = ["SOPClassUID", "SOPInstanceUID"]


def _retrieve_targets(args: argparse.Namespace) -> tuple[str, list[list[str]]]:
    r"""The level and the UIDs of each entity to retrieve, from ``-k``.

    ``StudyInstanceUID`` may be a list (``A\B``, as in a C-FIND), retrieved
    study by study; below the study level each UID is a single value.
    """
    matching, _ = key_options(args.key)
    unknown = set(matching) - {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}
    if unknown or "StudyInstanceUID" not in matching:
        raise argparse.ArgumentTypeError(
            "give -k StudyInstanceUID=... and optionally SeriesInstanceUID and SOPInstanceUID"
        )
    studies = [uid.strip() for uid in matching["StudyInstanceUID"].split("\\")]
    below = [matching[k] for k in ("SeriesInstanceUID", "SOPInstanceUID") if k in matching]
    if len(studies) > 1 and below:
        raise argparse.ArgumentTypeError(
            "a list of StudyInstanceUIDs retrieves whole studies: give no SeriesInstanceUID "
            "or SOPInstanceUID with it"
        )
    for uid in studies + below:
        uid_arg(uid)  # a usage error now, before anything is sent
    level = ("STUDY", "SERIES", "IMAGE")[len(below)]
    return level, [[study, *below] for study in studies]


def _retrieve_progress(shown: Progress) -> Callable[[RetrieveProgress], None]:
    """A C-GET/C-MOVE progress callback that updates ``shown`` from the peer's counts."""

    def update(progress: RetrieveProgress) -> None:
        done = progress.completed + progress.failed + progress.warning
        shown.update(done, failed=progress.failed, total=done + progress.remaining)

    return update


def outcome(result: RetrieveResult) -> str:
    """The final status for the summary line, with its meaning unless it is success.

    ``"success: "``, or for example ``"failure 0xA801: Refused: move destination
    unknown; "`` (a meaning that repeats the category, as "Warning: ..." after
    "warning", is not repeated).
    """
    if result.status == "success":
        return "success: "
    category = result.status.partition("_")[0]
    meaning = result.status_meaning.removeprefix(f"{category.capitalize()}: ")
    return f"{category} 0x{result.status_code:04X}: {meaning}; "


def _output_folder(path: str) -> Path:
    """``--out``: a folder we can write, made if need be; a usage error before anything is sent."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise argparse.ArgumentTypeError(f"--out {out}: not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"--out {out}: cannot make the folder: {exc.strerror or exc}"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"--out {out}: cannot write there")
    return out


async def run_get(args: argparse.Namespace) -> int:
    """``adicom get``: C-GET into ``--out``, study by study."""
    level, targets = _retrieve_targets(args)
    out = _output_folder(args.out)
    offer: dict[str, list[str]] | None = None
    if args.offer:
        offer = {}
        for sop, syntaxes in args.offer:
            offer.setdefault(sop, []).extend(syntaxes)
    client = DicomClient(
        args.aet,
        connect_timeout=args.timeout,
        dimse_timeout=args.timeout,
        get_offer=offer,
        get_all_syntaxes=args.offer_all_syntaxes,
        ssl=client_ssl(args),
        user_identity=user_identity(args),
        retry=retry_policy(args),
    )
    node = peer_node(args)
    getters = {"STUDY": client.get_study, "SERIES": client.get_series, "IMAGE": client.get_image}
    ok = True
    kept = 0
    try:
        for uids in targets:
            with peer_answer(), Progress("C-GET", quiet=args.quiet) as shown:
                try:
                    result = await getters[level](  # type: ignore[operator]
                        *uids, node, out, progress=_retrieve_progress(shown)
                    )
                except asyncio.CancelledError:
                    # Ctrl-C: the retrieve was cancelled on the wire; say what stays.
                    kept += shown.done - shown.failed
                    print(
                        f"adicom get: interrupted; {kept} instances kept in {out}",
                        file=sys.stderr,
                    )
                    raise
            kept += result.num_completed + result.num_warning
            if result.error_comment:
                print(f"the peer says: {result.error_comment}")
            which = f" {level.lower()} {uids[-1]}" if len(targets) > 1 else ""
            print(
                f"adicom get{which}: {outcome(result)}{result.num_completed} completed, "
                f"{result.num_failed} failed, {result.num_warning} warning, into {args.out}"
            )
            explained = {failure.sop_instance_uid for failure in result.failures}
            for failure in result.failures:
                print(f"  failed: {failure}")
            for uid in result.failed_sop_instances:
                if uid not in explained:
                    print(f"  failed: {uid}")
            ok = ok and result.status == "success"
    finally:
        # The temporary folder of files being received, when it is empty.
        with contextlib.suppress(OSError):
            (out / ".incoming").rmdir()
    return EXIT_OK if ok else EXIT_FAILED


async def run_move(args: argparse.Namespace) -> int:
    """``adicom move``: C-MOVE to ``--dest``, study by study."""
    level, targets = _retrieve_targets(args)
    client, node = make_client(args), peer_node(args)
    movers = {"STUDY": client.move_study, "SERIES": client.move_series, "IMAGE": client.move_image}
    ok = True
    for uids in targets:
        with peer_answer(), Progress("C-MOVE", quiet=args.quiet) as shown:
            result = await movers[level](  # type: ignore[operator]
                *uids, node, args.dest, progress=_retrieve_progress(shown)
            )
        which = f" {level.lower()} {uids[-1]}" if len(targets) > 1 else ""
        print(
            f"adicom move{which}: {outcome(result)}{result.num_completed} completed, "
            f"{result.num_failed} failed, {result.num_warning} warning, to {args.dest}"
        )
        ok = ok and result.status == "success"
    return EXIT_OK if ok else EXIT_FAILED


async def run_demo_command(args: argparse.Namespace) -> int:
    """``adicom demo``."""
    return await run_demo()


async def run_hash_password(args: argparse.Namespace) -> int:
    """``adicom hash-password``: a scrypt hash of a password for a users file."""
    if sys.stdin.isatty():
        # Typed by a person: without echo, twice (the CLI waits for nothing else).
        line = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != line:
            raise argparse.ArgumentTypeError("the two passwords differ")
    else:
        line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise argparse.ArgumentTypeError("no password given")
    print(hash_password(line, cost=args.cost))
    return EXIT_OK
