"""The core compatibility tests on every supported diffusers minor, each in a fresh venv.

    python benchmarks/diffusers_range.py     # every row, into benchmarks/results/diffusers-range/
    python benchmarks/diffusers_range.py --ends --output /tmp/range     # what CI runs
    python benchmarks/diffusers_range.py --versions 0.42.1@2.14.1 --force

Rows: every minor with torch 2.13.0, and the oldest and the newest minor with torch 2.14.1 (the torch
releases this project's machines hold); CI runs the oldest minor, the newest, and the newest with the newer
torch (``--ends``).

Each ``diffusers[@torch]`` row (torch 2.13.0 unless named): a new venv; ``pip install torch==T``; then
``pip install diffusers==V -e ".[test]"`` in one command, which must keep that diffusers (checked after);
whether ``.[dev]`` would resolve too (pip's dry run); ``import flowblending_accel`` and which features the
versions module refuses there; then the core tests (:data:`CORE_TESTS`, the default markers) and the
examples of the README and docs pages (``test_python_examples_run_as_written``, a slow test). Each finished
row is one line on stdout and is written at once to ``results.json`` and ``results.md``; a row already in
the json is skipped unless ``--force``, so an interrupted run resumes. Exits 1 when a row of this run failed
(an install that changed diffusers, a failed import, a failed or erroring test), printing its log's tail.

Uses the standard library only; the venvs are made by the Python that runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from flowblending_accel.support.env import cpu_model
from flowblending_accel.support.files import write_atomic

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "benchmarks" / "results" / "diffusers-range"
MINORS = ["0.36.0", "0.37.1", "0.38.0", "0.39.0", "0.40.0", "0.41.0", "0.42.1"]  # the latest patch of each
TORCHES = ["2.13.0", "2.14.1"]  # the torch releases this project's machines hold wheels of
TORCH = TORCHES[0]
NEWER_TORCH = [f"{MINORS[0]}@{TORCHES[-1]}", f"{MINORS[-1]}@{TORCHES[-1]}"]
DEFAULT_ROWS = [*MINORS, *NEWER_TORCH]
ENDS = [MINORS[0], MINORS[-1], NEWER_TORCH[-1]]  # what CI runs: the oldest and the newest of each
CORE_TESTS = [
    "tests/test_router_wan.py",
    "tests/test_router_caches.py",
    "tests/test_follow.py",
    "tests/test_families.py",
    "tests/test_two_experts.py",
    "tests/test_shared_denoisers.py",
    "tests/test_stack_matrix.py",
    "tests/test_diffusers_versions.py",
]
EXAMPLES = ["tests/test_readme.py::test_python_examples_run_as_written"]
PACKAGES = ["torch", "diffusers", "transformers", "huggingface_hub", "accelerate", "peft", "cache-dit"]
PACKAGES += ["DeepCache", "torchao"]
PROBE = """
import json, importlib.metadata as m
import flowblending_accel, flowblending_accel.core.router, flowblending_accel.accelerators
from flowblending_accel.core import diffusers_versions as v
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
print(json.dumps({
    "refused": [k for k, f in v.FEATURES.items() if f.otherwise and not v.has(k)],
    "versions": {name: version(name) for name in %r},
}))
"""
TEST_TIMEOUT = 1800  # seconds per pytest run; the core tests take 2-4 minutes on 2 cores


def _run(command: list[str], log: Path, timeout: float | None = None, env: dict | None = None) -> int:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        try:
            return subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout, env=env
            ).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\ntimed out after {timeout} s\n")
            return 124


def _venv_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    return env


def _install(venv: Path, diffusers: str, torch: str, log: Path) -> dict:
    started = time.monotonic()
    env = _venv_env(venv)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    ok = _run([sys.executable, "-m", "venv", str(venv)], log) == 0
    ok = ok and _run([*pip, f"torch=={torch}"], log, env=env) == 0
    ok = ok and _run([*pip, f"diffusers=={diffusers}", "-e", ".[test]"], log, env=env) == 0
    dev = _run([*pip, "--dry-run", f"diffusers=={diffusers}", "-e", ".[dev]"], log, env=env) == 0
    return {"ok": ok, "dev_extra_resolves": dev, "seconds": round(time.monotonic() - started)}


def _probe(venv: Path, log: Path) -> dict | None:
    script = PROBE % (PACKAGES,)
    python = str(venv / "bin" / "python")
    with log.open("a") as out:
        result = subprocess.run(
            [python, "-c", script], capture_output=True, text=True, cwd=ROOT, env=_venv_env(venv)
        )
        out.write(f"\n$ probe\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def _pytest(venv: Path, selection: list[str], markers: str, junit: Path, log: Path) -> int:
    command = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"]
    command += ["-m", markers, f"--junitxml={junit}", *selection]
    return _run(command, log, timeout=TEST_TIMEOUT, env=_venv_env(venv))


def _junit_counts(junits: list[Path]) -> dict:
    found = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skips": {}}
    for junit in junits:
        if not junit.exists():
            found["errors"] += 1
            found["failures"].append(f"{junit.stem}: no report (pytest did not finish)")
            continue
        for case in ET.parse(junit).iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            if case.find("failure") is not None:
                found["failed"] += 1
                found["failures"].append(name)
            elif case.find("error") is not None:
                found["errors"] += 1
                found["failures"].append(name)
            elif case.find("skipped") is not None:
                found["skipped"] += 1
                reason = case.find("skipped").get("message", "").removeprefix("Skipped: ")
                found["skips"][reason] = found["skips"].get(reason, 0) + 1
            else:
                found["passed"] += 1
    return found


def run_row(key: str, work: Path, logs: Path) -> dict:
    diffusers, _, torch = key.partition("@")
    torch = torch or TORCH
    venv, log = work / key, logs / f"{key}.log"
    log.unlink(missing_ok=True)
    shutil.rmtree(venv, ignore_errors=True)
    row = {"diffusers": diffusers, "torch": torch, "python": platform.python_version()}
    row["install"] = _install(venv, diffusers, torch, log)
    probe = _probe(venv, log) if row["install"]["ok"] else None
    row["import_ok"] = probe is not None
    row["versions"] = probe["versions"] if probe else {}
    row["refused"] = probe["refused"] if probe else []
    installed = row["versions"].get("diffusers"), (row["versions"].get("torch") or "").split("+")[0]
    row["install"]["kept"] = installed == (diffusers, torch)
    started = time.monotonic()
    if row["import_ok"]:
        junits = [work / f"{key}-core.xml", work / f"{key}-examples.xml"]
        for junit in junits:
            junit.unlink(missing_ok=True)
        _pytest(venv, CORE_TESTS, "not slow", junits[0], log)
        _pytest(venv, EXAMPLES, "slow", junits[1], log)
        row["tests"] = _junit_counts(junits)
    else:
        row["tests"] = _junit_counts([])
    row["tests"]["seconds"] = round(time.monotonic() - started)
    tests = row["tests"]
    row["ok"] = row["install"]["kept"] and row["import_ok"] and not (tests["failed"] or tests["errors"])
    row["ok"] = row["ok"] and tests["passed"] > 0
    row["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return row


def _machine() -> str:
    return f"{cpu_model() or platform.machine()}, {os.cpu_count()} cores"


def _sort_key(key: str) -> tuple:
    diffusers, _, torch = key.partition("@")
    return tuple(int(p) for p in diffusers.split(".")), torch


HEADER = """# The core tests on every supported diffusers minor

