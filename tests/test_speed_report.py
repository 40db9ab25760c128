"""benchmarks.speed: issue 17's rows, read from the benchmarks' JSONs, against their targets."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from benchmarks import speed
from benchmarks.speed import Row

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pair(workload: str, scu: str, scp: str, rate: float, mb: float = 0.0) -> dict[str, object]:
    return {
        "workload": workload,
        "scu": scu,
        "scp": scp,
        "median_ops_per_s": rate,
        "median_mb_per_s": mb,
    }


def _write(folder: pathlib.Path, name: str, content: object) -> None:
    (folder / name).write_text(json.dumps(content))


def test_a_ratio_row_is_met_at_its_target_and_not_below() -> None:
    assert Row("echo", 3000, "/s", 3000, "ratio", 1.0).met is True
    assert Row("echo", 2999, "/s", 3000, "ratio", 1.0).met is False
    assert Row("store", 1200, "/s", 1000, "ratio", 1.2).met is True
    assert Row("store", 1199, "/s", 1000, "ratio", 1.2).met is False
    # No DCMTK figure in the run, no target: no verdict either way.
    assert Row("echo", 3000, "/s", None, "ratio", 1.0).met is None
    assert Row("find served", 900, "/s", 1000).met is None
    assert Row("find served", 900, "/s", 1000).ratio == pytest.approx(0.9)


def test_limits_read_the_right_way_round() -> None:
    # "max": under the target is met; the score is target over figure.
    assert Row("p99", 48.0, "ms", None, "max", 50).met is True
    assert Row("p99", 51.0, "ms", None, "max", 50).met is False
    assert Row("p99", 25.0, "ms", None, "max", 50).score == pytest.approx(2.0)
    # "min": at least the target.
    assert Row("workers", 1.6, "x", None, "min", 1.6).met is True
    assert Row("workers", 1.42, "x", None, "min", 1.6).met is False
    assert Row("failed", 0, "", None, "max", 1, "none").met is True
    assert Row("failed", 3, "", None, "max", 1, "none").met is False
    # A limit row has no ratio even with a DCMTK figure beside it.
    assert Row("rss", 39.2, "MiB", 10.6, "max", 40).ratio is None


def test_target_text_says_the_target_in_the_issues_terms() -> None:
    assert Row("echo", 1, "/s", 1, "ratio", 1.0).target_text() == ">= 1x DCMTK"
    assert Row("assoc", 886, "/s", None, "min", 3000).target_text() == ">= 3,000/s"
    assert Row("rss", 39.2, "MiB", None, "max", 40).target_text() == "< 40 MiB"
    assert Row("threads", 1, "", None, "max", 2, "one").target_text() == "one"
    assert Row("served", 1, "/s", 1).target_text() == ""


def test_rows_come_from_each_benchmarks_json(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, "echo.json", {"results": [
        _pair("echo-one-assoc", "adicom", "adicom", 2500),
        _pair("echo-one-assoc", "dcmtk", "dcmtk", 3000),
        _pair("assoc-echo", "adicom", "adicom", 900),
    ]})  # fmt: skip
    _write(tmp_path, "store_tmpfs.json", {"results": [
        _pair("store-small", "dcmtk", "dcmtk", 1500),
        _pair("store-small", "dcmtk", "adicom-archive", 1650),
    ]})  # fmt: skip
    _write(tmp_path, "bulk.json", {"summary": {
        "adicom-deps": {"rss_idle_mib": 39.0, "rss_receiving_mib": 46.0, "worst_max_ms": 4.0},
        "dcmtk": {"rss_idle_mib": 10.0, "rss_receiving_mib": 11.0, "worst_max_ms": 9.0},
    }})  # fmt: skip
    _write(tmp_path, "workers.json", {"workers": {"speedup 2-own": 1.7}})
    found = {row.name: row for row in speed.rows(tmp_path)}
    echo = found["C-ECHO on one association"]
    assert (echo.adicom, echo.dcmtk, echo.met) == (2500, 3000, False)
    assert found["associate + C-ECHO + release, adicom -> adicom"].met is False
    archive = found["storescu -> adicom serve --storage, tmpfs"]
    assert archive.ratio == pytest.approx(1.1) and archive.met is True
    idle, receiving = (
        found[f"SCP resident memory, {what} (adicom's own dependencies)"]
        for what in ("idle", "receiving 50 MB instances")
    )
    assert (idle.met, receiving.met) == (True, False)
    assert found["C-ECHO's worst wait while storescu streams 10 x 50 MB (own dependencies)"].met
    assert found["serve --workers 2 over 1, own sockets"].met is True
    # Benchmarks that did not run (the disk store, uvloop, qr, scale) give no row,
    # and a pair missing from a run gives none either.
    assert not any("disk" in name or "uvloop" in name or "C-FIND" in name for name in found)
    assert "storescu -> Server + DiskStorage, tmpfs" not in found
    table = speed.markdown(list(found.values()))
    assert (
        "| C-ECHO on one association | 2,500/s | 3,000/s | 0.83x | >= 1x DCMTK | **not met** |"
        in table
    )
    assert table.count("\n") == len(found) + 2


def test_report_draws_the_rows_with_a_target(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, "workers.json", {"workers": {"speedup 2-own": 1.2, "speedup 2-shared": 1.7}})
    png, md = tmp_path / "speed.png", tmp_path / "speed.md"
    table = speed.report(tmp_path, md, png)
    assert md.read_text() == table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="no benchmark results"):
        speed.report(tmp_path / "missing", None, None)
    # Only rows whose target is a count in words: nothing for a bar to show.
    with pytest.raises(ValueError, match="no row with a target"):
        speed.chart([Row("failed", 0, "", None, "max", 1, "none")], png)


def test_run_writes_each_parts_json_and_reports_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.sides.dcmtk_side import find_tool

    if find_tool("storescp") is None:
        pytest.fail("DCMTK is installed on this project's machines; storescp not found")
    # A real benchmark, small: the runner's plumbing (its --json, its log) end to end.
    monkeypatch.setitem(
        speed.PARTS,
        "assoc",
        [(["benchmarks.assocrate", "-n", "20", "--reps", "1", "--scp", "adicom",
           "--scp", "dcmtk"], "assoc1.json")],
    )  # fmt: skip
    monkeypatch.chdir(ROOT)
    logged: list[str] = []
    speed.run(tmp_path, ["assoc"], logged.append)
    assert (tmp_path / "assoc1.txt").stat().st_size > 0
    (row,) = speed.rows(tmp_path)
    assert row.name.startswith("raw client's associate + C-ECHO + release, 1 lane")
    assert row.adicom > 0 and row.dcmtk is not None and row.dcmtk > 0
    assert len(logged) == 1 and "benchmarks.assocrate" in logged[0]


def test_the_command_line_refuses_an_unknown_part(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", "run", "--out", str(tmp_path),
         "--parts", "echo,warp"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown part(s) warp" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing ran
