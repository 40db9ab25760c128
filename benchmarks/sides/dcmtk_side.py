"""DCMTK (OFFIS) tools as peers: storescp as SCP; echoscu, storescu and the Q/R tools as SCU.

DCMTK's SCUs start one process per association, so only workloads where that
can be factored out are offered:

- ``echo-one-assoc``: ``echoscu --repeat N`` (N C-ECHOs on one association;
  checked with -v).
- ``store-small``, ``store-large``: ``storescu`` with the N files on its
  command line (one association, one C-STORE per file, in order).
- ``find-1000``, ``get-1000``, ``move-1000``: ``findscu`` / ``getscu`` /
  ``movescu -S`` (Study Root) for the series (IMAGE level for C-FIND, SERIES
  level for the retrieves); the one-operation version asks for the series'
  first instance only (one match, one sub-operation). findscu logs each match
  (as packaged, at info level) to a file; the matches are counted there.
  getscu writes into --out-dir/timed (warm-ups into --out-dir/warmup).

Every run pays process start, dictionary load, association and release (and
for storescu one C-STORE), so the SCU runs the one-operation version three
times (``--repeat 1``; storescu with one warm-up instance of the same size),
takes the median t1, runs the N-operation version once (tN) and reports N-1
operations in tN - t1 seconds. CPU time likewise, from the child's rusage
(wait4), and the SCP's CPU time likewise, read by the runner around each run.
Peak RSS is the child's (ru_maxrss of the N run).

DCMTK 3.6.2 and later leave Nagle's algorithm on unless the environment
variable TCP_NODELAY is set, and write each P-DATA-TF in two write() calls, so
every message waits for a delayed ACK (about 40 ms on Linux loopback). The
runner sets TCP_NODELAY=1 for DCMTK processes unless told otherwise.

pynetdicom installs console scripts named like DCMTK's (echoscu, storescp),
so a binary counts as DCMTK only if its ``--version`` says so.

Store workloads over mutual TLS (``--tls-dir DIR``, see benchmarks/tls.py):
``storescp +tls server.key server.crt +cf ca.pem`` and ``storescu +tls
client.key client.crt +cf ca.pem``, DCMTK's defaults otherwise: the
Non-downgrading BCP 195 profile, and storescp requires the client's
certificate. Needs a DCMTK built with OpenSSL (``--version`` names it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from benchmarks.data import SeriesKeys
from benchmarks.sides._common import (
    WORKLOADS,
    Measurement,
    ScpClock,
    TlsFiles,
    count_files,
    difference,
    main_with,
    qr_keys,
    store_files,
    tls_files,
    total_bytes,
)

SUPPORTED_SCU_WORKLOADS = frozenset(
    {"echo-one-assoc", "store-small", "store-large", "find-1000", "get-1000", "move-1000"}
)
#: What each query/retrieve workload runs.
QR_TOOLS = {"find-1000": "findscu", "get-1000": "getscu", "move-1000": "movescu"}

#: storescp/storescu accept 4096..131072 for --max-pdu (default 16384); the
#: largest is the closest to adicom's 1 MiB. Used for the store workloads only.
MAX_PDU = 131072
#: Options beyond AE titles, port, directory and timeouts, recorded in the JSON.
STORESCP_STORE_OPTIONS = ("--max-pdu", str(MAX_PDU))
STORESCU_OPTIONS = ("--max-pdu", str(MAX_PDU))


@cache
def find_tool(name: str) -> str | None:
    """Path of the DCMTK binary `name`, or None when no genuine one is found."""
    candidates: list[str] = []
    if env_dir := os.environ.get("DCMTK_BIN"):
        candidates.append(str(Path(env_dir) / name))
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d:
            candidates.append(str(Path(d) / name))
    candidates.append(f"/usr/bin/{name}")
    seen: set[str] = set()
    for c in candidates:
        real = os.path.realpath(c)
        if real in seen or not os.access(real, os.X_OK):
            continue
        seen.add(real)
        try:
            out = subprocess.run(
                [c, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (out.stdout + out.stderr).lower()
        if "dcmtk" in text or "offis" in text:
            return c
    return None


@cache
def openssl_version() -> str | None:
    """The OpenSSL storescp was built with (its --version line), or None: no TLS."""
    tool = find_tool("storescp")
    if tool is None:
        return None
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10)
    for line in out.stdout.splitlines():
        if "openssl" in line.lower():
            return line.strip(" -")
    return None


def tls_options(tls: TlsFiles, *, server: bool) -> list[str]:
    """+tls KEY CERT +cf CA: our key and certificate, and the CA the peer's must chain to."""
    key, cert = (tls.server_key, tls.server_cert) if server else (tls.client_key, tls.client_cert)
    return ["+tls", str(key), str(cert), "+cf", str(tls.ca)]


