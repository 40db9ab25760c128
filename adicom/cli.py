"""The ``adicom`` command line: echo, serve, store, find, get, move and demo.

The interface is kept stable because scripts call it. Exit codes: 0 success,
1 the peer rejected, aborted or answered with a failure, 2 a usage error,
3 the peer could not be reached, 4 a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from ssl import SSLContext, SSLError
from typing import Any, TypeAlias, TypeVar

import pydicom
from pydantic import BaseModel, ValidationError

from adicom.archive import Archive
from adicom.audit import AuditLog
from adicom.client import connect
from adicom.commitment import Reference
from adicom.demo import run_demo
from adicom.dicomclient import DicomClient
from adicom.dimse import Limits, StatusCategory, describe_status, status_category
from adicom.errors import DicomError, DicomTimeout, PeerUnreachable
from adicom.identity import (
    DEFAULT_COST,
    Users,
    hash_password,
    identity_hook,
    read_password_file,
)
from adicom.models import (
    DicomNode,
    ImageQuery,
    PatientQuery,
    RetrieveResult,
    SeriesQuery,
    StudyQuery,
    WorklistQuery,
)
from adicom.pdu import UserIdentityRQ
from adicom.peers import PeerRules
from adicom.progress import Progress
from adicom.qrscu import RetrieveProgress
from adicom.retry import NO_RETRY, RetryPolicy, retrying
from adicom.server import Server
from adicom.settings import DicomSettings
from adicom.storage import StoreContext
from adicom.storescu import StoreResult, iter_files, store
from adicom.tls import client_context, server_context
from adicom.version import __version__
from adicom.worklist import WorklistFolder

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4


def _ae_title(value: str) -> str:
    # PS3.5 Table 6.2-1 (AE): 1-16 characters of the default repertoire,
    # no backslash or control characters, not all spaces.
    if not value.strip() or len(value) > 16:
        raise argparse.ArgumentTypeError(f"AE title {value!r} must be 1 to 16 characters")
    if any(ord(c) < 0x20 or ord(c) > 0x7E or c == "\\" for c in value):
        raise argparse.ArgumentTypeError(
            f"AE title {value!r} may hold only printable ASCII, and no backslash"
        )
    return value.strip()


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {value!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def _destination(value: str) -> tuple[str, tuple[str, int]]:
    title, sep, address = value.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not colon or not host:
        raise argparse.ArgumentTypeError(f"{value!r} is not AET=HOST:PORT")
    return _ae_title(title), (host.strip("[]"), _port(port))


def _positive(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a timeout must be more than 0 seconds")
    return seconds


def _uid(value: str) -> str:
    if not value or len(value) > 64 or not all(part.isdigit() for part in value.split(".")):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a UID (digits and dots, at most 64 characters; PS3.5 9.1)"
        )
    return value


def _offer(value: str) -> tuple[str, list[str]]:
    """``--offer SOP_CLASS_UID[=TS,TS]``."""
    sop, _, syntaxes = value.partition("=")
    return _uid(sop.strip()), [_uid(t.strip()) for t in syntaxes.split(",") if t.strip()]


def _count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} is too small: give 1 or more")
    return count


def _non_negative(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"{count} is too small: give 0 or more")
    return count


def _peer_options(parser: argparse.ArgumentParser, timeout: float = 30.0) -> None:
    parser.add_argument(
        "--aet",
        type=_ae_title,
        default="ADICOM",
        help="our (calling) AE title (default: %(default)s)",
    )
    parser.add_argument(
        "--aec",
        type=_ae_title,
        default="ADICOM",
        help="the called AE title: the peer's (default: %(default)s, adicom serve's)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=timeout,
        metavar="SECONDS",
        help="seconds for each step (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=_non_negative,
        default=0,
        metavar="N",
        help="try again up to N times when the peer is unreachable or busy, or the "
        "association is lost (waits 0.5 s, 1 s, 2 s, ...; default: %(default)s)",
    )
    parser.add_argument("host", help="the peer's host name or address")
    parser.add_argument("port", type=_port, help="the peer's port (104, 11112, 2762 for TLS...)")
    tls = parser.add_argument_group(
        "TLS", "DICOM over TLS (PS3.15 B.9: TLS 1.2 or later; port 2762 by convention)."
    )
    tls.add_argument(
        "--tls", action="store_true", help="use TLS, trusting the system's CA certificates"
    )
    tls.add_argument(
        "--tls-ca",
        metavar="PEM",
        type=Path,
        help="CA certificates the peer's certificate must chain to (implies --tls)",
    )
    tls.add_argument(
        "--tls-cert",
        metavar="PEM",
        type=Path,
        help="our certificate, for a peer that asks for one (implies --tls)",
    )
    tls.add_argument(
        "--tls-key", metavar="PEM", type=Path, help="the private key of --tls-cert, if apart"
    )
    tls.add_argument(
        "--tls-no-verify",
        action="store_true",
        help="do not check the peer's certificate: anyone could pose as it (tests only)",
    )
    who = parser.add_argument_group("user identity", "Who we are (PS3.7 D.3.3.7).")
    who.add_argument("--user", metavar="NAME", help="send this user name")
    who.add_argument(
        "--password",
        metavar="PW",
        help="with --user: its password (seen by anyone who lists processes: prefer "
        "--password-file)",
    )
    who.add_argument(
        "--password-file", metavar="FILE", type=Path, help="with --user: its password's file"
    )
    who.add_argument(
        "--identity-response",
        action="store_true",
        help="ask the peer to confirm the identity, and fail if it does not",
    )


def _user_identity(args: argparse.Namespace) -> UserIdentityRQ | None:
    """The user identity the client options give; None when there is none."""
    password = args.password
    if args.password_file is not None:
        try:
            password = read_password_file(args.password_file)
        except OSError as exc:
            raise argparse.ArgumentTypeError(
                f"cannot read --password-file: {exc.strerror}: {args.password_file}"
            ) from None
    if args.user is None:
        if password is not None or args.identity_response:
            raise argparse.ArgumentTypeError("--password and --identity-response need --user")
        return None
    name = args.user.encode("utf-8")
    if password is None:
        return UserIdentityRQ(1, name, b"", args.identity_response)
    return UserIdentityRQ(2, name, password.encode("utf-8"), args.identity_response)


def _client_ssl(args: argparse.Namespace) -> SSLContext | None:
    """The TLS context the client options ask for; None for plain TCP."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_no_verify):
        if args.tls_key:
            raise argparse.ArgumentTypeError("--tls-key needs --tls-cert")
        return None
    try:
        return client_context(
            ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, verify=not args.tls_no_verify
        )
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot set up TLS: {_tls_file_error(exc)}") from None


