"""The embedded target: the trained moving-digits pair shipped in the package (offline, CPU-friendly)."""

from __future__ import annotations

from ..support.progress import quiet_library_bars
from .base import Target
from .prompts import Prompt

SIZE = "32x32 pixels, 9 frames"  # what the pair was trained on: the size options do not apply to it


def embedded_target(
    path=None,
    device: str = "cpu",
    prompts: int | list[str] | list[Prompt] = 4,
    steps: int = 20,
    guidance_scale: float = 3.0,
) -> Target:
    """The shipped pair; ``prompts`` is a count (spread over the 40 prompts), texts or prompts. All of a
    seed's prompts go in one call; it offers the ``classifier`` scorer (the demo's metrics classifier)."""
    from ..demo.data import all_prompts, parse_prompt
    from ..demo.models import CALL_DEFAULTS, load_demo_pipeline
    from ..demo.scorers import ClassifierScorer

    if isinstance(prompts, int):
        chosen = [Prompt(text) for text in all_prompts()[:: max(1, 40 // prompts)][:prompts]]
    else:
        chosen = [prompt if isinstance(prompt, Prompt) else Prompt(prompt) for prompt in prompts]
    for prompt in chosen:
        parse_prompt(prompt.text)  # the pair only knows its language
        if prompt.arguments:
            raise ValueError(f"the embedded pair takes no per-prompt arguments ({sorted(prompt.arguments)}).")
    with quiet_library_bars():
        pipe, small = load_demo_pipeline(path)
    pipe.to(device)
    small.to(device)
    base = dict(
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        negative_prompt="",
        output_type="np",
        **CALL_DEFAULTS,
    )
    return Target(
        "embedded moving-digits pair",
        pipe,
        small,
        device,
        f"embedded pair, a seed's prompts in one call, {steps} steps, CFG {guidance_scale:g}",
        base,
        chosen,
        batch=None,
        scorers={"classifier": lambda: ClassifierScorer.shipped(path)},
    )
