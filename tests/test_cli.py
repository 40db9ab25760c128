"""The command line as a user runs it: exit codes and the one line that says why."""

from __future__ import annotations

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
    assert "every step checked out" in result.stdout


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
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    result = adicom(*args)
    assert result.returncode == 2
    assert "error:" in result.stderr


def test_serve_on_a_taken_port_says_so() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        result = adicom("serve", "--host", "127.0.0.1", "--port", str(sock.getsockname()[1]))
    assert result.returncode == 1
    assert "address already in use" in result.stderr
