"""One place that turns target options into a :class:`Target`, after checking everything it can before any
model is built: the kind of target, its folders or factory, that each size and call option applies to the
target's pipeline (refused, not ignored, when it does not), the prompts file.

Kinds: ``embedded`` (default: the shipped pair), ``random:PRESET`` (real-size or tiny random weights),
``--large FOLDER --small FOLDER`` (diffusers folders or hub ids), ``FILE.py:FACTORY`` / ``MODULE:FACTORY``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Target
from .options import CALL_OPTIONS, IDENTITY_SETTINGS, OPTION_NAMES, TargetOptions
from .prompts import Prompt, read_prompts

if TYPE_CHECKING:
    from ..core.families import Family
    from .folders import FolderPair

logger = logging.getLogger(__name__)


def check_tuned_for(options: TargetOptions, tuned_for: dict[str, str] | None, source: Any) -> None:
    """A settings file written for one target (tune's tuned.toml: ``tuned_for = { large = ..., small = ...
    }``, paths resolved against the file) is refused for another, naming both."""
    if tuned_for is None:
        return
    unknown = sorted(set(tuned_for) - set(IDENTITY_SETTINGS))
    if unknown:
        raise ValueError(
            f"--config {source}: tuned_for takes {', '.join(IDENTITY_SETTINGS)}, not {', '.join(unknown)}."
        )
    tuned = TargetOptions(**tuned_for).identity()
    if tuned != options.identity():
        raise ValueError(
            f"--config {source}: tuned for {tuned}, but this run's target is {options.identity()}; tune "
            "on this target, or run on the one it was tuned for."
        )


@dataclass(frozen=True)
class CheckedTarget:
    """What :func:`check_target` proved before any model is built, and what the build needs from it."""

    options: TargetOptions
    prompts: list[Prompt] | None = None  # a --prompts file's (None: the target's own)
    pair: FolderPair | None = None  # the --large/--small folders, read and checked


def check_target(options: TargetOptions) -> CheckedTarget:
    """Everything checkable without building a model; returns what the build needs (prompts, folder pair)."""
    kind = options.kind
    prompts = read_prompts(Path(options.prompts)) if options.prompts else None
    if kind == "embedded":
        _refuse(
            options,
            ("height", "width", "frames", "negative_prompt"),
            "the embedded pair was trained at 32x32 pixels and 9 frames with an empty negative prompt",
        )
        if prompts:
            from ..demo.data import parse_prompt

            for prompt in prompts:
                parse_prompt(prompt.text)
        return CheckedTarget(options, prompts)
    if kind == "random":
        from .presets import check_preset

        check_preset(options.target.split(":", 1)[1])
        _refuse(options, ("negative_prompt",), "random presets take random prompt embeddings")
        if prompts:
            raise ValueError(
                "--prompts does not apply to random presets: they run on random prompt embeddings."
            )
        return CheckedTarget(options)
    if kind == "folders":
        from .folders import check_folders

        pair = check_folders(options.large, options.small)
        if pair.pipeline_class is not None:
            _applies(options, pair.pipeline_class, prompts)
        if not prompts:
            raise ValueError(
                "--large/--small: give the prompts to run with --prompts FILE (one prompt a line, or "
                "JSONL with per-prompt call arguments)."
            )
        if pair.pipeline_class is not None:  # a local folder: its size checked on the meta device
            from .sizes import check_folder_size, folder_size

            call, source = folder_size(options, pair)
            check_folder_size(pair, options.torch_dtype_name, call, prompts[0].text, source)
        _check_memory(options, pair, prompts)
        return CheckedTarget(options, prompts, pair)
    from .factory import find_factory

    find_factory(options.target)
    return CheckedTarget(options, prompts)


def given_prompts(options: TargetOptions, checked: CheckedTarget) -> list[Prompt] | None:
    """The prompts known before building (a ``--prompts`` file), else ``None`` (the target's own)."""
    return checked.prompts


def known_family(options: TargetOptions, checked: CheckedTarget) -> tuple[Family, tuple[str, ...]] | None:
    """``(Family, routed denoiser attributes)`` when known before building (``checked``: what
    :func:`check_target` returned); ``None`` for a factory or a hub id (known once loaded)."""
    import diffusers

    from ..core.families import family_for_class

    kind = options.kind
    if kind == "folders":
        pair = checked.pair
        return (pair.family, pair.denoisers) if pair.family is not None else None
    if kind == "embedded":
        pipeline_class, denoisers = diffusers.WanPipeline, ("transformer",)
    elif kind == "random":
        from .presets import check_preset

        preset = check_preset(options.target.split(":", 1)[1])
        pipeline_class, denoisers = getattr(diffusers, preset.pipeline_class_name), preset.denoisers
    else:
        return None
    return family_for_class(pipeline_class, set(denoisers)), denoisers


def build_target(
    options: TargetOptions, checked: CheckedTarget | None = None, embedded_prompts: int | None = None
) -> Target:
    """Build the target (``checked``: what :func:`check_target` returned)."""
    import torch

    kind = options.kind
    checked = check_target(options) if checked is None else checked
    dtype = getattr(torch, options.torch_dtype_name)
    _note_offload_on_cpu(options)
    if kind == "embedded":
        from .embedded import embedded_target

        steps = options.steps or 20
        guidance = 3.0 if options.guidance_scale is None else options.guidance_scale
        chosen = checked.prompts or (embedded_prompts or 4)
        return embedded_target(options.pair, options.device, chosen, steps, guidance)
    if kind == "random":
        from .presets import preset_target

        return preset_target(
            options.target.split(":", 1)[1],
            options.device,
            dtype,
            options.height,
            options.width,
            options.frames,
            options.steps,
            options.guidance_scale,
            offload=_offload_here(options),
        )
    base = {CALL_OPTIONS[name]: value for name, value in options.given_call_options().items()}
    if kind == "folders":
        from .folders import folder_target
        from .sizes import describe, folder_size

        pair, prompts = checked.pair, checked.prompts
        size, source = folder_size(options, pair)
        base = {**size, **base}
        logger.info("size: %s (%s)", describe(size), source)
        target = folder_target(
            pair, options.device, dtype, {"output_type": "np", **base}, prompts, _offload_here(options)
        )
    else:
        from .factory import factory_target

        target = factory_target(options.target, options.device, dtype, base, checked.prompts)
        if pipeline_takes(type(target.pipe), "output_type"):
            target.base.setdefault("output_type", "np")  # outputs the scorers can read
    _applies(options, type(target.pipe), target.prompts)
    return target


def _offload_here(options: TargetOptions) -> str:
    """The memory mode to load in: on a CPU there is no other memory to offload to."""
    return options.offload if options.device.startswith("cuda") else "none"


def _note_offload_on_cpu(options: TargetOptions) -> None:
    if options.offload != "none" and not options.device.startswith("cuda"):
        note = f"note: --offload {options.offload} does nothing on --device {options.device}"
        logger.warning("%s: the models already live in host memory.", note)


def _check_memory(options: TargetOptions, pair: FolderPair, prompts: list[Prompt]) -> None:
    """On a GPU (or against --gpu-memory), refuse a memory mode whose estimated peak does not fit, before
    any weight is read."""
    from ..support.memory import device_total_bytes, parse_size

    budget = parse_size(options.gpu_memory) if options.gpu_memory else None
    if budget is None and options.device.startswith("cuda"):
        budget = device_total_bytes(options.device)
    if budget is None or pair.pipeline_class is None:  # a CPU without a budget, or a hub id
        return
    from .memory import assert_fits, plan_for_folders

    peaks = plan_for_folders(pair, options, prompts[0].text if prompts else None)
    assert_fits(peaks, options.offload, budget, f"--large {pair.large}")


def _refuse(options: TargetOptions, names: tuple[str, ...], why: str) -> None:
    given = [OPTION_NAMES[name] for name in names if getattr(options, name) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} do(es) not apply to this target: {why}.")


def pipeline_takes(pipeline_class: type, argument: str) -> bool:
    """Whether the pipeline's call names ``argument``. A call naming nothing but ``**kwargs`` (a wrapper)
    takes anything; diffusers' calls name every argument (their ``**kwargs`` catch deprecated ones)."""
    parameters = inspect.signature(pipeline_class.__call__).parameters
    named = [p for p in parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    wrapper = len(named) <= 1 and any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    return argument in parameters or wrapper


def _applies(options: TargetOptions, pipeline_class: type, prompts: list[Prompt] | None = None) -> None:
    """Refuse a size or call option, or a prompt's own call argument, that the pipeline does not take (e.g.
    --frames for an image pipeline)."""
    for name in options.given_call_options():
        if not pipeline_takes(pipeline_class, CALL_OPTIONS[name]):
            raise ValueError(
                f"{OPTION_NAMES[name]} does not apply to {pipeline_class.__name__}: its call takes no "
                f"{CALL_OPTIONS[name]}."
            )
    for prompt in prompts or []:
        for argument in prompt.arguments:
            if not pipeline_takes(pipeline_class, argument):
                raise ValueError(
                    f"--prompts: {prompt.text!r} sets {argument}, which {pipeline_class.__name__}'s call "
                    "does not take; remove it from the prompts file."
                )


__all__ = [
    "Prompt",
    "build_target",
    "check_target",
    "check_tuned_for",
    "given_prompts",
    "known_family",
    "pipeline_takes",
]