def _tls_file_error(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}"
    if isinstance(exc, SSLError):
        return f"a certificate or key file is not valid PEM or they do not match ({exc.reason})"
    return str(exc)


def _keys(pairs: list[str]) -> tuple[dict[str, str], list[str]]:
    """``-k`` options: KEY=VALUE matching keys, and bare KEY return keys."""
    matching: dict[str, str] = {}
    returned: list[str] = []
    for pair in pairs:
        keyword, sep, value = pair.partition("=")
        keyword = keyword.strip()
        if sep:
            matching[keyword] = value
        else:
            returned.append(keyword)
    return matching, returned


_QUERIES: dict[str, type[PatientQuery | StudyQuery | SeriesQuery | ImageQuery]] = {
    "PATIENT": PatientQuery, "STUDY": StudyQuery, "SERIES": SeriesQuery, "IMAGE": ImageQuery,
}  # fmt: skip


def _query(level: str, pairs: list[str]) -> PatientQuery | StudyQuery | SeriesQuery | ImageQuery:
    query_type = _QUERIES[level]
    fields = {keyword: name for name, keyword in query_type.keywords.items()}
    matching, returned = _keys(pairs)
    typed: dict[str, object] = {fields[k]: v for k, v in matching.items() if k in fields}
    extra = {k: v for k, v in matching.items() if k not in fields}
    # pydantic validates (and converts) every value, typed or extra.
    values = {**typed, "extra_keys": extra, "return_keys": returned}
    return _validated(query_type, values, query_type.keywords)


ModelT = TypeVar("ModelT", bound=BaseModel)


def _validated(
    model: type[ModelT], values: dict[str, object], keywords: Mapping[str, str]
) -> ModelT:
    """The query model, or a usage error naming each ``-k`` at fault as it was typed."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            message = str(error["msg"]).removeprefix("Value error, ")
            message = message.split("; or a datetime")[0]  # Python forms: not for -k
            if field in ("extra_keys", "return_keys"):
                message = message.removeprefix(f"{field}: ")
                problems.append(f"-k {message}")
            else:
                keyword = keywords.get(field, field)
                message = message.removeprefix(f"{field}: ").removeprefix(f"{field} ")
                problems.append(f"-k {keyword}: {message}")
        raise argparse.ArgumentTypeError("; ".join(problems)) from None


class _PeerAnswerError(DicomError):
    """A peer's answer that adicom could not use: a failure (exit 1), never a usage error."""


