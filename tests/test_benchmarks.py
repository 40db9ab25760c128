"""The benchmark runner still runs (a smoke test; speed is measured in benchmarks/, not here)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_runner_measures_adicom_pair_and_writes_json(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    workloads = ["assoc-echo", "echo-one-assoc", "store-small"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--reps",
            "1",
            "-n",
            "20",
            "--pair",
            "adicom:adicom",
            "--json",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
            *(arg for w in workloads for arg in ("--only", w)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "adicom -> adicom" in result.stdout
    results = json.loads(out.read_text())["results"]
    assert [r["workload"] for r in results] == workloads
    for row in results:
        assert (row["scu"], row["scp"]) == ("adicom", "adicom")
        assert row["median_ops_per_s"] > 0
        assert all(rep["ok"] == rep["ops"] == 20 for rep in row["reps"])
    # 20 timed instances and one warm-up instance, each a file on the SCP's disk.
    assert results[2]["reps"][0]["scp_stored_files"] == 21
