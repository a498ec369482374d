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
