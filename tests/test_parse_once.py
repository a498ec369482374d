"""A value a user types is parsed once, where it enters: the tools hand the parsed objects on."""

from __future__ import annotations

import json
from collections import Counter

import flowblending_accel.bench.runner  # noqa: F401  (its own constants, L100 and S100, parse at import)
from flowblending_accel.accelerators.registry import registered_accelerators
from flowblending_accel.cli import main
from flowblending_accel.core.schedule import Schedule


def _count_parses(monkeypatch) -> Counter:
    """Counts of ``Schedule.parse`` by text and of each accelerator config's ``from_spec`` by spec."""
    counts: Counter = Counter()
    parse = Schedule.parse.__func__

    def counted_parse(cls, text, axis="step"):
        counts[text] += 1
        return parse(cls, text, axis)

    monkeypatch.setattr(Schedule, "parse", classmethod(counted_parse))
    for config in set(registered_accelerators().values()):
        from_spec = config.from_spec.__func__

        def counted_from_spec(cls, name, value, _from_spec=from_spec):
            counts[f"{name}:{value}" if value else name] += 1
            return _from_spec(cls, name, value)

        monkeypatch.setattr(config, "from_spec", classmethod(counted_from_spec))
    return counts


def test_bench_parses_each_given_spec_once(tmp_path, monkeypatch):
    from flowblending_accel.accelerators import Stack

    counts = _count_parses(monkeypatch)
    checks = []
    validate = Stack.validate
    monkeypatch.setattr(Stack, "validate", lambda self, models: checks.append(self) or validate(self, models))
    size = ["--height", "16", "--width", "16", "--frames", "5", "--steps", "10", "--threads", "1"]
    given = ["--schedule", "L40-S40-L20", "--stack", "dpm++:6", "fbc:0.2"]
    output = tmp_path / "bench"
    argv = ["bench", "--target", "random:tiny-wan", "--dtype", "float32", *size, *given, "--repeats", "3"]
    assert main([*argv, "--output", str(output)]) == 0
    assert counts == Counter({"L40-S40-L20": 1, "dpm++:6": 1, "fbc:0.2": 1})
    rows = json.loads((output / "bench.json").read_text())["rows"]
    assert [len(row["seconds"]["all"]) for row in rows] == [3, 3, 3, 3]  # the rounds ran: 4 rows x 4 rounds
    assert rows[-1]["stack"] == ["dpm++:6", "fbc:0.2"]  # reported as the user wrote them
    # Each stack checked once where it meets the pipeline: each row's stack before the first round (4 rows
    # and the small-only probe) and each row's FLOP-counting stack (the countable members) once; not again
    # in each of the 4 rounds x 5 rows that apply them, and not first as a whole by the command line.
    assert len(checks) == 5 + 5


def test_a_spec_is_reported_as_written():
    from flowblending_accel.accelerators import parse_accelerator

    config = parse_accelerator("fbc")
    assert config.as_written == "fbc" and config.spec == "fbc:0.05"
    assert config == parse_accelerator("fbc:0.05")
    assert config.for_rounds().as_written == "fbc" and "written" not in config.describe()
    schedule = Schedule.parse("lsl")
    assert schedule.as_written == "lsl" and str(schedule) == "L40-S40-L20"
    assert schedule == Schedule.parse("L40-S40-L20")
