"""The command line's progress display: a bar on a terminal, periodic lines elsewhere."""

from __future__ import annotations

import io
import threading

import pytest

from adicom.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_elsewhere_every_few_seconds_and_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr("adicom.progress.time.monotonic", lambda: clock[0])
    out = io.StringIO()
    with Progress("C-GET", 600, stream=out, every=5.0) as shown:
        for done in range(1, 601):
            clock[0] = done * 0.1  # 60 s in all: a line every 5 s
            shown.update(done, failed=1 if done > 300 else 0)
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 14  # not 600 lines
    assert lines[0] == "C-GET: 50 of 600 instances"
    assert lines[-1] == "C-GET: 600 of 600 instances, 1 failed"


def test_quiet_shows_only_notes() -> None:
    out = Terminal()
    with Progress("C-STORE", 3, stream=out, quiet=True) as shown:
        assert not shown.is_bar
        shown.update(3)
        shown.note("failed: x.dcm: refused")
    assert out.getvalue() == "failed: x.dcm: refused\n"


def test_a_bar_on_a_terminal() -> None:
    out = Terminal()
    with Progress("C-STORE", 10, stream=out) as shown:
        assert shown.is_bar
        for done in range(1, 11):
            shown.update(done, failed=done // 5)
        shown.note("failed: y.dcm")
        assert threading.active_count() == 1  # no tqdm monitor thread
    text = out.getvalue()
    assert "failed: y.dcm" in text
    assert "C-STORE" in text and "10/10" in text


def test_the_total_may_come_later() -> None:
    out = io.StringIO()
    shown = Progress("C-MOVE", stream=out, every=0)
    shown.update(0, total=4)
    shown.update(4, total=4)
    shown.close()
    assert out.getvalue().splitlines()[-1] == "C-MOVE: 4 of 4 instances"
