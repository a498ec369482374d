"""Per-model attention backends (native, flash, sage, xformers ...) through diffusers' AttentionMixin."""

from __future__ import annotations

from .runtime import Accelerator, StackTarget


class AttentionBackendAccelerator(Accelerator):
    def check(self, target: StackTarget, others: list[Accelerator]) -> None:
        for label, model in target.models().items():
            if not hasattr(model, "set_attention_backend"):
                raise ValueError(
                    f"attn: the {label} model ({type(model).__name__}) has no set_attention_backend "
                    "(not a diffusers AttentionMixin)."
                )

    def apply(self, target: StackTarget) -> None:
        backends = self.config.backends()
        for role in ("large", "small"):
            for model in target.models(role).values():
                model.set_attention_backend(backends[role])

    def remove(self, target: StackTarget) -> None:
        for model in target.models().values():
            model.reset_attention_backend()
