"""The benchmark runner still runs (a smoke test; speed is measured in benchmarks/, not here)."""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.run ARGS`` from the repository root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_runner_measures_adicom_pair_and_writes_json(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    workloads = ["assoc-echo", "echo-one-assoc", "store-small"]
    result = run_bench(
        "--reps", "1", "-n", "20", "--pair", "adicom:adicom", "--json", str(out),
        "--data-dir", str(tmp_path / "data"), "--scratch", str(scratch),
        *(arg for w in workloads for arg in ("--only", w)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "adicom -> adicom" in result.stdout
    report = json.loads(out.read_text())
    # The SCPs wrote into a folder under --scratch, removed when the run ended.
    used = pathlib.Path(report["config"]["scratch"]["dir"])
    assert used.parent == scratch
    assert report["config"]["scratch"]["filesystem"] not in ("", "unknown")
    assert not used.exists()
    results = report["results"]
    assert [r["workload"] for r in results] == workloads
    for row in results:
        assert (row["scu"], row["scp"]) == ("adicom", "adicom")
        assert row["median_ops_per_s"] > 0
        assert all(rep["ok"] == rep["ops"] == 20 for rep in row["reps"])
    # 20 timed instances and one warm-up instance, each a file on the SCP's disk.
    assert results[2]["reps"][0]["scp_stored_files"] == 21


def _store_pairs(pair: list[str] | None) -> list[tuple[str, str]]:
    """The (SCU, SCP) pairs a store workload would run, every stack taken as usable."""
    from benchmarks.plan import _pair_results
    from benchmarks.stacks import make_stacks
    from benchmarks.workloads import WORKLOADS

    args = argparse.Namespace(n=None, quick=False, reps=None, pair=pair)
    stacks = make_stacks(dcmtk_nodelay=True)
    return [r.key for r in _pair_results([WORKLOADS["store-small"]], {"store": stacks}, args)]


def test_store_pairs_keep_plain_rows_and_pair_tls_only_with_tls() -> None:
    assert _store_pairs(None) == [
        ("pynetdicom", "pynetdicom"),
        ("adicom", "adicom"),
        ("dcmtk", "dcmtk"),
        ("adicom-tls", "adicom-tls"),
        ("dcmtk-tls", "dcmtk-tls"),
        ("pynetdicom", "adicom"),
        ("adicom", "pynetdicom"),
        ("adicom", "adicom-fsync"),
        ("adicom", "dcmtk"),
        ("dcmtk", "adicom"),
        ("adicom-tls", "dcmtk-tls"),
        ("dcmtk-tls", "adicom-tls"),
    ]
    # Asked for by name, a plain/TLS mix is still not run.
    mixed = ["adicom:adicom-tls", "adicom-tls:adicom", "dcmtk:dcmtk-tls", "pynetdicom:adicom-tls"]
    assert _store_pairs(mixed) == []


def test_the_uvloop_variant_runs_only_where_a_pair_names_it() -> None:
    assert all("adicom-uvloop" not in key for key in _store_pairs(None))
    wanted = ["adicom-uvloop:adicom-uvloop", "dcmtk:adicom-uvloop", "adicom:adicom"]
    assert _store_pairs(wanted) == [
        ("adicom", "adicom"),
        ("adicom-uvloop", "adicom-uvloop"),
        ("dcmtk", "adicom-uvloop"),
    ]
    # Only in the pairs adicom itself has (pynetdicom -> dcmtk is no store row).
    assert _store_pairs(["adicom-uvloop:adicom-tls"]) == []


def test_the_archive_scp_is_a_store_row_only_where_a_pair_names_it() -> None:
    assert all("adicom-archive" not in key for key in _store_pairs(None))
    wanted = ["dcmtk:adicom-archive", "adicom:adicom-archive", "adicom-archive:adicom-archive"]
    # SCP only: it has no SCU of its own.
    assert _store_pairs(wanted) == [("dcmtk", "adicom-archive"), ("adicom", "adicom-archive")]


def test_runner_measures_the_archive_scp_and_counts_its_files_not_its_index(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "bench.json"
    result = run_bench(
        "--reps", "1", "-n", "20", "--pair", "adicom:adicom-archive", "--only", "store-small",
        "--json", str(out), "--data-dir", str(tmp_path / "data"), "--scratch", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "adicom -> adicom-archive" in result.stdout
    (row,) = json.loads(out.read_text())["results"]
    assert (row["scu"], row["scp"]) == ("adicom", "adicom-archive")
    rep = row["reps"][0]
    assert rep["ok"] == rep["ops"] == 20
    # 20 timed instances and a warm-up, each a file; the index beside them is not one.
    assert rep["scp_stored_files"] == 21


def test_an_scp_whose_port_was_taken_starts_on_another(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """storescp cannot choose its own port: one taken before it binds is no failed run."""
    import socket

    from benchmarks import processes, stacks
    from benchmarks.sides import dcmtk_side

    if dcmtk_side.find_tool("storescp") is None:
        pytest.fail("DCMTK storescp is not installed (the dcmtk Debian package)")
    (dcmtk,) = [s for s in stacks.make_stacks(dcmtk_nodelay=True) if s.name == "dcmtk"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], processes.free_port()])
        monkeypatch.setattr(stacks, "free_port", lambda: next(ports))
        scp = stacks.start_scp(dcmtk, tmp_path, None)
        try:
            assert scp.port != taken.getsockname()[1]
            assert scp.proc.poll() is None
        finally:
            stacks.stop_scp(scp)
        # Out of attempts, the SCP's own words say why.
        monkeypatch.setattr(stacks, "free_port", lambda: taken.getsockname()[1])
        (tmp_path / "again").mkdir()
        with pytest.raises(processes.BenchError, match="in use"):
            stacks.start_scp(dcmtk, tmp_path / "again", None)


def test_runner_measures_store_over_tls(tmp_path: pathlib.Path) -> None:
    from benchmarks.sides import dcmtk_side

    pairs = [("adicom-tls", "adicom-tls")]
    dcmtk = all(dcmtk_side.find_tool(t) for t in ("storescp", "storescu"))
    if dcmtk and dcmtk_side.openssl_version() is not None:
        # The mixed pairs show that each side really speaks TLS to the other.
        pairs += [("dcmtk-tls", "dcmtk-tls"), ("adicom-tls", "dcmtk-tls"),
                  ("dcmtk-tls", "adicom-tls")]  # fmt: skip
    out = tmp_path / "bench.json"
    asked = [f"{scu}:{scp}" for scu, scp in pairs] + ["adicom:adicom-tls"]  # the last: never run
    result = run_bench(
        "--only", "store-small", "-n", "20", "--reps", "1", "--retries", "0",
        "--json", str(out), "--data-dir", str(tmp_path / "data"),
        *(arg for p in asked for arg in ("--pair", p)),
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "adicom-tls -> adicom-tls" in result.stdout
    assert "TLSv1." in result.stdout  # the negotiated version, in the notes
    results = json.loads(out.read_text())["results"]
    assert [(r["scu"], r["scp"]) for r in results] == pairs
    for row in results:
        assert len(row["reps"]) == 1, row["errors"]
        for rep in row["reps"]:
            # Every instance sent (timed and warm-up) is a file on the SCP's disk.
            assert rep["ok"] == rep["ops"] > 0
            assert rep["scp_stored_files"] == 20 + rep["extra"]["warmup_instances"]
            if row["scu"] == "adicom-tls":
                assert rep["extra"]["tls"]["version"].startswith("TLSv1.")
            else:
                assert "+tls" in rep["extra"]["tool"]


# --------------------------------------------------------------------------- the chart

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(
    workload: str, scu: str, scp: str, rate: float | None, errors: int = 0
) -> dict[str, object]:
    """One row of a results JSON, as results.PairResult.to_json writes it (the parts drawn)."""
    reps = [] if rate is None else [{"ops_per_s": rate * f} for f in (0.9, 1.0, 1.1)]
    return {
        "workload": workload,
        "scu": scu,
        "scu_label": scu + ("*" if scu.startswith("dcmtk") else ""),
        "scp": scp,
        "n": 1000,
        "reps_wanted": 3,
        "median_ops_per_s": rate,
        "median_mb_per_s": None if rate is None else rate * 0.042,
        "median_seconds": None if rate is None else 1000 / rate,
        "reps": reps,
        "errors": [{"rep": i + 1, "error": "refused"} for i in range(errors)],
    }


def _results() -> dict[str, object]:
    """A small run: rates orders of magnitude apart, TLS and fsync rows, failures, no idle-500."""
    rows = [
        # The runner's order is echo, store, find, idle: given here the other way round.
        _row("find-1000", "adicom", "adicom", None, errors=3),
        _row("store-small", "pynetdicom", "pynetdicom", 20.4),
        _row("store-small", "adicom", "adicom", 3867.0),
        _row("store-small", "dcmtk", "dcmtk", 2884.0),
        _row("store-small", "adicom-tls", "adicom-tls", 2112.0),
        _row("store-small", "adicom", "adicom-fsync", 1062.0),
        _row("store-small", "adicom", "pynetdicom", None, errors=2),
        _row("echo-one-assoc", "adicom", "adicom", 3662.0),
        _row("echo-one-assoc", "dcmtk", "adicom", 5807.0),
    ]
    workloads = {name: {"kind": kind, "unit": unit} for name, kind, unit in (
        ("echo-one-assoc", "echo", "echoes/s"), ("store-small", "store", "inst/s"),
        ("find-1000", "qr", "matches/s"), ("idle-500", "idle", "assoc/s"))}  # fmt: skip
    return {
        "meta": {"git_commit": "0123456789abcdef", "cpu_count": 2, "versions": {"adicom": "0.1.0"}},
        "config": {"quick": False},
        "workloads": workloads,
        "results": rows,
    }


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_chart_draws_png_and_says_what_it_leaves_out(tmp_path: pathlib.Path) -> None:
    from benchmarks import chart

    out = tmp_path / "sub" / "chart.png"
    messages = chart.draw(_results(), out)
    data = out.read_bytes()
    assert len(data) > 10_000
    width, height = _png_size(data)
    assert width == chart.WIDTH_IN * chart.DPI
    assert height > 0
    assert messages == [
        "store-small: adicom -> pynetdicom has no result (2 failed repetitions)",
        "find-1000: skipped, no pair has a result (1 pair, 3 failed repetitions)",
        "idle-500: skipped, no pair ran it",
    ]
    # The same results, the same bytes; nothing but the PNG is left behind.
    again = tmp_path / "again.png"
    chart.draw(_results(), again)
    assert again.read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["chart.png"]


def test_chart_panels_in_run_order_log_scale_and_hatched_tls_and_fsync() -> None:
    from matplotlib.patches import Rectangle

    from benchmarks import chart

    fig, _ = chart.figure(_results())
    axes = {ax.get_title(loc="left").split(" ")[0]: ax for ax in fig.axes}
    assert list(axes) == ["echo-one-assoc", "store-small"]  # the runner's order
    # 20 inst/s beside 3867: log; 3662 beside 5807 echoes/s: linear.
    assert axes["store-small"].get_xscale() == "log"
    assert "log scale" in axes["store-small"].get_xlabel()
    assert axes["echo-one-assoc"].get_xscale() == "linear"
    assert axes["echo-one-assoc"].get_xlabel() == "echoes/s (median)"
    store = axes["store-small"]
    labels = [t.get_text() for t in store.get_yticklabels()]
    assert labels == ["pynetdicom -> pynetdicom", "adicom -> adicom", "dcmtk* -> dcmtk",
                      "adicom-tls -> adicom-tls", "adicom -> adicom-fsync",
                      "adicom -> pynetdicom"]  # fmt: skip
    # Two half-bars per pair with a result (upper: the SCU's stack, lower: the SCP's).
    bars = [p for p in store.patches if isinstance(p, Rectangle)]
    hatches = [b.get_hatch() for b in sorted(bars, key=lambda b: b.get_y())]
    assert hatches == [None] * 6 + [chart.TLS_HATCH] * 2 + [chart.FSYNC_HATCH] * 2
    texts = [t.get_text() for t in store.texts]
    assert "3,867 inst/s, 162 MB/s" in texts
    assert "no result (2 failed repetitions)" in texts


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        ("[]", "not the JSON of `python -m benchmarks.run`"),
        ('{"rows": []}', "not the JSON of `python -m benchmarks.run`"),
        ('{"results": [7]}', "results[0]: a result must be a JSON object, not int"),
        (
            '{"results": [{"workload": "store-small", "scu": "adicom"}]}',
            "results[0]: 'scp' must be a non-empty string, not None",
        ),
        (
            '{"results": [{"workload": "w", "scu": "a", "scp": "b", "median_ops_per_s": "fast"}]}',
            "results[0] (w, a -> b): median_ops_per_s must be a finite number or null, not 'fast'",
        ),
        (
            '{"results": [{"workload": "w", "scu": "a", "scp": "b", "median_ops_per_s": -1}]}',
            "median_ops_per_s must not be negative",
        ),
        (
            '{"results": [{"workload": "w", "scu": "a", "scp": "b", "median_ops_per_s": null}]}',
            "no workload has a result to draw",
        ),
        ('{"results": []}', "no workload has a result to draw"),
    ],
)
def test_chart_bad_input_is_a_clear_error(
    tmp_path: pathlib.Path, content: str | None, expected: str
) -> None:
    from benchmarks import chart

    source = tmp_path / "results.json"
    if content is not None:
        source.write_text(content)
    out = tmp_path / "chart.png"
    with pytest.raises(chart.ChartError, match=re.escape(expected)) as caught:
        chart.draw_file(source, out)
    assert str(source) in str(caught.value)
    assert list(tmp_path.iterdir()) == ([source] if content is not None else [])


def test_chart_wants_a_png_path(tmp_path: pathlib.Path) -> None:
    from benchmarks import chart

    with pytest.raises(chart.ChartError, match=r"should end in \.png"):
        chart.draw(_results(), tmp_path / "chart.svg")
    assert list(tmp_path.iterdir()) == []


def test_chart_command_line(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "results.json"
    source.write_text(json.dumps(_results()))
    out = tmp_path / "chart.png"
    argv = [sys.executable, "-m", "benchmarks.chart"]
    kw: dict[str, Any] = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 60}
    done = subprocess.run([*argv, str(source), str(out)], **kw)
    assert done.returncode == 0, done.stderr
    assert "chart: idle-500: skipped, no pair ran it" in done.stderr
    assert f"Chart: {out}" in done.stderr
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    bad = subprocess.run([*argv, str(tmp_path / "missing.json"), str(tmp_path / "no.png")], **kw)
    assert bad.returncode == 2
    assert "chart: error: cannot read" in bad.stderr
    assert not (tmp_path / "no.png").exists()


def test_run_chart_from_json_runs_nothing(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import run

    source = tmp_path / "results.json"
    source.write_text(json.dumps(_results()))
    out = tmp_path / "chart.png"
    assert run.main(["--chart", str(out), "--from-json", str(source)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert "store-small: adicom -> pynetdicom has no result" in capsys.readouterr().err
    assert run.main(["--chart", str(out), "--from-json", str(tmp_path / "missing.json")]) == 2
    assert "chart: error: cannot read" in capsys.readouterr().err
    for argv, expected in (
        (["--from-json", str(source)], "--from-json needs --chart PATH"),
        (["--chart", str(out), "--from-json", str(source), "--only", "store-small"],
         "runs nothing: drop --only store-small"),
        (["--chart", str(tmp_path / "chart.svg")], "should end in .png"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            run.main(argv)
        assert exited.value.code == 2
        assert expected in capsys.readouterr().err


def test_runner_draws_chart_after_run(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    png = tmp_path / "chart.png"
    result = run_bench(
        "--only", "echo-one-assoc", "-n", "20", "--reps", "1", "--pair", "adicom:adicom",
        "--json", str(out), "--data-dir", str(tmp_path / "data"), "--chart", str(png),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Chart: {png}" in result.stderr
    assert json.loads(out.read_text())["results"][0]["median_ops_per_s"] > 0
    assert png.read_bytes()[:8] == PNG_SIGNATURE


# --------------------------------------------------------------------------- calls and batches


def test_calls_benchmark_runs_every_row_tiny(tmp_path: pathlib.Path) -> None:
    from benchmarks.calls.rows import ROWS
    from benchmarks.sides import dcmtk_side

    scps = ["adicom"] + (["dcmtk"] if dcmtk_side.find_tool("dcmqrscp") else [])
    out = tmp_path / "calls.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.calls",
            "-n",
            "5",
            "--reps",
            "1",
            "--json",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
            *(arg for scp in scps for arg in ("--scp", scp)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "find-calls:" in result.stdout and "Summary:" in result.stdout
    results = json.loads(out.read_text())["results"]
    assert [(r["workload"], r["scu"], r["mode"], r["scp"]) for r in results] == [
        (row.workload, row.scu, row.mode, scp)
        for workload in ("find-calls", "store-calls", "store-batch")
        for scp in scps
        for row in ROWS
        if row.workload == workload
    ]
    for row in results:
        assert len(row["reps"]) == 1, row["errors"]
        rep = row["reps"][0]
        assert rep["ok"] == rep["ops"] == row["n"] == 5
        assert row["median_ops_per_s"] > 0 and rep["ms_per_op"] > 0
        if row["workload"] != "store-batch":
            assert 0 < rep["extra"]["p50_ms"] <= rep["extra"]["p99_ms"] <= rep["extra"]["max_ms"]
        if row["mode"] == "pool":
            # One association served every call (the warm-up had a pool of its own).
            assert rep["extra"]["pool"]["opened"] == 1
            assert rep["extra"]["pool"]["reused"] == 4
        if row["workload"] != "find-calls":
            # The timed instances and the warm-up one, each a file in a fresh archive.
            assert rep["scp_stored_files"] == 6
        ratios = row["ratios"]
        if row["mode"] in ("pool", "one-assoc"):
            assert ratios["x per call"] > 0
        if row["mode"].startswith("many-"):
            assert ratios["x adicom.store"] > 0


def test_calls_ratios_compare_modes_on_the_same_scp() -> None:
    from benchmarks.calls.report import render, summary
    from benchmarks.calls.results import RowResult
    from benchmarks.calls.rows import ROWS

    rates = {"pool": 800.0, "per-call": 200.0, "one-assoc": 40.0, "store": 1000.0}
    results = []
    for scp, scale in (("adicom", 1.0), ("dcmtk", 2.0)):
        for row in ROWS:
            rate = scale * rates.get(row.mode, 500.0)
            rep = {"ops_per_s": rate, "seconds": 10 / rate, "ops": 10, "cpu_s": 0.01,
                   "scp_cpu_s": 0.02, "extra": {"p50_ms": 1.0, "p99_ms": 2.0}}  # fmt: skip
            results.append(RowResult(row, scp, 10, 1, reps=[rep]))
    pooled = next(r for r in results if r.scp == "dcmtk" and r.row.mode == "pool")
    assert pooled.ratios(results) == {"x per call": 4.0, "x pynetdicom": 20.0}
    one = next(r for r in results if r.row.mode == "one-assoc")
    assert one.ratios(results) == {"x per call": 0.2}
    many = next(r for r in results if r.row.mode == "many-2")
    assert many.ratios(results) == {"x adicom.store": 0.5}
    assert "adicom pooled" in render(results)
    assert any(
        line.startswith("find-calls -> adicom serve: adicom pooled 800/s")
        for line in summary(results)
    )


def test_index_benchmark_runs_sqlite_postgresql_and_two_nodes(tmp_path: pathlib.Path) -> None:
    # DCMTK's SCUs are the load, and a throw-away PostgreSQL cluster the index.
    out = tmp_path / "index.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.index", "-n", "6", "--reps", "1",
         "--json", str(out), "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    median = json.loads(out.read_text())["median"]
    assert set(median) == {"sqlite", "postgresql", "postgresql x2"}
    for operations in median.values():
        assert set(operations) == {"store", "find", "get"}
        assert all(m["rate"] > 0 for m in operations.values())
    assert "| postgresql x2 | get |" in result.stdout


def test_retrievecost_measures_get_getnull_and_move_beside_dcmtk(tmp_path: pathlib.Path) -> None:
    from benchmarks.sides.dcmtk_side import find_tool

    if find_tool("dcmqrscp") is None or find_tool("getscu") is None:
        pytest.fail("DCMTK is installed on this project's machines; dcmqrscp/getscu not found")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.retrievecost", "--dcmtk", "--data-dir",
         str(tmp_path / "data"), "--scratch", str(scratch), "get:6", "getnull:6", "move:6"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split(":")[0]: line for line in result.stdout.splitlines() if ":" in line}
    # Each run completed all six sub-operations; DCMTK's column only for get and move.
    for kind in ("get", "getnull", "move"):
        assert rows[kind].split()[0] == f"{kind}:6", result.stdout
    assert "wall N-1" in rows["get"] and "wall N-1" in rows["move"]
    assert "wall N-1" not in rows["getnull"]
    assert list(scratch.iterdir()) == []  # its work folder is removed
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks.retrievecost", "get:6", "move:7"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "one N for all" in bad.stderr


def test_retrievecost_reads_perf_stat_counts_as_calls_per_operation(tmp_path: pathlib.Path) -> None:
    from benchmarks.retrievecost import _per_op, _syscall_counts

    out = tmp_path / "perf.txt"
    out.write_text(
        "# started on Mon Nov 30 10:00:00 2026\n\n"
        "3400,,raw_syscalls:sys_enter,1000,100.00,,\n"
        "1600,,syscalls:sys_enter_recvfrom,1000,100.00,,\n"
        "1700,,syscalls:sys_enter_epoll_wait,1000,100.00,,\n"
        "<not counted>,,syscalls:sys_enter_poll,0,100.00,,\n"
        "0,,syscalls:sys_enter_sendto,1000,100.00,,\n"
    )
    counts = _syscall_counts(out)
    assert counts == {"all": 3400, "recvfrom": 1600, "epoll_wait": 1700, "sendto": 0}
    assert not out.exists()  # read once, then removed
    assert _per_op(counts, 1000) == "syscalls/op 3.40: epoll_wait 1.70 recvfrom 1.60"


def test_retrievecost_counts_system_calls_per_sub_operation(tmp_path: pathlib.Path) -> None:
    # perf on the kernel's syscall tracepoints: counted where it can read
    # them, else refused with a clear message before anything runs.
    probe = subprocess.run(
        ["perf", "stat", "-e", "raw_syscalls:sys_enter", "true"], capture_output=True, text=True
    ) if shutil.which("perf") else None  # fmt: skip
    command = [sys.executable, "-m", "benchmarks.retrievecost", "--syscalls", "--dcmtk",
               "--data-dir", str(tmp_path / "data"), "--scratch", str(tmp_path),
               "move:6"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if probe is None:
        assert result.returncode == 2 and "--syscalls needs perf" in result.stderr
        return
    if probe.returncode != 0:
        assert result.returncode != 0 and "perf stat wrote no counts" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-2000:]
    ours = [line for line in result.stdout.splitlines() if line.startswith("  adicom syscalls/op")]
    theirs = [
        line for line in result.stdout.splitlines() if line.startswith("  DCMTK  syscalls/op")
    ]
    assert len(ours) == len(theirs) == 1, result.stdout
    # A C-MOVE SCU reads its responses: some reads per sub-operation, both sides.
    assert float(ours[0].split()[2].rstrip(":")) > 0
    assert "read" in theirs[0] and float(theirs[0].split()[2].rstrip(":")) > 0


def test_assocrate_drives_every_scp_with_the_same_raw_client(tmp_path: pathlib.Path) -> None:
    from benchmarks.sides.dcmtk_side import find_tool

    if find_tool("storescp") is None:
        pytest.fail("DCMTK is installed on this project's machines; storescp not found")
    out = tmp_path / "assocrate.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.assocrate", "-n", "30", "--reps", "1",
         "--lanes", "2", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"adicom", "adicom-asyncio", "dcmtk", "floor", "floor-asyncio"}
    for row in rows.values():
        # Every cycle was answered (the client checks each answer's PDU type
        # and the echo's status), and the SCP spent CPU on them.
        assert row["cycles_per_s"] > 0 and row["scp_cpu_us_per_cycle"] >= 0
    table = result.stdout.splitlines()[-len(rows) :]
    assert [line.split()[0] for line in table] == list(rows)


def test_assocrate_counts_instructions_per_cycle_under_callgrind(tmp_path: pathlib.Path) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        pytest.fail("valgrind is installed on this project's machines (.ci/run); not found")
    out = tmp_path / "assocrate.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.assocrate", "--callgrind", "-n", "10",
         "--scp", "dcmtk", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    counted = json.loads(out.read_text())["instructions"]["dcmtk"]
    # storescp's own work per association: tens of thousands of
    # instructions at least (124k on DCMTK 3.6.7), whatever the load.
    assert 20_000 < counted < 2_000_000, counted


def test_assocrate_client_fails_loudly_on_a_wrong_answer(tmp_path: pathlib.Path) -> None:
    import socket as socket_module

    # A "server" that answers the A-ASSOCIATE-RQ with an A-ABORT.
    listener = socket_module.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with subprocess.Popen(
        [sys.executable, "-m", "benchmarks.assocrate", "--client", str(port), "1"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as child:  # fmt: skip
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        try:
            assert child.stdout.readline().strip() == b"ready"
            child.stdin.write(b"go\n")
            child.stdin.close()
            listener.settimeout(30)
            conn, _ = listener.accept()
            with conn:
                conn.recv(1 << 16)
                conn.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00")
                err = child.stderr.read()
                child.wait(30)
        finally:
            listener.close()
            if child.poll() is None:
                child.kill()
    assert child.returncode != 0
    assert b"PDU type 7 instead of A-ASSOCIATE-AC" in err
