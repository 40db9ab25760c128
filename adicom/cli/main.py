"""The parser of every command, and ``main``: run one, map its errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

import pydicom

from adicom.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    loop_factory,
    loop_option,
)
from adicom.errors import DicomError, DicomTimeout, PeerUnreachable
from adicom.version import __version__

__all__ = ["main"]


def logging_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
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


#: Each command's runner: (module, function). A module is imported only for
#: its own command: ``adicom serve`` never loads the client, its pydantic
#: models or tqdm (issue 17: an SCP's footprint).
_RUNNERS = {
    "echo": ("adicom.cli.commands", "run_echo"),
    "serve": ("adicom.cli.serve", "run_serve"),
    "store": ("adicom.cli.commands", "run_store"),
    "find": ("adicom.cli.commands", "run_find"),
    "get": ("adicom.cli.commands", "run_get"),
    "move": ("adicom.cli.commands", "run_move"),
    "demo": ("adicom.cli.commands", "run_demo_command"),
    "hash-password": ("adicom.cli.commands", "run_hash_password"),
    "commit": ("adicom.cli.commands", "run_commit"),
    "index": ("adicom.cli.index", "run_index"),
}


def command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv``: the first word that is not an option.

    The options before the command (``-v``, ``--debug``, ``--version``,
    ``-h``) take no value, so that word is the command, if there is one.
    """
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``serve`` alone when that is the command."""
    parser = argparse.ArgumentParser(
        prog="adicom",
        description="DICOM networking on asyncio, no threads: echo, store, find, get, move and "
        "commit as a client (SCU); serve as an archive with query/retrieve, Storage "
        "Commitment, MPPS and worklist (SCP). Exit codes: 0 success, 1 failed, 2 usage, "
        "3 unreachable, 4 timed out.",
    )
    logging_options(parser, after_command=False)
    parser.add_argument(
        "--version",
        action="version",
        version=f"adicom {__version__} (pydicom {pydicom.__version__})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    if only == "serve":
        from adicom.cli.serveoptions import add_serve

        add_serve(commands)
        for sub in commands.choices.values():
            logging_options(sub, after_command=True)
            loop_option(sub)
        return parser
    from adicom.cli.commands import add_commit, add_echo, add_find, add_retrieve, add_store
    from adicom.cli.index import add_index
    from adicom.cli.serveoptions import add_serve
    from adicom.identity import DEFAULT_COST

    add_echo(commands)
    add_serve(commands)
    add_store(commands)
    add_find(commands)
    for name, text in (
        ("get", "retrieve to a folder (C-GET)"),
        ("move", "have the peer send to an AE title (C-MOVE)"),
    ):
        add_retrieve(commands, name, text)
    add_commit(commands)
    add_index(commands)
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
        logging_options(command, after_command=True)
        loop_option(command)
    return parser


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Put SIGINT's and SIGTERM's handlers back as they were after a command.

    ``adicom serve`` handles both on its loop; asyncio's loop gives them
    back when it closes, uvloop's does not, which would leave a program
    that called :func:`main` deaf to Ctrl-C.
    """
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                with contextlib.suppress(ValueError):  # not the main thread: nothing was set
                    signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_of(argv)).parse_args(argv)
    verbose = args.verbose + getattr(args, "verbose_after", 0)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.debug:
        # The PDU and DIMSE dumps are subscribers of adicom.events that
        # attach to an association when its logger is enabled (at DEBUG).
        logging.getLogger("adicom").setLevel(logging.DEBUG)
    module, name = _RUNNERS[args.command]
    runner: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
    runner = getattr(importlib.import_module(module), name)
    try:
        with _signal_handlers_kept(), asyncio.Runner(loop_factory=loop_factory(args.loop)) as run:
            loop = run.get_loop()
            logging.getLogger("adicom.cli").info(
                "event loop: %s.%s", type(loop).__module__, type(loop).__qualname__
            )
            return run.run(runner(args))
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
    # pydantic is loaded only by the commands that use it (serve with an
    # ADICOM_* variable, the client's queries): no other raised this.
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        # One line per problem, without pydantic's links and input dumps.
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "query"
            message = str(error["msg"]).removeprefix("Value error, ")
            if exc.title == "DicomSettings":
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
