"""Cache-hit accounting that works for every cache: count the attention blocks that actually ran."""

from __future__ import annotations

import torch


class AttentionMeter:
    """Router listener counting attention computes per call: a ``to_q`` projection runs only when attention
    really computes, so a feature cache's skips show up whatever cache it is (diffusers hooks, cache-dit,
    DeepCache). Reports the share of attention skipped per model and whether every segment start (the first
    call after a switch) computed in full. Eager models only: hooks on compiled regions would break graphs."""

    def __init__(self, router, models: dict[str, torch.nn.Module]) -> None:
        self.router, self.handles, self.modules = router, [], {}
        self.calls: list[list] = []  # [model, step, attention computes, segment start?]
        for name, model in models.items():
            projections = [m for n, m in model.named_modules() if n.endswith("to_q")]
            self.modules[name] = len(projections)
            for module in projections:
                self.handles.append(module.register_forward_pre_hook(self._computed))

    def on_segment_start(self, router, model, step, after_switch) -> None:
        self._segment_start = True

    def on_call(self, router, record, args, kwargs, output) -> None:
        pending = self._pending or 0
        self.calls.append([record.model, record.step, pending, getattr(self, "_segment_start", False)])
        self._segment_start, self._pending = False, 0

    _pending = 0

    def _computed(self, *_):
        self._pending = (self._pending or 0) + 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def summary(self) -> dict[str, float]:
        result = {}
        for name, count in self.modules.items():
            mine = [c for c in self.calls if c[0] == name]
            if mine and count:
                result[f"attention_skipped.{name}"] = 1 - sum(c[2] for c in mine) / (len(mine) * count)
        starts = [c for c in self.calls if c[3]]
        full = [c for c in starts if c[2] == self.modules[c[0]]]
        result["segment_starts_full_compute"] = len(full) / len(starts) if starts else 1.0
        return result