Written by `python benchmarks/diffusers_range.py`: every row is a fresh venv, `pip install torch==T`, then
`pip install diffusers==V -e ".[test]"`, which must keep that diffusers; the data is `results.json`. Tests:
`{core}` (default markers) and `{examples}` (the examples of the README and the docs pages). "refused here":
what this diffusers lacks, each refused in one line naming the release that has it
([docs/api.md](../../../docs/api.md#diffusers-versions)). "`.[dev]` resolves": pip's dry run of
`diffusers==V -e ".[dev]"`; its quantize extra asks for diffusers >= 0.37, since diffusers 0.36.0 cannot
import its models once torchao 0.17 or newer is installed.

| diffusers | torch | transformers / hub | keeps diffusers | `.[dev]` resolves | import | passed | failed \
| skipped | tests | refused here | result |
|---|---|---|---|---|---|---|---|---|---|---|---|
""".replace("\\\n", "")


def _yes(value: bool, no: str = "no") -> str:
    return "yes" if value else no


def _table_row(row: dict) -> str:
    tests, found = row["tests"], row["versions"]
    cells = [
        row["diffusers"],
        row["torch"],
        f"{found.get('transformers')} / {found.get('huggingface_hub')}",
        _yes(row["install"]["kept"], "NO"),
        _yes(row["install"]["dev_extra_resolves"]),
        "ok" if row["import_ok"] else "FAILED",
        tests["passed"],
        tests["failed"] + tests["errors"],
        tests["skipped"],
        f"{tests['seconds']} s",
        ", ".join(row["refused"]) or "-",
        "pass" if row["ok"] else "FAIL",
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def render(results: dict) -> str:
    keys = sorted(results, key=_sort_key)
    lines = [HEADER.format(core=" ".join(CORE_TESTS), examples=EXAMPLES[0]).rstrip("\n")]
    lines += [_table_row(results[key]) for key in keys]
    first = results[keys[0]] if keys else {}
    machine, python = first.get("machine", _machine()), first.get("python", platform.python_version())
    lines += ["", f"Machine: {machine}, Python {python}, no GPU.", ""]
    skips: dict[str, list[str]] = {}
    for key in keys:
        for reason in sorted(results[key]["tests"]["skips"]):  # as results.json keeps them (sorted keys)
            skips.setdefault(reason, []).append(key)
    if skips:
        lines += ["Skips (reason: rows):", ""]
        lines += [f"- {reason}: {', '.join(where)}" for reason, where in skips.items()] + [""]
    failures = [f"- {key}: `{name}`" for key in keys for name in results[key]["tests"]["failures"]]
    if failures:
        lines += ["Failures:", "", *failures, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", nargs="+", default=DEFAULT_ROWS, help="diffusers[@torch] rows")
    parser.add_argument("--ends", action="store_true", help=f"only {' '.join(ENDS)} (what CI runs)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--work", type=Path, default=None, help="where the venvs go (default: a temp folder)")
    parser.add_argument("--force", action="store_true", help="rerun rows already in the results")
    parser.add_argument("--keep", action="store_true", help="keep each venv (default: removed after its row)")
    args = parser.parse_args(argv)
    if args.ends:
        args.versions = ENDS
    args.output.mkdir(parents=True, exist_ok=True)
    data = args.output / "results.json"
    results = json.loads(data.read_text()) if data.exists() else {}
    work = args.work or Path(tempfile.mkdtemp(prefix="diffusers-range-"))
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failed = []
    for key in args.versions:
        if key in results and not args.force:
            print(f"{key}: already in {data}, skipped (--force reruns it)", flush=True)
            continue
        row = run_row(key, work, logs)
        row["machine"] = _machine()
        results[key] = row
        write_atomic(data, (json.dumps(results, indent=1, sort_keys=True) + "\n").encode())
        write_atomic(args.output / "results.md", render(results).encode())
        tests = row["tests"]
        print(
            f"{key}: {'pass' if row['ok'] else 'FAIL'}, {tests['passed']} passed, "
            f"{tests['failed'] + tests['errors']} failed, {tests['skipped']} skipped, install "
            f"{row['install']['seconds']} s, tests {tests['seconds']} s, refused here: "
            f"{', '.join(row['refused']) or 'nothing'}",
            flush=True,
        )
        if not row["ok"]:  # its log is kept beside the results
            failed.append(key)
            kept = args.output / "logs" / f"{key}.log"
            kept.parent.mkdir(exist_ok=True)
            shutil.copy(logs / f"{key}.log", kept)
            print("".join(kept.read_text().splitlines(True)[-40:]) + f"(whole log: {kept})", flush=True)
        if not args.keep:
            shutil.rmtree(work / key, ignore_errors=True)
    write_atomic(
        args.output / "results.md", render(results).encode()
    )  # also when every row was there already
    if args.work is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"results: {args.output / 'results.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
