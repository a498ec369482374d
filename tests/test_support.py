"""Tool plumbing: results readable by others, progress a CI log can read, the busy-machine meter."""

import io
import os
import stat

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


def test_other_load_is_a_share_or_unknown():
    with OtherLoad() as load:
        sum(range(10000))
    assert load.share is None or 0.0 <= load.share <= 1.0
    assert load.busy in (True, False)