@contextlib.contextmanager
def _peer_answer() -> Iterator[None]:
    """Around the network part of a command: a ValueError there comes from the peer's data.

    The exit code 2 (usage) is for what the user typed, checked before
    anything is sent; ``main`` maps ValueError to it.
    """
    try:
        yield
    except ValueError as exc:
        raise _PeerAnswerError(f"the peer's answer cannot be used: {exc}") from exc


def _node(args: argparse.Namespace) -> DicomNode:
    return DicomNode(aet=args.aec, host=args.host, port=args.port)


def _client(args: argparse.Namespace) -> DicomClient:
    return DicomClient(
        args.aet,
        connect_timeout=args.timeout,
        dimse_timeout=args.timeout,
        ssl=_client_ssl(args),
        user_identity=_user_identity(args),
        retry=_retry(args),
    )


def _retry(args: argparse.Namespace) -> RetryPolicy:
    """``--retries N``: N more tries after the first."""
    return RetryPolicy(attempts=args.retries + 1) if args.retries else NO_RETRY


def _extra(extra: object) -> dict[str, object]:
    return {str(k): v for k, v in extra.items()} if isinstance(extra, dict) else {}


def _print_table(rows: list[dict[str, object]], keep: Sequence[str] = ()) -> None:
    """Rows as columns; those empty in every row are left out, unless named in ``keep``."""
    if not rows:
        return
    # Keys asked for beyond the typed ones (-k InstitutionName) are in
    # "extra": each is a column of its own, by keyword.
    rows = [
        {**{k: v for k, v in row.items() if k != "extra"}, **_extra(row.get("extra"))}
        for row in rows
    ]
    names = dict.fromkeys([*(key for row in rows for key in row), *keep])
    columns = [c for c in names if c in keep or any(r.get(c) not in (None, "") for r in rows)]
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _logging_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """``-v``/``--verbose`` and ``--debug``, before the command or after it."""
    # After the command they leave the namespace alone unless given
    # (SUPPRESS), so they never undo what was said before the command.
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        dest="verbose_after" if after_command else "verbose",
        default=argparse.SUPPRESS if after_command else 0,
        help="log more: -v association and operation lines, -vv debug (every library)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if after_command else False,
        help="dump every PDU and DIMSE message, as DCMTK's -d does (adicom's loggers at DEBUG)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adicom",
        description="DICOM networking on asyncio, no threads: echo, store, find, get, move and "
        "commit as a client (SCU); serve as an archive with query/retrieve, Storage "
        "Commitment, MPPS and worklist (SCP). Exit codes: 0 success, 1 failed, 2 usage, "
        "3 unreachable, 4 timed out.",
    )
    _logging_options(parser, after_command=False)
    parser.add_argument(
        "--version",
        action="version",
        version=f"adicom {__version__} (pydicom {pydicom.__version__})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_echo(commands)
    _add_serve(commands)
    _add_store(commands)
    _add_find(commands)
    for name, text in (
        ("get", "retrieve to a folder (C-GET)"),
        ("move", "have the peer send to an AE title (C-MOVE)"),
    ):
        _add_retrieve(commands, name, text)
    _add_commit(commands)
    commands.add_parser(
        "demo", help="run a local archive and walk through echo, find, get, move (checked)"
    )
    hasher = commands.add_parser(
        "hash-password",
        help="print a password hash for an adicom serve --users file",
        description="Read a password (the first line of standard input) and print its salted "
        "scrypt hash, for the password of a [users.NAME] table of a --users file.",
    )
    hasher.add_argument(
        "--cost",
        type=int,
        default=DEFAULT_COST,
        help="scrypt cost as a power of two; each check of it holds the server's event loop "
        "(12: about 13 ms here, 14: about 50 ms) (default: %(default)s)",
    )
    for command in commands.choices.values():
        _logging_options(command, after_command=True)
    return parser


# What add_subparsers() returns.
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_echo(commands: _Commands) -> None:
    echo = commands.add_parser("echo", help="send a C-ECHO (verify a peer is there)")
    _peer_options(echo, timeout=10.0)
    echo.add_argument("-n", "--repeat", type=int, default=1, help="C-ECHOs to send")


def _serve_settings() -> tuple[DicomSettings, ValidationError | None]:
    """The ``ADICOM_*`` settings for ``serve``'s defaults, and what was wrong with them.

    A bad variable must not break the other commands or ``--help``: the
    built-in defaults stand in, and ``serve`` reports the error when it runs.
    """
    try:
        return DicomSettings(), None
    except ValidationError as exc:
        return DicomSettings.model_construct(), exc


def _add_serve(commands: _Commands) -> None:
    settings, error = _serve_settings()
    serve = commands.add_parser(
        "serve",
        help="run an SCP until interrupted: C-ECHO, and with --storage an archive (C-STORE, "
        "C-FIND/GET/MOVE, Storage Commitment, MPPS), with --worklist a worklist",
        description="Run an SCP until interrupted. The defaults come from the ADICOM_* "
        "environment variables (adicom.DicomSettings); the flags override them.",
    )
    serve.set_defaults(settings_error=error)
    _listen_options(serve, settings)
    _tls_server_options(serve, settings)
    _archive_options(serve, settings)
    serve.add_argument(
        "--allow",
        action="append",
        metavar="AET",
        type=_ae_title,
        help="accept only these calling AE titles (repeatable; default: any)",
    )
    serve.add_argument(
        "--peers",
        metavar="FILE",
        type=Path,
        help="per-peer rules (TOML: AE title, addresses, certificate, services, move "
        "destination, duplicate policy); unknown peers are rejected (see docs/security.md)",
    )
    serve.add_argument(
        "--users",
        metavar="FILE",
        type=Path,
        help="check user identities (PS3.7 D.3.3.7) against this TOML file of users and "
        "password hashes (adicom hash-password); a wrong one rejects the association",
    )
    serve.add_argument(
        "--require-identity",
        action="store_true",
        help="reject associations that carry no user identity (use with --users)",
    )
    serve.add_argument(
        "--audit",
        metavar="FILE",
        help="write an audit trail, one JSON line per association accepted or refused, "
        "instance received, query and retrieve (PS3.15 A.5 event names), appended to "
        "FILE ('-': standard output)",
    )
    serve.add_argument(
        "--audit-no-patient-data",
        action="store_true",
        help="leave patient names, IDs and birth dates out of the audit trail",
    )
    _timeouts(serve, settings)
    _limits(serve)


def _limits(serve: argparse.ArgumentParser) -> None:
    """What one peer may make the server hold or wait for (docs/server.md, "Limits")."""
    defaults = Limits()
    group = serve.add_argument_group("limits (what one peer may make the server spend)")
    group.add_argument(
        "--max-pending",
        type=_count,
        default=128,
        metavar="N",
        help="connections not yet associated, at once (default: %(default)s)",
    )
    group.add_argument(
        "--max-per-address",
        type=_count,
        default=64,
        metavar="N",
        help="connections from one address, associated or not (default: %(default)s)",
    )
    group.add_argument(
        "--max-command-bytes",
        type=_count,
        default=defaults.max_command,
        metavar="BYTES",
        help="size of one command set (default: %(default)s)",
    )
    group.add_argument(
        "--max-dataset-bytes",
        type=_count,
        default=defaults.max_dataset,
        metavar="BYTES",
        help="size of a data set held in memory, such as a C-FIND identifier; "
        "beyond it the association is aborted (default: %(default)s)",
    )
    group.add_argument(
        "--max-n-dataset-bytes",
        type=_count,
        default=defaults.max_n_dataset,
        metavar="BYTES",
        help="size of a DIMSE-N data set (a Storage Commitment request, an MPPS), held "
        "in memory; beyond it the association is aborted (default: %(default)s)",
    )
    group.add_argument(
        "--max-pdvs-per-pdu",
        type=_count,
        default=defaults.max_pdvs,
        metavar="N",
        help="PDVs in one P-DATA-TF PDU; beyond it the association is aborted "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--max-instance-bytes",
        type=_count,
        default=None,
        metavar="BYTES",
        help="size of one C-STORE data set; beyond it the instance is refused with "
        "0xA700 (default: no limit)",
    )
    group.add_argument(
        "--message-timeout",
        type=_positive,
        default=defaults.message_timeout,
        metavar="SECONDS",
        help="time to receive one whole message, however slowly it trickles (default: %(default)s)",
    )


def _listen_options(serve: argparse.ArgumentParser, settings: DicomSettings) -> None:
    serve.add_argument(
        "--aet",
        type=_ae_title,
        default=settings.aet,
        help="our AE title (ADICOM_AET; default: %(default)s)",
    )
    serve.add_argument(
        "--host",
        default=settings.ip or "0.0.0.0",
        help="address to listen on (ADICOM_IP; default: %(default)s)",
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=settings.port,
        help="port, 0 for any free port (ADICOM_PORT; default: %(default)s)",
    )
    serve.add_argument(
        "--max-associations",
        type=int,
        default=500,
        help="open associations allowed at once (default: %(default)s)",
    )


def _tls_server_options(serve: argparse.ArgumentParser, settings: DicomSettings) -> None:
    tls = serve.add_argument_group(
        "TLS",
        "Serve DICOM over TLS (PS3.15 B.9: TLS 1.2 or later; port 2762 by convention).",
    )
    tls.add_argument(
        "--tls-cert",
        metavar="PEM",
        type=Path,
        default=settings.tls_cert,
        help="our certificate (with its chain): every connection must then speak TLS "
        "(ADICOM_TLS_CERT; default: %(default)s)",
    )
    tls.add_argument(
        "--tls-key",
        metavar="PEM",
        type=Path,
        default=settings.tls_key,
        help="its private key, if not in the --tls-cert file (ADICOM_TLS_KEY)",
    )
    tls.add_argument(
        "--tls-ca",
        metavar="PEM",
        type=Path,
        default=settings.tls_ca,
        help="CA certificates that client certificates must chain to (ADICOM_TLS_CA)",
    )
    tls.add_argument(
        "--tls-require-client-cert",
        action="store_true",
        default=settings.tls_require_client_cert,
        help="refuse clients without a certificate from --tls-ca: mutual authentication "
        "(ADICOM_TLS_REQUIRE_CLIENT_CERT)",
    )


def _server_ssl(args: argparse.Namespace) -> SSLContext | None:
    """The TLS context ``serve``'s options ask for; None for plain TCP."""
    if args.tls_cert is None:
        others = [
            flag
            for flag, given in (
                ("--tls-key", args.tls_key),
                ("--tls-ca", args.tls_ca),
                ("--tls-require-client-cert", args.tls_require_client_cert),
            )
            if given
        ]
        if others:
            raise argparse.ArgumentTypeError(f"{', '.join(others)} needs --tls-cert")
        return None
    try:
        return server_context(
            cert=args.tls_cert,
            key=args.tls_key,
            ca=args.tls_ca,
            require_client_cert=args.tls_require_client_cert,
        )
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot set up TLS: {_tls_file_error(exc)}") from None


def _archive_options(serve: argparse.ArgumentParser, settings: DicomSettings) -> None:
    default = "%(default)s" if settings.storage_dir else "none, C-ECHO only"
    serve.add_argument(
        "--storage",
        metavar="DIR",
        default=settings.storage_dir,
        help="run an archive in DIR: accept C-STORE (files under "
        "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm, indexed in SQLite), "
        "answer C-FIND, C-GET and C-MOVE, Storage Commitment from what it holds, and keep "
        f"MPPS in DIR/.mpps (ADICOM_STORAGE_DIR; default: {default})",
    )
    serve.add_argument(
        "--worklist",
        metavar="DIR",
        type=Path,
        help="answer Modality Worklist C-FINDs from the worklist items (DICOM files) in DIR, "
        "read again when they change (like DCMTK wlmscpfs's data folder)",
    )
    serve.add_argument(
        "--move-dest",
        action="append",
        default=[],
        metavar="AET=HOST:PORT",
        type=_destination,
        help="a C-MOVE destination (repeatable)",
    )
    serve.add_argument(
        "--storage-sop-class",
        action="append",
        metavar="UID",
        type=_uid,
        help="store only these SOP classes (repeatable; default: any storage SOP "
        "class, private ones included)",
    )
    serve.add_argument(
        "--on-duplicate",
        choices=["replace", "keep", "reject"],
        default="replace",
        help="what a second copy of a SOP Instance UID does: replace the first, keep the "
        "first (success), or reject it with 0x0111 (default: %(default)s)",
    )
    serve.add_argument(
        "--fsync",
        action="store_true",
        help="make each stored file and its folder durable before answering success",
    )
    serve.add_argument(
        "--prefer-own-syntax",
        action="store_true",
        help="choose the transfer syntax of each storage context by adicom's order "
        "(uncompressed first) instead of the requestor's (default: the requestor's first "
        "proposed syntax, so instances are kept as sent)",
    )


def _timeouts(serve: argparse.ArgumentParser, settings: DicomSettings) -> None:
    for flag, value, text in (
        (
            "--association-timeout",
            settings.association_timeout,
            "seconds the ARTIM timer allows (PS3.8 9.1.5): for the A-ASSOCIATE-RQ "
            "once a peer connects, for the peer to close after a release or abort",
        ),
        ("--dimse-timeout", settings.dimse_timeout, "seconds to wait for each DIMSE response"),
        (
            "--idle-timeout",
            settings.idle_timeout,
            "seconds of silence after which an association is aborted",
        ),
    ):
        variable = "ADICOM_" + flag.removeprefix("--").replace("-", "_").upper()
        serve.add_argument(
            flag,
            type=_positive,
            default=value,
            metavar="SECONDS",
            help=f"{text} ({variable}; default: %(default)s)",
        )


def _add_store(commands: _Commands) -> None:
    store = commands.add_parser(
        "store",
        help="send DICOM files (C-STORE)",
        description="Send DICOM files and folders (searched recursively). Files that are not "
        "DICOM are skipped with a warning, a failed instance does not stop the others, and an "
        "association the peer aborts is replaced by a new one. Ends with a summary; exits 1 if "
        "anything failed or could not be read.",
    )
    _peer_options(store)
    store.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress (a bar on a terminal, a line every 5 s otherwise); only the summary "
        "and what failed or was skipped",
    )
    store.add_argument(
        "--reconnect",
        type=_non_negative,
        default=3,
        metavar="N",
        help="after the peer aborts or closes the association, open a new one for the rest, "
        "up to N failed associations in a row; 0: stop at the first (default: %(default)s)",
    )
    store.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")


