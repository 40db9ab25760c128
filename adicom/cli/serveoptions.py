"""``adicom serve``'s options: listening, TLS, the archive, timeouts, limits, workers."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adicom.archive import DEFAULT_MAX_PENDING
from adicom.archive.backends import DEFAULT_INDEX_POOL, DEFAULT_INDEX_TIMEOUT
from adicom.cli.common import (
    Commands,
    ae_title_arg,
    count_arg,
    destination_arg,
    non_negative_arg,
    port_arg,
    positive_arg,
    seconds_or_zero_arg,
    uid_arg,
)
from adicom.defaults import SETTINGS_DEFAULTS, SettingsDefaults, settings_in_environment
from adicom.dimse import Limits
from adicom.diskstorage import DEFAULT_WRITE_BEHIND
from adicom.turns import DEFAULT_TURN_BUDGET

if TYPE_CHECKING:
    from adicom.settings import DicomSettings

#: ``--gc-threshold``'s default: 0, Python's thresholds as they are. A higher
#: youngest-generation threshold saves instructions per association (callgrind,
#: benchmarks.assocrate -n 200: 459k / 725k per associate + echo + release on
#: uvloop / asyncio with Python's 700, 440k / 699k with 20,000), but cost CPU
#: where associations run at once: 8 storing into one `adicom serve` (benchmarks.scale
#: --only workers --modes 1, 5 pairs interleaved) spent 275-408 us per instance
#: with 700 and 332-417 us with 20,000, worse in every pair. Cyclic garbage
#: kept longer is memory not reused while it is in the cache, which callgrind
#: does not count. ~1.5 MB more RSS after 400 associations as well.
GC_THRESHOLD = 0
#: ``--gc-threshold``'s largest: beyond it the youngest pass would hardly
#: run, and cyclic garbage would pile up unbounded in practice.
GC_THRESHOLD_MAX = 1_000_000


#: ``--shutdown-grace``'s default: seconds the open associations have, on
#: SIGTERM or SIGINT, to end by themselves before they are aborted. Under
#: systemd's 90 s and Kubernetes' 30 s between SIGTERM and SIGKILL.
SHUTDOWN_GRACE = 10.0
#: ``--shutdown-grace``'s largest (an hour).
SHUTDOWN_GRACE_MAX = 3600.0


def _grace_arg(value: str) -> float:
    """``--shutdown-grace``: 0 to SHUTDOWN_GRACE_MAX seconds."""
    seconds = seconds_or_zero_arg(value)
    if seconds > SHUTDOWN_GRACE_MAX:
        raise argparse.ArgumentTypeError(
            f"{value} is too large: give at most {SHUTDOWN_GRACE_MAX:g} seconds"
        )
    return seconds


def _gc_threshold_arg(value: str) -> int:
    """``--gc-threshold``: 0 to GC_THRESHOLD_MAX."""
    count = non_negative_arg(value)
    if count > GC_THRESHOLD_MAX:
        raise argparse.ArgumentTypeError(
            f"{count} is too large: give at most {GC_THRESHOLD_MAX:,} (0 keeps Python's)"
        )
    return count


def _serve_settings() -> tuple[DicomSettings | SettingsDefaults, Exception | None]:
    """The ``ADICOM_*`` settings for ``serve``'s defaults, and what was wrong with them.

    A bad variable must not break the other commands or ``--help``: the
    built-in defaults stand in, and ``serve`` reports the error when it runs.
    Without any ``ADICOM_*`` variable there is nothing to read: the
    defaults, and pydantic is never imported.
    """
    if not settings_in_environment():
        return SETTINGS_DEFAULTS, None
    from pydantic import ValidationError

    from adicom.settings import DicomSettings

    try:
        return DicomSettings(), None
    except ValidationError as exc:
        return DicomSettings.model_construct(), exc


def add_serve(commands: Commands) -> None:
    """The ``serve`` command's options."""
    settings, error = _serve_settings()
    serve = commands.add_parser(
        "serve",
        help="run an SCP until interrupted: C-ECHO, and with --storage an archive (C-STORE, "
        "C-FIND/GET/MOVE, Storage Commitment, MPPS), with --worklist a worklist",
        description="Run an SCP until interrupted. The defaults come from the ADICOM_* "
        "environment variables (adicom.DicomSettings); the flags override them.",
    )
    serve.set_defaults(settings_error=error)
    listen_options(serve, settings)
    tls_server_options(serve, settings)
    archive_options(serve, settings)
    serve.add_argument(
        "--allow",
        action="append",
        metavar="AET",
        type=ae_title_arg,
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
    serve.add_argument(
        "--gc-threshold",
        type=_gc_threshold_arg,
        default=GC_THRESHOLD,
        metavar="N",
        help="let Python's cyclic garbage collector run its youngest pass once N more "
        "container objects exist, instead of Python's default (700 on 3.11). 20,000 saves "
        "~4%% of the instructions of each association made one at a time, but cost 10-20%% "
        "more CPU per instance with 8 associations storing at once (garbage kept longer, "
        "out of the cache): measure your own load. 0 keeps the collector's thresholds as "
        f"they are; at most {GC_THRESHOLD_MAX:,} (default: %(default)s)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_grace_arg,
        default=SHUTDOWN_GRACE,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT: stop listening, close the connections not associated yet "
        "and give the open associations this long to end by themselves (their requestors "
        "release them) before aborting the rest; a second signal aborts them at once. "
        "Every instance acknowledged is kept either way. 0: abort at once "
        "(default: %(default)s)",
    )
    _timeouts(serve, settings)
    _limits(serve)
    _workers_options(serve)


def _workers_options(serve: argparse.ArgumentParser) -> None:
    """``--workers N``: processes accepting on the one port (docs/server.md, "Workers")."""
    serve.add_argument(
        "--workers",
        type=count_arg,
        default=1,
        metavar="N",
        help="serve with N processes, each with its own event loop, all accepting on the one "
        "port (SO_REUSEPORT on Linux), over the one --storage archive; a supervising process "
        "starts them, restarts one that dies and stops them all on SIGTERM or SIGINT. Every "
        "limit (--max-associations, --max-pending, ...) holds per worker (default: %(default)s: "
        "one process, no supervisor)",
    )
    serve.add_argument(
        "--worker-sockets",
        choices=["own", "shared"],
        default=None,
        help="with --workers: 'own', each worker accepts on a listening socket of its own, "
        "all bound with SO_REUSEPORT, and the kernel spreads new connections by a hash of "
        "the peer's address and port; 'shared', all accept on one socket and the first "
        "worker free takes each connection (default: own on Linux, shared elsewhere)",
    )
    # Given by the supervisor to its workers only (adicom.workers).
    serve.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)


