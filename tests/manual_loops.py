"""Hand-written denoising loops that pick the model per solver step, to check the router against."""

import torch

from flowblending_accel.core.step_grid import SolverView


def manual_wan(pipe, large, small, models_by_step, kwargs):
    """WanPipeline's T2V loop, written out, with the model chosen from ``models_by_step``."""
    generator = kwargs["generator"]
    latents = pipe.prepare_latents(
        1,
        16,
        kwargs["height"],
        kwargs["width"],
        kwargs["num_frames"],
        torch.float32,
        torch.device("cpu"),
        generator,
    )
    scheduler = pipe.scheduler
    scheduler.set_timesteps(kwargs["num_inference_steps"])
    view = SolverView.from_scheduler(scheduler)
    scale = kwargs["guidance_scale"]
    for iteration, t in enumerate(scheduler.timesteps):
        model = large if models_by_step[view.step_of_iteration[iteration]] == "large" else small
        timestep = t.expand(latents.shape[0])
        cond = model(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=kwargs["prompt_embeds"],
            return_dict=False,
        )[0]
        if scale > 1.0:
            uncond = model(
                hidden_states=latents,
                timestep=timestep,
                encoder_hidden_states=kwargs["negative_prompt_embeds"],
                return_dict=False,
            )[0]
            cond = uncond + scale * (cond - uncond)
        latents = scheduler.step(cond, t, latents, return_dict=False)[0]
    return latents
