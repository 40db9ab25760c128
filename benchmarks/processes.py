"""Child processes: their environment, ports, logs, and running an SCU that asks for SCP samples."""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

from benchmarks.config import HOST, REPO_ROOT
from benchmarks.sides._common import RESULT_PREFIX, SAMPLE_PREFIX

T = TypeVar("T")


class BenchError(RuntimeError):
    """A repetition that produced no valid measurement; `detail` goes to the JSON."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


#: The event loop adicom runs on in the benchmarks unless ADICOM_LOOP says
#: otherwise: asyncio's own, so the rows keep measuring the stock stack (the
#: adicom-uvloop stack, or ADICOM_LOOP=uvloop, measures uvloop).
DEFAULT_LOOP = "asyncio"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ADICOM_LOOP", DEFAULT_LOOP)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def free_port() -> int:
    """A TCP port on HOST that was free a moment ago, for a peer that must be told its port.

    Taken below the kernel's ephemeral range (32768 and up on Linux), so an
    outgoing connection of another process cannot take it in the moment
    before the peer binds it (start_scp also retries on a new port when the
    peer says the address is in use).
    """
    for _ in range(200):  # bounded: a free one is found long before
        port = random.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _parse_result(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise BenchError("SCU printed no result line")


def _relay_output(
    proc: subprocess.Popen[bytes],
    stdin: IO[bytes],
    fd: int,
    deadline: float,
    timeout: float,
    answer: Callable[[str], str],
) -> list[str]:
    """Read the SCU's stdout until it closes; answer SAMPLE lines, return the others."""
    pending, lines = b"", []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            line = raw.decode(errors="replace")
            if line.startswith(SAMPLE_PREFIX):
                try:
                    stdin.write(answer(line[len(SAMPLE_PREFIX) :]).encode() + b"\n")
                    stdin.flush()
                except OSError:
                    pass  # the SCU died; its exit code tells
            else:
                lines.append(line)
    lines.append(pending.decode(errors="replace"))
    return lines


def run_scu(
    argv: list[str], env: dict[str, str], timeout: float, answer: Callable[[str], str]
) -> tuple[int, str, str]:
    """Run the SCU; answer each SAMPLE line on its stdin. (exit code, stdout, stderr)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,  # so that a timeout kills its children too
        )
        assert proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + timeout
        try:
            lines = _relay_output(proc, proc.stdin, proc.stdout.fileno(), deadline, timeout, answer)
            returncode = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            err.seek(0)
            raise BenchError(
                f"SCU did not finish within {exc.timeout:.0f} s",
                {"scu_stderr_tail": err.read().decode(errors="replace")[-3000:]},
            ) from exc
        finally:
            proc.stdin.close()
            proc.stdout.close()
        err.seek(0)
        return returncode, "\n".join(lines), err.read().decode(errors="replace")


def scu_failure(result: dict[str, Any], returncode: int, stderr: str) -> str | None:
    """Why the SCU's run is no measurement (exit code, failed operations), or None."""
    if returncode == 0 and result["ok"] == result["ops"] and "error" not in result["extra"]:
        return None
    why = str(result["extra"].get("error") or last_line(stderr))
    first = first_line(stderr)
    if first and first != why:
        why += f" (stderr: {first})"
    return f"{result['ok']}/{result['ops']} ok, SCU exit code {returncode}: {why}"


def parse_scu_output(stdout: str, returncode: int, stderr: str, scp_err: str) -> dict[str, Any]:
    """The SCU's result line; BenchError (with both stderr tails) if there is none."""
    try:
        return _parse_result(stdout)
    except (BenchError, ValueError) as exc:
        raise BenchError(
            f"SCU exit code {returncode}, no result: {last_line(stderr)}",
            {"scu_stderr_tail": stderr[-3000:], "scp_stderr_tail": scp_err},
        ) from exc


def measurement_error(why: str, result: dict[str, Any], stderr: str, scp_err: str) -> BenchError:
    """A repetition whose SCU reported a result that is no valid measurement."""
    return BenchError(
        why, {"result": result, "scu_stderr_tail": stderr[-3000:], "scp_stderr_tail": scp_err}
    )


def run_on_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``ADICOM_LOOP`` names (default: asyncio's own)."""
    from adicom.cli.common import loop_factory

    factory = loop_factory(os.environ.get("ADICOM_LOOP", DEFAULT_LOOP))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def cpu_seconds() -> tuple[float, float]:
    """This process's CPU time so far: (user + system, system), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime


def callgrind_instructions(pid: int) -> int:
    """Instructions a process under ``valgrind --tool=callgrind`` ran since its last zeroing."""
    out = subprocess.run(
        ["callgrind_control", "-e", "Ir", str(pid)], capture_output=True, text=True
    ).stdout
    return sum(
        int(line.split()[-1].replace(",", ""))
        for line in out.splitlines()
        if line.strip().startswith("Th ")
    )


def end_child(proc: subprocess.Popen[str]) -> None:
    """Close a line-driven child's standard input and wait for it (killed after 60 s)."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
