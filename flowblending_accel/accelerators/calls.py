"""Pipeline-call arguments a stack owns, such as the reduced step count of ``dpm++:10``.

A step reduction swaps the scheduler, but the pipeline still runs whatever ``num_inference_steps`` its
caller passes. So while a stack that owns call arguments is applied, the pipeline's call is rewritten to
put the owned values in (a class swap: :func:`~flowblending_accel.core.patches.own_pipeline_call`):
``pipe(prompt)`` and ``pipe(prompt, num_inference_steps=50)`` both run the stack's 10 steps (the second with a
:class:`StackOwnsArgumentWarning`, since the caller asked for something else). Arguments that contradict an
owned one (custom ``timesteps`` or ``sigmas`` beside a reduced step count) are refused before the call.
Removing the stack puts the original class back.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from ..core import patches

# An owned argument, and the call arguments that would contradict it.
CONTRADICTS = {"num_inference_steps": ("timesteps", "sigmas")}


class StackOwnsArgumentWarning(UserWarning):
    """The call passed an argument the applied stack owns; the stack's value is used."""


def own_call_arguments(pipe: Any, arguments: Callable[[], dict[str, Any]], owner: str) -> None:
    """From now on every ``pipe(...)`` call gets ``arguments()`` (named ``owner`` in messages)."""
    if patches.pipeline_call_owned(pipe):
        raise ValueError(f"{owner}: this pipeline's call arguments are already owned by another stack.")

    def rewrite(signature, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        return merge_owned(signature, args, kwargs, arguments(), owner)

    patches.own_pipeline_call(pipe, rewrite)


def release_call_arguments(pipe: Any) -> None:
    """Give ``pipe`` its own class back (a no-op when nothing owns its arguments)."""
    patches.release_pipeline_call(pipe)


def merge_owned(
    signature: Any, args: tuple, kwargs: dict[str, Any], owned: dict[str, Any], owner: str
) -> tuple[tuple, dict[str, Any]]:
    """The call's ``(args, kwargs)`` with the owned arguments in place (``args`` without ``self``)."""
    bound = signature.bind_partial(None, *args, **kwargs)
    for name, value in owned.items():
        for other in CONTRADICTS.get(name, ()):
            if bound.arguments.get(other) is not None:
                raise ValueError(
                    f"{owner} sets {name}={value}, but the call passes custom `{other}`: drop "
                    f"`{other}`, or drop {owner} from the stack."
                )
        given = bound.arguments.get(name)
        if given is not None and given != value:
            warnings.warn(
                f"{owner} runs {name}={value}; the call's {name}={given} is replaced (drop it from "
                "the call, or change the stack).",
                StackOwnsArgumentWarning,
                stacklevel=4,  # merge_owned < rewrite < the pipeline's rewritten __call__ < the caller
            )
        bound.arguments[name] = value
    args, kwargs = bound.args[1:], bound.kwargs
    for name, value in owned.items():  # a __call__(**kwargs) takes the owned arguments by keyword
        if name not in signature.parameters:
            kwargs[name] = value
    return args, kwargs
