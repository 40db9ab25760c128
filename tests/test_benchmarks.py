"""The benchmark runner still runs (a smoke test; speed is measured in benchmarks/, not here)."""

from __future__ import annotations

import argparse
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
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--only",
            "store-small",
            "-n",
            "20",
            "--reps",
            "1",
            "--retries",
            "0",
            "--json",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
            *(arg for p in asked for arg in ("--pair", p)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
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
