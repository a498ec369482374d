"""Skip markers for tests of optional integrations (the dev extra installs them all, so CI runs them)."""

import importlib.util

import pytest


def _missing(module: str, extra: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"{module} not installed: pip install flowblending-accel[{extra}]",
    )


needs_deepcache = _missing("DeepCache", "deepcache")
needs_cachedit = _missing("cache_dit", "cache-dit")
needs_torchao = _missing("torchao", "quantize")


def needs_diffusers(feature: str, here: bool = True):
    """Skip where the installed diffusers lacks ``feature`` (a key of diffusers_versions.FEATURES), when
    ``here`` (the feature matters on this machine)."""
    from flowblending_accel.core import diffusers_versions

    needed = diffusers_versions.FEATURES[feature]
    return pytest.mark.skipif(
        here and not diffusers_versions.has(feature),
        reason=f"{feature.replace('_', ' ')} needs diffusers >= {needed.since} ({needed.why})",
    )


def _no_accelerator() -> bool:
    import torch

    return torch.accelerator.current_accelerator() is None


# Group offloading on a machine without an accelerator fails inside diffusers before 0.41 (the tests' own
# enable_group_offload raises there; the project's enable_offload refuses it in one line).
needs_group_offload_here = needs_diffusers("group_offload_without_accelerator", here=_no_accelerator())
