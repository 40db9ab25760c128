"""Loop citizenship and footprint: a C-ECHO's latency while large instances stream in.

    python -m benchmarks.bulkload                       # adicom serve (twice) and storescp, 3 reps
    python -m benchmarks.bulkload --scp adicom --reps 5 -n 10

Per repetition and SCP (``adicom serve --storage DIR``, as a user runs it, or
DCMTK's ``storescp --fork +B``, each in its own session, fresh folder, free port):

1. Start the SCP; after IDLE_S seconds read its resident memory: **idle RSS**.
2. Start the probe (``python -m benchmarks.bulkload probe``, an adicom client):
   it opens one association and has one C-ECHO answered, then says READY.
3. GO: the probe sends a C-ECHO every ECHO_INTERVAL on that open association
   and records each latency; after PROBE_LEAD seconds DCMTK's ``storescu``
   (``TCP_NODELAY=1``, ``--max-pdu 131072``, one association) sends N
   instances of ~52 MB (``mfsc-100x512x512``, as in store-large) to the SCP.
   Meanwhile the runner reads the SCP's memory every SAMPLE_INTERVAL:
   **receiving RSS** is the largest sample (and adicom's VmHWM).
4. When storescu is done the probe stops and reports p50, p99 and max of the
   echoes answered while the load ran (and those before it, as a baseline);
   the SCP must hold N files; it is stopped (SIGTERM).

An echo that waits behind the SCP's work on the bulk association shows how
long that work holds adicom's one event loop (each callback of it: writing a
slice of a data set to disk, reading a PDU, ...). storescp --fork serves the
probe in a process of its own, so its row is the machine's own noise:
scheduling on shared cores, the page cache. Compare the rows of one run.

RSS: adicom's VmRSS; storescp's the PSS summed over its session (parent and
children, shared pages once). ``pydantic`` says whether the adicom SCP had
pydantic loaded (its core library mapped, ``/proc/PID/maps``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.config import DEFAULT_DATA, HOST, REPO_ROOT
from benchmarks.data import LARGE, cache_dir, ensure, instance_paths
from benchmarks.processes import BenchError, child_env

#: Seconds the SCP sits idle before its idle RSS is read.
IDLE_S = 1.0
#: Seconds between two of the probe's C-ECHOs (the next starts on schedule,
#: or at once when the previous one took longer).
ECHO_INTERVAL = 0.005
#: Seconds the probe echoes before storescu starts.
PROBE_LEAD = 0.5
#: Seconds between two reads of the SCP's memory.
SAMPLE_INTERVAL = 0.05
#: Seconds one C-ECHO may take before it counts as failed.
ECHO_TIMEOUT = 5.0
READY_TIMEOUT = 30.0
#: storescu's time limit per instance (s), and at least.
STORE_TIMEOUT_PER_INSTANCE = 30.0
DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "bulkload.json"
SCPS = ("adicom", "adicom-deps", "dcmtk")
#: adicom-deps: ``adicom serve`` as an install of adicom with its own
#: dependencies runs it. This venv also holds numpy, Pillow and requests (for
#: matplotlib and mkdocs-material), which pydicom imports whenever it finds
#: them (~20 MB of the server's memory); here the server cannot find them.
_DEPS_ONLY = (
    "import sys\n"
    "for name in ('numpy', 'PIL', 'requests'):\n"
    "    sys.modules[name] = None\n"
    "from adicom.cli import main\n"
    "sys.exit(main())"
)


def _adicom_deps_only(port: int, store: Path, extra: Sequence[str]) -> list[str]:
    from benchmarks.adversity.pdus import CALLED_AE

    return [sys.executable, "-c", _DEPS_ONLY, "serve", "--aet", CALLED_AE, "--host", HOST,
            "--port", str(port), "--storage", str(store), *extra]  # fmt: skip


def _kind(name: str) -> Any:
    from benchmarks.adversity.scps import KINDS, ScpKind

    if name == "adicom-deps":
        adicom = KINDS["adicom"]
        return ScpKind(name, _adicom_deps_only, adicom.unavailable, ready_text=adicom.ready_text)
    return KINDS[name]


# -- the probe (a side process) ----------------------------------------------------------


async def _probe(port: int, called_ae: str) -> None:
    from adicom import open_association
    from benchmarks.adversity.peer import serve_side

    state: dict[str, Any] = {}

    async def prepare() -> None:
        assoc = await open_association(
            HOST, port, calling_ae="BULK-PROBE", called_ae=called_ae, timeout=ECHO_TIMEOUT
        )
        await assoc.echo()
        state["assoc"] = assoc

    async def work(stop: asyncio.Event) -> dict[str, Any]:
        assoc = state["assoc"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        echoes: list[tuple[float, float]] = []  # (seconds after GO, latency)
        failures: list[str] = []
        due = started
        while not stop.is_set():
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due + ECHO_INTERVAL, loop.time())
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(ECHO_TIMEOUT):
                    await assoc.echo()
            except (Exception, TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:120])
                break
            echoes.append((loop.time() - started, time.perf_counter() - sent))
        if not failures:
            await assoc.release()
        return {"echoes": [[round(t, 4), round(s, 6)] for t, s in echoes], "failures": failures}

    await serve_side(prepare, work)


# -- one row -------------------------------------------------------------------------------


def _ms_summary(latencies_s: list[float]) -> dict[str, Any]:
    from benchmarks.adversity.peer import percentile

    ms = sorted(x * 1000 for x in latencies_s)
    return {
        "echoes": len(ms),
        "p50_ms": None if not ms else round(percentile(ms, 0.50) or 0.0, 3),
        "p99_ms": None if not ms else round(percentile(ms, 0.99) or 0.0, 3),
        "max_ms": None if not ms else round(ms[-1], 3),
    }


def _pydantic_loaded(pid: int) -> bool | None:
    try:
        return "pydantic_core" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


def _is_dicom_file(path: Path) -> bool:
    """A whole DICOM file (not the archive's index, not a temporary file)."""
    if not path.is_file() or ".incoming" in path.parts:
        return False
    with path.open("rb") as f:
        return f.read(132)[128:] == b"DICM"


def _storescu_argv(port: int, called_ae: str, files: Sequence[Path]) -> list[str]:
    from benchmarks.sides import dcmtk_side

    tool = dcmtk_side.find_tool("storescu")
    if tool is None:
        raise BenchError("no DCMTK storescu found: it is the load")
    return [tool, "--max-pdu", "131072", "-aet", "BULK-SCU", "-aec", called_ae, HOST,
            str(port), *map(str, files)]  # fmt: skip


def run_row(scp_name: str, files: Sequence[Path]) -> dict[str, Any]:
    """One repetition against one SCP; `error` says why it has no figures."""
    from benchmarks.adversity.children import Side
    from benchmarks.adversity.pdus import CALLED_AE
    from benchmarks.adversity.scps import start_scp

    kind = _kind(scp_name)
    row: dict[str, Any] = {"scp": scp_name, "instances": len(files)}
    why = kind.unavailable()
    if why is not None:
        return {**row, "error": why}
    # storescp: +B writes each data set as it arrives (bit-preserving), as
    # adicom does, instead of decoding it in memory first.
    extra = ["--max-pdu", "131072", "+B"] if scp_name == "dcmtk" else []
    with tempfile.TemporaryDirectory(prefix="bulkload-") as tmp:
        work = Path(tmp)
        probe: Side | None = None
        try:
            scp = start_scp(kind, work, extra)
        except BenchError as exc:
            return {**row, "error": str(exc), **exc.detail}
        try:
            time.sleep(IDLE_S)
            idle = scp.sample()
            row["rss_idle_kib"] = idle.get("rss_kib")
            argv = [sys.executable, "-m", "benchmarks.bulkload", "probe", "--port",
                    str(scp.port), "--called-ae", CALLED_AE]  # fmt: skip
            probe = Side(argv, work / "probe.err")
            if not probe.wait_ready(READY_TIMEOUT):
                raise BenchError("probe not ready", {"probe_stderr": probe.stderr_tail()})
            probe.go()
            time.sleep(PROBE_LEAD)
            row.update(_load(scp, files, CALLED_AE))
            probe.stop()
            result = probe.result(ECHO_TIMEOUT + 10)
            if result is None:
                raise BenchError("no result from the probe", {"probe_stderr": probe.stderr_tail()})
            row.update(_probe_figures(result, row))
            stored = [p for p in (work / "store").rglob("*") if _is_dicom_file(p)]
            row["stored_files"] = len(stored)
            if len(stored) != len(files):
                raise BenchError(f"the SCP holds {len(stored)} files, {len(files)} were sent")
            row["stop"] = scp.stop()
        except BenchError as exc:
            row.update({"error": str(exc), **exc.detail})
        finally:
            if probe is not None:
                probe.kill()
            scp.kill()
    return row


def _load(scp: Any, files: Sequence[Path], called_ae: str) -> dict[str, Any]:
    """storescu sends `files`; the SCP's memory is read meanwhile."""
    argv = _storescu_argv(scp.port, called_ae, files)
    limit = STORE_TIMEOUT_PER_INSTANCE * max(1, len(files))
    rss_max = 0
    pydantic = _pydantic_loaded(scp.proc.pid) if scp.kind.name.startswith("adicom") else None
    started = time.monotonic()
    with subprocess.Popen(
        argv,
        env=child_env({"TCP_NODELAY": "1"}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as load:
        while load.poll() is None:
            if time.monotonic() - started > limit:
                load.kill()
                load.wait()
                raise BenchError(f"storescu took more than {limit:.0f} s")
            rss_max = max(rss_max, scp.sample().get("rss_kib") or 0)
            time.sleep(SAMPLE_INTERVAL)
        seconds = time.monotonic() - started
        err = load.stderr.read().decode(errors="replace") if load.stderr else ""
    if load.returncode != 0:
        raise BenchError(
            f"storescu exited with {load.returncode}", {"storescu_stderr": err[-2000:]}
        )
    after = scp.sample()
    size = sum(p.stat().st_size for p in files)
    return {
        "load_s": round(seconds, 3),
        "load_mb_per_s": round(size / seconds / 1e6, 1),
        "rss_receiving_kib": max(rss_max, after.get("rss_kib") or 0),
        "vmhwm_kib": after.get("peak_rss_kib"),
        "pydantic": pydantic,
    }


def _probe_figures(result: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The echoes answered while storescu ran, and those before it."""
    if result.get("failures"):
        raise BenchError(f"probe echo failed: {result['failures'][0]}")
    loaded_from, loaded_to = PROBE_LEAD, PROBE_LEAD + row["load_s"]
    before = [lat for at, lat in result["echoes"] if at < loaded_from]
    during = [lat for at, lat in result["echoes"] if loaded_from <= at <= loaded_to]
    if len(during) < 3:
        raise BenchError(f"only {len(during)} echoes answered while storescu ran")
    slowest = sorted(([at, round(lat * 1000, 3)] for at, lat in result["echoes"]),
                     key=lambda e: -e[1])[:5]  # fmt: skip
    return {
        "echo_loaded": _ms_summary(during),
        "echo_quiet": _ms_summary(before),
        "slowest_echoes": slowest,  # [seconds after GO, ms]
    }


# -- the run -------------------------------------------------------------------------------


def _median(rows: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for row in rows:
        value: Any = row
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(value)
    return statistics.median(values) if values else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per SCP: the medians over its good repetitions, and how many failed."""
    out: dict[str, dict[str, Any]] = {}
    for scp in dict.fromkeys(r["scp"] for r in rows):
        mine = [r for r in rows if r["scp"] == scp]
        good = [r for r in mine if "error" not in r]
        worst = [r["echo_loaded"]["max_ms"] for r in good]
        out[scp] = {
            "reps": len(good),
            "failed": len(mine) - len(good),
            "errors": [r["error"] for r in mine if "error" in r],
            "p50_ms": _median(good, "echo_loaded", "p50_ms"),
            "p99_ms": _median(good, "echo_loaded", "p99_ms"),
            "max_ms": _median(good, "echo_loaded", "max_ms"),
            "worst_max_ms": max(worst) if worst else None,
            "quiet_p50_ms": _median(good, "echo_quiet", "p50_ms"),
            "mb_per_s": _median(good, "load_mb_per_s"),
            "rss_idle_mib": _mib(_median(good, "rss_idle_kib")),
            "rss_receiving_mib": _mib(_median(good, "rss_receiving_kib")),
            "pydantic": next((r.get("pydantic") for r in good), None),
        }
    return out


def _mib(kib: float | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def render(summary: dict[str, dict[str, Any]], n: int, mb: float) -> str:
    """The table: one line per SCP (`n` instances of `mb` MB each)."""
    head = (
        f"C-ECHO on an open association while storescu sends {n} x {mb:.1f} MB"
        " (ms; medians over reps)"
    )
    cols = ("SCP", "p50", "p99", "max", "worst max", "quiet p50", "MB/s", "RSS idle MiB",
            "RSS receiving MiB", "pydantic", "reps")  # fmt: skip
    lines = [head, "  ".join(cols)]
    for scp, s in summary.items():

        def f(v: Any) -> str:
            return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

        reps = f"{s['reps']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
        name = {
            "adicom": "adicom serve --storage",
            "adicom-deps": "adicom serve --storage (adicom's deps only)",
            "dcmtk": "storescp --fork +B",
        }.get(scp, scp)
        keys = ("p50_ms", "p99_ms", "max_ms", "worst_max_ms", "quiet_p50_ms", "mb_per_s",
                "rss_idle_mib", "rss_receiving_mib", "pydantic")  # fmt: skip
        lines.append("  ".join([name, *(f(s[k]) for k in keys), reps]))
        lines.extend(f"  {scp} failed: {e}" for e in s["errors"])
    return "\n".join(lines)


def run(
    scps: Sequence[str], reps: int, n: int, data_dir: Path, frames: int | None = None
) -> dict[str, Any]:
    """Every repetition, round-robin over the SCPs; the rows and their summary."""
    spec = LARGE if frames is None else replace(LARGE, name=f"mfsc-{frames}x512x512", frames=frames)
    ensure(data_dir, spec, n)
    files = instance_paths(cache_dir(data_dir, spec), n)
    rows = [run_row(scp, files) for _ in range(reps) for scp in scps]
    return {"instances": n, "bytes_per_file": files[0].stat().st_size, "rows": rows,
            "summary": summarize(rows)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bulkload``: run, print the table, write the JSON."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["probe"]:
        p = argparse.ArgumentParser(prog="benchmarks.bulkload probe")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--called-ae", required=True)
        probe_args = p.parse_args(args[1:])
        asyncio.run(_probe(probe_args.port, probe_args.called_ae))
        return 0
    p = argparse.ArgumentParser(prog="benchmarks.bulkload", description=__doc__.split("\n")[0])
    p.add_argument("--scp", action="append", choices=SCPS, help="repeatable (default: all three)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("-n", type=int, default=10, help="instances per repetition (default 10)")
    p.add_argument("--frames", type=int, help="frames per instance (default 100: ~52 MB)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ns = p.parse_args(args)
    out = run(ns.scp or list(SCPS), ns.reps, ns.n, ns.data_dir, ns.frames)
    print(render(out["summary"], ns.n, out["bytes_per_file"] / 1e6))
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(out, indent=1) + "\n")
    return 1 if any(s["failed"] or not s["reps"] for s in out["summary"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
