"""No threads, counted by the kernel: the process's threads before and after real work.

The other no-thread tests count Python's threads (``threading.active_count``).
A thread that C code starts is not among them: libuv's pool, where uvloop
resolves an address it cannot read as one, or a library's own workers. The
kernel counts every thread of a process (``Threads:`` in /proc/self/status).
A fresh interpreter per event loop runs the demo's whole story (an archive
and a storage SCP; store, echo, find, get, move through DicomClient), then
connects by every form of address adicom takes without a lookup thread
(a name, other numeric forms, IPv6, the host's scoped link-local addresses)
and over TLS, and reports its count before and after. A pool once started
keeps its threads, so any start shows at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import asyncio, json, pathlib, sys, tempfile

import trustme

import adicom
from adicom.demo import run_demo
from adicom.tls import client_context, server_context
from tests.test_client_connect import link_local_addresses


def threads() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise SystemExit("no Threads: line")


async def main() -> dict[str, object]:
    before = threads()  # imports done (numpy's OpenBLAS threads, if installed, counted)
    code = await run_demo()
    forms = {"127.0.0.1": ["localhost", "127.1", "0x7f.1"], "::": ["::1", *link_local_addresses()]}
    for listen, hosts in forms.items():
        async with adicom.Server("ANY-SCP", host=listen, port=0) as server:
            for host in hosts:
                async with adicom.connect(host, server.port, called_ae="ANY-SCP") as assoc:
                    assert await assoc.echo() == 0, host
    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as folder:
        cert, ca_pem = pathlib.Path(folder, "server.pem"), pathlib.Path(folder, "ca.pem")
        ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
            str(cert)
        )
        ca.cert_pem.write_to_path(str(ca_pem))
        tls = server_context(cert=cert)
        for listen, hosts in forms.items():
            async with adicom.Server("TLS-SCP", host=listen, port=0, ssl=tls) as server:
                for host in hosts:
                    async with adicom.connect(
                        host,
                        server.port,
                        called_ae="TLS-SCP",
                        ssl=client_context(ca=ca_pem),
                        server_hostname="localhost",
                    ) as assoc:
                        assert await assoc.echo() == 0, host
    return {"before": before, "after": threads(), "demo": code, "forms": forms}


if sys.argv[1] == "uvloop":
    import uvloop

    result = uvloop.run(main())
else:
    result = asyncio.run(main())
print("RESULT " + json.dumps(result))
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_real_work_starts_no_thread_the_kernel_would_count(loop: str) -> None:
    if not Path("/proc/self/status").exists():  # pragma: no cover - not Linux
        pytest.fail("this test reads /proc/self/status (Linux)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADICOM_")}
    finished = subprocess.run(
        [sys.executable, "-c", PROBE, loop],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert finished.returncode == 0, finished.stderr
    (line,) = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["demo"] == 0, finished.stdout
    assert result["after"] == result["before"], (result, finished.stderr)
