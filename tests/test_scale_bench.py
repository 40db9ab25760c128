"""benchmarks.scale still runs: each workload on a few associations (speed is measured there)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Each starts SCPs and dozens of clients: minutes on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(600)


def scale(tmp_path: pathlib.Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--json", str(out),
         "--data-dir", str(tmp_path / "data"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("ADICOM_")},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found: dict[str, Any] = json.loads(out.read_text())
    return found


def test_idle_and_busy_hold_every_association(tmp_path: pathlib.Path) -> None:
    found = scale(
        tmp_path, "--only", "idle-5000", "--only", "busy-1000", "--stack", "adicom",
        "-n", "30", "--probes", "5", "--per", "2",
    )  # fmt: skip
    idle = found["idle-5000"]["adicom"]
    assert (idle["held"], idle["failed"], idle["probes"]) == (30, 0, 5)
    assert idle["sampled_alive"] == "30/30"
    assert idle["scp_open"]["processes"] == 1
    # The SCP's descriptors: the 30 held associations are open on it.
    assert idle["scp_open"]["fds"] >= idle["scp_idle"]["fds"] + 30
    busy = found["busy-1000"]["adicom"]
    assert (busy["held"], busy["failed_associations"], busy["stored"]) == (30, 0, 60)
    assert busy["files_on_disk"] == 60
    assert found["meta"]["nofile"] >= 230


@pytest.mark.parametrize(
    "options", [["--server", "archive"], ["--server", "disk", "--client", "raw"]], ids=str
)
def test_workers_run_one_and_two_processes(tmp_path: pathlib.Path, options: list[str]) -> None:
    from benchmarks.sides import dcmtk_side

    if dcmtk_side.find_tool("storescu") is None:
        pytest.skip("no DCMTK storescu (it sends the warm-up instance)")
    found = scale(
        tmp_path, "--only", "workers", "-n", "24", "--reps", "1", "--lanes", "3",
        "--per-assoc", "2", "--modes", "1,2-own,2-shared", *options,
    )  # fmt: skip
    disk = "disk" in options
    reps = {rep["mode"]: rep for rep in found["workers"]["reps"]}
    assert set(reps) == {"1", "2-own", "2-shared"}
    for mode, rep in reps.items():
        assert (rep["stored"], rep["client_failed"]) == (24, 0), mode
        if "raw" in options:
            assert rep["client_loop"] in ("uvloop", "asyncio")
        # The host's idle and stolen CPU over the run, read from /proc/stat:
        # never negative, and the idle at most the cores' whole time.
        cores = os.cpu_count() or 1
        assert 0 <= rep["host_idle_ms"] <= (rep["seconds"] * 1000 + 50) * cores, mode
        assert rep["host_steal_ms"] >= 0, mode
    # adicom serve --workers 1 is one process; disk_workers supervises even one.
    assert reps["1"]["scp_processes"] == (2 if disk else 1)
    # 12 associations and the warm-up, all counted.
    expected = 13
    if disk:
        assert reps["1"]["associations_per_worker"] == [expected]
    else:
        assert reps["1"]["associations_per_worker"] is None
    for mode in ("2-own", "2-shared"):
        assert reps[mode]["scp_processes"] == 3  # the supervisor and two workers
        assert sum(reps[mode]["associations_per_worker"]) == expected
        summary = found["workers"]
        ratio = reps[mode]["inst_per_s"] / reps["1"]["inst_per_s"]
        assert summary[f"pairs {mode}"] == [round(ratio, 2)]
        # A few instances may cost the server less than the CPU clock's tick.
        bound = summary[f"bound {mode}"]
        assert (bound is None) if reps["1"]["server_cpu_us_per_inst"] == 0 else 1 <= bound <= 2


def test_host_cpu_seconds_reads_idle_and_steal(tmp_path: pathlib.Path) -> None:
    from benchmarks.procfs import host_cpu_seconds

    ticks = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(f"cpu  10 0 5 {7 * ticks} 3 0 1 {2 * ticks} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    assert host_cpu_seconds(stat) == {"idle_s": 7.0, "steal_s": 2.0}
    stat.write_text("intr 1 2 3\n")
    assert host_cpu_seconds(stat) is None
    assert host_cpu_seconds(tmp_path / "missing") is None
    live = host_cpu_seconds()
    assert live is not None and live["idle_s"] >= 0 and live["steal_s"] >= 0


def test_the_workers_bound_is_the_cores_against_one_worker() -> None:
    from benchmarks.scale import speedup_bound

    # 2 workers, 2 cores, the client at a fifth of the server: 2s/(s + c).
    assert speedup_bound(2, 2, 180, 36) == pytest.approx(2 * 180 / 216)
    # A free client (or more cores than processes): the workers' count.
    assert speedup_bound(2, 2, 180, 0) == pytest.approx(2)
    assert speedup_bound(2, 8, 180, 36) == pytest.approx(2)
    # A client dearer than the server leaves one core's worth each: no gain.
    assert speedup_bound(2, 2, 100, 300) == pytest.approx(1)
    with pytest.raises(ValueError, match="positive"):
        speedup_bound(2, 2, 0, 10)


@pytest.mark.anyio
async def test_the_raw_store_lane_stores_then_fails_on_a_refusal() -> None:
    import asyncio
    import functools

    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    import adicom
    from adicom.storage import StoreContext
    from benchmarks.rawdicom import (
        CT_IMAGE_STORAGE,
        Failed,
        StoreLane,
        associate_rq,
        message,
        store_command,
    )

    def encoded(uid: str) -> bytes:
        ds = Dataset()
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = uid
        ds.PatientID = "LANE"
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds)
        return out.getvalue()

    uids = [f"1.2.826.0.1.3680043.10.1.99.{k}" for k in range(1, 4)]
    messages = [
        message(3, store_command(k + 1, u), encoded(u), 1 << 20) for k, u in enumerate(uids)
    ]
    request = associate_rq(CT_IMAGE_STORAGE)
    loop = asyncio.get_running_loop()
    kept = adicom.MemoryStorage()
    refused: list[str] = []

    async def refuse(ds: Dataset, _context: StoreContext) -> int:
        refused.append(ds.SOPInstanceUID)
        return 0xA700

    for storage in (kept, adicom.CallbackStorage(refuse)):
        async with adicom.Server("BENCH-SCP", port=0, storage=storage) as server:
            async with asyncio.timeout(30):
                _, lane = await loop.create_connection(
                    functools.partial(StoreLane, request, messages, 1 << 20),
                    "127.0.0.1",
                    server.port,
                )
                if storage is kept:
                    assert await lane.done == 3
                else:
                    with pytest.raises(Failed, match="0xa700"):
                        await lane.done
    assert [ds.SOPInstanceUID for ds in kept.datasets] == uids
    assert refused == uids[:1]  # the lane stops at the first refusal