def _limits(serve: argparse.ArgumentParser) -> None:
    """What one peer may make the server hold or wait for (docs/server.md, "Limits")."""
    defaults = Limits()
    # (flag, parser of its value, default, metavar, help): one row per limit.
    rows: tuple[tuple[str, Callable[[str], Any], object, str, str], ...] = (
        (
            "--write-behind", non_negative_arg, DEFAULT_WRITE_BEHIND, "BYTES",
            "bytes of a large instance received but not yet written to disk (a slice is "
            "written per loop turn); beyond them the association stops reading until half is "
            "written; 0: write each fragment at once (default: %(default)s)",
        ),
        (
            "--max-pending", count_arg, 128, "N",
            "connections not yet associated, at once (default: %(default)s)",
        ),
        (
            "--max-per-address", count_arg, 64, "N",
            "connections from one address, associated or not (default: %(default)s)",
        ),
        (
            "--backlog", count_arg, None, "N",
            "connections the kernel completes and holds until they are accepted (the listen "
            "backlog; the kernel caps it at net.core.somaxconn); a burst beyond it waits a "
            "second or more for its SYN to be sent again (default: --max-associations, at "
            "least 128)",
        ),
        (
            "--max-command-bytes", count_arg, defaults.max_command, "BYTES",
            "size of one command set (default: %(default)s)",
        ),
        (
            "--max-dataset-bytes", count_arg, defaults.max_dataset, "BYTES",
            "size of a data set held in memory, such as a C-FIND identifier; "
            "beyond it the association is aborted (default: %(default)s)",
        ),
        (
            "--max-n-dataset-bytes", count_arg, defaults.max_n_dataset, "BYTES",
            "size of a DIMSE-N data set (a Storage Commitment request, an MPPS), held "
            "in memory; beyond it the association is aborted (default: %(default)s)",
        ),
        (
            "--turn-budget", seconds_or_zero_arg, DEFAULT_TURN_BUDGET, "SECONDS",
            "work one turn of the event loop does before further input waits for the next "
            "turn, peers that sent little first: bounds a new association's wait when many "
            "send at once; 0: none (default: %(default)s)",
        ),
        (
            "--max-background", count_arg, 256, "N",
            "work DIMSE-N requests leave for later (Storage Commitment reports) pending at "
            "once; beyond it such a request is answered 0x0213 (default: %(default)s)",
        ),
        (
            "--max-pdvs-per-pdu", count_arg, defaults.max_pdvs, "N",
            "PDVs in one P-DATA-TF PDU; beyond it the association is aborted "
            "(default: %(default)s)",
        ),
        (
            "--max-instance-bytes", count_arg, None, "BYTES",
            "size of one C-STORE data set; beyond it the instance is refused with "
            "0xA700 (default: no limit)",
        ),
        (
            "--message-timeout", positive_arg, defaults.message_timeout, "SECONDS",
            "time to receive one whole message, however slowly it trickles "
            "(default: %(default)s)",
        ),
    )  # fmt: skip
    group = serve.add_argument_group("limits (what one peer may make the server spend)")
    for flag, parse, default, metavar, text in rows:
        group.add_argument(flag, type=parse, default=default, metavar=metavar, help=text)


