"""Regional ``torch.compile`` of both models (diffusers' ``compile_repeated_blocks``), with recompile counts.

The router stays eager, outside every compiled region, so routing never guards or recompiles. Two widths
sharing one block class compile one graph each (one recompile on the first switch, none after). Caches that
decide in ``torch.compiler.disable``d Python cannot sit inside a ``fullgraph`` region, so ``fullgraph`` is
turned off when the stack has a cache.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Accelerator, Pair


def dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


class RegionalCompile(Accelerator):
    kind = "compile"
    stage = "compile"
    exclusive_with = ("tensorrt",)

    def __init__(self, fullgraph: bool | None = None, mode: str | None = None) -> None:
        self.fullgraph, self.mode = fullgraph, mode
        self._compiled: list[torch.nn.Module] = []
        self._baseline = dynamo_counts()
        self._after_warmup: dict[str, int] | None = None

    def check(self, pair: Pair, others: list[Accelerator]) -> None:
        for name, model in pair.models().items():
            if not getattr(model, "_repeated_blocks", None):
                raise ValueError(f"compile: the {name} model ({type(model).__name__}) declares no repeated blocks.")
        if self.fullgraph and any(a.stage == "cache" for a in others):
            raise ValueError("compile: fullgraph=True cannot include cache hooks (they run torch.compiler.disable'd "
                             "Python); leave fullgraph unset.")
        self._cached = any(a.stage == "cache" for a in others)

    def apply(self, pair: Pair) -> None:
        fullgraph = self.fullgraph if self.fullgraph is not None else not getattr(self, "_cached", False)
        for model in pair.models().values():
            model.compile_repeated_blocks(fullgraph=fullgraph, dynamic=False, mode=self.mode)
            self._compiled.append(model)
        self._fullgraph = fullgraph
        self._baseline = dynamo_counts()

    def remove(self, pair: Pair) -> None:
        for model in self._compiled:
            for block in model.modules():
                if getattr(block, "_compiled_call_impl", None) is not None:
                    block._compiled_call_impl = None  # back to eager
        self._compiled.clear()

    def mark_warm(self) -> None:
        """Call after the warm-up: later graphs are recompiles."""
        self._after_warmup = dynamo_counts()

    def counters(self) -> dict[str, Any]:
        now = dynamo_counts()
        result = {"graphs_compiled": now["graphs"] - self._baseline["graphs"],
                  "graph_breaks": now["graph_breaks"] - self._baseline["graph_breaks"]}
        if self._after_warmup is not None:
            result["recompiles_after_warmup"] = now["graphs"] - self._after_warmup["graphs"]
        return result

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "fullgraph": getattr(self, "_fullgraph", self.fullgraph), "mode": self.mode}
