"""Does a schedule calibrated at a smaller size (``--proxy-size``) hold at full size?

    python benchmarks/proxy_transfer.py      # writes benchmarks/results/proxy-transfer/

For each target it runs ``flowblending-accel calibrate`` twice as a user types it: fitted at full size, and
fitted at the proxy size (the held-out check always runs at full size). It reports both picks, whether they
agree, the proxy report's own verdict (did the pick hold at full size, and why) and each run's wall time.
Targets: the embedded pair (trained at 32x32, 9 frames; the proxy keeps the resolution and cuts the frames)
and a ``tiny --save`` Wan folder pair (random weights: routing and scores are real, the pictures are noise).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from flowblending_accel.support.env import device_name

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path("benchmarks") / "results" / "proxy-transfer"  # relative to ROOT, as the reports name it
SCRATCH = Path("runs") / "proxy-transfer"  # the tiny folders and prompts (git-ignored)
TINY_PROMPTS = [f"a {thing} in the {place}" for thing in ("cat", "dog", "bird") for place in ("rain", "snow")]


def _cli(*argv: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(  # from the project root, so the reports name the output folders as typed
        [sys.executable, "-m", "flowblending_accel.cli", *argv], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode:
        raise SystemExit(f"flowblending-accel {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _targets() -> dict[str, dict]:
    _cli("tiny", "--family", "wan", "--save", str(SCRATCH / "tiny-wan"))
    prompts = SCRATCH / "prompts.txt"
    (ROOT / prompts).write_text("\n".join(TINY_PROMPTS) + "\n")
    tiny = ["--large", str(SCRATCH / "tiny-wan" / "pipeline"), "--small", str(SCRATCH / "tiny-wan" / "small")]
    size = ["--height", "32", "--width", "32", "--frames", "9"]
    return {
        "embedded pair (32x32, 9 frames, 20 steps)": {"target": [], "proxy": "32x32x5"},
        "tiny Wan folders (32x32, 9 frames, 10 steps)": {
            "target": [*tiny, "--prompts", str(prompts), *size, "--scorers", "psnr", "ssim"],
            "proxy": "16x16x5",
        },
    }


def _calibrate(target: list[str], proxy: str | None, output: Path) -> dict:
    argv = ["calibrate", *target, "--output", str(output)]
    argv += ["--proxy-size", proxy] if proxy else []
    seconds = _cli(*argv)
    document = json.loads((ROOT / output / "calibration.json").read_text())
    return {
        "command": "flowblending-accel " + " ".join(argv),
        "pick": document["calibration"]["schedule"],
        "proxy": document.get("proxy"),
        "seconds": round(seconds, 1),
    }


def _markdown(rows: list[dict], machine: str) -> str:
    lines = [
        "# Does a proxy-size pick hold at full size?",
        "",
        f"`python benchmarks/proxy_transfer.py` ({machine}): `calibrate` fitted at full size and at the "
        "proxy size; the held-out prompts and seeds are scored at full size in both. Each run's report is in "
        "the numbered folder beside this file.",
        "",
        "| target | proxy size | pick fitted at full size | pick fitted at the proxy size | same pick | "
        "proxy report's verdict | wall time full / proxy |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        verdict = row["at_proxy"]["proxy"]
        lines.append(
            f"| {row['target']} | {row['proxy_size']} | {row['full']['pick']} | {row['at_proxy']['pick']} | "
            f"{'yes' if row['full']['pick'] == row['at_proxy']['pick'] else 'no'} | "
            f"{'held' if verdict['held'] else 'did not hold'}: {verdict['why']} | "
            f"{row['full']['seconds']:.0f} s / {row['at_proxy']['seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args()
    (ROOT / SCRATCH).mkdir(parents=True, exist_ok=True)
    rows = []
    for name, spec in _targets().items():
        full = _calibrate(spec["target"], None, OUTPUT / f"{len(rows)}-full")
        proxy = _calibrate(spec["target"], spec["proxy"], OUTPUT / f"{len(rows)}-proxy")
        row = {"target": name, "proxy_size": spec["proxy"], "full": full, "at_proxy": proxy}
        print(json.dumps(row), flush=True)
        rows.append(row)
    machine = device_name("cpu")
    document = {"context": {"machine": machine, "python": platform.python_version()}, "rows": rows}
    (ROOT / OUTPUT / "proxy-transfer.json").write_text(json.dumps(document, indent=1) + "\n")
    (ROOT / OUTPUT / "proxy-transfer.md").write_text(_markdown(rows, machine))


if __name__ == "__main__":
    main()
