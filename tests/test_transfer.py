"""Calibrated schedules carried to other grids on the sigma axis, and the recalibration advice."""

import json

import pytest

from flowblending_accel.analysis.transfer import Grid, sigma_schedule, transfer
from flowblending_accel.cli import main
from flowblending_accel.core.named_schedulers import make_scheduler
from flowblending_accel.core.plan import Plan

MODELS = (
    ["large"] * 5 + ["small"] * 9 + ["large"] * 2 + ["small"] * 2 + ["large"] * 2
)  # 20 steps, two small stages


@pytest.mark.parametrize("name", ["euler", "unipc", "dpm++"])
def test_sigma_schedule_reproduces_the_calibrated_table(name):
    scheduler = make_scheduler(name, shift=3.0)
    grid = Grid.of(scheduler, 20)
    schedule = sigma_schedule(MODELS, grid.noise)
    assert schedule.axis == "sigma" and len(schedule.stages) == 5
    assert [step.model for step in Plan.for_scheduler(schedule, scheduler, 20).steps] == MODELS


def test_finer_grid_transfers_and_keeps_the_noise_bands():
    grid = Grid.of(make_scheduler("euler", shift=3.0), 20)
    carried = transfer(MODELS, grid, make_scheduler("euler", shift=3.0), 40)
    assert not carried.recalibrate and carried.reasons == []
    small_noise = [step.noise for step in carried.plan.steps if step.model == "small"]
    calibrated_small = [n for n, m in zip(grid.noise, MODELS, strict=True) if m == "small"]
    assert min(calibrated_small) - 0.05 < min(small_noise) and max(small_noise) < max(calibrated_small) + 0.05


def test_coarser_steps_or_another_solver_kind_advise_recalibration():
    grid = Grid.of(make_scheduler("euler", shift=3.0), 20)
    coarse = transfer(MODELS, grid, make_scheduler("euler", shift=3.0), 8)
    assert coarse.recalibrate and "coarser" in coarse.reasons[0]
    shifted = transfer(MODELS, grid, make_scheduler("euler", shift=12.0), 20)
    assert shifted.recalibrate and "shift 12.0 vs 3.0" in " ".join(shifted.reasons)
    vp = transfer(MODELS, grid, make_scheduler("ddim"), 50)
    assert vp.recalibrate and "flow solver" in vp.reasons[0]


def test_plan_command_carries_a_calibration(tmp_path, capsys):
    grid = Grid.of(make_scheduler("euler", shift=3.0), 20)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"calibration": {"schedule": "L25-S45-L10-S10-L10", "grid": grid.to_dict()}}))
    assert (
        main(["plan", "--calibration", str(path), "--scheduler", "euler", "--shift", "3", "--steps", "40"])
        == 0
    )
    assert "transfers" in capsys.readouterr().out
    assert (
        main(["plan", "--calibration", str(path), "--scheduler", "euler", "--shift", "3", "--steps", "6"])
        == 3
    )
    assert "recalibration advisable" in capsys.readouterr().out
    path.write_text("{}")
    assert main(["plan", "--calibration", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a calibrate result" in err
