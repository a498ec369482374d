"""Accelerator names, the config base class, and the one parser from a spec string to a config.

``"fbc:0.05"`` and ``FirstBlockCache(threshold=0.05)`` are the same documented path: the spec's name picks a
registered config class and its ``from_spec`` reads the value; ``config.spec`` writes it back. Each built-in
accelerator is one module holding its config, its runtime class and its mapping onto the library it drives;
they register on import of the package. None of them imports torch or diffusers at module level, so the
command line can list and check accelerators without loading either.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..core.families import Family

# The order a stack applies its members in (the router goes on top of all of them). Context parallelism
# comes after the attention backend (diffusers checks the backend can split when it is enabled) and before
# what hooks or compiles the blocks it splits.
KIND_ORDER = ("scheduler", "attention", "parallel", "quantize", "cache", "compile", "engine", "memory")


@dataclass(frozen=True)
class AcceleratorConfig:
    """Base of every accelerator config: a frozen dataclass validated in ``__post_init__``.

    Class attributes a subclass sets:
        names: the spec names it is registered under (the first is its canonical name).
        kind: its slot in :data:`KIND_ORDER`; a stack holds at most one ``cache``.
        spec_help: the spec forms, for ``--help`` and error messages.
        exclusive_with: names or kinds it cannot share a stack with, and ``clash_reasons`` why.
        decides_over_world: a cache whose skip decision is reduced over every process torchrun launched.

    A subclass overrides :meth:`create` to make its runtime :class:`~.runtime.Accelerator`, named directly:
    both live in one module, which imports torch only where it acts, so the registry and ``--help`` stay
    torch-free.
    """

    names: ClassVar[tuple[str, ...]] = ()
    kind: ClassVar[str] = "cache"
    spec_help: ClassVar[str] = ""
    exclusive_with: ClassVar[tuple[str, ...]] = ()
    clash_reasons: ClassVar[dict[str, str]] = {}
    # Its skip decision reduces statistics over every process of the run (cache-dit's own all_reduce): right
    # when they all split one sample, wrong across data-parallel groups (context parallelism refuses that).
    decides_over_world: ClassVar[bool] = False
    # The spec it was parsed from (``"fbc"``), kept for reports that name members as the user wrote them.
    written: str = field(default="", compare=False, repr=False, kw_only=True)

    @property
    def name(self) -> str:
        return self.names[0]

    @classmethod
    def from_spec(cls, name: str, value: str) -> AcceleratorConfig:
        """The config for ``name[:value]``; a bare name gives the defaults."""
        if value:
            raise ValueError(f"accelerator '{name}:{value}': {name!r} takes no value; write '{name}'.")
        return cls()

    @property
    def as_written(self) -> str:
        """The spec it was parsed from, else :attr:`spec`."""
        return self.written or self.spec

    @property
    def spec(self) -> str:
        """The spec string ``parse_accelerator`` turns back into this config."""
        return self.name

    def check_environment(self, device: str) -> None:
        """Raise ValueError when this machine cannot run it on ``device`` (before any model is built)."""

    def check_family(
        self, family: Family, denoisers: tuple[str, ...], solver_kind: str | None = None
    ) -> None:
        """Raise ValueError when this cannot act on ``family``'s ``denoisers`` (known from a folder's
        model_index.json before any model is built); ``solver_kind``: the loaded scheduler's, when known."""

    def clashes_with(self, other: AcceleratorConfig) -> str | None:
        """The reason this cannot share a stack with ``other``, or None."""
        for entry in self.exclusive_with:
            if entry in (other.name, other.kind):
                reason = self.clash_reasons.get(entry, "they patch the same modules.")
                return f"{self.name} cannot be stacked with {other.name}: {reason}"
        return None

    def for_rounds(self) -> AcceleratorConfig:
        """This config as a tool uses it when it applies and removes the stack many times (bench rounds):
        one whose removal restores the models exactly."""
        return self

    def create(self) -> Any:
        """A fresh runtime accelerator for this config (it holds the state of one application)."""
        raise NotImplementedError(f"{type(self).__name__} names no runtime: override create().")

    def describe(self) -> dict[str, Any]:
        shown = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "written" and not callable(getattr(self, f.name))
        }
        return {"name": self.name, "kind": self.kind, **shown}


_REGISTRY: dict[str, type[AcceleratorConfig]] = {}


