"""``adicom serve``: run the server (or its workers) until a signal, then drain and stop."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from ssl import SSLContext
from typing import Any

from adicom.archive import Archive
from adicom.audit import AuditLog
from adicom.cli.common import EXIT_FAILED, EXIT_OK, tls_file_error
from adicom.dimse import Limits
from adicom.identity import Users, identity_hook
from adicom.peers import PeerRules
from adicom.server import Server, listen_backlog
from adicom.storage import StoreContext
from adicom.tls import client_context, server_context
from adicom.workers import Supervisor, WorkerError, WorkerLink

__all__ = ["run_serve"]


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
        raise argparse.ArgumentTypeError(f"cannot set up TLS: {tls_file_error(exc)}") from None


async def run_serve(args: argparse.Namespace) -> int:
    """``adicom serve``: run the server until SIGINT or SIGTERM.

    With ``--workers N`` (N > 1) this process supervises N workers, each
    ``adicom serve --worker-fd FD`` with this one's options (see
    :mod:`adicom.workers`).
    """
    if args.settings_error is not None:
        raise args.settings_error
    if args.worker_fd is not None:
        link = await WorkerLink.open(args.worker_fd)
        return await _serve(link.payload, link)
    if args.workers > 1:
        return await _supervise(args)
    return await _serve(args, None)


async def _supervise(args: argparse.Namespace) -> int:
    """Run ``args.workers`` worker processes until SIGINT or SIGTERM."""
    if os.name != "posix":
        raise argparse.ArgumentTypeError("--workers needs a POSIX system")
    # The same checks a worker would fail on, here once and with the usual message.
    _server_ssl(args)
    if args.require_identity and args.users is None:
        raise argparse.ArgumentTypeError("--require-identity needs --users (who to accept)")
    loop = asyncio.get_running_loop()
    # A second signal has the workers abort what is open (Supervisor.abort):
    # they drain on every SIGTERM of their own (see _serve).
    signals = _StopSignals(second_aborts=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals)
    logging_flags = ["-v"] * (args.verbose + getattr(args, "verbose_after", 0))
    if args.debug:
        logging_flags.append("--debug")

    def command(fd: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "adicom",
            *logging_flags,
            "serve",
            "--loop",
            args.loop,
            "--worker-fd",
            str(fd),
        ]

    reuse_port = None if args.worker_sockets is None else args.worker_sockets == "own"
    supervisor = Supervisor(
        command,
        args.workers,
        args.host,
        args.port,
        payload=args,
        backlog=listen_backlog(args.backlog, args.max_associations),
        reuse_port=reuse_port,
        # The workers' own grace, then SIGKILL's usual margin.
        stop_timeout=args.shutdown_grace + 20.0,
    )
    try:
        await supervisor.start()
    except WorkerError as exc:
        print(f"adicom serve: the workers could not start: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    pids = ", ".join(str(pid) for pid in supervisor.pids)
    print(
        f'adicom serve: AE "{args.aet}" listening on {args.host}:{supervisor.port}, '
        f"{args.workers} worker processes (pids {pids})",
        flush=True,
    )

    async def abort_on_second_signal() -> None:
        await signals.stop.wait()
        if args.shutdown_grace:
            print("adicom serve: stopping the workers (signal again to abort now)", flush=True)
        await signals.abort.wait()
        if args.shutdown_grace:
            print("adicom serve: telling the workers to abort their open associations", flush=True)
        supervisor.abort()

    aborting = loop.create_task(abort_on_second_signal())
    try:
        await supervisor.serve(signals.stop)
    except WorkerError as exc:
        print(f"adicom serve: stopped: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        aborting.cancel()
    accepted = ", ".join(str(stats.get("accepted", "?")) for stats in supervisor.stats)
    print(
        f"adicom serve: stopped; associations accepted per worker: {accepted}; "
        f"restarts per worker: {', '.join(map(str, supervisor.restarts))}",
        flush=True,
    )
    return EXIT_OK


async def _serve(args: argparse.Namespace, link: WorkerLink | None) -> int:
    """One server process: on its own (``link`` None) or as a worker of a supervisor."""
    loop = asyncio.get_running_loop()
    # A worker drains on every SIGTERM: under systemd (KillMode=control-group)
    # the unit's SIGTERM reaches it and then its supervisor's, which must not
    # read as "again". On its own, a second signal aborts at once.
    signals = _StopSignals(second_aborts=link is None)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals)
    stop = signals.stop
    orphaned = None
    if link is not None:
        # A worker whose supervisor is gone (killed) stops too.
        def abort() -> None:  # the supervisor's second signal
            stop.set()
            signals.abort.set()

        orphaned = loop.create_task(link.orphaned(on_abort=abort))
        orphaned.add_done_callback(lambda _: stop.set())
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
    if args.index and not args.storage:
        raise argparse.ArgumentTypeError("--index needs --storage (the folder of the files)")
    if args.storage:
        root = Path(args.storage)
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise PermissionError(f"cannot write to the storage folder {root}")
        archive = Archive(
            root,
            on_duplicate=args.on_duplicate,
            fsync=args.fsync,
            index=args.index or None,
            index_pool=args.index_pool,
            index_timeout=args.index_timeout,
            max_pending=args.index_max_pending,
        )
        archive.storage.write_behind = args.write_behind
        destinations = dict(args.move_dest)
        if rules is not None:
            destinations = rules.move_destinations() | destinations
            archive.storage.duplicate_policy = _duplicate_policy(rules)
        options = archive.handlers(destinations, ae_title=args.aet, ssl=tls_client)
    if args.worklist is not None:
        if not args.worklist.is_dir():
            raise argparse.ArgumentTypeError(f"--worklist {args.worklist}: no such folder")
        from adicom.worklist import WorklistFolder  # pydantic, through adicom.values

        worklist = WorklistFolder(args.worklist)
        await worklist.refresh()
        options["on_worklist"] = worklist.find
    first = link is None or link.index == 0
    try:
        server = Server(
            args.aet,
            host=args.host,
            port=args.port,
            max_associations=args.max_associations,
            max_pending=args.max_pending,
            max_per_address=args.max_per_address,
            backlog=args.backlog,
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
            max_background=args.max_background,
            turn_budget=args.turn_budget,
            outgoing_ssl=tls_client,
            **options,
        )
        await server.start(None if link is None else link.sockets)
        try:
            if link is not None:
                link.ready()
            if archive is not None and first:
                # Index what is already there while already answering (the
                # indexing yields to the loop between batches); with
                # workers, worker 0 alone does it.
                await archive.open()
            if link is None:
                print(
                    f'adicom serve: AE "{server.ae_title}" listening on {args.host}:{server.port}',
                    flush=True,
                )
            if tls is not None and first:
                clients = (
                    "client certificates required"
                    if args.tls_require_client_cert
                    else "client certificates checked when sent"
                    if args.tls_ca
                    else "no client certificates"
                )
                print(f"adicom serve: TLS 1.2 or later only; {clients}", flush=True)
            if tls is None and rules is None and not _is_loopback(args.host) and first:
                print(
                    f"adicom serve: warning: {args.host} is reachable from other machines, "
                    "and without --tls-cert or --peers anyone who reaches it may store, "
                    "query and retrieve (see docs/security.md)",
                    file=sys.stderr,
                    flush=True,
                )
            # What exists now (modules, settings, the archive's caches) lives
            # as long as the server: frozen out of the collector's full
            # passes, each of which would walk it again (some 46,000 objects,
            # ~20 ms) while every association waits on the loop.
            thresholds = gc.get_threshold()
            try:
                gc.freeze()
                if args.gc_threshold:
                    # The youngest generation's: see --gc-threshold. Set here,
                    # by the application, never on importing adicom.
                    gc.set_threshold(args.gc_threshold, *thresholds[1:])
                await stop.wait()
            finally:
                gc.set_threshold(*thresholds)
                gc.unfreeze()
            who = "" if link is None else f"worker {link.index} "
            # One write, so that the lines of several workers do not interleave.
            sys.stdout.write(f"adicom serve: {who}stopping ({server.stats})\n")
            sys.stdout.flush()
            await _drain(server, signals, args.shutdown_grace, who)
        finally:
            await server.close()
        if link is not None:
            link.report(server.stats)
    finally:
        if archive is not None:
            await archive.aclose()
        if audit is not None:
            audit.close()
        if link is not None:
            await link.aclose()
        if orphaned is not None:
            orphaned.cancel()
    return EXIT_OK


class _StopSignals:
    """SIGTERM and SIGINT as serve reads them: the first stops it, a second may abort at once.

    Counted, not an event set and cleared: two signals handled in one loop
    turn, before the serving task wakes, are still two.
    """

    def __init__(self, second_aborts: bool) -> None:
        #: Set by the first signal: stop listening, drain.
        self.stop = asyncio.Event()
        #: Set by a second one where ``second_aborts``: abort what is open now.
        self.abort = asyncio.Event()
        self.second_aborts = second_aborts

    def __call__(self) -> None:
        """The loop's handler of each signal."""
        if not self.stop.is_set():
            self.stop.set()
        elif self.second_aborts:
            self.abort.set()


