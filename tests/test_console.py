"""Messages and progress bars share stderr without sharing a line."""

from __future__ import annotations

import io
import sys

import pytest

from mixlab.console import log, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:  # tqdm draws its bar only on a terminal
        return True


def test_a_log_line_never_lands_on_the_line_of_a_live_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress(None, 4, "packs", "pack")
    bar.update(1)
    bar.refresh()
    log("swarm: pack of 8 finished (1/4)")
    bar.update(1)
    bar.close()
    lines = [line.strip("\r ") for line in terminal.getvalue().replace("\r", "\n").split("\n")]
    assert "swarm: pack of 8 finished (1/4)" in lines  # alone on its line, not glued to the bar


def test_log_writes_to_stderr_without_a_bar(capsys: pytest.CaptureFixture) -> None:
    log("hello")
    captured = capsys.readouterr()
    assert captured.err == "hello\n" and captured.out == ""
