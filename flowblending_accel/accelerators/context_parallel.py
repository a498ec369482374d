"""Context parallelism: one sample's sequence split across the ranks of ``torchrun`` (diffusers' own engine).

``cp:2`` (``ContextParallel(ulysses_degree=2)``) calls ``enable_parallelism`` with a Ulysses config on every
routed large model; the router's follower gives each small model the same kind and degree on the same mesh
(:mod:`flowblending_accel.core.follow`), so L-S-L runs with both models split. ``cp:ring:2`` splits with
ring attention instead, which needs an attention backend that returns the log-sum-exp (flash, sage, cuDNN;
not native). Ranks beyond one context-parallel group form data-parallel groups: 4 processes with ``cp:2``
are 2 groups of 2, each generating its own share of the prompts on one mesh ``(dp, ring, ulysses)``.

Checked before any model changes: the process group exists (launched under torchrun), the degree fits the
world size, both models have a context-parallel plan, and the Ulysses degree divides both models' head counts
(the refusal names the degrees that do). Removal takes both models' parallelism off.

Caches stack with it: the ones that decide from the activations whether to skip decide from the whole
sequence, reduced over the ranks of the split, so every rank skips or computes together (``fbc`` through
:func:`~flowblending_accel.core.patches.decide_across_ranks`; cache-dit reduces over every process itself,
so it is refused beside data-parallel groups); the others decide by step, timestep or unsplit latents.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass, field
from typing import Any

from ..core import diffusers_versions
from .registry import AcceleratorConfig, register_accelerator, spec_value
from .runtime import Accelerator, RoutedModels


@register_accelerator
@dataclass(frozen=True)
class ContextParallel(AcceleratorConfig):
    """diffusers' context parallelism on the large models (the small ones follow). ``ulysses_degree`` 0: the
    whole world (or what ``ring_degree`` leaves of it). ``mesh``: a ``DeviceMesh`` with ``ring`` and
    ``ulysses`` dimensions to use instead of building one."""

    ulysses_degree: int = 0
    ring_degree: int = 1
    ulysses_anything: bool = False
    ring_anything: bool = False
    convert_to_fp32: bool = True
    mesh: Any = field(default=None, compare=False, repr=False)

    names = ("cp",)
    kind = "parallel"
    spec_help = "cp[:N|ring:N] (context parallel, under torchrun)"

    def create(self) -> ContextParallelAccelerator:
        return ContextParallelAccelerator(self)

    def __post_init__(self) -> None:
        for name in ("ulysses_degree", "ring_degree"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"ContextParallel.{name}={value!r} must be a whole number >= 0.")
        if self.ring_degree < 1:
            raise ValueError(f"ContextParallel.ring_degree={self.ring_degree!r} must be at least 1.")

    @classmethod
    def from_spec(cls, name: str, value: str) -> ContextParallel:
        kind, _, degree = value.rpartition(":") if ":" in value else ("", "", value)
        if kind not in ("", "ulysses", "ring") or (value and not degree):
            raise ValueError(f"accelerator '{name}:{value}': write cp, cp:N, cp:ulysses:N or cp:ring:N.")
        count = spec_value(name, degree, int, "a whole-number degree") if degree else 0
        return cls(ring_degree=count, ulysses_degree=1) if kind == "ring" else cls(ulysses_degree=count)

    @property
    def spec(self) -> str:
        if self.ring_degree > 1:
            return f"cp:ring:{self.ring_degree}"
        return f"cp:{self.ulysses_degree}" if self.ulysses_degree else "cp"

    @classmethod
    def from_diffusers(cls, config: Any) -> ContextParallel:
        """Ours for a diffusers ``ContextParallelConfig`` (its degrees, ``ulysses_anything`` and mesh)."""
        diffusers_versions.require("context_parallel", "ContextParallel.from_diffusers(...)")
        return cls(
            ulysses_degree=config.ulysses_degree or 1,
            ring_degree=config.ring_degree or 1,
            ulysses_anything=config.ulysses_anything,
            ring_anything=config.ring_anything,
            convert_to_fp32=config.convert_to_fp32,
            mesh=config.mesh,
        )

    def degrees(self, world: int) -> tuple[int, int]:
        """``(ring, ulysses)`` on ``world`` processes."""
        ulysses = self.ulysses_degree or max(1, world // self.ring_degree)
        return self.ring_degree, ulysses

    def check_environment(self, device: str) -> None:
        from ..core.distributed import launched_world_size  # torch: when a stack is checked, not at import

        diffusers_versions.require("context_parallel", self.spec)
        world = launched_world_size()
        ring, ulysses = self.degrees(world)
        if world < 2:
            raise ValueError(
                f"{self.spec} splits one sample across processes, and this is one process: launch with "
                "torchrun --nproc_per_node N (N >= 2), or drop it from the stack."
            )
        if ring * ulysses < 2 or world % (ring * ulysses):
            raise ValueError(
                f"{self.spec}: a context-parallel group of {ring * ulysses} processes does not divide the "
                f"{world} torchrun launched; use a degree that divides {world}."
            )

    def clashes_with(self, other: AcceleratorConfig) -> str | None:
        if other.decides_over_world:  # cache-dit: fine while every process splits the one sample
            from ..core.distributed import launched_world_size

            world = launched_world_size()
            ring, ulysses = self.degrees(world)
            if world > ring * ulysses:
                groups = world // (ring * ulysses)
                return (
                    f"{self.name} cannot be stacked with {other.name} on {world} processes: {self.spec} "
                    f"makes {groups} groups and {other.name} reduces its skip decision over all {world}, so "
                    "the groups' samples would decide each other's skips (and a group with fewer calls "
                    f"leaves the rest waiting); use cp:{world} (one group) or drop {other.name}."
                )
        return super().clashes_with(other)

    def diffusers_config(self, world: int, mesh: Any = None) -> Any:
        """The diffusers ``ContextParallelConfig`` this declares on ``world`` processes (on ``mesh``)."""
        from diffusers import ContextParallelConfig

        ring, ulysses = self.degrees(world)
        return ContextParallelConfig(
            ring_degree=ring,
            ulysses_degree=ulysses,
            ulysses_anything=self.ulysses_anything,
            ring_anything=self.ring_anything,
            convert_to_fp32=self.convert_to_fp32,
            mesh=mesh,
        )


# Meshes built so far, by (process group, ring, ulysses, device type): a mesh makes process groups, which
# live as long as the default group, so applying cp again (every `with flowblending(...)`) reuses its mesh.
# A mesh holds its process groups; one that outlived the interpreter would be torn down during finalisation,
# where a gloo worker thread freeing a collective's Python-owned tensor aborts the process ("terminate called
# without an active exception"). So the meshes of a destroyed group are dropped at the next lookup, and all
# of them at exit, while the interpreter still runs (see release_meshes).
_MESHES: dict[tuple[Any, int, int, str], Any] = {}


def release_meshes() -> None:
    """Drop the cached meshes, and with them their process groups (their worker threads are joined here)."""
    import gc

    _MESHES.clear()
    gc.collect()  # a sliced mesh and its root refer to each other: freed by the collector, not by the clear


def context_parallel_mesh(ring: int, ulysses: int, device_type: str) -> Any:
    """The ``(ring, ulysses)`` mesh of this rank's context-parallel group: with more processes than one group
    holds, the world is a ``(dp, ring, ulysses)`` mesh and each data-parallel group gets its slice. Built
    once per process group (a collective: every rank asks for the same meshes in the same order)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    key = (dist.group.WORLD, ring, ulysses, device_type)  # the group itself: an id could be reused
    for stale in [cached for cached in _MESHES if cached[0] is not dist.group.WORLD]:
        del _MESHES[stale]  # the group was destroyed (and maybe made again): its meshes are dead
    if key not in _MESHES:
        groups = dist.get_world_size() // (ring * ulysses)
        if groups == 1:
            mesh = init_device_mesh(device_type, (ring, ulysses), mesh_dim_names=("ring", "ulysses"))
        else:
            shape, names = (groups, ring, ulysses), ("dp", "ring", "ulysses")
            mesh = init_device_mesh(device_type, shape, mesh_dim_names=names)["ring", "ulysses"]
        _MESHES[key] = mesh
        atexit.unregister(release_meshes)  # registered once, however many meshes are built
        atexit.register(release_meshes)
    return _MESHES[key]


