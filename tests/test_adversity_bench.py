"""The adversity benchmark still runs: its probe and two cheap attacks against `adicom serve`.

A smoke test with a 1 s window and small sizes: the figures are measured by
`python -m benchmarks.adversity`, not here; this only checks that every part
(SCP, probe, attacker, /proc sampling, SIGTERM, report, JSON) works.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import zlib
from typing import Any

import pytest

from benchmarks.adversity import pdus
from benchmarks.adversity.plan import Row, make_rows
from benchmarks.adversity.report import render_table, verdict
from benchmarks.adversity.run import run_row

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="reads /proc and connects from 127.0.0.2"
)


def _check_row(row: dict[str, Any]) -> None:
    assert "error" not in row, row.get("error")
    probe = row["probe"]
    assert probe["echoes_answered"] >= 10
    assert probe["echo_failures"] == 0
    assert probe["fresh_ok"] >= 1 and probe["fresh_refused"] == probe["fresh_failed"] == 0
    assert 0 < probe["p50_ms"] <= probe["p99_ms"] <= probe["max_ms"]
    watch = row["watch"]
    assert watch["peak_rss_kib"] > 10_000 and watch["max_threads"] >= 1
    assert watch["timeline"] and watch["cpu_pct"] is not None
    assert row["stop"]["exit_code"] == 0 and row["stop"]["exit_s"] is not None
    assert row["tracebacks"] == 0


def test_deflate_bomb_inflates_to_a_data_set_with_its_uids_at_the_end() -> None:
    uid = pdus.new_uid()
    bomb = pdus.deflate_bomb(3, uid)
    inflated = zlib.decompress(bomb, -zlib.MAX_WBITS)
    assert len(bomb) < 8_000 and len(inflated) > 3 << 20
    assert inflated.startswith(b"\x08\x00\x16\x00UI")
    assert uid.encode() in inflated[:200] and b"BOMB^DEFLATE" in inflated[-200:]


def test_every_attack_has_rows_and_big_identifier_only_against_adicom() -> None:
    rows, skipped = make_rows(["adicom", "dcmtk", "pynetdicom"], ["big-identifier"])
    assert [(r.scp, r.name) for r in rows] == [
        ("adicom", "baseline"),
        ("adicom", "big-identifier"),
        ("dcmtk", "baseline"),
        ("pynetdicom", "baseline"),
    ]
    assert len(skipped) == 2


def test_probe_and_two_attacks_against_adicom_serve() -> None:
    rows = [
        run_row(Row("adicom", "unterminated-command", params={"size": 2_000_000}), 1.0),
        run_row(Row("adicom", "silent-500", params={"slots": 40}), 1.0),
    ]
    for row in rows:
        _check_row(row)
        assert verdict(row) == [] or verdict(row)[0].startswith("p99")  # a loaded CI box
    command, silent = (r["attacker"] for r in rows)
    # adicom aborts a command set past 64 KiB, again and again ...
    assert command["connects"] >= 2 and command["outcomes"].get("abort", 0) >= 1
    assert command["bytes_sent"] > 64 * 1024
    # ... and closes at once the silent connections past 64 from one address.
    assert silent["max_open"] >= 1 and silent["connects"] >= 40
    table = render_table(rows)
    assert "unterminated-command" in table and "silent-500" in table


def test_command_line_writes_the_json(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "adversity.json"
    options = ["--scp", "adicom", "--only", "sigterm-sta2", "--no-baseline", "--seconds", "1"]
    argv = [sys.executable, "-m", "benchmarks.adversity", *options, "--json", str(out)]
    result = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr
    assert "sigterm-sta2" in result.stdout
    document = json.loads(out.read_text())
    assert set(document) == {"meta", "config", "rows", "skipped"}
    (row,) = document["rows"]
    _check_row(row)
    # SIGTERM came while the attacker's connections were open: the SCP closed them.
    assert row["attacker"]["max_open"] >= 1 and row["attacker"]["outcomes"].get("closed", 0) >= 1