@cache
def version() -> str | None:
    """The DCMTK version line (e.g. '$dcmtk: echoscu v3.6.7 2022-04-22 $')."""
    tool = find_tool("echoscu")
    if tool is None:
        return None
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10)
    for line in out.stdout.splitlines():
        if "dcmtk" in line.lower():
            return line.strip()
    return None


def scp_command(
    port: int, aet: str, output_dir: str, *, store: bool = False, tls: TlsFiles | None = None
) -> list[str]:
    """storescp serving Verification and Storage on `port` (all interfaces).

    Received instances are written to `output_dir` as files (storescp's
    default: file format, named after the modality and SOP Instance UID).
    With `tls`: over TLS, the client's certificate required (its default).
    """
    tool = find_tool("storescp")
    if tool is None:
        raise RuntimeError("DCMTK storescp not found")
    options = list(STORESCP_STORE_OPTIONS) if store else []
    if tls is not None:
        options += tls_options(tls, server=True)
    return [tool, "-aet", aet, "--output-directory", output_dir, *options, str(port)]


@dataclass
class Run:
    """One run of a DCMTK SCU process."""

    wall_s: float
    cpu_s: float
    max_rss_kib: int
    exit_code: int
    scp_cpu_s: float | None


def _run(cmd: list[str], clock: ScpClock, tag: str, log: Path | None = None) -> Run:
    """Run one DCMTK SCU; its stdout and stderr go to `log` when given."""
    scp0 = clock.read(tag)
    with open(log, "wb") if log is not None else open(os.devnull, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=out if log is not None else sys.stderr)
        _, wait_status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(wait_status)  # so Popen does not wait again
    return Run(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_kib=int(usage.ru_maxrss),
        exit_code=proc.returncode,
        scp_cpu_s=difference(clock.read("end"), scp0),
    )


def _timeouts(args: argparse.Namespace) -> list[str]:
    to = str(max(1, round(args.timeout)))
    return ["-to", to, "-ta", to, "-td", to]


def _echoscu(args: argparse.Namespace, repeat: int, clock: ScpClock, tag: str) -> Run:
    tool = find_tool("echoscu")
    if tool is None:
        raise RuntimeError("DCMTK echoscu not found")
    cmd = [tool, "-aet", args.calling_aet, "-aec", args.aet, *_timeouts(args)]
    if repeat > 1:
        cmd += ["--repeat", str(repeat)]
    cmd += [args.host, str(args.port)]
    return _run(cmd, clock, tag)


def _storescu(args: argparse.Namespace, files: list[Path], clock: ScpClock, tag: str) -> Run:
    tool = find_tool("storescu")
    if tool is None:
        raise RuntimeError("DCMTK storescu not found")
    cmd = [tool, "-aet", args.calling_aet, "-aec", args.aet, *_timeouts(args)]
    if (tls := tls_files(args)) is not None:
        cmd += tls_options(tls, server=False)
    cmd += [*STORESCU_OPTIONS, args.host, str(args.port), *map(str, files)]
    return _run(cmd, clock, tag)


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