class ContextParallelAccelerator(Accelerator):
    def __init__(self, config: ContextParallel) -> None:
        super().__init__(config)
        self._enabled: list[Any] = []  # the large models whose parallelism we enabled
        self.mesh: Any = config.mesh

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        import torch.distributed as dist

        from ..core.compat import check_context_parallel
        from ..core.diffusers_internals import context_parallel_of, context_parallel_plan, parallel_of

        diffusers_versions.require("context_parallel", self.config.spec)  # a stack without a device
        if not dist.is_initialized():
            raise ValueError(
                f"{self.config.spec}: no process group; launch with torchrun and call "
                "torch.distributed.init_process_group first (the tools and recipes do)."
            )
        planned = self.config.diffusers_config(dist.get_world_size())  # validated; no mesh, no collective
        for name, large in target.larges.items():
            check_context_parallel(large, target.smalls[name], target.family, f"pipe.{name}", planned)
            if context_parallel_plan(large) is None:
                raise ValueError(
                    f"{self.config.spec}: pipe.{name} ({type(large).__name__}) has no context-parallel plan."
                )
            if parallel_of(large) is not None and context_parallel_of(large) is None:
                raise ValueError(
                    f"{self.config.spec}: pipe.{name} already runs tensor parallel; diffusers takes one "
                    "parallel config per model: drop cp, or enable both in that config yourself."
                )

    def apply(self, target: RoutedModels) -> None:
        import torch
        import torch.distributed as dist

        from ..core.diffusers_internals import (
            context_parallel_of,
            disable_context_parallel,
            enable_context_parallel,
        )

        world = dist.get_world_size()
        if self.mesh is None:  # the accelerator's type, as diffusers picks it (weights may be offloaded)
            accelerator = torch.accelerator.current_accelerator()
            self.mesh = context_parallel_mesh(
                *self.config.degrees(world), getattr(accelerator, "type", "cpu")
            )
        try:
            for large in target.larges.values():
                if context_parallel_of(large) is None:  # a model the user split already stays as it is
                    enable_context_parallel(large, self.config.diffusers_config(world, self.mesh))
                    self._enabled.append(large)
        except BaseException:  # Wan 2.2: the second expert failed; the first is put back
            while self._enabled:
                disable_context_parallel(self._enabled.pop())
            raise

    def remove(self, target: RoutedModels) -> None:
        from ..core.diffusers_internals import disable_context_parallel

        while self._enabled:
            disable_context_parallel(self._enabled.pop())

    def counters(self) -> dict[str, Any]:
        import torch.distributed as dist

        ring, ulysses = self.config.degrees(dist.get_world_size() if dist.is_initialized() else 1)
        return {"ring_degree": ring, "ulysses_degree": ulysses}
