"""The committed table of benchmarks/diffusers_range.py: every supported diffusers minor passed the core tests
in a fresh venv, the declared floors are the oldest versions it tested, and results.md is rendered from
results.json."""

import importlib.util
import json
import sys
from pathlib import Path

from flowblending_accel.core import diffusers_versions

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _script():
    path = ROOT / "benchmarks" / "diffusers_range.py"
    spec = importlib.util.spec_from_file_location("diffusers_range", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_every_minor_from_the_floor_passed_in_a_fresh_venv():
    script = _script()
    results = json.loads((script.OUTPUT / "results.json").read_text())
    assert script.MINORS[0].startswith(f"{diffusers_versions.OLDEST}.")
    minors = [_release(minor)[:2] for minor in script.MINORS]
    assert minors == [(0, minor) for minor in range(minors[0][1], minors[-1][1] + 1)]  # none left out
    refusable = {name: _release(f.since) for name, f in diffusers_versions.FEATURES.items() if f.otherwise}
    for key in script.DEFAULT_ROWS:
        row = results[key]
        assert row["ok"] and row["install"]["kept"] and row["import_ok"], key
        lacking = [name for name, since in refusable.items() if _release(row["diffusers"]) < since]
        assert sorted(row["refused"]) == sorted(lacking), key  # what it lacks, as the table says
    assert (script.OUTPUT / "results.md").read_text() == script.render(results)


def test_the_declared_torch_floor_is_the_oldest_torch_tested():
    results = json.loads((_script().OUTPUT / "results.json").read_text())
    oldest = min((row["torch"] for row in results.values() if row["ok"]), key=_release)
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch>={'.'.join(oldest.split('.')[:2])}" in dependencies
    assert len({row["torch"] for row in results.values() if row["ok"]}) > 1  # and a newer one
