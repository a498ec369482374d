"""The stack a tool measures when none is given, chosen for the pipeline's family and this machine."""

from __future__ import annotations

from .registry import AcceleratorConfig, parse_accelerator
from .steps import StepReduction

# The solvers a step reduction tries for a family, fastest-converging first, by what the family samples with.
SOLVER_PREFERENCE = {"flow": ("dpm++", "unipc", "euler"), "vp": ("dpm++-vp", "euler-vp", "ddim")}
CACHE_PREFERENCE = ("fbc:0.05", "deepcache:3")  # transformers take FirstBlockCache, UNets DeepCache


def solver_for_family(family, denoisers: tuple[str, ...], solver_kind: str | None = None) -> str | None:
    """The first step-reduction solver the family takes (LTX hands the scheduler its own sigmas, so no
    DPM++), or None."""
    kind = family.solver_kind or solver_kind or "flow"
    for name in SOLVER_PREFERENCE[kind]:
        try:
            StepReduction(name, 2).check_family(family, denoisers, solver_kind)
        except ValueError:
            continue
        return name
    return None


def default_stack(family, denoisers: tuple[str, ...], steps: int, device: str) -> list[AcceleratorConfig]:
    """The stack ``bench`` measures when none is given: a solver the family takes at half the steps, a cache
    it takes (and this machine has), and regional compile. Never a member the family or machine refuses."""
    specs = []
    solver = solver_for_family(family, denoisers)
    if solver is not None:
        specs.append(f"{solver}:{max(2, steps // 2)}")
    for spec in CACHE_PREFERENCE:
        config = parse_accelerator(spec)
        try:
            config.check_family(family, denoisers)
            config.check_environment(device)
        except ValueError:
            continue
        specs.append(spec)
        break
    return [parse_accelerator(spec) for spec in [*specs, "compile"]]
