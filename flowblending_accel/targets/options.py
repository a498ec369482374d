"""The target settings, declared once. Each is a :class:`TargetOptions` field, a command-line flag
(``--guidance-scale`` for ``guidance_scale``), a key of the config file (the field's name) and, for the size
and call settings, the pipeline-call argument it sets. The command line builds its flags from here, the config
file is read against it, and the checks name settings as it does. Imports no torch (``--help`` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..accelerators import OFFLOAD_MODES

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Setting:
    """How one target setting is given and what it sets.

    ``value``: ``"text"``, ``"whole"`` (a whole number of at least 1) or ``"positive"`` (a number above 0).
    ``call_argument``: the pipeline-call argument it sets. ``own_target``: it describes one target, so a
    config-file scenario that names its own target does not inherit it. ``with_prompts``: offered only by
    commands that take prompts.
    """

    help: str
    value: str = "text"
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    call_argument: str | None = None
    own_target: bool = False
    with_prompts: bool = False


def _setting(default: Any = None, **declared: Any) -> Any:
    return field(default=default, metadata={"setting": Setting(**declared)})


def flag(name: str) -> str:
    """The command-line flag of setting ``name``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class TargetOptions:
    """What a target is built from; ``None`` leaves a setting to the target's own default."""

    target: str = _setting(
        "embedded", metavar="SPEC", help="embedded, random:PRESET, FILE.py:FACTORY ...", own_target=True
    )
    large: str | None = _setting(
        metavar="FOLDER", help="pipeline folder or hub id (with --small)", own_target=True
    )
    small: str | None = _setting(
        metavar="FOLDER", help="the small denoiser's folder or hub id", own_target=True
    )
    pair: str | None = _setting(
        metavar="FOLDER", help="another demo-pair folder for the embedded target", own_target=True
    )
    device: str = _setting("cpu", help="cpu, cuda or cuda:N (default cpu)")
    dtype: str | None = _setting(
        choices=DTYPES,
        help="weights dtype (default: bfloat16 on CUDA, float32 on CPU; the embedded pair float32)",
    )
    offload: str = _setting(
        "none",
        choices=OFFLOAD_MODES,
        help="memory mode on a GPU (default none: all resident): model, group or sequential CPU offload; "
        "the pipeline is loaded on the CPU and never moved whole to the GPU",
    )
    gpu_memory: str | None = _setting(  # "24GiB": the memory plan's budget instead of the GPU's own
        metavar="SIZE",
        help="refuse, before loading, a memory mode whose estimated peak does not fit SIZE (e.g. 24GiB) "
        "instead of the GPU's own memory",
    )
    height: int | None = _setting(
        value="whole", help="pixels (the target's default)", call_argument="height", own_target=True
    )
    width: int | None = _setting(
        value="whole", help="pixels (the target's default)", call_argument="width", own_target=True
    )
    frames: int | None = _setting(
        value="whole", help="video frames (video pipelines only)", call_argument="num_frames", own_target=True
    )
    steps: int | None = _setting(
        value="whole", help="solver steps (the target's default)", call_argument="num_inference_steps"
    )
    guidance_scale: float | None = _setting(
        value="positive",
        help="the call's guidance_scale (CFG scale; Flux: its distilled guidance)",
        call_argument="guidance_scale",
    )
    negative_prompt: str | None = _setting(
        help="negative prompt for every call", call_argument="negative_prompt", own_target=True
    )
    prompts: str | None = _setting(
        metavar="FILE",
        help="prompts: one a line, or JSONL with per-prompt call arguments (negative_prompt, "
        "height, num_frames, image ...)",
        with_prompts=True,
    )

    def __post_init__(self) -> None:
        from ..support.memory import parse_size

        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}.")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"--offload {self.offload!r}: use one of {', '.join(OFFLOAD_MODES)}.")
        if self.gpu_memory is not None:
            parse_size(self.gpu_memory)
        if (self.large is None) != (self.small is None):
            raise ValueError(
                "--large and --small go together: the pipeline folder and the small model's folder."
            )
        if self.large is not None and self.target != "embedded":
            raise ValueError(f"--target {self.target} and --large/--small both name a target; keep one.")

    @property
    def kind(self) -> str:
        if self.large is not None:
            return "folders"
        if self.target == "embedded":
            return "embedded"
        if self.target.startswith("random:"):
            return "random"
        if ":" in self.target:
            return "factory"
        raise ValueError(
            f"--target {self.target!r}: use embedded, random:PRESET, FILE.py:FACTORY or "
            "MODULE:FACTORY (or --large FOLDER --small FOLDER)."
        )

    @property
    def torch_dtype_name(self) -> str:
        return self.dtype or ("bfloat16" if self.device.startswith("cuda") else "float32")

    def identity(self) -> str:
        """What this target is, as a tuned.toml records it: the same pipeline and small model give the same
        text wherever the command runs from."""
        if self.kind == "folders":
            return f"--large {_where(self.large)} --small {_where(self.small)}"
        if self.kind == "embedded":
            return "the embedded pair" + (f" from {_where(self.pair)}" if self.pair else "")
        return f"--target {self.target}"

    def given_call_options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CALL_OPTIONS if getattr(self, name) is not None}

    @classmethod
    def merged(cls, flags: dict[str, Any], config: dict[str, Any]) -> TargetOptions:
        """Flags (``None`` when not given) over the config file's values over the defaults."""
        names = {f.name for f in fields(cls)}
        values = {name: config[name] for name in names if config.get(name) is not None}
        values.update({name: value for name, value in flags.items() if name in names and value is not None})
        return cls(**values)


# The settings that say which target a run is on (the rest say how it runs): what identity() reads.
IDENTITY_SETTINGS = ("target", "large", "small", "pair")


def _where(path: str) -> str:
    """A local folder's absolute path; a hub id as it is."""
    return str(Path(path).resolve()) if Path(path).exists() else path


SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(TargetOptions)}
# Setting -> the pipeline-call argument it sets.
CALL_OPTIONS = {name: s.call_argument for name, s in SETTINGS.items() if s.call_argument is not None}
# Setting -> how a user names it: the flag, or the key in the config file.
OPTION_NAMES = {name: f"{flag(name)} ({name})" for name in SETTINGS}
# Settings that describe one target: a config-file scenario naming its own target does not inherit them.
OWN_TARGET_KEYS = tuple(name for name, s in SETTINGS.items() if s.own_target)
