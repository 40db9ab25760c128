"""The probe and attacker processes as the runner sees them: READY, GO, stop, RESULT."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from benchmarks.adversity.peer import GO, READY, RESULT
from benchmarks.adversity.scps import QUIET_BLAS
from benchmarks.config import REPO_ROOT
from benchmarks.processes import child_env, tail


class Side:
    """A side process in its own session; its stderr goes to `err_path`."""

    def __init__(self, argv: list[str], err_path: Path) -> None:
        self.err_path = err_path
        with err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=child_env(QUIET_BLAS),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin: IO[bytes] = self.proc.stdin
        self._stdout = self.proc.stdout.fileno()
        self._pending = b""

    def _line(self, prefix: str, timeout: float) -> str | None:
        """The next stdout line starting with `prefix` (others skipped); None at EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._pending:
                raw, self._pending = self._pending.split(b"\n", 1)
                line = raw.decode(errors="replace")
                if line.startswith(prefix):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._stdout], [], [], remaining)
            if ready:
                chunk = os.read(self._stdout, 1 << 16)
                if not chunk:
                    return None
                self._pending += chunk

    def wait_ready(self, timeout: float) -> bool:
        return self._line(READY, timeout) is not None

    def go(self) -> None:
        self._write(f"{GO}\n".encode())

    def _write(self, data: bytes) -> None:
        try:
            self._stdin.write(data)
            self._stdin.flush()
        except OSError:
            pass  # it died; its missing result says so

    def stop(self) -> None:
        """Close its stdin: it stops now and reports."""
        with contextlib.suppress(OSError):
            self._stdin.close()

    def result(self, timeout: float) -> dict[str, Any] | None:
        """Its RESULT (None if it printed none within `timeout`); then wait for it to exit."""
        line = self._line(RESULT, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if line is None:
            return None
        try:
            parsed: dict[str, Any] = json.loads(line[len(RESULT) :])
        except ValueError:
            return None
        return parsed

    def stderr_tail(self) -> str:
        return tail(self.err_path, 3000)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.stop()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
