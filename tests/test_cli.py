"""The command line as a user runs it: exit codes and the one line that says why."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pydicom.dataset import Dataset

import adicom as adicom_module
from adicom import cli
from adicom.models import RetrieveResult
from adicom.storescu import StoreResult
from adicom.storescu import store as real_store


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without any ADICOM_* variable, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ADICOM_")}
    return env | variables


def adicom(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adicom", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=environment() if env is None else env,
    )


def free_port() -> int:
    """A loopback port nobody listens on, below the ephemeral range (see interop.peers)."""
    from tests.interop.peers import free_port as below_ephemeral

    return below_ephemeral()


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

    async def lossy_store(
        host: str, port: int, sources: Iterable[Dataset], **kw: Any
    ) -> list[StoreResult]:
        return await real_store(host, port, list(sources)[1:], **kw)

    monkeypatch.setattr(demo, "store", lossy_store)
    assert await demo.run_demo() == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "steps FAILED" in out


def test_echo_to_a_closed_port_is_unreachable() -> None:
    port = free_port()
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
        ["echo", "--loop", "bogus", "127.0.0.1", "104"],
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
            assert not (tmp_path / ".incoming").exists()  # no empty folder left behind
            assert err.splitlines()[-1] == "C-GET: 6 of 6 instances"  # progress, not 7 lines

            # A return key asked for has its column in the table.
            code, out, err = await run_cli(
                "find", "-k", "PatientID=PAT1", "-k", "InstitutionName", *peer
            )
            assert code == 0, err
            assert out.splitlines()[0].split()[-1] == "InstitutionName"

            code, out, _ = await run_cli(
                "move", "-k", f"StudyInstanceUID={study}", "--dest", "DEST", *peer
            )
            assert code == 0 and "6 completed" in out
            assert len(received.datasets) == 6

            code, out, _ = await run_cli(
                "move", "-k", f"StudyInstanceUID={study}", "--dest", "NOWHERE", *peer
            )
            assert code == 1
            assert out.splitlines()[-1] == (
                "adicom move: failure 0xA801: Refused: move destination unknown; "
                "0 completed, 0 failed, 0 warning, to NOWHERE"
            )

            code, _, err = await run_cli("find", "-k", "StudyDate=2024-01-01", *peer)
            assert code == 2
            assert err.startswith("adicom find: -k StudyDate:") and len(err.splitlines()) == 1


@pytest.mark.anyio
async def test_get_prints_what_a_failure_status_means(tmp_path: pathlib.Path) -> None:
    import adicom
    from adicom.qrscp import QRContext, QueryFailed

    async def refuse(identifier: Dataset, context: QRContext) -> Any:
        raise QueryFailed(0xA702, "no room for sub-operations")
        yield  # an async generator, as handlers are

    async with adicom.Server("PACS", port=0, on_get=refuse) as server:
        code, out, err = await run_cli(
            "get", "-k", "StudyInstanceUID=1.2.3", "--out", str(tmp_path),
            "--aec", "PACS", "127.0.0.1", str(server.port),
        )  # fmt: skip
    assert code == 1, err
    assert out.splitlines()[-2:] == [
        "the peer says: no room for sub-operations",
        "adicom get: failure 0xA702: Refused: out of resources, unable to perform "
        f"sub-operations; 0 completed, 0 failed, 0 warning, into {tmp_path}",
    ]


@pytest.mark.anyio
async def test_get_and_move_take_a_list_of_studies(tmp_path: pathlib.Path) -> None:
    # StudyInstanceUID=A\\B: each study retrieved in turn, each summed up;
    # exit 1 if one failed. A list with a series or instance is a usage error.
    import adicom
    from adicom.qrscp import QRContext, QueryFailed

    asked: list[str] = []

    async def on_get(identifier: Dataset, context: QRContext) -> Any:
        asked.append(str(identifier.StudyInstanceUID))
        if identifier.StudyInstanceUID == "1.2.4":
            raise QueryFailed(0xA702, "no room")
        yield 0

    async with adicom.Server("PACS", port=0, on_get=on_get) as server:
        peer = ["--aec", "PACS", "127.0.0.1", str(server.port)]
        code, out, err = await run_cli(
            "get", "-k", "StudyInstanceUID=1.2.3\\1.2.4\\1.2.5", "--out", str(tmp_path), *peer
        )
        assert code == 1, (out, err)
        assert asked == ["1.2.3", "1.2.4", "1.2.5"]
        summaries = [line for line in out.splitlines() if line.startswith("adicom get study ")]
        assert [line.split(":")[0] for line in summaries] == [
            "adicom get study 1.2.3", "adicom get study 1.2.4", "adicom get study 1.2.5"
        ]  # fmt: skip
        assert "failure 0xA702" in summaries[1]

        code, _, err = await run_cli(
            "get", "-k", "StudyInstanceUID=1.2.3\\1.2.4", "-k", "SeriesInstanceUID=1.2.6",
            "--out", str(tmp_path), *peer,
        )  # fmt: skip
        assert code == 2 and "whole studies" in err
        code, _, err = await run_cli(
            "move", "-k", "StudyInstanceUID=1.2.3\\1.x", "--dest", "X", *peer
        )
        assert code == 2 and "is not a UID" in err


@pytest.mark.anyio
async def test_get_retrieves_every_class_and_says_what_failed(tmp_path: pathlib.Path) -> None:
    import pydicom

    from tests.test_get_contexts import ECG, EXPLICIT, MIXED, archive_with, mixed_study

    study, files = mixed_study(tmp_path / "src")
    async with archive_with(tmp_path, files) as node:
        peer = ["--aec", "PACS", "127.0.0.1", str(node.port)]
        key = f"StudyInstanceUID={study}"
        code, out, err = await run_cli("get", "-k", key, "--out", str(tmp_path / "all"), *peer)
        assert code == 0, (out, err)
        assert f"adicom get: success: {len(MIXED)} completed, 0 failed" in out
        assert len(list((tmp_path / "all").rglob("*.dcm"))) == len(MIXED)

        # Only the ECG offered: the others fail, each named with its class and why.
        code, out, err = await run_cli(
            "get", "-k", key, "--out", str(tmp_path / "ecg"), "--offer", f"{ECG}={EXPLICIT}",
            *peer,
        )  # fmt: skip
        assert code == 1, (out, err)
        assert "1 completed, 7 failed" in out
        failed = [line for line in out.splitlines() if line.startswith("  failed: ")]
        assert len(failed) == 7
        for line in failed:
            uid = line.removeprefix("  failed: ").split(" ")[0]
            name = pydicom.dcmread(files[uid], stop_before_pixels=True).SOPClassUID.name
            assert f"({name}" in line and "was not offered" in line
        (received,) = (tmp_path / "ecg").rglob("*.dcm")
        assert pydicom.dcmread(received).SOPClassUID == ECG

        code, out, err = await run_cli(
            "get", "-k", key, "--out", str(tmp_path / "x"), "--offer", "1.2.abc", *peer
        )
        assert code == 2 and "is not a UID" in err


@pytest.mark.anyio
async def test_find_shows_matches_without_their_unique_key(tmp_path: pathlib.Path) -> None:
    import json

    from tests.test_dicomclient import answering, odd_matches

    async with answering(odd_matches("STUDY")) as node:
        peer = ["--aec", "PACS", "127.0.0.1", str(node.port)]
        code, out, err = await run_cli("find", "-L", "STUDY", *peer)
        assert code == 0, err
        assert out.splitlines()[-1] == "adicom find: 3 study match(es) (2 without StudyInstanceUID)"
        assert all(f"Doe^Match{n}" in out for n in range(3))
        assert err.count("WARNING adicom: C-FIND: a match at STUDY level with") == 2
        code, out, err = await run_cli("find", "--json", *peer)
        assert code == 0, err
        assert [r["study_instance_uid"] for r in json.loads(out)] == ["1.2.3.4", "", ""]


@pytest.mark.anyio
async def test_find_answered_with_garbage_is_a_failure_not_a_usage_error() -> None:
    import adicom
    from adicom.qrscp import QRContext

    async def garbage(identifier: Dataset, context: QRContext) -> Any:
        yield b"\x10\x00\x10\x00SQ\x00\x00\x10\x00\x00\x00\x01\x02"

    async with adicom.Server("PACS", port=0, on_find=garbage) as server:
        code, out, err = await run_cli("find", "--aec", "PACS", "127.0.0.1", str(server.port))
    assert code == 1, (out, err)
    assert err.startswith("adicom find: 0xFF00: C-FIND match 1: the identifier does not decode")


@pytest.mark.anyio
async def test_store_an_untidy_folder_from_the_command_line(tmp_path: pathlib.Path) -> None:
    import adicom
    from tests.test_store_folders import untidy_folder

    expected = untidy_folder(tmp_path / "export")
    storage = adicom.DiskStorage(tmp_path / "archive")
    async with adicom.Server("STORE", port=0, storage=storage) as server:
        peer = ["--aec", "STORE", "127.0.0.1", str(server.port)]
        code, out, err = await run_cli("store", *peer, str(tmp_path / "export"))
        assert code == 1, err  # a broken .dcm, a truncated one
        lines = out.splitlines()
        # Not a terminal: progress is a line on stderr now and then (and at
        # the end), not a line per file; stdout has the summary and what
        # went wrong.
        assert (
            err.splitlines()[-1]
            == f"C-STORE: {len(expected)} of {len(expected)} instances, 6 failed"
        )
        assert any(line.endswith("README: not a DICOM file") for line in lines)
        summary = lines[0]
        assert summary.startswith(
            "adicom store: 3 sent, 0 warned, 1 failed, 5 skipped (2 unreadable) to STORE"
        )
        listed = lines[lines.index(summary) + 1 :]
        assert len(listed) == 6
        for name, what in expected.items():
            if what != "sent":
                kind = "failed" if what == "failed" else "skipped"
                (line,) = [x for x in listed if x.split(": ")[1].endswith("/" + name)]
                assert line.startswith(f"  {kind}: ")
                assert ("(unreadable)" in line) == (what == "unreadable")
        assert "Traceback" not in err

        # -q: only the summary and its list, no progress.
        code, out, err = await run_cli("store", "-q", *peer, str(tmp_path / "export"))
        assert code == 1 and "C-STORE:" not in err
        assert out.splitlines()[0].startswith(
            "adicom store: 3 sent, 0 warned, 1 failed, 5 skipped (2 unreadable)"
        )
        assert len(out.splitlines()) == 1 + 6

        # Only files that are not DICOM besides the instances: exit 0.
        for name in ("broken.dcm", "bad-meta.dcm", "truncated.dcm"):
            (tmp_path / "export" / name).unlink()
        code, out, err = await run_cli("store", "-q", *peer, str(tmp_path / "export"))
        assert code == 0, (out, err)
        assert out.splitlines()[0].startswith("adicom store: 3 sent, 0 warned, 0 failed, 3 skipped")

        # ... but a file named on the command line is meant to be sent.
        code, out, _ = await run_cli("store", "-q", *peer, str(tmp_path / "export" / "README"))
        assert code == 1
        assert out.splitlines()[0].startswith(
            "adicom store: 0 sent, 0 warned, 0 failed, 1 skipped (1 unreadable)"
        )


@pytest.mark.anyio
async def test_store_goes_on_after_the_peer_aborts(tmp_path: pathlib.Path) -> None:
    from tests.test_store_folders import AbortingStorage, scp, write_instances

    uids = write_instances(tmp_path, 6)
    storage = AbortingStorage(lambda seen, _: seen == 2)
    async with scp(storage) as server:
        code, out, err = await run_cli(
            "store", "-q", "--aec", "STORE", "127.0.0.1", str(server.port), str(tmp_path)
        )
        assert code == 0, (out, err)
        assert out.startswith("adicom store: 6 sent, 0 warned, 0 failed, 0 skipped")
        assert "a new one for the" in err
        # Every instance arrived. (Now and then one arrives twice: the
        # response to an instance stored just before the abort is lost with
        # the connection, and the client sends it again; see the session note.)
        assert {d.SOPInstanceUID for d in storage.datasets} == set(uids)

        storage = AbortingStorage(lambda seen, _: seen == 2)
        server.storage = storage
        code, out, err = await run_cli(
            "store", "--reconnect", "0", "--aec", "STORE", "127.0.0.1", str(server.port),
            str(tmp_path),
        )  # fmt: skip
        assert code == 1
        # The A-ABORT, or (when the connection went before it was read) the close.
        assert "association aborted by the peer" in err or "closed the connection" in err, err


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("success", "success: "),
        ("failure_0xA801", "failure 0xA801: Refused: move destination unknown; "),
        ("failure_0xC000", "failure 0xC000: Error: cannot understand, or unable to process; "),
        ("failure_0x0110", "failure 0x0110: processing failure; "),
        (
            "warning_0xB000",
            "warning 0xB000: coercion of data elements, or sub-operations completed with "
            "failures; ",
        ),
        ("cancel", "cancel 0xFE00: operation terminated by cancel request; "),
    ],
)
def test_retrieve_summary_names_the_status(status: str, shown: str) -> None:
    assert cli.outcome(RetrieveResult(status=status)) == shown


# -- serve: defaults from ADICOM_* (DicomSettings), flags override ---------------

SERVE_VARIABLES = {
    "ADICOM_AET": "ENV_SCP",
    "ADICOM_IP": "127.0.0.1",
    "ADICOM_PORT": "4242",
    "ADICOM_STORAGE_DIR": "/srv/dicom",
    "ADICOM_ASSOCIATION_TIMEOUT": "2.5",
    "ADICOM_DIMSE_TIMEOUT": "45",
    "ADICOM_IDLE_TIMEOUT": "90",
}


@pytest.fixture
def no_adicom_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in os.environ:
        if name.upper().startswith("ADICOM_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_serve_defaults_without_variables(no_adicom_variables: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(["serve"])
    assert (args.aet, args.host, args.port, args.storage) == ("ADICOM", "0.0.0.0", 11112, None)
    assert (args.association_timeout, args.dimse_timeout, args.idle_timeout) == (10, 30, 60)
    assert args.settings_error is None


def test_serve_defaults_come_from_the_environment(
    no_adicom_variables: pytest.MonkeyPatch,
) -> None:
    for name, value in SERVE_VARIABLES.items():
        no_adicom_variables.setenv(name, value)
    args = cli.build_parser().parse_args(["serve"])
    assert (args.aet, args.host, args.port) == ("ENV_SCP", "127.0.0.1", 4242)
    assert pathlib.Path(args.storage) == pathlib.Path("/srv/dicom")
    assert (args.association_timeout, args.dimse_timeout, args.idle_timeout) == (2.5, 45, 90)


def test_serve_flags_override_the_environment(no_adicom_variables: pytest.MonkeyPatch) -> None:
    for name, value in SERVE_VARIABLES.items():
        no_adicom_variables.setenv(name, value)
    args = cli.build_parser().parse_args(
        ["serve", "--aet", "FLAG", "--host", "::1", "--port", "0", "--storage", "here",
         "--association-timeout", "1", "--dimse-timeout", "2", "--idle-timeout", "3"]
    )  # fmt: skip
    assert (args.aet, args.host, args.port, args.storage) == ("FLAG", "::1", 0, "here")
    assert (args.association_timeout, args.dimse_timeout, args.idle_timeout) == (1, 2, 3)


def test_serve_hands_the_settings_to_the_server(no_adicom_variables: pytest.MonkeyPatch) -> None:
    for name in ("AET", "IP", "PORT", "ASSOCIATION_TIMEOUT", "DIMSE_TIMEOUT", "IDLE_TIMEOUT"):
        no_adicom_variables.setenv(f"ADICOM_{name}", SERVE_VARIABLES[f"ADICOM_{name}"])
    seen: dict[str, Any] = {}

    def server(ae_title: str, **options: Any) -> Any:
        seen.update(options, ae_title=ae_title)
        raise OSError("not listening in this test")

    no_adicom_variables.setattr("adicom.cli.serve.Server", server)
    assert cli.main(["serve"]) == cli.EXIT_FAILED
    assert seen["ae_title"] == "ENV_SCP"
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 4242)
    assert (seen["artim_timeout"], seen["dimse_timeout"], seen["idle_timeout"]) == (2.5, 45, 90)


@pytest.mark.parametrize(
    ("flags", "backlog"),
    [([], None), (["--backlog", "2048"], 2048), (["--max-associations", "900"], None)],
)
def test_serve_hands_the_listen_backlog_to_the_server(
    no_adicom_variables: pytest.MonkeyPatch, flags: list[str], backlog: int | None
) -> None:
    seen: dict[str, Any] = {}

    def server(ae_title: str, **options: Any) -> Any:
        seen.update(options)
        raise OSError("not listening in this test")

    no_adicom_variables.setattr("adicom.cli.serve.Server", server)
    assert cli.main(["serve", "--port", "0", *flags]) == cli.EXIT_FAILED
    # None: the Server's default, max_associations (at least 128).
    assert seen["backlog"] == backlog


def test_serve_refuses_a_backlog_of_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--backlog", "0"])
    assert "--backlog" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "said"),
    [("-1", "-1 is too small"), ("1000001", "1000001 is too large: give at most 1,000,000")],
)
def test_serve_refuses_a_gc_threshold_out_of_range(
    capsys: pytest.CaptureFixture[str], value: str, said: str
) -> None:
    # 2**31 or more would reach gc.set_threshold and fail there, once serving.
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--gc-threshold", value])
    assert said in capsys.readouterr().err
    args = cli.build_parser().parse_args(["serve", "--gc-threshold", "1000000"])
    assert args.gc_threshold == 1_000_000


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_command_run_in_process_gives_the_signal_handlers_back(
    no_adicom_variables: pytest.MonkeyPatch, loop: str
) -> None:
    # serve handles SIGINT and SIGTERM on its loop; uvloop's loop does not
    # restore them when it closes: Ctrl-C would no longer reach the caller.
    def server(ae_title: str, **options: Any) -> Any:
        raise OSError("not listening in this test")

    no_adicom_variables.setattr("adicom.cli.serve.Server", server)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main(["serve", "--loop", loop, "--port", "0"]) == cli.EXIT_FAILED
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_serve_help_shows_the_defaults() -> None:
    plain = adicom("serve", "--help")
    assert plain.returncode == 0
    help_text = " ".join(plain.stdout.split())
    for shown in (
        "(ADICOM_AET; default: ADICOM)",
        "(ADICOM_IP; default: 0.0.0.0)",
        "(ADICOM_PORT; default: 11112)",
        "(ADICOM_STORAGE_DIR; default: none, C-ECHO only)",
        "(ADICOM_ASSOCIATION_TIMEOUT; default: 10.0)",
        "(ADICOM_DIMSE_TIMEOUT; default: 30.0)",
        "(ADICOM_IDLE_TIMEOUT; default: 60.0)",
    ):
        assert shown in help_text
    from_env = adicom("serve", "--help", env=environment(**SERVE_VARIABLES))
    help_text = " ".join(from_env.stdout.split())
    for shown in (
        "(ADICOM_AET; default: ENV_SCP)",
        "(ADICOM_PORT; default: 4242)",
        "(ADICOM_STORAGE_DIR; default: /srv/dicom)",
        "(ADICOM_IDLE_TIMEOUT; default: 90.0)",
    ):
        assert shown in help_text


def test_a_bad_variable_stops_serve_only() -> None:
    env = environment(ADICOM_PORT="70000")
    result = adicom("serve", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "adicom serve: ADICOM_PORT: port 70000 is out of range; allowed: 0 (any free port) to 65535"
    ]
    result = adicom("serve", env=environment(ADICOM_IDLE_TIMEOUT="soon"))
    assert result.returncode == 2
    assert result.stderr.startswith("adicom serve: ADICOM_IDLE_TIMEOUT: Input should be")
    assert "(got 'soon')" in result.stderr
    # Other commands do not read the settings: the broken variable is no concern of theirs.
    port = free_port()
    assert adicom("echo", "127.0.0.1", str(port), env=env).returncode == 3
    assert adicom("serve", "--help", env=env).returncode == 0


@pytest.mark.anyio
async def test_serve_listens_and_stores_where_the_environment_says(
    tmp_path: pathlib.Path,
) -> None:
    """ADICOM_PORT=<free port> ADICOM_STORAGE_DIR=<tmp> adicom serve, end to end."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    port, storage = free_port(), tmp_path / "archive"
    env = environment(
        ADICOM_PORT=str(port),
        ADICOM_STORAGE_DIR=str(storage),
        ADICOM_IP="127.0.0.1",
        ADICOM_AET="ENV_SCP",
        ADICOM_ASSOCIATION_TIMEOUT="0.5",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        assert line == f'adicom serve: AE "ENV_SCP" listening on 127.0.0.1:{port}\n'

        path = get_testdata_file("CT_small.dcm")
        assert path is not None
        (result,) = await real_store("127.0.0.1", port, [path], called_ae="ENV_SCP")
        assert result.ok, result.error
        (stored,) = storage.rglob("*.dcm")
        assert dcmread(stored).SOPInstanceUID == dcmread(path).SOPInstanceUID

        # ADICOM_ASSOCIATION_TIMEOUT is the ARTIM timer: a connection that never
        # asks for an association is closed after 0.5 s (the default is 10 s).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert "adicom serve: stopping" in out.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def serving(*options: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``adicom serve`` on a free port with ``options``, listening; killed if still running."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", "--host", "127.0.0.1", "--port", str(port),
        *options, env=environment(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            assert b"listening" in await process.stdout.readline()
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.anyio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_stops_on_a_second_signal_during_its_grace(sig: signal.Signals) -> None:
    # A connection in Sta2 (no A-ASSOCIATE-RQ yet) and one associated. The
    # signal closes the first at once; the association is still served
    # during the grace; a second signal aborts it, and serve exits 0, no
    # traceback.
    async with serving() as (process, port):
        assert process.stdout is not None
        silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
        association = await adicom_module.open_association("127.0.0.1", port, called_ae="ADICOM")
        process.send_signal(sig)
        async with asyncio.timeout(5):  # not the default grace (10 s)
            assert await silent_reader.read() == b""
            assert b"stopping" in await process.stdout.readline()
            assert b"waiting up to 10 s for 1 open associations" in await process.stdout.readline()
        assert await association.echo() == 0
        process.send_signal(sig)
        async with asyncio.timeout(5):
            out, err = await process.communicate()
            await association.wait_closed()
        assert process.returncode == 0, err.decode()
        assert "Traceback" not in err.decode()
        assert "aborting the open associations" in out.decode()
        assert not association.is_established
        silent_writer.close()


@pytest.mark.anyio
async def test_serve_on_sigterm_lets_an_association_release_within_its_grace() -> None:
    async with serving("--shutdown-grace", "30") as (process, port):
        association = await adicom_module.open_association("127.0.0.1", port, called_ae="ADICOM")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await association.echo() == 0
            await association.release()
            out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert "aborting" not in out.decode()


@pytest.mark.anyio
async def test_serve_refuses_a_shutdown_grace_it_cannot_keep() -> None:
    wrongs = (("-1", "too small"), ("nan", "too small"), ("7200", "too large"), ("inf", "large"))
    for wrong, why in wrongs:
        code, _, err = await run_cli("serve", "--port", "0", "--shutdown-grace", wrong)
        assert code == 2 and why in err, err


@pytest.mark.anyio
async def test_usage_errors_say_what_was_typed_before_connecting(tmp_path: pathlib.Path) -> None:
    port = str(free_port())  # nothing listens: a usage error must come first
    code, _, err = await run_cli("find", "-k", "PatientNmae=X", "127.0.0.1", port)
    assert code == 2 and err.startswith("adicom find: -k 'PatientNmae' is not a DICOM keyword")
    assert "did you mean PatientName" in err
    code, _, err = await run_cli("find", "-k", "StudyDate=2024XX", "127.0.0.1", port)
    assert code == 2 and err.startswith("adicom find: -k StudyDate: '2024XX' is not a date")
    assert "datetime" not in err  # the Python forms are for the API
    afile = tmp_path / "a-file"
    afile.write_text("x")
    for out, said in ((afile, "not a folder"), (afile / "sub", "cannot make the folder")):
        code, _, err = await run_cli(
            "get", "-k", "StudyInstanceUID=1.2", "--out", str(out), "127.0.0.1", port
        )
        assert code == 2 and f"--out {out}: {said}" in err, err


def test_clients_call_adicom_serve_by_default() -> None:
    serve = cli.build_parser().parse_args(["serve"])
    echo = cli.build_parser().parse_args(["echo", "127.0.0.1", "11112"])
    assert echo.aec == serve.aet == "ADICOM"
    assert "(default: ADICOM" in adicom("echo", "--help").stdout


def test_an_unknown_host_is_named_as_such() -> None:
    result = adicom("echo", "nosuchhost.invalid", "104")
    assert result.returncode == 3  # unreachable
    assert "cannot connect to nosuchhost.invalid:104: no such host" in result.stderr
    assert "Unknown error" not in result.stderr


@pytest.mark.anyio
async def test_a_host_name_is_resolved_without_a_thread() -> None:
    """asyncio would resolve "localhost" in its executor, a thread; adicom does not."""
    import threading

    import adicom as library

    async with library.Server("NAMED", port=0) as server:
        async with library.connect("localhost", server.port, called_ae="NAMED") as association:
            assert await association.echo() == 0
        assert threading.active_count() == 1


@pytest.mark.anyio
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_loop_chooses_the_event_loop(loop: str) -> None:
    async with adicom_module.Server("LOOPS", host="127.0.0.1", port=0) as server:
        code, out, err = await run_cli(
            "echo", "--aec", "LOOPS", "-v", "--loop", loop, "127.0.0.1", str(server.port)
        )
    assert code == 0, err
    assert "success" in out
    (line,) = [line for line in err.splitlines() if "event loop:" in line]
    assert line.split("event loop: ")[1].startswith(f"{loop}.")


def test_loop_auto_takes_uvloop_only_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio as stdlib_asyncio

    import uvloop

    from adicom.cli import common

    assert common.loop_factory("auto") is uvloop.new_event_loop
    assert common.loop_factory("asyncio") is stdlib_asyncio.new_event_loop
    monkeypatch.setattr(common, "_have_uvloop", lambda: False)
    assert common.loop_factory("auto") is stdlib_asyncio.new_event_loop
    with pytest.raises(
        Exception, match=r"uvloop is not installed \(pip install 'adicom\[uvloop\]'\)"
    ):
        common.loop_arg("uvloop")


def test_version_and_the_top_level_help() -> None:
    version = adicom("--version")
    assert version.returncode == 0 and version.stdout.startswith("adicom ")
    text = adicom("--help").stdout
    assert "commit as a client" in text and "Storage" in text
    assert "(Verification)" not in text


@pytest.mark.anyio
async def test_a_closed_pipe_is_no_error(tmp_path: pathlib.Path) -> None:
    """`adicom find ... | head -1`: the reader goes away; exit 0 without a traceback."""
    from tests.test_dicomclient import Tree, build_tree

    tree = Tree(build_tree())
    import adicom as library

    async with library.Server("PACS", port=0, on_find=tree.find) as server:
        reader, writer = os.pipe()
        os.close(reader)  # nobody reads: the first write breaks the pipe
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "adicom", "find", "-L", "PATIENT", "--aec", "PACS",
            "127.0.0.1", str(server.port),
            stdin=subprocess.DEVNULL, stdout=writer, stderr=subprocess.PIPE,
        )  # fmt: skip
        os.close(writer)
        async with asyncio.timeout(60):
            _, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert b"Broken pipe" not in err and b"Traceback" not in err


def _sigint_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.anyio
async def test_ctrl_c_during_get_says_what_was_kept(tmp_path: pathlib.Path) -> None:
    """SIGINT: C-CANCEL, a release (not an abort), exit 130, and a word on what stayed."""
    import adicom as library
    from tests.test_dicomclient import Tree, build_tree

    tree = Tree(build_tree())
    sent = asyncio.Event()

    async def slowly(identifier: Dataset, context: library.QRContext) -> Any:
        async for item in tree.retrieve(identifier, context):
            yield item
            if not isinstance(item, int):
                sent.set()
                await asyncio.sleep(0.5)

    async with library.Server("SLOW", port=0, on_find=tree.find, on_get=slowly) as server:
        code, out, err = await run_cli("find", "-k", "PatientID=PAT1", "--json", "--aec", "SLOW",
                                       "127.0.0.1", str(server.port))  # fmt: skip
        assert code == 0, err
        study = json.loads(out)[0]["study_instance_uid"]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "adicom", "get", "-k", f"StudyInstanceUID={study}",
            "--out", str(tmp_path), "--aec", "SLOW", "127.0.0.1", str(server.port),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # As from a terminal: a run started in the background (`cmd &`)
            # would hand the child SIGINT ignored.
            preexec_fn=_sigint_as_from_a_terminal,
        )  # fmt: skip
        async with asyncio.timeout(30):
            await sent.wait()
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGINT)
            _, said = await process.communicate()
        async with asyncio.timeout(10):
            await server.wait_idle()
        text = said.decode()
        assert process.returncode == 130, text
        assert "adicom get: interrupted;" in text and "instances kept in" in text
        assert server.stats["aborted"] == 0  # C-CANCEL answered, then released


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("flags", "threshold", "stop"),
    [
        ([], None, "signal"),
        (["--gc-threshold", "20000"], 20_000, "signal"),
        (["--gc-threshold", "20000"], 20_000, "cancel"),
    ],
)
async def test_serve_freezes_what_it_starts_with_out_of_full_collections(
    no_adicom_variables: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    threshold: int | None,
    stop: str,
) -> None:
    from adicom.cli.serve import _serve

    assert gc.get_freeze_count() == 0
    before = gc.get_threshold()
    args = cli.build_parser().parse_args(["serve", "--host", "127.0.0.1", "--port", "0", *flags])
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(_serve(args, None))
    try:
        out = ""
        async with asyncio.timeout(30):
            while "listening on" not in out:
                out += capsys.readouterr().out
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # serve reached its wait for a signal
        # Serving: the modules and settings are out of the collector's full passes.
        assert gc.get_freeze_count() > 10_000
        # The youngest generation's threshold, --gc-threshold's (0: Python's left as it was).
        assert gc.get_threshold() == (threshold or before[0], *before[1:])
        if stop == "signal":
            os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler stops it
            async with asyncio.timeout(30):
                assert await task == cli.EXIT_OK
        else:
            task.cancel()  # an embedding program's: serve unwinds all the same
            async with asyncio.timeout(30):
                with pytest.raises(asyncio.CancelledError):
                    await task
        # Stopped: nothing stays frozen in the process that ran it, and the
        # collector's thresholds are what they were.
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)
        task.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        gc.unfreeze()