async def _drain(server: Server, signals: _StopSignals, grace: float, who: str) -> None:
    """Close ``server`` giving its open associations ``grace`` seconds to end by themselves.

    The work DIMSE-N handlers left running (a Storage Commitment report)
    has the grace too, with no association open.

    A second SIGTERM or SIGINT (``signals.abort``) ends the wait: what is
    still open is aborted at once. A worker counts no signal as the second;
    its supervisor's second tells it (WorkerLink.orphaned's on_abort).
    """
    if not grace or server.idle:
        return
    open_now = sum(1 for association in server.associations if association.is_established)
    again = " (signal again to abort them now)" if signals.second_aborts else ""
    if open_now:
        sys.stdout.write(
            f"adicom serve: {who}waiting up to {grace:g} s for {open_now} open "
            f"associations to end{again}\n"
        )
        sys.stdout.flush()
    elif server.background:
        # What DIMSE-N handlers left, such as a Storage Commitment report on
        # its way to the peer.
        sys.stdout.write(
            f"adicom serve: {who}waiting up to {grace:g} s for work that "
            f"outlives its association (a Storage Commitment report){again}\n"
        )
        sys.stdout.flush()
    elif server.closing:
        # Associations that ended with our last PDU (a release's answer)
        # still unread by their peers.
        sys.stdout.write(
            f"adicom serve: {who}waiting up to {grace:g} s for {server.closing} "
            f"peer{'s' if server.closing > 1 else ''} to read our last PDU and close{again}\n"
        )
        sys.stdout.flush()
    closing = asyncio.create_task(server.close(grace=grace))
    aborted = asyncio.create_task(signals.abort.wait())
    try:
        done, _ = await asyncio.wait({closing, aborted}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        closing.cancel()  # the close aborts what is open (Server.close), then ends
        await asyncio.wait({closing})
        raise
    finally:
        aborted.cancel()
    if closing not in done:
        sys.stdout.write(f"adicom serve: {who}aborting the open associations\n")
        sys.stdout.flush()
        closing.cancel()  # the close aborts them (Server.close); serve's own close goes on
        await asyncio.wait({closing})
    if not closing.cancelled():
        closing.result()  # its error, if it had one


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
