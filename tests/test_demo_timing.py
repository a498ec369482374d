"""The demo's speed figures: interleaved rotated rounds, a median with a bootstrap interval, and a mark when
the figure cannot be trusted (interval includes 1.0x, or the machine was busy)."""

from flowblending_accel.demo import timing as timing_module
from flowblending_accel.demo.report import speed_cell, speed_warning
from flowblending_accel.demo.timing import MIN_ROUNDS, Timing, time_schedules


class _BusyMachine:
    """An OtherLoad that measured others using 60 % of the machine."""

    share, busy = 0.6, True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_rounds_are_interleaved_rotated_and_at_least_the_minimum(monkeypatch):
    monkeypatch.setattr(timing_module, "OtherLoad", _BusyMachine)
    order, heard = [], []
    timing = time_schedules(order.append, ("LLL", "LSL", "SSS"), clips=4, seconds=0, on_round=heard.append)
    assert timing.rounds == MIN_ROUNDS and len(order) == 3 * MIN_ROUNDS
    assert heard == list(range(MIN_ROUNDS))  # the demo's progress line says each round as it starts
    assert order[:6] == ["LLL", "LSL", "SSS", "LSL", "SSS", "LLL"]  # each round starts one later
    assert timing.other_load == 0.6 and timing.busy  # the load measured over the rounds is the timing's


def test_a_clear_speedup_is_reliable_and_one_within_noise_is_marked():
    clear = Timing(4, {"LLL": [1.0, 1.02, 0.98, 1.01, 0.99], "LSL": [0.70, 0.71, 0.69, 0.72, 0.70]})
    speed = clear.speedup("LSL")
    assert speed["reliable"] and 1.3 < speed["low"] <= speed["median"] <= speed["high"] < 1.5
    noisy = Timing(4, {"LLL": [1.0, 0.8, 1.2, 0.9, 1.1], "LSL": [0.9, 1.1, 0.8, 1.2, 1.0]})
    assert not noisy.speedup("LSL")["reliable"] and speed_cell(noisy.speedup("LSL")).endswith(" ⚠")
    rows = {"LLL": {"speedup_vs_lll": noisy.speedup("LLL")}, "LSL": {"speedup_vs_lll": noisy.speedup("LSL")}}
    assert "an interval includes 1.0x" in speed_warning(rows, {"timing": {"busy": False}})


def test_a_busy_machine_marks_every_figure():
    busy = Timing(4, {"LLL": [1.0] * 5, "LSL": [0.7] * 5}, other_load=0.6, busy=True)
    rows = {"LSL": {"speedup_vs_lll": busy.speedup("LSL")}}
    assert not rows["LSL"]["speedup_vs_lll"]["reliable"]
    assert "other processes used 60% of the CPU" in speed_warning(
        rows, {"timing": {"busy": True, "other_load": 0.6}}
    )
