"""Which diffusers is installed, and which of the features this project drives it has: the one module for
differences between diffusers versions.

(Not :mod:`.compat`, which checks that a small model can stand in for a large one.) The project supports
every diffusers minor from :data:`OLDEST` on (pyproject.toml declares the same floor; tests check that);
``benchmarks/diffusers_range.py`` runs the core tests on each of them. A feature an older minor lacks is
listed in :data:`FEATURES` with the first release that has it; whatever needs one calls :func:`require`
before any work, which refuses in one line naming that release. Code that only reads diffusers differently
per version (the private attributes in :mod:`.diffusers_internals`) asks :func:`has`.

diffusers is imported when a version is first asked for, not with this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

OLDEST = "0.36"  # the oldest minor tested; pyproject.toml's floor


@dataclass(frozen=True)
class Feature:
    since: str  # the first diffusers release that has it
    shown: str  # how docs/api.md's table of versions names it
    why: str  # what that release brings, as the refusal says it
    otherwise: str = ""  # what to do instead of upgrading, as the refusal says it (refused features only)


_CACHES = "fbc, taylorseer and pab run on every supported diffusers"

FEATURES: dict[str, Feature] = {
    "magcache": Feature(
        "0.37", "`magcache`", "diffusers.MagCacheConfig", f"drop magcache from the stack ({_CACHES})"
    ),
    "quantize": Feature(
        "0.37",
        "`quantize` (torchao)",
        "0.36.0 cannot import its models once torchao 0.17 or newer is installed",
        "leave quantize out of the stack",
    ),
    "context_parallel": Feature(
        "0.39",
        "context parallelism (`cp`, `ContextParallel.from_diffusers`)",
        "ContextParallelConfig.mesh, for the small model to share the large one's mesh, and Ulysses "
        "attention that gathers attention masks: LTX fails inside 0.38",
        "run without context parallelism",
    ),
    "seacache": Feature(
        "0.41", "`seacache`", "diffusers.SeaCacheConfig", f"drop seacache from the stack ({_CACHES})"
    ),
    "group_offload_without_accelerator": Feature(
        "0.41",
        "group offloading (`--offload group`) where torch sees no GPU",
        "group offloading on a machine where torch sees no accelerator: before 0.41 it reads "
        "torch.accelerator.current_accelerator().type",
        "use model offloading (--offload model), or run where torch sees a GPU",
    ),
    "modular_wan": Feature(
        "0.37",
        "modular Wan pipelines (`WanBlocks`, `Wan22Blocks`)",
        "diffusers.modular_pipelines.WanBlocks and Wan22Blocks",
        "route the classic WanPipeline",
    ),
    "modular_ltx": Feature(
        "0.38",
        "modular LTX pipelines (`LTXBlocks`)",
        "diffusers.modular_pipelines.ltx.LTXBlocks",
        "route the classic LTXPipeline",
    ),
    # Read, never refused: how to load in a dtype, how a cache context reaches the hooks.
    "from_pretrained_dtype": Feature(
        "0.40",
        "`from_pretrained(dtype=...)` (before, the tools load with the older keyword)",
        "from_pretrained(dtype=...)",
    ),
    "cache_context": Feature(
        "0.41",
        "cache contexts with the step and sigma (before: the call's name alone)",
        "CacheContext objects (name, step_index, sigma) for stateful hooks",
    ),
    "enable_cache_refreshes_registries": Feature(
        "0.41",
        "`enable_cache` reaching hooks added after a run (0.38-0.40: refreshed by the caches accelerator)",
        "enable_cache/disable_cache refresh the child registries a cache context reaches",
    ),
}


def installed() -> str:
    """The installed diffusers' version string."""
    import diffusers

    return diffusers.__version__


def release(version: str) -> tuple[int, int, int]:
    """``"0.41.0.dev0"`` -> ``(0, 41, 0)``: a development build counts as the release it leads to."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if found is None:
        raise ValueError(f"not a diffusers version: {version!r}")
    major, minor, patch = found.groups(default="0")
    return int(major), int(minor), int(patch)


def has(feature: str) -> bool:
    """Whether the installed diffusers has ``feature`` (a key of :data:`FEATURES`)."""
    return release(installed()) >= release(FEATURES[feature].since)


def require(feature: str, what: str, otherwise: str = "") -> None:
    """Refuse, in one line naming the release that has it, to run ``what``, which needs ``feature``."""
    if has(feature):
        return
    needed = FEATURES[feature]
    raise ValueError(
        f"{what} needs diffusers >= {needed.since} ({needed.why}); the installed diffusers is {installed()}: "
        f"upgrade diffusers, or {otherwise or needed.otherwise}."
    )


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """``from_pretrained``'s dtype argument: ``dtype=`` from diffusers 0.40 (0.42 deprecates
    ``torch_dtype=``); before, a model's ``from_pretrained`` refuses ``dtype=`` and a pipeline's ignores it
    (and loads float32)."""
    return {"dtype" if has("from_pretrained_dtype") else "torch_dtype": dtype}
