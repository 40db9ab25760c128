"""What the commands share: argument types, the peer options, the client, tables, usage errors."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from ssl import SSLContext, SSLError
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from adicom.errors import DicomError
from adicom.identity import (
    read_password_file,
)
from adicom.pdu import UserIdentityRQ
from adicom.retry import NO_RETRY, RetryPolicy
from adicom.tls import client_context

if TYPE_CHECKING:
    # The client and its pydantic models: imported where a client command
    # uses them, never by ``adicom serve``, which shares this module.
    from pydantic import BaseModel

    from adicom.dicomclient import DicomClient
    from adicom.models import DicomNode, ImageQuery, PatientQuery, SeriesQuery, StudyQuery

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4

#: The event loops a command can run on (``--loop``).
LOOPS = ("auto", "asyncio", "uvloop")


def _have_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_arg(value: str) -> str:
    """A ``--loop`` argument: ``auto``, ``asyncio`` or ``uvloop`` (which must be installed)."""
    if value not in LOOPS:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(LOOPS)}")
    if value == "uvloop" and not _have_uvloop():
        raise argparse.ArgumentTypeError("uvloop is not installed (pip install 'adicom[uvloop]')")
    return value


def loop_option(parser: argparse.ArgumentParser) -> None:
    """``--loop``: the event loop a command runs on."""
    parser.add_argument(
        "--loop",
        type=loop_arg,
        default=os.environ.get("ADICOM_LOOP", "auto"),
        metavar="{" + ",".join(LOOPS) + "}",
        help="the event loop: asyncio's own, or uvloop (a fifth fewer instructions per "
        "small message, a third fewer per association; pip install 'adicom[uvloop]'); "
        "auto takes uvloop when it is installed (ADICOM_LOOP; default: %(default)s)",
    )


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the event loop ``--loop name`` asks for (``auto``: uvloop if installed).

    adicom itself runs on any asyncio loop; uvloop (libuv, in C) only spends
    less CPU per callback, and, as adicom uses it, starts no thread either
    (names are resolved by adicom, not by the loop's resolver pool).
    """
    if name == "uvloop" or (name == "auto" and _have_uvloop()):
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def ae_title_arg(value: str) -> str:
    """An AE title argument (PS3.5 Table 6.2-1), stripped."""
    # PS3.5 Table 6.2-1 (AE): 1-16 characters of the default repertoire,
    # no backslash or control characters, not all spaces.
    if not value.strip() or len(value) > 16:
        raise argparse.ArgumentTypeError(f"AE title {value!r} must be 1 to 16 characters")
    if any(ord(c) < 0x20 or ord(c) > 0x7E or c == "\\" for c in value):
        raise argparse.ArgumentTypeError(
            f"AE title {value!r} may hold only printable ASCII, and no backslash"
        )
    return value.strip()


def port_arg(value: str) -> int:
    """A TCP port argument, 0 to 65535."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {value!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def destination_arg(value: str) -> tuple[str, tuple[str, int]]:
    """``AET=HOST:PORT``: a move destination."""
    title, sep, address = value.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not colon or not host:
        raise argparse.ArgumentTypeError(f"{value!r} is not AET=HOST:PORT")
    return ae_title_arg(title), (host.strip("[]"), port_arg(port))


def positive_arg(value: str) -> float:
    """A positive number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a timeout must be more than 0 seconds")
    return seconds


