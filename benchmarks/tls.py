"""Certificates for the TLS stacks (adicom-tls, dcmtk-tls), and a probe of adicom's TLS.

One CA, a server certificate (127.0.0.1, localhost) and a client certificate,
made with trustme (a dev dependency) once per runner process into a scratch
folder that is removed when the runner exits. The sides get the folder as
``--tls-dir DIR`` (see ``TLS_FILES`` in ``sides/_common.py``); every TLS row
is mutual TLS: the SCP requires the client's certificate, both chains are
checked against the CA.

``python -m benchmarks.tls probe DIR`` (run by the runner in a child process,
which keeps adicom out of the runner) opens one association over TLS from
``adicom.connect`` to an ``adicom.Server`` with the folder's certificates and
prints what was negotiated, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.config import REPO_ROOT
from benchmarks.processes import child_env
from benchmarks.sides._common import TLS_FILES


def trustme_missing() -> str | None:
    """Why no certificates can be made here, or None."""
    if importlib.util.find_spec("trustme") is None:
        return "trustme (a dev dependency, makes the certificates) is not installed"
    return None


@cache
def tls_dir() -> Path:
    """The folder of CA, server and client certificates and keys, made on first use."""
    import trustme

    root = Path(tempfile.mkdtemp(prefix="adicom-bench-tls-"))
    atexit.register(shutil.rmtree, root, True)
    org = "adicom benchmarks"
    ca = trustme.CA(organization_name=org)
    server = ca.issue_cert("127.0.0.1", "localhost", common_name="bench-scp", organization_name=org)
    client = ca.issue_cert("bench-scu.invalid", common_name="bench-scu", organization_name=org)
    ca.cert_pem.write_to_path(str(root / TLS_FILES.ca))
    server.private_key_pem.write_to_path(str(root / TLS_FILES.server_key))
    server.cert_chain_pems[0].write_to_path(str(root / TLS_FILES.server_cert))
    client.private_key_pem.write_to_path(str(root / TLS_FILES.client_key))
    client.cert_chain_pems[0].write_to_path(str(root / TLS_FILES.client_cert))
    return root


@cache
def probe_adicom() -> tuple[dict[str, Any] | None, str | None]:
    """(what adicom negotiates with itself, None), or (None, why it failed); once per process."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.tls", "probe", str(tls_dir())],
            cwd=REPO_ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "the TLS probe timed out"
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return None, "TLS probe: " + (lines[-1] if lines else f"exit code {out.returncode}")
    info: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return info, None


# --------------------------------------------------------------------------- the probe (child)


async def _probe(folder: Path) -> dict[str, Any]:
    import adicom
    from adicom.tls import client_context, server_context

    files = TLS_FILES.under(folder)
    server = adicom.Server(
        ae_title="TLS-PROBE",
        host="127.0.0.1",
        port=0,
        ssl=server_context(
            cert=files.server_cert, key=files.server_key, ca=files.ca, require_client_cert=True
        ),
    )
    client = client_context(ca=files.ca, cert=files.client_cert, key=files.client_key)
    async with (
        server,
        adicom.connect(
            "127.0.0.1", int(server.port), called_ae="TLS-PROBE", timeout=10, ssl=client
        ) as assoc,
    ):
        status = await assoc.echo()
        tls = assoc.tls
    if status != 0x0000 or tls is None:
        raise RuntimeError(f"C-ECHO over TLS: status {status:#06x}, tls {tls!r}")
    return {"version": tls.version, "cipher": tls.cipher}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("probe", help="one adicom association over mutual TLS; print JSON")
    probe.add_argument("dir", type=Path)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_probe(args.dir))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
