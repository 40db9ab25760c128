"""The benchmark runner still runs (a smoke test; speed is measured in benchmarks/, not here)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_runner_measures_adicom_pair_and_writes_json(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "echo.json"
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
    assert {r["workload"] for r in results} == {"assoc-echo", "echo-one-assoc"}
    for row in results:
        assert (row["scu"], row["scp"]) == ("adicom", "adicom")
        assert row["median_ops_per_s"] > 0
        assert all(rep["ok"] == rep["ops"] == 20 for rep in row["reps"])
