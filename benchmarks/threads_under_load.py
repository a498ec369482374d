"""The demo on a busy machine: the automatic thread count against a fixed one, wall time of the whole command.

    python benchmarks/threads_under_load.py      # writes benchmarks/results/threads-under-load/

Each run is ``flowblending-accel demo`` as a new user types it (only ``--threads`` varies), timed as a whole
process. The load is one other process spinning a core (``python -c "while True: pass"``), pinned to the
last usable core, started either before the demo or a stated number of seconds into it, and stopped when
the demo ends. The thread line of each run's report (``results.json``) says what the automatic count chose
and when it lowered itself. The numbers are this machine's (its CPU is named in the output); on a machine
with more cores the effect is smaller, and an idle machine takes the automatic count to every core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flowblending_accel.support.env import device_name

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "benchmarks" / "results" / "threads-under-load"
SPIN = [sys.executable, "-c", "while True: pass"]
SCENARIOS = {  # name: (seconds into the demo the load starts, or None for no load; thread options)
    "idle": (None, [[], ["--threads", "1"]]),
    "busy from the start": (0.0, [[], ["--threads", "2"], ["--threads", "1"]]),
    "busy from 15 s in": (15.0, [[], ["--threads", "2"]]),
}


def _spin(after: float | None) -> subprocess.Popen | None:
    if after is None:
        return None
    core = sorted(os.sched_getaffinity(0))[-1]
    # the shell waits, then becomes the spinning process: one process to stop at the end
    command = f"sleep {after} && exec taskset -c {core} {' '.join(SPIN[:2])} '{SPIN[2]}'"
    return subprocess.Popen(["sh", "-c", command])


def run_once(load_after: float | None, options: list[str], folder: Path) -> dict:
    command = ["flowblending-accel", "demo", "--output", str(folder), "--overwrite", *options]
    spinner = _spin(load_after)
    if spinner is not None and load_after == 0:
        time.sleep(1.0)  # the spinner is running before the demo measures the idle cores
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if spinner is not None:
        spinner.kill()
        spinner.wait()
    if finished.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{finished.stderr[-2000:]}")
    results = json.loads((folder / "results.json").read_text())
    return {
        "options": " ".join(options) or "(default)",
        "seconds": round(seconds, 1),
        "threads": results["context"]["threads"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for scenario, (after, option_sets) in SCENARIOS.items():
            for options in option_sets:
                row = {"scenario": scenario, **run_once(after, options, Path(scratch) / "demo")}
                print(json.dumps(row), flush=True)
                rows.append(row)
    context = {
        "cpu": device_name("cpu"),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "threads-under-load.json").write_text(
        json.dumps({"context": context, "rows": rows}, indent=1)
    )
    lines = [
        "# The demo on a busy machine",
        "",
        "`python benchmarks/threads_under_load.py` (in the venv of the README's first command): "
        f"{context['cpu']}, {context['usable_cores']} usable cores; the load is one process spinning a core "
        f"(`python -c '{SPIN[2]}'`, pinned to the last core). Wall time of the whole "
        "`flowblending-accel demo` command.",
        "",
        "| load | options | wall time | threads (from the report) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['scenario']} | `{r['options']}` | {r['seconds']:.1f} s | {r['threads']} |" for r in rows]
    (args.output / "threads-under-load.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
