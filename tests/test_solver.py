from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from flowblending_accel.core.step_grid import SolverView, scheduler_kind


def view(scheduler, steps=10):
    return SolverView.for_steps(scheduler, steps)


def test_heun_predictor_and_corrector_share_a_step():
    v = view(FlowMatchHeunDiscreteScheduler(shift=5.0), 5)
    assert len(v.timesteps) == 9 and v.num_steps == 5
    assert v.step_of_iteration == (0, 0, 1, 1, 2, 2, 3, 3, 4)


def test_pndm_warmup_repeat_is_one_step():
    v = view(PNDMScheduler(skip_prk_steps=True), 10)
    assert len(v.timesteps) == 11 and v.num_steps == 10
    assert v.step_of_iteration[:4] == (0, 1, 1, 2)


def test_unipc_flow_sigma_comes_from_scheduler_not_t_over_1000():
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    v = view(scheduler, 10)
    probe = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    probe.set_timesteps(10)
    assert v.kind == "flow"
    assert list(v.sigmas) == pytest.approx(probe.sigmas[:10].double().tolist(), abs=1e-7)
    assert any(abs(s - t / 1000) > 1e-5 for s, t in zip(v.sigmas, v.timesteps, strict=True))


@pytest.mark.parametrize(
    "scheduler, kind",
    [
        (FlowMatchEulerDiscreteScheduler(), "flow"),
        (DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True), "flow"),
        (DPMSolverSinglestepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True), "flow"),
        (DDIMScheduler(), "vp"),
        (EulerDiscreteScheduler(), "vp"),
        (DPMSolverMultistepScheduler(), "vp"),
    ],
)
def test_kind(scheduler, kind):
    assert scheduler_kind(scheduler) == kind


def test_vp_noise_is_snr_equivalent_flow_level():
    scheduler = DDIMScheduler()
    v = view(scheduler, 10)
    for t, sigma, noise in zip(v.timesteps, v.sigmas, v.noise, strict=True):
        alpha_bar = float(scheduler.alphas_cumprod[int(t)])
        assert sigma == pytest.approx(((1 - alpha_bar) / alpha_bar) ** 0.5)
        assert noise == pytest.approx(sigma / (1 + sigma))
    assert list(v.noise) == sorted(v.noise, reverse=True)


def test_timestep_lookup_accepts_flux_scale_and_rejects_off_grid():
    v = view(FlowMatchEulerDiscreteScheduler(shift=5.0), 10)
    assert v.step_for_timestep(v.timesteps[3]) == 3
    assert v.step_for_timestep(v.timesteps[3] / 1000) == 3
    with pytest.raises(ValueError, match="not on the scheduler's grid"):
        v.step_for_timestep(500.0)


def test_from_sigmas_heun_grid():
    v = SolverView.from_sigmas(torch.tensor([1.0, 0.5, 0.25, 0.0]), order=2)
    assert v.sigmas == (1.0, 0.5, 0.5, 0.25, 0.25)
    assert v.step_of_iteration == (0, 0, 1, 1, 2)


def test_unset_scheduler_is_a_clear_error():
    with pytest.raises(ValueError, match="set_timesteps"):
        SolverView.from_scheduler(SimpleNamespace(timesteps=None))