def _qr_command(args: argparse.Namespace, keys: SeriesKeys, single: bool, out: Path) -> list[str]:
    """findscu / getscu / movescu -S for the series, or for its first instance only."""
    name = QR_TOOLS[args.workload]
    tool = find_tool(name)
    if tool is None:
        raise RuntimeError(f"DCMTK {name} not found")
    cmd = [tool, "-S", "-aet", args.calling_aet, "-aec", args.aet, *_timeouts(args)]
    sop = keys.first_sop_instance_uid if single else ""
    # C-FIND asks for the series' instances; a retrieve names the series, or one instance.
    level = "IMAGE" if args.workload == "find-1000" or single else "SERIES"
    if args.workload == "get-1000":
        cmd += ["-od", str(out)]
    if args.workload == "move-1000":
        cmd += ["-aem", args.move_dest]
    cmd += ["-k", f"QueryRetrieveLevel={level}"]
    cmd += ["-k", f"StudyInstanceUID={keys.study_instance_uid}"]
    cmd += ["-k", f"SeriesInstanceUID={keys.series_instance_uid}"]
    if args.workload == "find-1000" or single:
        cmd += ["-k", f"SOPInstanceUID={sop}" if sop else "SOPInstanceUID"]
    return [*cmd, args.host, str(args.port)]


def _find_matches(log: Path) -> int:
    """Matches findscu logged: one "Find Response: k (Pending)" line each."""
    text = log.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if "Find Response:" in line and "(Pending)" in line)


def _qr_check(
    args: argparse.Namespace, run: Run, log: Path, out: Path, expected: int
) -> str | None:
    """Why this run did not do its work, or None."""
    tool = QR_TOOLS[args.workload]
    if run.exit_code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return f"{tool} exit code {run.exit_code}: {' | '.join(tail)}"
    if args.workload == "find-1000" and (found := _find_matches(log)) != expected:
        return f"findscu logged {found} matches, {expected} expected"
    if args.workload == "get-1000" and (files := count_files(out)) != expected:
        return f"getscu wrote {files} files, {expected} expected"
    return None


def _run_qr(args: argparse.Namespace, clock: ScpClock) -> Measurement:
    keys = qr_keys(args)
    tool = QR_TOOLS[args.workload]
    logs = Path(tempfile.mkdtemp(prefix="bench-dcmtk-qr-"))
    out_root = args.out_dir or logs
    singles: list[Run] = []
    why: str | None = None
    for i in range(3):
        log, out = logs / f"single-{i}.log", out_root / "warmup" / str(i)
        out.mkdir(parents=True, exist_ok=True)
        run = _run(_qr_command(args, keys, True, out), clock, "single", log)
        singles.append(run)
        why = why or _qr_check(args, run, log, out, 1)
    log, out = logs / "full.log", out_root / "timed"
    out.mkdir(parents=True, exist_ok=True)
    full = _run(_qr_command(args, keys, False, out), clock, "begin", log)
    why = why or _qr_check(args, full, log, out, args.n)
    for f in logs.iterdir():
        f.unlink()
    logs.rmdir()
    t1 = statistics.median(s.wall_s for s in singles)
    c1 = statistics.median(s.cpu_s for s in singles)
    scp1 = _median_or_none([s.scp_cpu_s for s in singles])
    ops = args.n - 1
    seconds = full.wall_s - t1
    extra: dict[str, object] = {
        "tool": f"{tool} -S",
        "method": f"differential: (n-1) in time({tool} for the series of n)"
        f" - time({tool} for its first instance)",
        "wall_n_s": full.wall_s,
        "wall_1_s": [s.wall_s for s in singles],
        "cpu_n_s": full.cpu_s,
        "cpu_1_s": [s.cpu_s for s in singles],
        "scp_cpu_n_s": full.scp_cpu_s,
        "scp_cpu_1_s": [s.scp_cpu_s for s in singles],
        "exit_code": full.exit_code,
        "tcp_nodelay_env": os.environ.get("TCP_NODELAY"),
    }
    if why is not None:
        extra["error"] = why
    return Measurement(
        workload=args.workload,
        ops=ops,
        ok=0 if why is not None else ops,
        seconds=seconds,
        ops_per_s=ops / seconds if seconds > 0 else 0.0,
        cpu_s=max(0.0, full.cpu_s - c1),
        max_rss_kib=full.max_rss_kib,
        warmup=True,
        extra=extra,
        scp_cpu_s=difference(full.scp_cpu_s, scp1),
    )