def _add_find(commands: _Commands) -> None:
    find = commands.add_parser("find", help="query a peer (C-FIND), like DCMTK's findscu")
    _peer_options(find)
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


def _add_commit(commands: _Commands) -> None:
    commit = commands.add_parser(
        "commit",
        help="ask a peer to commit to holding instances (Storage Commitment)",
        description="Ask the peer whether it holds these DICOM files (searched recursively in "
        "folders), by Storage Commitment (PS3.4 Annex J), and print what it commits to and "
        "what not. The result is awaited on the association and, with --listen, on "
        "associations the peer opens to us. Exits 1 unless it commits to every instance.",
    )
    _peer_options(commit)
    commit.add_argument(
        "--listen",
        type=int,
        metavar="PORT",
        help="also receive the result on associations the peer opens to PORT (it must know "
        "our --aet at this machine's address and that port)",
    )
    commit.add_argument(
        "--wait",
        type=_positive,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the result (default: %(default)s)",
    )
    commit.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")


def _add_retrieve(commands: _Commands, name: str, text: str) -> None:
    retrieve = commands.add_parser(name, help=text)
    _peer_options(retrieve)
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
            type=_offer,
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
            type=_ae_title,
            help="the destination AE title (known to the peer)",
        )


async def _echo(args: argparse.Namespace) -> int:
    started = time.perf_counter()

    async def once() -> None:
        async with connect(
            args.host,
            args.port,
            calling_ae=args.aet,
            called_ae=args.aec,
            connect_timeout=args.timeout,
            timeout=args.timeout,
            ssl=_client_ssl(args),
            user_identity=_user_identity(args),
        ) as association:
            for _ in range(args.repeat):
                await association.echo()

    await retrying(_retry(args), once, f"C-ECHO to {args.aec}")
    elapsed = time.perf_counter() - started
    print(f"C-ECHO to {args.aec} at {args.host}:{args.port}: success ({elapsed * 1000:.1f} ms)")
    return EXIT_OK


