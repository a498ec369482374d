"""What the tools run on: a :class:`Target` is a pipeline, its small model, the call arguments per seed and
how to read the output. Targets: the embedded trained pair, real-size or tiny random presets, and local
diffusers folders. Tools take a Target; only the command line resolves one from options.
"""

from importlib import import_module

__all__ = ["Target"]


def __getattr__(name: str):
    # Lazy, so the torch-free settings (``targets.options``) import without torch for --help.
    if name == "Target":
        return import_module(".base", __name__).Target
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
