"""The bulk-load benchmark still runs: a probe's C-ECHOs while storescu streams instances.

A smoke run with two small instances (4 frames, ~2 MB) per SCP: the figures
come from `python -m benchmarks.bulkload`, not from here; this checks that
every part (SCP, probe, storescu, /proc sampling, summary, table, JSON) works.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

from benchmarks import bulkload
from benchmarks.sides import dcmtk_side

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="reads /proc"),
    pytest.mark.skipif(
        dcmtk_side.find_tool("storescu") is None or dcmtk_side.find_tool("storescp") is None,
        reason="DCMTK storescu (the load) and storescp are needed",
    ),
    pytest.mark.interop,
]


def test_bulk_load_rows_for_adicom_and_storescp(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("ADICOM_"):
            monkeypatch.delenv(name)
    out = tmp_path / "bulk.json"
    data = str(tmp_path / "data")
    argv = ["--reps", "1", "-n", "2", "--frames", "4", "--data-dir", data, "--json", str(out)]
    code = bulkload.main(argv)
    result = json.loads(out.read_text())
    errors = [row.get("error") for row in result["rows"]]
    assert code == 0, errors
    assert [row["scp"] for row in result["rows"]] == ["adicom", "adicom-deps", "dcmtk"]
    for row in result["rows"]:
        assert "error" not in row
        assert row["stored_files"] == 2
        loaded = row["echo_loaded"]
        assert loaded["echoes"] >= 3
        assert 0 < loaded["p50_ms"] <= loaded["p99_ms"] <= loaded["max_ms"]
        assert row["rss_idle_kib"] > 1000 and row["rss_receiving_kib"] > 1000
        assert row["load_mb_per_s"] > 0
    for adicom_row in result["rows"][:2]:
        assert adicom_row["stop"]["exit_code"] == 0
        # adicom serve with no ADICOM_* variable has no use for pydantic.
        assert adicom_row["pydantic"] is False
    # Without numpy, Pillow and requests to find, pydicom is lighter.
    assert result["rows"][1]["rss_idle_kib"] < result["rows"][0]["rss_idle_kib"]
    summary = result["summary"]
    assert all(summary[scp]["reps"] == 1 for scp in ("adicom", "adicom-deps", "dcmtk"))
    table = bulkload.render(summary, 2, 2.1)
    assert "adicom serve --storage" in table and "storescp --fork" in table
    assert "deps only" in table