async def _serve(args: argparse.Namespace) -> int:
    if args.settings_error is not None:
        raise args.settings_error
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    options: dict[str, Any] = {}
    tls = _server_ssl(args)
    # What the server opens (C-MOVE sub-operations, commitment reports) runs
    # TLS too, with the server's certificate as the client's.
    tls_client = (
        None
        if tls is None
        else client_context(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    )
    rules = PeerRules.load(args.peers) if args.peers is not None else None
    hook = None
    if args.users is not None:
        hook = identity_hook(Users.load(args.users))
    elif args.require_identity:
        raise argparse.ArgumentTypeError("--require-identity needs --users (who to accept)")
    if args.audit_no_patient_data and args.audit is None:
        raise argparse.ArgumentTypeError("--audit-no-patient-data needs --audit FILE")
    audit = (
        None
        if args.audit is None
        else AuditLog(
            sys.stdout if args.audit == "-" else args.audit,
            patient_data=not args.audit_no_patient_data,
        )
    )
    archive = None
    if args.storage:
        root = Path(args.storage)
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise PermissionError(f"cannot write to the storage folder {root}")
        archive = Archive(root, on_duplicate=args.on_duplicate, fsync=args.fsync)
        destinations = dict(args.move_dest)
        if rules is not None:
            destinations = rules.move_destinations() | destinations
            archive.storage.duplicate_policy = _duplicate_policy(rules)
        options = archive.handlers(destinations, ae_title=args.aet, ssl=tls_client)
    if args.worklist is not None:
        if not args.worklist.is_dir():
            raise argparse.ArgumentTypeError(f"--worklist {args.worklist}: no such folder")
        worklist = WorklistFolder(args.worklist)
        await worklist.refresh()
        options["on_worklist"] = worklist.find
    try:
        async with Server(
            args.aet,
            host=args.host,
            port=args.port,
            max_associations=args.max_associations,
            max_pending=args.max_pending,
            max_per_address=args.max_per_address,
            limits=Limits(
                max_command=args.max_command_bytes,
                max_dataset=args.max_dataset_bytes,
                max_n_dataset=args.max_n_dataset_bytes,
                max_pdvs=args.max_pdvs_per_pdu,
                max_instance=args.max_instance_bytes,
                message_timeout=args.message_timeout,
            ),
            allowed_calling_aes=args.allow,
            storage_sop_classes=args.storage_sop_class,
            prefer_requestor_syntax=not args.prefer_own_syntax,
            artim_timeout=args.association_timeout,
            dimse_timeout=args.dimse_timeout,
            idle_timeout=args.idle_timeout,
            ssl=tls,
            user_identity=hook,
            require_identity=args.require_identity,
            peers=rules,
            audit=audit,
            outgoing_ssl=tls_client,
            **options,
        ) as server:
            if archive is not None:
                # Index what is already there while already answering (the
                # indexing yields to the loop between batches).
                await archive.open()
            print(
                f'adicom serve: AE "{server.ae_title}" listening on {args.host}:{server.port}',
                flush=True,
            )
            if tls is not None:
                clients = (
                    "client certificates required"
                    if args.tls_require_client_cert
                    else "client certificates checked when sent"
                    if args.tls_ca
                    else "no client certificates"
                )
                print(f"adicom serve: TLS 1.2 or later only; {clients}", flush=True)
            if tls is None and rules is None and not _is_loopback(args.host):
                print(
                    f"adicom serve: warning: {args.host} is reachable from other machines, "
                    "and without --tls-cert or --peers anyone who reaches it may store, "
                    "query and retrieve (see docs/security.md)",
                    file=sys.stderr,
                    flush=True,
                )
            await stop.wait()
            print(f"adicom serve: stopping ({server.stats})", flush=True)
    finally:
        if archive is not None:
            archive.close()
        if audit is not None:
            audit.close()
    return EXIT_OK


def _is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (a name other than localhost: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _duplicate_policy(rules: PeerRules) -> Callable[[StoreContext], str | None]:
    """The archive's duplicate policy for each sender, from its peer entry."""

    def policy(context: StoreContext) -> str | None:
        peer = rules.peers.get(context.calling_ae.strip())
        return peer.on_duplicate if peer is not None else None

    return policy


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


async def _store(args: argparse.Namespace) -> int:
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
            ssl=_client_ssl(args),
            user_identity=_user_identity(args),
        )

    with _peer_answer(), shown:
        # Retried whole only while nothing was sent: after that, --reconnect.
        results = await retrying(_retry(args), once, f"C-STORE to {args.aec}", idempotent=False)
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


async def _find(args: argparse.Namespace) -> int:
    if args.worklist:
        return await _find_worklist(args)
    query = _query(args.level, args.key)
    client = _client(args)
    finders = {
        "PATIENT": client.find_patients, "STUDY": client.find_studies,
        "SERIES": client.find_series, "IMAGE": client.find_images,
    }  # fmt: skip
    with _peer_answer():
        results = await finders[args.level](query, _node(args))  # type: ignore[operator]
        rows = [r.model_dump(mode="json") for r in results]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, keep=_keys(args.key)[1])
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
    matching, returned = _keys(args.key)
    typed: dict[str, object] = {fields[k]: v for k, v in matching.items() if k in fields}
    extra = {k: v for k, v in matching.items() if k not in fields}
    values = {**typed, "extra_keys": extra, "return_keys": returned}
    query = _validated(WorklistQuery, values, named)
    with _peer_answer():
        results = await _client(args).find_worklist(query, _node(args))
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
        _print_table(rows)
        print(f"adicom find: {len(rows)} worklist item(s)")
    return EXIT_OK