def seconds_or_zero_arg(value: str) -> float:
    """A number of seconds, 0 or more (0 turning the thing off)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{value} is too small: give 0 seconds or more")
    return seconds


def uid_arg(value: str) -> str:
    """A UID argument: digits and dots, at most 64 characters."""
    if not value or len(value) > 64 or not all(part.isdigit() for part in value.split(".")):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a UID (digits and dots, at most 64 characters; PS3.5 9.1)"
        )
    return value


def offer_arg(value: str) -> tuple[str, list[str]]:
    """``--offer SOP_CLASS_UID[=TS,TS]``."""
    sop, _, syntaxes = value.partition("=")
    return uid_arg(sop.strip()), [uid_arg(t.strip()) for t in syntaxes.split(",") if t.strip()]


def count_arg(value: str) -> int:
    """A whole number, 1 or more."""
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} is too small: give 1 or more")
    return count


def non_negative_arg(value: str) -> int:
    """A whole number, 0 or more."""
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"{count} is too small: give 0 or more")
    return count


def peer_options(parser: argparse.ArgumentParser, timeout: float = 30.0) -> None:
    """The options of every client command: AE titles, timeout, retries, peer, TLS, identity."""
    parser.add_argument(
        "--aet",
        type=ae_title_arg,
        default="ADICOM",
        help="our (calling) AE title (default: %(default)s)",
    )
    parser.add_argument(
        "--aec",
        type=ae_title_arg,
        default="ADICOM",
        help="the called AE title: the peer's (default: %(default)s, adicom serve's)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_arg,
        default=timeout,
        metavar="SECONDS",
        help="seconds for each step (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=non_negative_arg,
        default=0,
        metavar="N",
        help="try again up to N times when the peer is unreachable or busy, or the "
        "association is lost (waits 0.5 s, 1 s, 2 s, ...; default: %(default)s)",
    )
    parser.add_argument("host", help="the peer's host name or address")
    parser.add_argument("port", type=port_arg, help="the peer's port (104, 11112, 2762 for TLS...)")
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


def user_identity(args: argparse.Namespace) -> UserIdentityRQ | None:
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


def client_ssl(args: argparse.Namespace) -> SSLContext | None:
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
        raise argparse.ArgumentTypeError(f"cannot set up TLS: {tls_file_error(exc)}") from None


def tls_file_error(exc: BaseException) -> str:
    """What is wrong with a TLS file, in words."""
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}"
    if isinstance(exc, SSLError):
        return f"a certificate or key file is not valid PEM or they do not match ({exc.reason})"
    return str(exc)


def key_options(pairs: list[str]) -> tuple[dict[str, str], list[str]]:
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


def query_model(
    level: str, pairs: list[str]
) -> PatientQuery | StudyQuery | SeriesQuery | ImageQuery:
    """The query model of a level, from ``-k`` options."""
    from adicom.models import ImageQuery, PatientQuery, SeriesQuery, StudyQuery

    queries: dict[str, type[PatientQuery | StudyQuery | SeriesQuery | ImageQuery]] = {
        "PATIENT": PatientQuery, "STUDY": StudyQuery, "SERIES": SeriesQuery, "IMAGE": ImageQuery,
    }  # fmt: skip
    query_type = queries[level]
    fields = {keyword: name for name, keyword in query_type.keywords.items()}
    matching, returned = key_options(pairs)
    typed: dict[str, object] = {fields[k]: v for k, v in matching.items() if k in fields}
    extra = {k: v for k, v in matching.items() if k not in fields}
    # pydantic validates (and converts) every value, typed or extra.
    values = {**typed, "extra_keys": extra, "return_keys": returned}
    return validated(query_type, values, query_type.keywords)


ModelT = TypeVar("ModelT", bound="BaseModel")


def validated(
    model: type[ModelT], values: dict[str, object], keywords: Mapping[str, str]
) -> ModelT:
    """The query model, or a usage error naming each ``-k`` at fault as it was typed."""
    from pydantic import ValidationError

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
def peer_answer() -> Iterator[None]:
    """Around the network part of a command: a ValueError there comes from the peer's data.

    The exit code 2 (usage) is for what the user typed, checked before
    anything is sent; ``main`` maps ValueError to it.
    """
    try:
        yield
    except ValueError as exc:
        raise _PeerAnswerError(f"the peer's answer cannot be used: {exc}") from exc


def peer_node(args: argparse.Namespace) -> DicomNode:
    """The peer the client options name."""
    from adicom.models import DicomNode

    return DicomNode(aet=args.aec, host=args.host, port=args.port)


def make_client(args: argparse.Namespace) -> DicomClient:
    """A DicomClient as the client options say."""
    from adicom.dicomclient import DicomClient

    return DicomClient(
        args.aet,
        connect_timeout=args.timeout,
        dimse_timeout=args.timeout,
        ssl=client_ssl(args),
        user_identity=user_identity(args),
        retry=retry_policy(args),
    )


def retry_policy(args: argparse.Namespace) -> RetryPolicy:
    """``--retries N``: N more tries after the first."""
    return RetryPolicy(attempts=args.retries + 1) if args.retries else NO_RETRY


def _extra(extra: object) -> dict[str, object]:
    return {str(k): v for k, v in extra.items()} if isinstance(extra, dict) else {}


def print_table(rows: list[dict[str, object]], keep: Sequence[str] = ()) -> None:
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


# What add_subparsers() returns.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
