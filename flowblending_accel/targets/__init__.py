"""What the tools run on: a :class:`Target` is a pipeline, its small model, the call arguments per seed and
how to read the output. Targets: the embedded trained pair, real-size or tiny random presets, and local
diffusers folders. Tools take a Target; only the command line resolves one from options.
"""

from .base import Target

__all__ = ["Target"]
