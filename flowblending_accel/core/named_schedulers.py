"""Named schedulers with the flow-matching settings Wan and LTX use, for the CLI, benchmarks and recipes.

``make_scheduler("unipc", shift=5.0)`` gives Wan 2.1's default solver (UniPC, flow prediction, flow sigmas,
shift 5); ``"dpm++"`` the paper's step-reduction solver with the same flow settings; ``"euler"`` and
``"heun"`` the FlowMatch schedulers. ``from_config=`` keeps an existing scheduler's training settings
(``num_train_timesteps``, dynamic shifting) when swapping solvers on a real pipeline.
"""

from __future__ import annotations

from typing import Any

FLOW_SCHEDULERS = ("euler", "heun", "unipc", "dpm++", "dpm++2s")
VP_SCHEDULERS = ("ddim", "euler-vp", "dpm++-vp")
SCHEDULER_NAMES = FLOW_SCHEDULERS + VP_SCHEDULERS


def make_scheduler(name: str, shift: float = 5.0, from_config: Any = None) -> Any:
    """A fresh diffusers scheduler called ``name`` (see :data:`SCHEDULER_NAMES`)."""
    import diffusers

    flow_solver = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": shift}
    builders = {
        "euler": (diffusers.FlowMatchEulerDiscreteScheduler, {"shift": shift}),
        "heun": (diffusers.FlowMatchHeunDiscreteScheduler, {"shift": shift}),
        "unipc": (diffusers.UniPCMultistepScheduler, flow_solver),
        "dpm++": (diffusers.DPMSolverMultistepScheduler, {**flow_solver, "algorithm_type": "dpmsolver++"}),
        "dpm++2s": (diffusers.DPMSolverSinglestepScheduler, {**flow_solver, "lower_order_final": True}),
        "ddim": (diffusers.DDIMScheduler, {"steps_offset": 1, "clip_sample": False}),
        "euler-vp": (diffusers.EulerDiscreteScheduler, {}),
        "dpm++-vp": (diffusers.DPMSolverMultistepScheduler, {}),
    }
    if name not in builders:
        raise ValueError(f"scheduler {name!r} is unknown; choose one of {', '.join(SCHEDULER_NAMES)}.")
    cls, settings = builders[name]
    if from_config is None:
        return cls(**settings)
    config = {k: v for k, v in dict(from_config).items() if k in ("num_train_timesteps",)}
    return cls(**{**config, **settings})


def takes_sigmas(name: str) -> bool:
    """Whether the solver called ``name`` accepts a pipeline's own sigma grid (``set_timesteps(sigmas=)``)."""
    import inspect

    return "sigmas" in inspect.signature(make_scheduler(name).set_timesteps).parameters
