"""Instructions per instance of ``adicom serve --storage`` fed by DCMTK storescu.

    python -m benchmarks.scpcost                      # 300 small instances, storescu's PDUs
    python -m benchmarks.scpcost --max-send-pdu 16384 # the data set in 16 KiB PDUs
    python -m benchmarks.scpcost --repeat 3 --dump /tmp/cg.out

The server runs under ``valgrind --tool=callgrind`` with no loop turn
budget (see benchmarks.permessage: valgrind's slowness would make the loop
look busy); a warm-up association stores the warm-up instances and 20
more, the counters are zeroed, one storescu association stores N instances
of benchmarks.data.SMALL (~42 KB each), and the server's instructions over
that span, divided by N, are printed. DCMTK storescu sends each data set in
PDUs as large as the server accepts (one 42 KB PDU: adicom announces
1 MiB), or of ``--max-send-pdu`` bytes. ``--dump`` writes callgrind's
profile of the span (``callgrind_annotate``). The count moves a little from
run to run (how reads batch the PDUs depends on timing): ``--repeat`` and
compare medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import data
from benchmarks.config import REPO_ROOT
from benchmarks.processes import child_env, free_port, port_open


def _instructions(pid: int) -> int:
    out = subprocess.run(
        ["callgrind_control", "-e", "Ir", str(pid)], capture_output=True, text=True
    ).stdout
    return sum(
        int(line.split()[-1].replace(",", ""))
        for line in out.splitlines()
        if line.strip().startswith("Th ")
    )


def measure(n: int, max_send_pdu: int | None, data_dir: Path, dump: str | None) -> float:
    """Server instructions per instance, in thousands."""
    directory = data.ensure(data_dir, data.SMALL, n)
    files = [str(p) for p in data.instance_paths(directory, n)]
    warm = [str(p) for p in data.warmup_paths(directory)]
    port = free_port()
    store = Path(tempfile.mkdtemp(prefix="scpcost-"))
    command = ["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={dump or '/dev/null'}"]
    command += [sys.executable, "-m", "adicom", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--aet", "ADICOM", "--storage", str(store),
                "--turn-budget", "0"]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=REPO_ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    scu = ["/usr/bin/storescu", "-aec", "ADICOM"]
    if max_send_pdu:
        scu += ["--max-send-pdu", str(max_send_pdu)]
    env = dict(os.environ, TCP_NODELAY="1")
    try:
        deadline = time.monotonic() + 300
        while not port_open(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("adicom serve did not start under valgrind")
            time.sleep(0.5)
        args = ["127.0.0.1", str(port)]
        subprocess.run([*scu, *args, *warm, *files[:20]], env=env, check=True, capture_output=True)
        time.sleep(1)
        subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True)
        subprocess.run([*scu, *args, *files], env=env, check=True, capture_output=True)
        time.sleep(1)
        count = _instructions(server.pid)
        if dump:
            subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True)
        return count / n / 1000
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    """Parse the command line, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="instances timed (default 300)")
    parser.add_argument("--max-send-pdu", type=int, default=None, help="storescu's PDU size")
    parser.add_argument("--repeat", type=int, default=1, help="runs (the median is printed)")
    parser.add_argument("--dump", default=None, help="callgrind profile of the span to this file")
    parser.add_argument("--data-dir", type=Path, default=Path("benchmarks/results/data"))
    args = parser.parse_args()
    if shutil.which("valgrind") is None or not Path("/usr/bin/storescu").exists():
        parser.error("needs valgrind and DCMTK's /usr/bin/storescu")
    runs = [
        measure(args.n, args.max_send_pdu, args.data_dir, args.dump) for _ in range(args.repeat)
    ]
    pdu = f"--max-send-pdu {args.max_send_pdu}" if args.max_send_pdu else "storescu's default PDUs"
    print(
        f"adicom serve --storage, {args.n} x {data.SMALL.name} ({pdu}): "
        f"{statistics.median(runs):.1f} kIr per instance (runs: "
        + ", ".join(f"{r:.1f}" for r in runs)
        + ")"
    )


if __name__ == "__main__":
    main()
