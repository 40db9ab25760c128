"""The command line as a user runs it: exit codes and the one line that says why."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys

import pytest


def adicom(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adicom", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_demo_exits_zero_and_reports() -> None:
    result = adicom("demo")
    assert result.returncode == 0, result.stderr
    assert "adicom demo: all 7 steps checked out" in result.stdout
    assert sum(line.startswith("  ok ") for line in result.stdout.splitlines()) == 7


@pytest.mark.anyio
async def test_demo_fails_when_a_step_does_not_check_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from adicom import demo

    real_store = demo.store

    async def lossy_store(host: str, port: int, sources: list[object], **kw: object) -> object:
        return await real_store(host, port, list(sources)[1:], **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(demo, "store", lossy_store)
    assert await demo.run_demo() == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "steps FAILED" in out


def test_echo_to_a_closed_port_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = adicom("echo", "127.0.0.1", str(port))
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f"adicom echo: cannot connect to 127.0.0.1:{port}: Connection refused"
    ]


def test_echo_to_a_silent_peer_times_out() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # the kernel accepts; nobody ever answers
        result = adicom("echo", "--timeout", "0.5", "127.0.0.1", str(sock.getsockname()[1]))
    assert result.returncode == 4
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("adicom echo: association timeout after 0.5 s")


@pytest.mark.parametrize(
    "args",
    [
        ["echo", "127.0.0.1", "70000"],
        ["echo", "--aet", "A" * 17, "127.0.0.1", "104"],
        ["echo", "--aec", "BACK\\SLASH", "127.0.0.1", "104"],
        ["echo", "--timeout", "-1", "127.0.0.1", "104"],
        ["serve", "--port", "x"],
        ["serve", "--move-dest", "NOPORT=127.0.0.1"],
        ["get", "-k", "SeriesInstanceUID=1.2", "--out", "/tmp/x", "127.0.0.1", "104"],
        [
            "move",
            "-k",
            "StudyInstanceUID=1.2",
            "-k",
            "PatientID=9",
            "--dest",
            "D",
            "127.0.0.1",
            "104",
        ],
        ["find", "-L", "IMAGE", "-k", "StudyInstanceUID=1.2.*", "127.0.0.1", "104"],
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    result = adicom(*args)
    assert result.returncode == 2
    # argparse's usage error, or our own one line per problem; never a traceback.
    assert result.stderr.startswith(("usage:", f"adicom {args[0]}:"))
    assert "Traceback" not in result.stderr


def test_serve_on_a_taken_port_says_so() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        result = adicom("serve", "--host", "127.0.0.1", "--port", str(sock.getsockname()[1]))
    assert result.returncode == 1
    assert "address already in use" in result.stderr


# -- find / get / move against an in-process SCP -------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    """The CLI in a subprocess, awaited without blocking the SCP on this loop."""
    import asyncio

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", *args,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.anyio
async def test_find_get_move_from_the_command_line(tmp_path: pathlib.Path) -> None:
    import json

    import adicom
    from tests.test_dicomclient import Tree, build_tree

    tree = Tree(build_tree())
    received = adicom.MemoryStorage()
    async with adicom.Server("DEST", port=0, storage=received) as destination:
        async with adicom.Server(
            "PACS", port=0, on_find=tree.find, on_get=tree.retrieve, on_move=tree.retrieve,
            move_destinations={"DEST": ("127.0.0.1", destination.port)},
        ) as server:  # fmt: skip
            peer = ["--aec", "PACS", "127.0.0.1", str(server.port)]
            code, out, err = await run_cli("find", "-k", "PatientID=PAT1", "--json", *peer)
            assert code == 0, err
            studies = json.loads(out)
            assert {s["patient_id"] for s in studies} == {"PAT1"} and len(studies) == 2
            study = studies[0]["study_instance_uid"]

            code, out, _ = await run_cli("find", "-k", "PatientID=PAT1", *peer)
            assert code == 0 and "adicom find: 2 study match(es)" in out

            code, out, err = await run_cli(
                "get", "-k", f"StudyInstanceUID={study}", "--out", str(tmp_path), *peer
            )
            assert code == 0, err
            assert "adicom get: success: 6 completed, 0 failed" in out
            assert len(list(tmp_path.rglob("*.dcm"))) == 6

            code, out, _ = await run_cli(
                "move", "-k", f"StudyInstanceUID={study}", "--dest", "DEST", *peer
            )
            assert code == 0 and "6 completed" in out
            assert len(received.datasets) == 6

            code, out, _ = await run_cli(
                "move", "-k", f"StudyInstanceUID={study}", "--dest", "NOWHERE", *peer
            )
            assert code == 1 and "failure_0xA801" in out

            code, _, err = await run_cli("find", "-k", "StudyDate=2024-01-01", *peer)
            assert code == 2
            assert err.startswith("adicom find: study_date:") and len(err.splitlines()) == 1
