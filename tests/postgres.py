"""A throw-away PostgreSQL cluster for the tests: initdb into a temporary folder, a free port.

PostgreSQL refuses to run as root, so under root the server runs as a
system user (``postgres``, which the Debian package makes; created when
missing) through ``runuser``. The cluster listens on 127.0.0.1 only, trusts
local connections, and is removed when stopped. When PostgreSQL cannot be
started the tests that need it fail with the reason: they never skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.peers import free_port

#: The user the server runs as when the tests run as root.
SERVER_USER = os.environ.get("ADICOM_TEST_PG_USER", "postgres")
#: The database superuser the tests connect as.
SUPERUSER = "adicom"


def _bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not versions:
        raise RuntimeError(
            "PostgreSQL is not installed (no initdb): apt-get install postgresql "
            "(the README's test command does)"
        )
    return Path(versions[-1]).parent


class Cluster:
    """One PostgreSQL server in a temporary folder; :meth:`start`, :meth:`stop`, :meth:`url`."""

    def __init__(self) -> None:
        self.bin = _bindir()
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            _ensure_user(SERVER_USER)
            self.as_user = ["runuser", "-u", SERVER_USER, "--"]
        self.folder = Path(tempfile.mkdtemp(prefix="adicom-pg-"))
        if self.as_user:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
            "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        self.databases = 0

    def _run(self, *command: str, timeout: float = 60) -> str:
        result = subprocess.run(
            [*self.as_user, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{result.stderr.strip()} {log[-2000:]}"
            )
        return result.stdout

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        # fsync off: a test's data need not survive the machine. Commits stay
        # synchronous: the fault tests stop the server with -m immediate (a
        # crash), which must lose nothing committed.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            "-c fsync=off -c full_page_writes=off "
            "-c max_connections=100"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server at once (connections are cut)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and remove its folder."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """The URL of ``database`` on this server."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database; its URL."""
        self.databases += 1
        name = f"test{self.databases}"
        self._run(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
            "-U", SUPERUSER, name,
        )  # fmt: skip
        return self.url(name)


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """A started cluster, removed at the end."""
    made = Cluster()
    try:
        made.start()
        yield made
    finally:
        made.remove()


BACKENDS = ["sqlite", "postgresql"]


def index_for(request: pytest.FixtureRequest) -> str | None:
    """The ``index`` argument of an Archive for a test parametrized over BACKENDS."""
    if request.param == "sqlite":
        return None
    server: Cluster = request.getfixturevalue("postgres")
    return server.new_database()