def register_accelerator(config: type[AcceleratorConfig]) -> type[AcceleratorConfig]:
    """Register ``config`` under each of its ``names`` (usable as a class decorator)."""
    if config.kind not in KIND_ORDER:
        raise ValueError(f"{config.__name__}.kind={config.kind!r} is not one of {KIND_ORDER}.")
    for name in config.names:
        if name in _REGISTRY and _REGISTRY[name] is not config:
            raise ValueError(
                f"an accelerator named {name!r} is already registered ({_REGISTRY[name].__name__})."
            )
        _REGISTRY[name] = config
    return config


def registered_accelerators() -> dict[str, type[AcceleratorConfig]]:
    return dict(_REGISTRY)


def parse_accelerator(spec: str | AcceleratorConfig) -> AcceleratorConfig:
    """``"dpm++:25"`` -> ``StepReduction("dpm++", 25)``; a config passes through. See :func:`spec_help`."""
    if isinstance(spec, AcceleratorConfig):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"an accelerator is a spec string like 'fbc:0.05' or a config, got {type(spec).__name__}."
        )
    name, _, value = spec.strip().partition(":")
    if name not in _REGISTRY:
        raise ValueError(f"accelerator {spec!r} is unknown; write one of: {spec_help()}.")
    config = _REGISTRY[name].from_spec(name, value)
    object.__setattr__(config, "written", spec.strip())  # frozen: provenance set once, where it is parsed
    return config


def spec_help() -> str:
    """Every registered spec form, one group per config class."""
    seen: list[type[AcceleratorConfig]] = []
    for config in registered_accelerators().values():
        if config not in seen:
            seen.append(config)
    return ", ".join(config.spec_help for config in seen)


def as_configs(members) -> list[AcceleratorConfig]:
    """Parse spec strings; configs, and accelerators of an earlier stack (their ``config``), pass through.
    Imports no torch, so a command checks its stack before loading anything heavy."""
    configs = []
    for member in members:
        if isinstance(member, str | AcceleratorConfig):
            configs.append(parse_accelerator(member))
        else:
            configs.append(member.config)
    return configs


def validate_configs(configs: list[AcceleratorConfig], device: str | None = None) -> None:
    """Checks that need no pipeline: this machine can run each member, no two clash, at most one cache."""
    if device is not None:
        for config in configs:  # what this machine lacks first: the most useful reason
            config.check_environment(device)
    for config in configs:
        for other in configs:
            reason = config.clashes_with(other) if other is not config else None
            if reason:
                raise ValueError(reason)
    parallel = [config.spec for config in configs if config.kind == "parallel"]
    if len(parallel) > 1:
        raise ValueError(
            f"stack splits the models twice {parallel}: a model takes one parallel config; keep one."
        )
    caches = [config.spec for config in configs if config.kind == "cache"]
    if len(caches) > 1:
        raise ValueError(
            f"stack has several feature caches {caches}: each model takes one cache technique (diffusers "
            "raises 'Caching has already been enabled'); keep one."
        )


def validate_for_family(configs: list[AcceleratorConfig], family, denoisers, solver_kind=None) -> None:
    """Checks that need only the pipeline's family and denoiser attributes (a folder's model_index.json
    says them): a UNet cache on a transformer, a solver of the wrong kind, one that cannot take the
    pipeline's sigmas."""
    for config in configs:
        config.check_family(family, denoisers, solver_kind)


# Checks the configs share: a spec's value, a package this machine lacks, a CUDA GPU, transformer denoisers.


def spec_value(name: str, value: str, cast: type, form: str) -> Any:
    """``value`` of the spec ``name:value`` as ``cast``, or one message saying what form it takes."""
    try:
        return cast(value)
    except ValueError:
        raise ValueError(
            f"accelerator '{name}:{value}': the value must be {form}, e.g. '{name}:"
            f"{'0.05' if cast is float else '10'}'."
        ) from None


def require_package(module: str, what: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} needs the `{module}` package: pip install flowblending-accel[{extra}].")


def require_cuda(what: str, device: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"{what} needs a CUDA GPU, and this machine has none (torch {torch.__version__}): "
            "drop it from the stack."
        )
    if not device.startswith("cuda"):
        raise ValueError(f"{what} needs a CUDA GPU, but the target runs on {device!r}: use --device cuda.")


def require_transformers(spec: str, family, denoisers: tuple[str, ...]) -> None:
    unets = [name for name in denoisers if family.is_unet(name)]
    if unets:
        raise ValueError(
            f"{spec}: the {family.name} pipeline's {unets[0]} is a UNet, which this cache does not hook "
            "(it caches transformer blocks); use deepcache[:interval]."
        )
