"""The router as a k-diffusion style callable, without a diffusers pipeline."""

import pytest
import torch

from flowblending_accel import ModelRouter


class Toy(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Linear(4, 4)

    def forward(self, x, sigma):
        return self.net(x) * sigma


def euler(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        x = x + (sigmas[i + 1] - sigmas[i]) * model(x, sigmas[i])
    return x


def heun(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        d = model(x, sigmas[i])
        x_next = x + (sigmas[i + 1] - sigmas[i]) * d
        if sigmas[i + 1] == 0:
            x = x_next
        else:
            x = x + (sigmas[i + 1] - sigmas[i]) * (d + model(x_next, sigmas[i + 1])) / 2
    return x


@pytest.fixture
def pair():
    return Toy(0).eval(), Toy(1).eval()


def test_euler_matches_hand_routed_loop(pair):
    large, small = pair
    sigmas = torch.linspace(1, 0, 11)
    router = ModelRouter(small, "L40-S40-L20", large=large)
    routed = euler(router.as_denoiser(sigmas), torch.ones(1, 4), sigmas)
    models = [large] * 4 + [small] * 4 + [large] * 2
    manual = euler(lambda x, s: models[int(round(float(1 - s) * 10))](x, s), torch.ones(1, 4), sigmas)
    assert torch.equal(routed, manual)
    assert [m for _, m in router.last_run.trace] == ["large"] * 4 + ["small"] * 4 + ["large"] * 2


def test_heun_corrector_stays_on_the_step_model(pair):
    large, small = pair
    sigmas = torch.linspace(1, 0, 11)
    router = ModelRouter(small, "L40-S40-L20", large=large)
    heun(router.as_denoiser(sigmas, order=2), torch.ones(1, 4), sigmas)
    stats = router.last_run
    assert len(stats.calls) == 19
    by_step = {}
    for call in stats.calls:
        by_step.setdefault(call.step, set()).add(call.model)
    assert all(len(models) == 1 for models in by_step.values())
    assert stats.steps_per_model == {"large": 6, "small": 4}


def test_new_run_detected_and_reproducible(pair):
    large, small = pair
    sigmas = torch.linspace(1, 0, 6)
    router = ModelRouter(small, "L40-S60", large=large)
    denoiser = router.as_denoiser(sigmas)
    first = euler(denoiser, torch.ones(1, 4), sigmas)
    second = euler(denoiser, torch.ones(1, 4), sigmas)
    assert torch.equal(first, second) and len(router.runs) == 1 and router.runs[0].finished


def test_sigma_off_the_grid_raises(pair):
    large, small = pair
    router = ModelRouter(small, "LSL", large=large)
    denoiser = router.as_denoiser(torch.linspace(1, 0, 6))
    denoiser(torch.ones(1, 4), torch.tensor(1.0))
    with pytest.raises(ValueError, match="expects 0.8 at iteration 1"):
        denoiser(torch.ones(1, 4), torch.tensor(0.7))


def test_cfg_as_two_calls_per_iteration(pair):
    large, small = pair
    sigmas = torch.linspace(1, 0, 6)
    router = ModelRouter(small, "L40-S60", large=large)
    denoiser = router.as_denoiser(sigmas, calls_per_iteration=2)
    x = torch.ones(1, 4)
    for i in range(5):
        cond, uncond = denoiser(x, sigmas[i]), denoiser(x, sigmas[i])
        x = x + (sigmas[i + 1] - sigmas[i]) * (uncond + 3 * (cond - uncond))
    assert router.last_run.calls_per_model == {"large": 4, "small": 6}


def test_needs_a_large_denoiser_and_valid_options(pair):
    with pytest.raises(ValueError, match="needs a large denoiser"):
        ModelRouter(pair[1], "LSL").as_denoiser(torch.linspace(1, 0, 3))
    router = ModelRouter(pair[1], "LSL", large=pair[0])
    with pytest.raises(ValueError, match="order=3"):
        router.as_denoiser(torch.linspace(1, 0, 3), order=3)
    with pytest.raises(ValueError, match="sigma_kind"):
        router.as_denoiser(torch.linspace(1, 0, 3), sigma_kind="vp")