@pytest.mark.anyio
async def test_two_signals_in_one_loop_turn_abort_at_once() -> None:
    # Both handlers run before the serving task wakes: still two signals,
    # so the drain aborts at once instead of waiting its grace.
    from adicom.cli.serve import _drain, _StopSignals

    signals = _StopSignals(second_aborts=True)
    async with adicom_module.Server("ADICOM", host="127.0.0.1", port=0) as server:
        association = await adicom_module.open_association(
            "127.0.0.1", server.port, called_ae="ADICOM"
        )

        async def serving() -> None:
            await signals.stop.wait()
            await _drain(server, signals, 30.0, "")

        task = asyncio.create_task(serving())
        await asyncio.sleep(0)
        signals()
        signals()
        async with asyncio.timeout(5):  # not the grace (30 s)
            await task
            await association.wait_closed()
        assert not association.is_established


@pytest.mark.anyio
async def test_the_drain_gives_work_that_outlives_its_association_the_grace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A Storage Commitment report leaves after the N-ACTION's response and
    # its association: with no association open, a SIGTERM must still let
    # it go out within the grace rather than cancel it at once.
    from adicom.cli.serve import _drain, _StopSignals

    signals = _StopSignals(second_aborts=True)
    signals()
    sent = asyncio.Event()

    async def report() -> None:
        await asyncio.sleep(0.2)
        sent.set()

    async with adicom_module.Server("ADICOM", host="127.0.0.1", port=0) as server:
        server._spawn(report(), "the report")  # as a DIMSE-N handler's "then" is run
        assert server.associations == [] and not server.idle
        async with asyncio.timeout(5):  # not the grace (30 s)
            await _drain(server, signals, 30.0, "")
        assert sent.is_set()
        assert server.idle
    assert "for work that outlives its association (a Storage Commitment report)" in (
        capsys.readouterr().out
    )


