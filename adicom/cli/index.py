"""``adicom index``: make or upgrade an index's schema, and copy an index to another backend."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adicom.archive.backends import IndexBackend, IndexUnavailable, SQLiteIndex, open_index
from adicom.cli.common import EXIT_OK, EXIT_UNREACHABLE, Commands
from adicom.errors import ArchiveError

__all__ = ["add_index", "run_index"]


def add_index(commands: Commands) -> None:
    """The ``index`` command and its two subcommands."""
    index = commands.add_parser(
        "index",
        help="manage an archive's index: migrate a database's schema, copy between backends",
        description="An index URL is sqlite:PATH (an archive folder's .adicom-index.sqlite) "
        "or postgresql://USER@HOST:PORT/DB.",
    )
    actions = index.add_subparsers(dest="action", required=True)
    migrate = actions.add_parser(
        "migrate",
        help="create the index's tables, or bring them to this adicom's schema version",
    )
    migrate.add_argument("url", metavar="URL")
    copy = actions.add_parser(
        "copy",
        help="copy every row of one index into another (SQLite to PostgreSQL, say); "
        "rows already in the destination are replaced",
    )
    copy.add_argument("source", metavar="SRC")
    copy.add_argument("destination", metavar="DST")
    copy.add_argument(
        "--batch", type=int, default=1000, help="rows per write (default: %(default)s)"
    )


def _open(url: str) -> IndexBackend:
    if url.startswith("sqlite:") and not Path(url.removeprefix("sqlite:")).parent.is_dir():
        raise ArchiveError(f"{url}: no such folder")
    return open_index(url)


async def run_index(args: argparse.Namespace) -> int:
    """``adicom index migrate URL`` and ``adicom index copy SRC DST``.

    A database that does not answer exits 3 (unreachable), as a peer does.
    """
    try:
        return await _run_index(args)
    except IndexUnavailable as exc:
        print(f"adicom index: {exc}", file=sys.stderr, flush=True)
        return EXIT_UNREACHABLE


async def _run_index(args: argparse.Namespace) -> int:
    if args.action == "migrate":
        index = _open(args.url)
        try:
            await index.connect()  # creates or upgrades the schema
        finally:
            index.close()
        print(f"adicom index: {index.url} is up to date", flush=True)
        return EXIT_OK
    if args.batch < 1:
        raise argparse.ArgumentTypeError("--batch must be at least 1")
    source, destination = _open(args.source), _open(args.destination)
    copied = 0
    try:
        await source.connect()
        await destination.connect()
        async for rows in source.rows(args.batch):
            await destination.add_rows(rows)
            await destination.commit()
            copied += len(rows)
        total = await destination.count()
    finally:
        source.close()
        destination.close()
    print(
        f"adicom index: {copied} instances copied from {source.url} to {destination.url} "
        f"(which holds {total})",
        flush=True,
    )
    if isinstance(destination, SQLiteIndex):
        print(
            "adicom index: the files stay where the rows say; an archive opened on another "
            "folder drops the rows of files it does not have",
            file=sys.stderr,
        )
    return EXIT_OK
