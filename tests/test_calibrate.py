"""Calibration on synthetic pairs with a known answer."""

import torch

from flowblending_accel import Schedule
from flowblending_accel.analysis.calibrate import (
    Calibrator,
    best_placements,
    calibrate_budget,
    calibrate_tolerance,
    shifted,
)
from flowblending_accel.analysis.evidence import window_evidence
from flowblending_accel.core.plan import Plan
from flowblending_accel.metrics import psnr
from flowblending_accel.tiny_models import tiny_wan_pipeline, tiny_wan_transformer, wan_call_kwargs

STEPS = 10
FLOPS = {"large": 10.0, "small": 1.0}


class Perturbed(torch.nn.Module):
    """The large model itself, plus a fixed perturbation at timesteps inside ``band`` (on the 0..1000
    scale)."""

    def __init__(self, large, band, strength):
        super().__init__()
        self.large, self.band, self.strength = [large], band, strength
        self.config = large.config

    def forward(self, hidden_states, timestep, **kwargs):
        large = self.large[0]
        output = type(large).forward(large, hidden_states=hidden_states, timestep=timestep, **kwargs)
        t = float(timestep.max())
        if self.band[0] <= t <= self.band[1]:
            noise = torch.randn(output[0].shape, generator=torch.Generator().manual_seed(int(t)))
            return (output[0] + self.strength * noise,)
        return output


def psnr_quality(outputs, reference):
    return float(
        torch.stack([psnr(o, r, data_range=8.0) for o, r in zip(outputs, reference, strict=True)]).mean()
    )


def _calibrator(band, strength):
    large = tiny_wan_transformer()
    pipe = tiny_wan_pipeline(large)
    calls = [wan_call_kwargs(steps=STEPS, seed=s) for s in range(2)]
    return Calibrator(
        pipe,
        Perturbed(large, band, strength),
        calls,
        5.0,
        FLOPS,
        psnr_quality,
        measure="velocity_rel_l2",
        strict=False,
    ), pipe


def test_dp_finds_cheapest_placements():
    costs = [5, 1, 1, 9, 9, 1, 1, 1, 7, 3]
    best = best_placements(costs, max_small_segments=2)
    assert best[0] == (0.0, ["large"] * 10)
    cost, models = best[5]
    assert cost == 5 and [i for i, m in enumerate(models) if m == "small"] == [1, 2, 5, 6, 7]
    one_segment = best_placements(costs, max_small_segments=1)[5]
    assert one_segment[0] > cost  # a single contiguous stage must take a costlier step
    assert str(Schedule.from_models(models)) == "L10-S20-L20-S30-L20"


def test_calibrate_finds_the_band_where_small_differs():
    # The pipeline's timesteps for 10 steps (shift 5): the band 800..960 holds steps 2..5.
    calibrator, pipe = _calibrator(band=(800, 960), strength=2.0)
    costs = calibrator.costs
    band_steps = [i for i, s in enumerate(calibrator.curve.sigmas) if 0.8 <= s <= 0.96]
    assert band_steps and all(costs[i] > 0.1 for i in band_steps)
    assert all(costs[i] < 1e-5 for i in range(STEPS) if i not in band_steps)
    result = calibrate_tolerance(calibrator, tolerance=60.0)
    plan = result.schedule
    models = [p.model for p in Plan.for_scheduler(Schedule.parse(plan), pipe.scheduler, STEPS).steps]
    assert [i for i, m in enumerate(models) if m == "large"] == band_steps, (plan, band_steps)
    assert result.quality["quality"] >= 60.0 and result.flop_ratio < 0.7
    assert result.candidates and all(c.quality is not None for c in result.candidates)


def test_calibrate_says_no_saving_is_possible():
    calibrator, _ = _calibrator(band=(0, 1000), strength=2.0)
    result = calibrate_tolerance(calibrator, tolerance=60.0)
    assert result.schedule == "L100" and result.flop_ratio == 1.0
    assert "no saving is possible" in result.message


def test_budget_mode_keeps_the_band_on_large():
    calibrator, pipe = _calibrator(band=(800, 960), strength=2.0)
    result = calibrate_budget(calibrator, flop_budget=0.5)
    assert result.flop_ratio <= 0.5 and result.quality is not None
    assert result.to_dict()["flops_fewer_than_large_only"] >= 0.5


def test_every_score_must_reach_its_tolerance():
    large = tiny_wan_transformer()
    pipe = tiny_wan_pipeline(large)
    calls = [wan_call_kwargs(steps=STEPS, seed=s) for s in range(2)]

    def two_scores(outputs, reference):
        value = psnr_quality(outputs, reference)
        return {"psnr": value, "psnr_again": value}

    calibrator = Calibrator(
        pipe, Perturbed(large, (800, 960), 2.0), calls, 5.0, FLOPS, two_scores, strict=False
    )
    assert len(calibrator.placements) == len(calibrator.curve.values)  # every measure proposes placements
    assert calibrate_tolerance(calibrator, {"psnr": 60.0, "psnr_again": 60.0}).flop_ratio < 0.7
    blocked = calibrate_tolerance(calibrator, {"psnr": 60.0, "psnr_again": 1e9})
    assert blocked.schedule == "L100" and "psnr_again >= 1e+09" in blocked.message


def test_window_evidence_ranks_the_perturbed_band_first():
    calibrator, pipe = _calibrator(band=(800, 960), strength=2.0)

    def closeness(outputs, reference):  # bounded at 0 for identical outputs, unlike PSNR
        return {
            "neg_mse": -float(
                torch.stack([((o - r) ** 2).mean() for o, r in zip(outputs, reference, strict=True)]).mean()
            )
        }

    evidence = window_evidence(
        pipe, calibrator.small, calibrator.calls, calibrator.curve, 2, closeness, strict=False
    )
    assert set(evidence.loss) == {"neg_mse"} and len(evidence.loss["neg_mse"]) == STEPS // 2
    assert evidence.correlations["neg_mse"]["velocity_rel_l2"] > 0.5


def test_shifted_moves_one_small_stage_by_one_step():
    models = ["large", "small", "small", "large", "large", "small"]
    moves = {"".join(m[0] for m in placement) for placement in shifted(models)}
    assert moves == {"ssllls", "llssls", "lsslsl"}  # first stage earlier / later, last stage earlier
    assert all(placement.count("small") == 3 for placement in shifted(models))
