"""The size a target runs at, and a check, before any model runs, that its models can take it.

A folder runs at the size given on the command line, else the one its ``flowblending_defaults.json``
records (``tiny --save`` writes it), else its pipeline's own defaults; the tools print which. The check runs
the pipeline on the ``meta`` device up to its first denoiser call and both models through it (no weight,
no arithmetic): a size past a model's positional range, or one the pipeline or the VAE cannot divide, fails
there in a second, and is refused in one line naming a size that works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..support.files import SIZE_ARGUMENTS

HALVINGS = 6  # how many halvings of the size are tried to name one that works


def describe(call: dict[str, Any]) -> str:
    """``832x480, 81 frames, 50 steps`` for the size arguments present."""
    parts = []
    if "height" in call or "width" in call:
        parts.append(f"{call.get('width', '?')}x{call.get('height', '?')}")
    if "num_frames" in call:
        parts.append(f"{call['num_frames']} frames")
    if "num_inference_steps" in call:
        parts.append(f"{call['num_inference_steps']} steps")
    return ", ".join(parts) or "its own defaults"


def chosen_call(given: dict[str, Any], recorded: dict[str, int] | None) -> tuple[dict[str, Any], str]:
    """The size arguments a folder target runs at (given over recorded), and where they came from."""
    given = {name: value for name, value in given.items() if name in SIZE_ARGUMENTS}
    call = {**(recorded or {}), **given}
    if given and not set(recorded or {}) - set(given):
        return call, "your options"
    if recorded:
        return call, "the folder's flowblending_defaults.json" + (" and your options" if given else "")
    return call, "your options" if given else "the pipeline's own defaults"


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:200]}"


def _call_error(meta, call: dict[str, Any]) -> str | None:
    """Why the pair on the meta device cannot make its first denoiser call at ``call`` (None: it can)."""
    try:
        meta.activation_bytes({"num_inference_steps": 2, **call})
    except Exception as error:  # any failure at this size is the answer
        return _first_line(error)
    return None


def _halved(call: dict[str, Any], times: int) -> dict[str, Any]:
    smaller = dict(call)
    for name in ("height", "width"):
        if name in smaller:
            smaller[name] = max(16, (smaller[name] >> times) // 16 * 16)
    if "num_frames" in smaller:
        smaller["num_frames"] = max(1, ((smaller["num_frames"] - 1) >> times) // 4 * 4 + 1)
    return smaller


def check_folder_size(pair: Any, dtype: str, call: dict[str, Any], prompt: str | None) -> None:
    """Refuse, before any weight is read, a size the folders' models cannot take."""
    import torch

    from .memory import MetaPair

    small = Path(pair.small) / pair.small_subfolder if pair.small_subfolder else Path(pair.small)
    meta = MetaPair(pair.large, small, getattr(torch, dtype))
    prompt = prompt or "a prompt"
    error = _call_error(meta, {**call, "prompt": prompt})
    if error is None:
        return
    if pair.defaults and pair.defaults != call:  # the size the folder records it runs at
        works = dict(pair.defaults)
    else:
        halved = (_halved(call, times) for times in range(1, HALVINGS + 1))
        works = next((c for c in halved if _call_error(meta, {**c, "prompt": prompt}) is None), None)
    advice = f"{describe(works)} works" if works else "no smaller size worked either: check the folders"
    raise ValueError(
        f"--height/--width/--frames: {pair.pipeline_class.__name__} from {pair.large} cannot run at "
        f"{describe(call)} ({error}); {advice}."
    )