def run_scu(args: argparse.Namespace) -> Measurement:
    if args.workload not in SUPPORTED_SCU_WORKLOADS:
        raise SystemExit(f"dcmtk SCU does not run {args.workload} fairly (one process per assoc)")
    if args.n < 2:
        raise SystemExit("dcmtk SCU needs -n >= 2 (it reports n-1 operations)")
    clock = ScpClock(args.scp_clock)
    if WORKLOADS[args.workload] == "qr":
        return _run_qr(args, clock)
    store = args.workload.startswith("store")
    # The single-operation runs are both the warm-up and the fixed cost to subtract.
    if store:
        paths, warmups = store_files(args)
        singles = [_storescu(args, [w], clock, "single") for w in warmups[:3]]
        full = _storescu(args, paths, clock, "begin")
        nbytes = total_bytes(paths) - round(statistics.median(total_bytes([w]) for w in warmups))
        tls = " +tls client.key client.crt +cf ca.pem" if args.tls_dir is not None else ""
        tool = "storescu " + " ".join(STORESCU_OPTIONS) + tls + " FILE..."
        method = "differential: (n-1) instances in time(n files) - time(1 file)"
    else:
        singles = [_echoscu(args, 1, clock, "single") for _ in range(3)]
        full = _echoscu(args, args.n, clock, "begin")
        nbytes = 0
        tool = "echoscu --repeat"
        method = "differential: (n-1) echoes in time(--repeat n) - time(--repeat 1)"
    if any(s.exit_code != 0 for s in singles):
        raise SystemExit(f"{tool.split()[0]} with one operation failed")
    t1 = statistics.median(s.wall_s for s in singles)
    c1 = statistics.median(s.cpu_s for s in singles)
    scp1 = _median_or_none([s.scp_cpu_s for s in singles])
    ops = args.n - 1
    seconds = full.wall_s - t1
    ok = ops if full.exit_code == 0 else 0  # DCMTK SCUs stop at the first failure
    extra: dict[str, object] = {
        "tool": tool,
        "method": method,
        "wall_n_s": full.wall_s,
        "wall_1_s": [s.wall_s for s in singles],
        "cpu_n_s": full.cpu_s,
        "cpu_1_s": [s.cpu_s for s in singles],
        "scp_cpu_n_s": full.scp_cpu_s,
        "scp_cpu_1_s": [s.scp_cpu_s for s in singles],
        "exit_code": full.exit_code,
        "tcp_nodelay_env": os.environ.get("TCP_NODELAY"),
    }
    if store:
        extra["warmup_instances"] = len(singles)
    if full.exit_code != 0:
        extra["error"] = f"{tool.split()[0]} exit code {full.exit_code}"
    return Measurement(
        workload=args.workload,
        ops=ops,
        ok=ok,
        seconds=seconds,
        ops_per_s=ops / seconds if seconds > 0 else 0.0,
        cpu_s=max(0.0, full.cpu_s - c1),
        max_rss_kib=full.max_rss_kib,  # of the N-operation DCMTK process
        warmup=True,
        extra=extra,
        bytes=nbytes,
        scp_cpu_s=difference(full.scp_cpu_s, scp1),
    )


def run_scp(args: argparse.Namespace) -> None:
    """For manual use; the runner starts storescp itself (see scp_command)."""
    if args.port == 0:
        raise SystemExit("storescp needs an explicit --port")
    out = args.store_dir or Path(tempfile.mkdtemp(prefix="bench-storescp-"))
    out.mkdir(parents=True, exist_ok=True)
    cmd = scp_command(
        args.port, args.aet, str(out), store=args.store_dir is not None, tls=tls_files(args)
    )
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main_with(__doc__ or "", run_scp, run_scu))
