"""User identity (PS3.7 D.3.3.7) with real peers: DCMTK storescu's --user/--password
against ``adicom serve --users --require-identity``.

The users file is made with ``adicom hash-password``, as an operator would.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from tests.interop import data, peers

pytestmark = pytest.mark.interop

HOST = peers.HOST


def test_dcmtk_storescu_with_a_user_and_password(tmp_path: pathlib.Path) -> None:
    made = subprocess.run(
        [*peers.adicom_cli(), "hash-password"],
        input="wonderland\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=peers.subprocess_env(),
    )
    assert made.returncode == 0, made.stderr
    users = tmp_path / "users.toml"
    users.write_text(f'[users.alice]\npassword = "{made.stdout.strip()}"\n')
    sample = str(data.bundled_file("CT_small.dcm"))
    port = peers.free_port()
    argv = [
        *peers.adicom_cli(), "serve", "--aet", "ADICOM", "--host", HOST, "--port", str(port),
        "--storage", str(tmp_path / "archive"), "--users", str(users), "--require-identity",
    ]  # fmt: skip
    storescu = peers.require_dcmtk("storescu")
    with peers.running(argv, name="adicom serve --users") as serve:
        peers.wait_for_port(HOST, port, peers.READY_TIMEOUT, serve)

        def send(*identity: str) -> peers.Finished:
            return peers.run(
                [storescu, "-v", "-to", "10", "-aec", "ADICOM", *identity, HOST, str(port), sample]
            )

        good = send("--user", "alice", "--password", "wonderland", "--pos-response")
        assert good.returncode == 0, f"{good.describe()}\n{serve.describe()}"
        assert "Received Store Response (Success)" in good.stdout + good.stderr
        for identity in ((), ("--user", "alice", "--password", "nope"), ("--user", "bob")):
            refused = send(*identity)
            assert refused.returncode != 0, refused.describe()
            assert "Association Rejected" in refused.stdout + refused.stderr, refused.describe()
        said = serve.stderr()
    assert "no user identity, and one is required" in said
    assert "wrong password for 'alice'" in said
    assert "unknown user 'bob'" in said
    stored = [p for p in (tmp_path / "archive").rglob("*.dcm") if ".incoming" not in p.parts]
    assert len(stored) == 1


def test_pynetdicom_receives_our_identity() -> None:
    # pynetdicom accepts it (its handler prints what it got) but confirms
    # only tokens (types 3-5): for a user name and password it sends no
    # User Identity sub-item in the A-ASSOCIATE-AC, so asking for a positive
    # response fails, and says so.
    with peers.pynetdicom_echo_scp("PYNET-SCP", tls=["--identity"]) as scp:
        assert scp.port is not None
        echo = [*peers.adicom_cli(), "echo", "--aec", "PYNET-SCP", HOST, str(scp.port)]
        ok = peers.run([*echo, "--user", "alice", "--password", "x"])
        assert ok.returncode == 0, f"{ok.describe()}\n{scp.describe()}"
        asked = peers.run([*echo, "--user", "alice", "--password", "x", "--identity-response"])
        assert asked.returncode == 1, asked.describe()
        assert "did not confirm our user identity" in asked.stderr
        seen = [json.loads(line) for line in scp.stdout().splitlines() if '"identity"' in line]
    assert seen == [{"identity": 2, "primary": "alice", "secondary": "x"}] * 2
