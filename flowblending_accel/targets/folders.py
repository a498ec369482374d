"""A target from diffusers folders: a pipeline folder (or hub id) and the folder of its small denoiser (a bare
model folder, or a pipeline folder holding it under the denoiser's name).

Everything that can be read from the folders is checked before any model is built: the pipeline folder has
a denoiser the families registry knows, the small folder holds a model, and their configs share what the
family says a small model must share (latent channels, patch size, text width). The family, the denoiser
attribute and the output field come from the registry, never from options.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.diffusers_versions import dtype_kwargs
from ..core.families import Family, family_for_class
from ..support.files import folder_defaults
from ..support.progress import quiet_library_bars
from .base import Target
from .prompts import Prompt

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class FolderPair:
    """What the folders say, read without building a model."""

    large: str
    small: str
    pipeline_class: type | None  # None for a hub id (read when it loads)
    family: Family | None
    denoiser: str | None  # the first routed denoiser (the small folder's layout follows it)
    denoisers: tuple[str, ...]  # every routed denoiser the folder holds
    small_subfolder: str | None  # None: a bare model folder
    defaults: dict[str, int] | None = None  # the folder's recorded size and steps (support.files)


def looks_local(path: str) -> bool:
    """A path the user meant as a folder here: it starts with ``.``, ``/`` or ``~``, or its first part is a
    folder that exists; anything else shaped ``owner/name`` may be a hub id."""
    first = Path(path).parts[0] if Path(path).parts else path
    return path.startswith((".", "/", "~")) or Path(first).is_dir() or not HUB_ID.match(path)


def check_local_or_cached(path: str, option: str) -> None:
    """A missing local folder is "no such folder"; a hub id must be in the local cache (nothing is
    downloaded, and the network is not tried)."""
    if Path(path).exists():
        return
    if looks_local(path):
        raise ValueError(f"{option} {path}: no such folder.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(path, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ValueError(
            f"{option} {path}: no such folder here, and not a hub model in the local cache; download it "
            f"first (huggingface-cli download {path}) or give a local folder."
        ) from None


def check_folders(large: str, small: str) -> FolderPair:
    """Read and check both folders (a hub id must be in the local cache: nothing is downloaded here)."""
    large_path = Path(large)
    check_local_or_cached(large, "--large")
    check_local_or_cached(small, "--small")
    if not large_path.exists():
        return FolderPair(large, small, None, None, None, (), "transformer")
    index = large_path / "model_index.json"
    if not index.is_file():
        raise ValueError(f"--large {large}: not a diffusers pipeline folder (no model_index.json).")
    components = json.loads(index.read_text())
    pipeline_class = _pipeline_class(components.get("_class_name"), large)
    present = {name for name, value in components.items() if isinstance(value, list) and value[0] is not None}
    try:
        family = family_for_class(pipeline_class, present)
    except ValueError as error:
        raise ValueError(
            f"--large {large}: {error} Point --large at a pipeline folder holding one."
        ) from None
    denoisers = [name for name in family.denoisers if name in present]
    denoiser = denoisers[0]
    small_config, subfolder = _small_config(small, denoiser)
    config_file = large_path / denoiser / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"--large {large}: model_index.json names a {denoiser} but {config_file} is missing."
        )
    large_config = json.loads(config_file.read_text())
    if small_config is not None:
        # Imported here: it imports diffusers' hooks, seconds a refusal before it need not wait for.
        from ..core.compat import check_configs

        check_configs(
            large_config, small_config, family, f"--large {large} {denoiser}", small_name=f"--small {small}"
        )
    return FolderPair(
        large, small, pipeline_class, family, denoiser, tuple(denoisers), subfolder, folder_defaults(large)
    )


def _pipeline_class(name: str | None, folder: str) -> type:
    import diffusers

    cls = getattr(diffusers, name or "", None)
    if cls is None:
        raise ValueError(f"--large {folder}: pipeline class {name!r} is not one diffusers knows.")
    return cls


def _small_config(small: str, denoiser: str) -> tuple[dict | None, str | None]:
    path = Path(small)
    if not path.exists():  # a cached hub id (check_local_or_cached): its config is read when it loads
        return None, denoiser
    if (path / denoiser / "config.json").is_file():
        return json.loads((path / denoiser / "config.json").read_text()), denoiser
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text()), None
    raise ValueError(f"--small {small}: holds no model (no config.json, nor a {denoiser}/ subfolder).")


def folder_target(
    pair: FolderPair,
    device: str,
    dtype: torch.dtype,
    base: dict[str, Any],
    prompts: list[Prompt],
    offload: str = "none",
) -> Target:
    """Load both models on the CPU, then put them on ``device`` in memory mode ``offload`` (the whole
    pipeline is never moved to the device in an offload mode; ``base``: the call arguments every call
    shares)."""
    from diffusers import DiffusionPipeline
    from diffusers.models import AutoModel

    from ..accelerators import as_configs, enable_offload

    try:
        with quiet_library_bars():
            pipe = DiffusionPipeline.from_pretrained(pair.large, **dtype_kwargs(dtype))
            denoiser = pair.denoiser or pipe_denoiser(pipe)
            kwargs = {"subfolder": pair.small_subfolder or denoiser} if pair.small_subfolder else {}
            small = AutoModel.from_pretrained(pair.small, **dtype_kwargs(dtype), **kwargs).eval()
    except OSError as error:
        raise ValueError(f"--large {pair.large} / --small {pair.small}: cannot load ({error}).") from None
    members = enable_offload(pipe, device, offload)
    if offload == "none":
        small.to(device)  # in an offload mode the small model follows the large one at the run start
    pipe.set_progress_bar_config(disable=True)
    return Target(
        f"{pair.large} + {pair.small}",
        pipe,
        small,
        device,
        f"{type(pipe).__name__} from {pair.large}, small from {pair.small}",
        base,
        prompts,
        stack_members=tuple(as_configs(members)),
    )


def pipe_denoiser(pipe: Any) -> str:
    from ..core.families import family_for

    return family_for(pipe).present_denoisers(pipe)[0]