async def _commit(args: argparse.Namespace) -> int:
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
    with _peer_answer():
        result = await _client(args).commit(
            references, _node(args), timeout=args.wait, listen_port=args.listen
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
    matching, _ = _keys(args.key)
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
        _uid(uid)  # a usage error now, before anything is sent
    level = ("STUDY", "SERIES", "IMAGE")[len(below)]
    return level, [[study, *below] for study in studies]


def _retrieve_progress(shown: Progress) -> Callable[[RetrieveProgress], None]:
    """A C-GET/C-MOVE progress callback that updates ``shown`` from the peer's counts."""

    def update(progress: RetrieveProgress) -> None:
        done = progress.completed + progress.failed + progress.warning
        shown.update(done, failed=progress.failed, total=done + progress.remaining)

    return update


def _outcome(result: RetrieveResult) -> str:
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


async def _get(args: argparse.Namespace) -> int:
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
        ssl=_client_ssl(args),
        user_identity=_user_identity(args),
        retry=_retry(args),
    )
    node = _node(args)
    getters = {"STUDY": client.get_study, "SERIES": client.get_series, "IMAGE": client.get_image}
    ok = True
    kept = 0
    try:
        for uids in targets:
            with _peer_answer(), Progress("C-GET", quiet=args.quiet) as shown:
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
                f"adicom get{which}: {_outcome(result)}{result.num_completed} completed, "
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


