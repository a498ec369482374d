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

from ..support.files import DEFAULTS_FILE, SIZE_ARGUMENTS

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


def pipeline_defaults(pipeline_class: type | None) -> dict[str, int]:
    """The size arguments the pipeline's call defaults to (those with a number, e.g. Wan's 480x832, 81
    frames; SD's height=None is derived from the model at run time and left out)."""
    import inspect

    if pipeline_class is None:
        return {}
    parameters = inspect.signature(pipeline_class.__call__).parameters
    return {  # the step count stays the tools' to choose
        name: parameters[name].default
        for name in ("height", "width", "num_frames")
        if name in parameters and isinstance(parameters[name].default, int)
    }


def chosen_call(
    given: dict[str, Any],
    recorded: dict[str, int] | None,
    pipeline_class: type | None = None,
    fallback: tuple[str, dict[str, int]] | None = None,
) -> tuple[dict[str, Any], str]:
    """The size arguments a folder target runs at, and where they came from: what was given, else what the
    folder records, else ``fallback`` (``(where, sizes)``: a recipe's checkpoint size), else the pipeline's
    own defaults."""
    layers = (
        ("your options", {name: value for name, value in given.items() if name in SIZE_ARGUMENTS}),
        (f"the folder's {DEFAULTS_FILE}", recorded or {}),
        fallback or ("", {}),
        ("the pipeline's own defaults", pipeline_defaults(pipeline_class)),
    )
    call: dict[str, Any] = {}
    sources = []
    for source, values in layers:
        new = {name: value for name, value in values.items() if name not in call}
        if new:
            sources.append(source)
            call.update(new)
    return call, " and ".join(sources) or "the pipeline's own defaults"


def folder_size(options: Any, pair: Any) -> tuple[dict[str, Any], str]:
    """The size arguments a folder pair (``FolderPair``) runs at under ``TargetOptions``, and where they came
    from: the one resolution every tool uses."""
    from .options import CALL_OPTIONS

    given = {CALL_OPTIONS[name]: value for name, value in options.given_call_options().items()}
    return chosen_call(given, pair.defaults, pair.pipeline_class)


def resolve_folder_size(
    large: str,
    small: str,
    given: dict[str, Any],
    dtype: str,
    prompt: str | None = None,
    fallback: tuple[str, dict[str, int]] | None = None,
) -> tuple[dict[str, Any], str]:
    """The size a pipeline folder (or hub id) ``large`` runs at with the denoiser in ``small``, as the tools
    resolve it (see :func:`chosen_call`), and where it came from; when both are local folders, checked on
    the meta device before any weight is read (a size the models cannot take is refused naming one that
    works). A hub id is not read here: it runs at the given size, else ``fallback``."""
    from .folders import check_folders

    if not (Path(large).is_dir() and Path(small).exists()):
        return chosen_call(given, None, None, fallback)
    pair = check_folders(large, small)
    call, source = chosen_call(given, pair.defaults, pair.pipeline_class, fallback)
    check_folder_size(pair, dtype, call, prompt, source)
    return call, source


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


def check_folder_size(
    pair: Any, dtype: str, call: dict[str, Any], prompt: str | None, source: str | None = None
) -> None:
    """Refuse, before any weight is read, a size the folders' models cannot take (``source``: where the
    size came from, named in the refusal)."""
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
        f"{describe(call)}{f' ({source})' if source else ''} ({error}); {advice}."
    )
