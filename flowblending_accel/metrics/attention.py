"""Cache-hit accounting that works for every cache: count the attention blocks that actually ran."""

from __future__ import annotations

import torch

from ..core.listeners import CallEvent, RouterListener, SegmentStart


class AttentionMeter(RouterListener):
    """Router listener counting attention computes per call: a ``to_q`` projection runs only when attention
    really computes, so a feature cache's skips show up whatever cache it is (diffusers hooks, cache-dit,
    DeepCache). Reports the share of attention skipped per model and whether every segment start (the first
    call after a switch) computed in full. Eager models only: hooks on compiled regions would break graphs.

    ``models`` maps a label to each module (e.g. ``RoutedModels.models()``); calls are told apart by which
    module the router ran, so one meter serves every router of a pipeline (Wan 2.2's two experts)."""

    def __init__(self, models: dict[str, torch.nn.Module]) -> None:
        self.handles, self.projections = [], {}
        self.labels = {id(model): label for label, model in models.items()}
        self.calls: list[tuple[str, int, int, bool]] = []  # (model, step, attention computes, segment start?)
        self._pending, self._segment_start = 0, False
        for name, model in models.items():
            found = [module for path, module in model.named_modules() if path.endswith("to_q")]
            self.projections[name] = len(found)
            self.handles += [module.register_forward_pre_hook(self._computed) for module in found]

    def _computed(self, *_) -> None:
        self._pending += 1

    def on_segment_start(self, router, segment: SegmentStart) -> None:
        self._segment_start = True

    def on_call(self, router, call: CallEvent) -> None:
        label = self.labels.get(id(router.model(call.record.model)), call.record.model)
        self.calls.append((label, call.record.step, self._pending, self._segment_start))
        self._pending, self._segment_start = 0, False

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def summary(self) -> dict[str, float]:
        result = {}
        for name, count in self.projections.items():
            mine = [c for c in self.calls if c[0] == name]
            if mine and count:
                result[f"attention_skipped.{name}"] = 1 - sum(c[2] for c in mine) / (len(mine) * count)
        starts = [c for c in self.calls if c[3]]
        full = [c for c in starts if c[2] == self.projections[c[0]]]
        result["segment_starts_full_compute"] = len(full) / len(starts) if starts else 1.0
        return result