@pytest.mark.anyio
async def test_the_drain_waits_for_a_released_peer_s_close_without_naming_a_report(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A peer that released and keeps its connection open: the drain waits
    # for its close (ARTIM bounds it), and says nothing of a report.
    from adicom.cli.serve import _drain, _StopSignals
    from adicom.pdu import AReleaseRP, AReleaseRQ, PDUReader
    from tests.test_association import raw_associated

    signals = _StopSignals(second_aborts=True)
    signals()
    async with adicom_module.Server(
        "ADICOM", host="127.0.0.1", port=0, artim_timeout=0.5
    ) as server:
        reader, writer = await raw_associated(server)
        writer.write(AReleaseRQ().encode())
        decoder = PDUReader()
        async with asyncio.timeout(5):
            while (answer := decoder.next_pdu()) is None:
                decoder.feed(await reader.read(65536))
        assert isinstance(answer, AReleaseRP)
        assert server.background == 0
        async with asyncio.timeout(5):  # ARTIM (0.5 s), not the grace (30 s)
            await _drain(server, signals, 30.0, "")
            assert await reader.read() == b""  # closed by us at ARTIM
        writer.close()
    assert "Storage Commitment" not in capsys.readouterr().out


@pytest.mark.anyio
async def test_a_worker_drains_on_every_sigterm_and_a_cancelled_drain_leaves_no_close() -> None:
    # A worker under systemd gets the unit's SIGTERM and its supervisor's:
    # both only start the drain. A drain cancelled (serve torn down) takes
    # its close with it, not left running beside serve's own.
    from adicom.cli.serve import _drain, _StopSignals

    signals = _StopSignals(second_aborts=False)
    signals()
    signals()
    assert signals.stop.is_set() and not signals.abort.is_set()
    async with adicom_module.Server("ADICOM", host="127.0.0.1", port=0) as server:
        association = await adicom_module.open_association(
            "127.0.0.1", server.port, called_ae="ADICOM"
        )
        before = set(asyncio.all_tasks())
        drain = asyncio.create_task(_drain(server, signals, 30.0, ""))
        await asyncio.sleep(0.05)
        assert await association.echo() == 0  # served during the grace
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain
        assert [task for task in asyncio.all_tasks() - before if not task.done()] == []
        async with asyncio.timeout(5):
            await association.wait_closed()