async def _move(args: argparse.Namespace) -> int:
    level, targets = _retrieve_targets(args)
    client, node = _client(args), _node(args)
    movers = {"STUDY": client.move_study, "SERIES": client.move_series, "IMAGE": client.move_image}
    ok = True
    for uids in targets:
        with _peer_answer(), Progress("C-MOVE", quiet=args.quiet) as shown:
            result = await movers[level](  # type: ignore[operator]
                *uids, node, args.dest, progress=_retrieve_progress(shown)
            )
        which = f" {level.lower()} {uids[-1]}" if len(targets) > 1 else ""
        print(
            f"adicom move{which}: {_outcome(result)}{result.num_completed} completed, "
            f"{result.num_failed} failed, {result.num_warning} warning, to {args.dest}"
        )
        ok = ok and result.status == "success"
    return EXIT_OK if ok else EXIT_FAILED


async def _demo(args: argparse.Namespace) -> int:
    return await run_demo()


async def _hash_password(args: argparse.Namespace) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    verbose = args.verbose + getattr(args, "verbose_after", 0)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.debug:
        # The PDU and DIMSE dumps are subscribers of adicom.events that
        # attach to an association when its logger is enabled (at DEBUG).
        logging.getLogger("adicom").setLevel(logging.DEBUG)
    runner = {
        "echo": _echo, "serve": _serve, "store": _store, "find": _find, "get": _get,
        "move": _move, "demo": _demo, "hash-password": _hash_password, "commit": _commit,
    }[args.command]  # fmt: skip
    try:
        return asyncio.run(runner(args))
    except BrokenPipeError:
        # The reader went away (adicom find ... | head -1): not an error.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except PeerUnreachable as exc:
        return _fail(args, exc, EXIT_UNREACHABLE)
    except DicomTimeout as exc:
        return _fail(args, exc, EXIT_TIMEOUT)
    except DicomError as exc:  # ArchiveError included
        return _fail(args, exc, EXIT_FAILED)
    except OSError as exc:
        # For `serve`: the port is taken, or the address is not ours.
        return _fail(args, exc, EXIT_FAILED)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        # A key or value that is not valid DICOM matching syntax (pydantic's
        # ValidationError is a ValueError): a usage error, nothing was sent.
        return _fail(args, exc, EXIT_USAGE)
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    if isinstance(exc, ValidationError):
        # One line per problem, without pydantic's links and input dumps.
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "query"
            message = str(error["msg"]).removeprefix("Value error, ")
            if exc.title == DicomSettings.__name__:
                # Name the variable to fix; our own checks quote the value already.
                where = f"ADICOM_{where.upper()}"
                if error["type"] != "value_error":
                    message += f" (got {error['input']!r})"
            print(f"adicom {args.command}: {where}: {message}", file=sys.stderr)
        return code
    print(f"adicom {args.command}: {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
