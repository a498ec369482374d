"""The project's config file: ``flowblending.toml``, or a ``[tool.flowblending]`` table in pyproject.toml, so
CI runs ``flowblending-accel check`` with no flags. Command-line flags override it. Example::

    [tool.flowblending]
    target = "ci/targets.py:make"          # or "embedded", "random:tiny-wan", or large = ... / small = ...
    schedule = "L40-S40-L20"
    stack = ["dpm++:10", "fbc:0.05"]
    prompts = "ci/prompts.txt"
    scorers = ["ssim", "psnr"]

    [tool.flowblending.check]
    expected = "benchmarks/expected/flowblending.csv"

    [[tool.flowblending.check.scenarios]]
    name = "my-pipeline-lsl"
    stack = ["fbc:0.05"]
    metrics = ["calls.", "flops.", "trace_hash", "recompiles_after_warmup"]

Paths are relative to the file that names them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TARGET_KEYS = (
    "target",
    "large",
    "small",
    "pair",
    "device",
    "dtype",
    "height",
    "width",
    "frames",
    "steps",
    "guidance_scale",
    "negative_prompt",
    "prompts",
    "seeds",
    "offload",
    "gpu_memory",
)
KEYS = (*TARGET_KEYS, "schedule", "stack", "scorers", "check", "tuned_for")
SCENARIO_KEYS = ("name", "schedule", "stack", "metrics", "ratio_baseline", *TARGET_KEYS)
PATH_KEYS = ("prompts", "pair", "expected")


@dataclass
class Config:
    """The settings found (empty when there is no config file) and where they came from."""

    values: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    @property
    def check(self) -> dict[str, Any]:
        return self.values.get("check", {})


def find_config(explicit: Path | None = None, folder: Path | None = None) -> Config:
    """``explicit`` (it must exist), else ``flowblending.toml`` or pyproject.toml's ``[tool.flowblending]`` in
    ``folder`` (default: the working folder), else an empty config."""
    if explicit is not None:
        if not explicit.is_file():
            raise ValueError(f"--config {explicit}: no such file.")
        return _read(explicit)
    folder = folder or Path.cwd()
    if (folder / "flowblending.toml").is_file():
        return _read(folder / "flowblending.toml")
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        table = _load(pyproject).get("tool", {}).get("flowblending")
        if table is not None:
            return Config(_checked(table, pyproject), pyproject)
    return Config()


def _read(path: Path) -> Config:
    data = _load(path)
    table = data.get("tool", {}).get("flowblending", data) if path.name == "pyproject.toml" else data
    return Config(_checked(table, path), path)


def _load(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error}).") from None


def _checked(table: dict[str, Any], path: Path) -> dict[str, Any]:
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {', '.join(KEYS)}.")
    values = _resolved_paths(dict(table), path.parent)
    if "tuned_for" in values:  # the target a tuned.toml holds for: its paths are relative to the file too
        if not isinstance(values["tuned_for"], dict):
            raise ValueError(
                f'{path}: tuned_for is a table, e.g. tuned_for = {{ large = "pipeline", small = "small" }}.'
            )
        values["tuned_for"] = _resolved_paths(dict(values["tuned_for"]), path.parent)
    check = dict(values.get("check", {}))
    unknown = sorted(set(check) - {"expected", "scenarios"})
    if unknown:
        raise ValueError(f"{path}: unknown [check] setting(s) {unknown}; known: expected, scenarios.")
    check = _resolved_paths(check, path.parent)
    scenarios = []
    for index, scenario in enumerate(check.get("scenarios", [])):
        wrong = sorted(set(scenario) - set(SCENARIO_KEYS))
        if wrong or "name" not in scenario:
            raise ValueError(
                f"{path}: check scenario {index + 1} needs a name and takes {', '.join(SCENARIO_KEYS)}"
                + (f" (unknown: {wrong})" if wrong else "")
                + "."
            )
        scenarios.append(_resolved_paths(dict(scenario), path.parent))
    if check:
        check["scenarios"] = scenarios
        values["check"] = check
    return values


def _resolved_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    for key in PATH_KEYS:
        if isinstance(values.get(key), str):
            values[key] = _beside(base, values[key])
    for key in ("target", "large", "small"):  # local files and folders, not hub ids or module:function
        value = values.get(key)
        if isinstance(value, str) and (base / value.split(":")[0]).exists() and value not in ("embedded",):
            values[key] = _beside(base, value)
    return values


def _beside(base: Path, path: str) -> str:
    """``path`` as the file at ``base`` names it (``../data`` from ``out/``: ``data``, not
    ``out/../data``)."""
    return os.path.normpath(base / path)
