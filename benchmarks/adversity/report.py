"""The adversity table, the verdicts against adicom's targets, and the notes under them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: adicom's targets under attack (its rows only).
TARGET_P99_MS = 50.0
TARGET_RSS_BYTES = 150_000_000  # 150 MB = 143 MiB
TARGET_THREADS = 1

COLUMNS = (
    "SCP", "attack", "p50 ms", "p99 ms", "max ms", "echoes", "new ok/ref/fail",
    "RSS MiB", "CPU %", "threads", "tracebacks", "SIGTERM", "attacker", "verdict",
)  # fmt: skip


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _attacker_text(attacker: dict[str, Any] | None) -> str:
    """Connections made, and how the most common ones ended."""
    if not attacker:
        return "-"
    top = sorted(attacker["outcomes"].items(), key=lambda kv: -kv[1])[:2]
    ends = ", ".join(f"{k} {v}" for k, v in top)
    held = attacker.get("open_at_end", 0)
    text = f"{attacker['connects']} conn"
    if ends:
        text += f": {ends}"
    if held:
        text += f"; {held} open at end"
    if attacker.get("connect_failures"):
        text += f"; {attacker['connect_failures']} connect failed"
    return text


def _stop_text(stop: dict[str, Any] | None) -> str:
    if not stop:
        return "-"
    if stop.get("exited_before"):
        return f"exited {stop['exit_code']} before"
    text = f"{stop['exit_code']} in {_num(stop['exit_s'], 2)} s"
    return text + " (killed)" if stop.get("killed_after_timeout") else text


def verdict(row: dict[str, Any]) -> list[str]:
    """What misses adicom's targets in this row (empty: all met)."""
    if "error" in row:
        return [f"error: {row['error']}"]
    misses: list[str] = []
    probe, watch = row.get("probe"), row.get("watch") or {}
    if probe is None:
        return ["probe reported nothing"]
    p99 = probe["p99_ms"]
    if p99 is None or p99 >= TARGET_P99_MS:
        misses.append(f"p99 {_num(p99)} ms")
    if probe["echo_failures"] or probe["fresh_refused"] or probe["fresh_failed"]:
        misses.append("probe refused/failed")
    if watch.get("peak_rss_kib", 0) * 1024 >= TARGET_RSS_BYTES:
        misses.append(f"RSS {watch['peak_rss_kib'] * 1024 / 1e6:.0f} MB")
    if row.get("tracebacks"):
        misses.append(f"{row['tracebacks']} tracebacks")
    if watch.get("max_threads", 0) > TARGET_THREADS:
        misses.append(f"{watch['max_threads']} threads")
    if (row.get("stop") or {}).get("exit_code") != 0:
        misses.append("SIGTERM exit code")
    return misses


def _cells(row: dict[str, Any]) -> list[str]:
    probe = row.get("probe") or {}
    watch = row.get("watch") or {}
    fresh = (
        f"{probe['fresh_ok']}/{probe['fresh_refused']}/{probe['fresh_failed']}" if probe else "-"
    )
    echoes = f"{probe['echoes_answered']}" if probe else "-"
    if probe.get("echo_failures"):
        echoes += f" ({probe['echo_failures']} failed)"
    threads = str(watch.get("max_threads", "-"))
    if watch.get("max_processes", 1) > 1:
        threads += f" ({watch['max_processes']} proc)"
    rss = _num(watch["peak_rss_kib"] / 1024, 0) if watch.get("peak_rss_kib") else "-"
    if watch.get("killed_at_rss_cap"):
        rss += " (killed at cap)"
    misses = verdict(row) if row["scp"] == "adicom" else None
    return [
        row["scp"],
        row["label"],
        _num(probe.get("p50_ms")),
        _num(probe.get("p99_ms")),
        _num(probe.get("max_ms")),
        echoes,
        fresh,
        rss,
        _num(watch.get("cpu_pct"), 0),
        threads,
        str(row.get("tracebacks", "-")),
        _stop_text(row.get("stop")),
        _attacker_text(row.get("attacker")),
        "" if misses is None else ("ok" if not misses else "MISS: " + "; ".join(misses)),
    ]


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    body = [_cells(r) for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in body)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    for cells in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _row_notes(row: dict[str, Any]) -> list[str]:
    where = f"{row['scp']} {row['label']}"
    notes = [f"{where}: {row['note']}"] if row.get("note") else []
    attacker = row.get("attacker") or {}
    if row["attack"] == "dribble-store" and attacker:
        closed = attacker.get("closed_after_s") or []
        seconds = row["seconds"]
        notes.append(
            f"{where}: the dribbled C-STORE was closed by the SCP after "
            + ", ".join(f"{s:.1f}" for s in closed[:5])
            + " s"
            if closed
            else f"{where}: the dribbled C-STORE was still open when the {seconds:g} s window ended"
        )
    if attacker.get("statuses"):
        notes.append(f"{where}: responses to the attacker: {attacker['statuses']}")
    if row.get("watch", {}).get("exited_during_window") is not None:
        code = row["watch"]["exited_during_window"]
        notes.append(f"{where}: the SCP EXITED during the window (code {code})")
    if attacker.get("outcomes", {}).get("context-not-accepted"):
        notes.append(f"{where}: the SCP did not accept the presentation context the attack needs")
    return notes


GENERAL_NOTES = (
    "p50/p99/max ms: the probe's C-ECHO latency on its one association (a C-ECHO every"
    " 20 ms from 127.0.0.1); echoes: answered (failed: timed out after 5 s or association"
    " lost). new ok/ref/fail: the probe's new associations (every 250 ms: connect, C-ECHO,"
    " release) answered, refused with A-ASSOCIATE-RJ, failed (timeout 5 s, reset, abort).",
    "RSS MiB: the SCP's peak resident memory (VmHWM; for storescp --fork the largest"
    " sampled sum of PSS over its processes); threads: the most seen (storescp --fork:"
    " summed over its processes, shown with their number); CPU %: the SCP's CPU time over"
    " the window, in % of one core. SIGTERM: exit code and seconds"
    " to exit (after the attack stopped, except sigterm-sta2: with its 50 connections open).",
    "attacker: connections opened from 127.0.0.2 (from 50 addresses: 127.0.0.2-51) in the"
    " window and how the SCP ended the most common ones (abort: A-ABORT received; closed:"
    " closed without one; answered: a response came; rejected: A-ASSOCIATE-RJ).",
    f"verdict (adicom rows): probe p99 < {TARGET_P99_MS:g} ms, no probe echo or new"
    f" association refused or failed, peak RSS < {TARGET_RSS_BYTES / 1e6:g} MB, no traceback,"
    f" {TARGET_THREADS} thread, SIGTERM exit code 0.",
)


def notes(rows: Sequence[dict[str, Any]], skipped: Sequence[str]) -> list[str]:
    out = list(GENERAL_NOTES)
    for row in rows:
        out += _row_notes(row)
    out += [f"not run: {s}" for s in skipped]
    return out
