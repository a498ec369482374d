"""Regional ``torch.compile`` of both models (diffusers' ``compile_repeated_blocks``), with graph counts.

The router stays eager, outside every compiled region, so routing never guards or recompiles. Two widths
sharing one block class compile one graph each (a second graph on the first switch, none after). Caches
that decide in ``torch.compiler.disable``d Python cannot sit inside a ``fullgraph`` region, so ``fullgraph``
is turned off when the stack has a cache.

Counting: dynamo's graph counter is process-wide, so the accelerator adds up the graphs compiled *during
the runs it is applied to* (a router listener) and splits them at :meth:`mark_warm`: graphs before it are
the warm-up's compiles, graphs after it are recompiles. Dynamo's cache survives a remove and re-apply of
the same blocks, so only the first application in a process compiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import AcceleratorConfig, register_accelerator
from .runtime import Accelerator, RoutedModels

if TYPE_CHECKING:
    import torch


@register_accelerator
@dataclass(frozen=True)
class RegionalCompile(AcceleratorConfig):
    """``torch.compile`` of both models' repeated blocks (the router stays eager)."""

    fullgraph: bool | None = None
    mode: str | None = None

    names = ("compile",)
    kind = "compile"
    spec_help = "compile"
    exclusive_with = ("tensorrt",)

    def create(self) -> RegionalCompileAccelerator:
        return RegionalCompileAccelerator(self)


# A cache's hooks inside the compiled blocks make dynamo compile a variant per (context name, head or tail
# block, cache state length ...): two models and two CFG branches pass dynamo's default limit of 8, and the
# blocks past it run eagerly, unnoticed. With a cache in the stack the limit is raised while applied
# (a process-wide patch: flowblending_accel.core.patches.raise_recompile_limit).
CACHED_RECOMPILE_LIMIT = 64


def dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def uncompile(model: torch.nn.Module) -> None:
    """Put every block ``nn.Module.compile`` wrapped back to eager."""
    for block in model.modules():
        if getattr(block, "_compiled_call_impl", None) is not None:
            block._compiled_call_impl = None


class RegionalCompileAccelerator(Accelerator):
    def __init__(self, config) -> None:
        super().__init__(config)
        self._compiled: list[torch.nn.Module] = []
        self._counts = {"warmup": {"graphs": 0, "graph_breaks": 0}, "after": {"graphs": 0, "graph_breaks": 0}}
        self._warm = False
        self._run_start: dict[str, int] | None = None
        self._open_runs = 0  # Wan 2.2: one router per expert, their runs overlap
        self._fullgraph: bool | None = config.fullgraph
        self._cached = False

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        for label, model in target.models().items():
            if not getattr(model, "_repeated_blocks", None):
                raise ValueError(
                    f"compile: the {label} model ({type(model).__name__}) declares no repeated blocks."
                )
        cached = any(a.kind == "cache" for a in others)
        if self.config.fullgraph and cached:
            raise ValueError(
                "compile: fullgraph=True cannot include cache hooks (they run torch.compiler.disable'd "
                "Python); leave fullgraph unset."
            )
        self._fullgraph = self.config.fullgraph if self.config.fullgraph is not None else not cached
        self._cached = cached

    def apply(self, target: RoutedModels) -> None:
        from ..core import patches

        if self._cached:
            patches.raise_recompile_limit(self, CACHED_RECOMPILE_LIMIT)
        for model in target.models().values():
            model.compile_repeated_blocks(fullgraph=self._fullgraph, dynamic=False, mode=self.config.mode)
            self._compiled.append(model)

    def remove(self, target: RoutedModels) -> None:
        from ..core import patches

        while self._compiled:
            uncompile(self._compiled.pop())
        patches.restore_recompile_limit(self)

    def mark_warm(self) -> None:
        self._warm = True

    # Graphs are compiled inside pipeline calls: count them run by run.
    def on_run_start(self, router, session) -> None:
        if self._open_runs == 0:
            self._run_start = dynamo_counts()
        self._open_runs += 1

    def on_run_end(self, router, stats) -> None:
        self._open_runs = max(0, self._open_runs - 1)
        if self._open_runs or self._run_start is None:
            return
        now, phase = dynamo_counts(), self._counts["after" if self._warm else "warmup"]
        for key in phase:
            phase[key] += now[key] - self._run_start[key]
        self._run_start = None

    def counters(self) -> dict[str, Any]:
        warmup, after = self._counts["warmup"], self._counts["after"]
        result = {
            "graphs_compiled": warmup["graphs"] + after["graphs"],
            "graph_breaks": warmup["graph_breaks"] + after["graph_breaks"],
        }
        if self._warm:
            result["recompiles_after_warmup"] = after["graphs"]
            result["graph_breaks_after_warmup"] = after["graph_breaks"]
        return result

    def describe(self) -> dict[str, Any]:
        return {**self.config.describe(), "fullgraph": self._fullgraph}