def listen_options(
    serve: argparse.ArgumentParser, settings: DicomSettings | SettingsDefaults
) -> None:
    """Where ``serve`` listens and as which AE title."""
    serve.add_argument(
        "--aet",
        type=ae_title_arg,
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
        type=port_arg,
        default=settings.port,
        help="port, 0 for any free port (ADICOM_PORT; default: %(default)s)",
    )
    serve.add_argument(
        "--max-associations",
        type=int,
        default=500,
        help="open associations allowed at once (default: %(default)s)",
    )


def tls_server_options(
    serve: argparse.ArgumentParser, settings: DicomSettings | SettingsDefaults
) -> None:
    """``serve``'s TLS options."""
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


def archive_options(
    serve: argparse.ArgumentParser, settings: DicomSettings | SettingsDefaults
) -> None:
    """``serve``'s archive options (storage, move destinations, duplicates)."""
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
        type=destination_arg,
        help="a C-MOVE destination (repeatable)",
    )
    serve.add_argument(
        "--storage-sop-class",
        action="append",
        metavar="UID",
        type=uid_arg,
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
        "--index",
        metavar="URL",
        default="",
        help="the archive's index: sqlite:PATH (default: DIR/.adicom-index.sqlite) or "
        "postgresql://USER@HOST:PORT/DB, one database several serve nodes share "
        "(pip install 'adicom[postgresql]'; see docs/deployment.md)",
    )
    serve.add_argument(
        "--index-pool",
        metavar="N",
        type=int,
        default=DEFAULT_INDEX_POOL,
        help="connections at most to a database index (default: %(default)s)",
    )
    serve.add_argument(
        "--index-timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_INDEX_TIMEOUT,
        help="seconds a database index call may take, the wait for a connection included; "
        "beyond it a C-STORE is refused with 0xA700 and a query fails (default: %(default)s)",
    )
    serve.add_argument(
        "--index-max-pending",
        metavar="N",
        type=count_arg,
        default=DEFAULT_MAX_PENDING,
        help="changes of the SQLite index waiting to be written (it is locked by another "
        "process or its disk is full), about 450 bytes each; beyond them (or twice as many "
        "in any case) a C-STORE is refused with 0xA700 until half are written; not used "
        "with a PostgreSQL --index (default: %(default)s)",
    )
    serve.add_argument(
        "--prefer-own-syntax",
        action="store_true",
        help="choose the transfer syntax of each storage context by adicom's order "
        "(uncompressed first) instead of the requestor's (default: the requestor's first "
        "proposed syntax, so instances are kept as sent)",
    )


def _timeouts(serve: argparse.ArgumentParser, settings: DicomSettings | SettingsDefaults) -> None:
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
            type=positive_arg,
            default=value,
            metavar="SECONDS",
            help=f"{text} ({variable}; default: %(default)s)",
        )
