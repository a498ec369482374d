"""Pipeline-call arguments a stack owns, such as the reduced step count of ``dpm++:10``.

A step reduction swaps the scheduler, but the pipeline still runs whatever ``num_inference_steps`` its
caller passes. So while a stack that owns call arguments is applied, the pipeline's class is swapped for a
subclass of the same name whose ``__call__`` puts the owned values in: ``pipe(prompt)`` and
``pipe(prompt, num_inference_steps=50)`` both run the stack's 10 steps (the second with a
:class:`StackOwnsArgumentWarning`, since the caller asked for something else). Arguments that contradict an
owned one (custom ``timesteps`` or ``sigmas`` beside a reduced step count) are refused before the call.
Removing the stack puts the original class back.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

_OWNER = "_flowblending_call_arguments"
_BASE = "_flowblending_base_class"
# An owned argument, and the call arguments that would contradict it.
CONTRADICTS = {"num_inference_steps": ("timesteps", "sigmas")}
_SUBCLASSES: dict[type, type] = {}


class StackOwnsArgumentWarning(UserWarning):
    """The call passed an argument the applied stack owns; the stack's value is used."""


def own_call_arguments(pipe: Any, arguments: Callable[[], dict[str, Any]], owner: str) -> None:
    """From now on every ``pipe(...)`` call gets ``arguments()`` (named ``owner`` in messages)."""
    base = type(pipe)
    if getattr(base, _BASE, None) is not None:
        raise ValueError(f"{owner}: this pipeline's call arguments are already owned by another stack.")
    setattr(pipe, _OWNER, (arguments, owner))
    pipe.__class__ = _subclass_of(base)


def release_call_arguments(pipe: Any) -> None:
    """Give ``pipe`` its own class back (a no-op when nothing owns its arguments)."""
    base = getattr(type(pipe), _BASE, None)
    if base is not None:
        pipe.__class__ = base
    if _OWNER in vars(pipe):
        delattr(pipe, _OWNER)


def merge_owned(
    signature: inspect.Signature, args: tuple, kwargs: dict[str, Any], owned: dict[str, Any], owner: str
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
                stacklevel=3,
            )
        bound.arguments[name] = value
    args, kwargs = bound.args[1:], bound.kwargs
    for name, value in owned.items():  # a __call__(**kwargs) takes the owned arguments by keyword
        if name not in signature.parameters:
            kwargs[name] = value
    return args, kwargs


def _subclass_of(base: type) -> type:
    if base not in _SUBCLASSES:

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            arguments, owner = getattr(self, _OWNER)
            args, kwargs = merge_owned(inspect.signature(base.__call__), args, kwargs, arguments(), owner)
            return base.__call__(self, *args, **kwargs)

        __call__.__doc__ = base.__call__.__doc__
        namespace = {
            "__call__": __call__,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
            _BASE: base,
        }
        _SUBCLASSES[base] = type(base.__name__, (base,), namespace)
    return _SUBCLASSES[base]
