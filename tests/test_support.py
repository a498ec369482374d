"""Tool plumbing: results readable by others, progress a CI log can read, the busy-machine meter."""

import io
import os
import stat
import time
from pathlib import Path

import pytest

from flowblending_accel.support import cpu_load
from flowblending_accel.support.cpu_load import OtherLoad
from flowblending_accel.support.files import write_atomic
from flowblending_accel.support.progress import progress


def test_results_get_the_mode_open_would_give(tmp_path):
    mask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "report.md", b"# report\n")
        write_atomic(tmp_path / "private.json", b"{}", mode=0o600)
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.json", "report.md"]  # no temporary left


class _Log(io.StringIO):
    def isatty(self):
        return False


def test_progress_off_a_terminal_prints_plain_lines():
    log = _Log()
    with progress("generating", 20, stream=log) as advance:
        for _ in range(20):
            advance(1)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("generating: 0/20 (") and lines[-1].startswith("generating: 20/20 (")
    assert 3 <= len(lines) <= 12  # the start, every tenth, the end: not one line per step


def test_progress_with_an_unknown_total_still_reports_the_end():
    log = _Log()
    with progress("calibrating", None, stream=log) as advance:
        advance(7)
    assert log.getvalue().splitlines()[-1].startswith("calibrating: 7 (")


def _readings(monkeypatch, system, own):
    """OtherLoad reads these (busy, total) machine jiffies and own jiffies, at enter then at exit."""
    system, own = iter(system), iter(own)
    monkeypatch.setattr(cpu_load, "system_jiffies", lambda: next(system))
    monkeypatch.setattr(cpu_load, "own_jiffies", lambda: next(own))


def test_other_load_is_the_share_of_the_machine_other_processes_used(monkeypatch):
    _readings(monkeypatch, [(100, 1000), (160, 1100)], [10, 30])  # 60 busy of 100, 20 of them ours
    with OtherLoad() as load:
        pass
    assert load.share == pytest.approx(0.4) and load.busy
    _readings(monkeypatch, [(100, 1000), (160, 1100)], [10, 70])  # all of it ours
    with OtherLoad() as quiet:
        pass
    assert quiet.share == 0.0 and not quiet.busy


def test_other_load_is_unknown_without_proc_and_measured_with_it(monkeypatch):
    with OtherLoad() as load:
        time.sleep(0.05)  # the machine's jiffies advance (idle ones too)
    if Path("/proc/stat").exists():
        assert load.share is not None and 0.0 <= load.share <= 1.0
    _readings(monkeypatch, [None, None], [None, None])
    with OtherLoad() as unknown:
        pass
    assert unknown.share is None and not unknown.busy
