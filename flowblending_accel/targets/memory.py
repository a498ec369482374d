"""A memory plan before any weight is read: what each offload mode would hold on the GPU at its peak.

Weights come from the safetensors headers of each component (dtype and shape of every tensor; the data is
never read), at the dtype they will be loaded in (modules the class keeps in float32 stay so). Activations
come from the pipeline built on the ``meta`` device from the folders' configs: its first denoiser call is
captured and counted once per model (the largest layer output, times three: a layer's input, its widest
output and the next). The VAE's decoding is not in the estimate.

Per mode, the peak over the pipeline's phases (text encoding, denoising, decoding):

* ``none``: every component resident, plus the activations;
* ``model``: one component at a time (both experts' largest), the small model beside the denoiser;
* ``group``: per component its layers outside the repeated blocks plus two blocks (the one computing and
  the one prefetched); the small model whole while it is prefetched beside the large one;
* ``sequential``: the largest single layer (the small model whole: it is offloaded as one model).
"""

from __future__ import annotations

import functools
import json
import re
import struct
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from ..accelerators import OFFLOAD_MODES

FIT_SHARE = 0.9  # a plan fits when its peak is at most this share of the GPU (CUDA context, fragmentation)
_ELEMENT = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4}
_ELEMENT.update({"I16": 2, "I8": 1, "U8": 1, "BOOL": 1})
_FLOATING = ("F64", "F32", "F16", "BF16")
_INDEXES = ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json")
_SINGLES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
_BLOCK = re.compile(r"^(.*?\.\d+)(\.|$)")  # a name's prefix up to its first numbered module


@dataclass(frozen=True)
class Weights:
    """One model's weights as it will be loaded: in all, outside its numbered blocks, its largest block,
    its largest layer."""

    total: int
    resident: int
    largest_block: int
    largest_leaf: int


def _header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        header = json.loads(stream.read(length))
    header.pop("__metadata__", None)
    return header


def _weight_files(folder: Path) -> list[Path]:
    for name in _INDEXES:
        if (folder / name).is_file():
            shards = set(json.loads((folder / name).read_text())["weight_map"].values())
            return [folder / shard for shard in sorted(shards)]
    return [folder / name for name in _SINGLES if (folder / name).is_file()]


def _kept_in_float32(folder: Path, dtype: str | None) -> tuple[str, ...]:
    """The module names the model's class keeps in float32 when loaded in ``dtype``: diffusers keeps its
    ``_keep_in_fp32_modules`` for any half precision; transformers only for float16, and its
    ``_keep_in_fp32_modules_strict`` for both."""
    if dtype in (None, "float32"):
        return ()
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return ()
    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    diffusers_class = getattr(import_module("diffusers"), name or "", None)
    if diffusers_class is not None:
        return tuple(getattr(diffusers_class, "_keep_in_fp32_modules", None) or ())
    transformers_class = getattr(import_module("transformers"), name or "", None)
    if transformers_class is None:
        return ()
    kept = set(getattr(transformers_class, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == "float16":
        kept |= set(getattr(transformers_class, "_keep_in_fp32_modules", None) or ())
    return tuple(kept)


def read_weights(folder: str | Path, dtype: str | None = None) -> Weights | None:
    """``folder``'s weights from its safetensors headers, at ``dtype`` (None: as stored); None when the
    folder holds no safetensors."""
    folder = Path(folder)
    files = _weight_files(folder)
    if not files:
        return None
    kept = _kept_in_float32(folder, dtype)
    size = {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype or "")
    blocks: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = resident = 0
    for path in files:
        for name, entry in _header(path).items():
            count = 1
            for dimension in entry["shape"]:
                count *= dimension
            element = _ELEMENT.get(entry["dtype"], 4)
            if size is not None and entry["dtype"] in _FLOATING:
                element = 4 if any(part in kept for part in name.split(".")) else size
            nbytes = count * element
            total += nbytes
            leaves[name.rsplit(".", 1)[0]] = leaves.get(name.rsplit(".", 1)[0], 0) + nbytes
            block = _BLOCK.match(name)
            if block:
                blocks[block.group(1)] = blocks.get(block.group(1), 0) + nbytes
            else:
                resident += nbytes
    return Weights(total, resident, max(blocks.values(), default=0), max(leaves.values(), default=0))


def pipeline_weights(large: str, small: str, small_subfolder: str | None, dtype: str | None) -> dict:
    """Every component of the pipeline folder ``large`` (by its name in model_index.json) and ``small``."""
    root = Path(large)
    index = json.loads((root / "model_index.json").read_text())
    found: dict[str, Weights] = {}
    for name, value in index.items():
        if isinstance(value, list) and value[0] is not None and (root / name).is_dir():
            weights = read_weights(root / name, dtype)
            if weights is not None:
                found[name] = weights
    small_folder = Path(small) / small_subfolder if small_subfolder else Path(small)
    found["small"] = read_weights(small_folder, dtype) or Weights(0, 0, 0, 0)
    return found


def _stand_in(encoder) -> None:
    """A text encoder on the ``meta`` device cannot run (its masks read values): it answers with outputs of
    the shapes its config gives instead (last hidden state, pooled output, every layer's states)."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    config = getattr(encoder.config, "text_config", encoder.config)
    width = getattr(config, "d_model", None) or config.hidden_size
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", 1)
    projection = getattr(encoder.config, "projection_dim", None)
    dtype = next(encoder.parameters()).dtype

    def forward(input_ids=None, *args, **kwargs):
        batch, length = input_ids.shape

        def empty(*shape):
            return torch.empty(*shape, device="meta", dtype=dtype)

        hidden = empty(batch, length, width)
        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=empty(batch, width),
            hidden_states=(hidden,) * (layers + 1),
        )
        if projection:
            output["text_embeds"] = empty(batch, projection)
        return output

    from ..core import patches

    patches.shim_forward(encoder, lambda _own: forward)  # a throwaway meta copy: never unshimmed


def _meta_model(library: str, cls: type, path: Path, dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            if library == "diffusers":
                return cls.from_config(cls.load_config(path)).eval()
            from transformers import AutoConfig

            encoder = cls._from_config(AutoConfig.from_pretrained(path), dtype=dtype).eval()
            _stand_in(encoder)
            return encoder
    finally:
        torch.set_default_dtype(previous)


def meta_pipeline(folder: str | Path, dtype) -> Any:
    """The pipeline folder's pipeline with every model on the ``meta`` device, from the configs alone
    (tokenizers and schedulers are read: a few small files). Its scheduler keeps its grid on the host, so
    the pipeline runs up to its first denoiser call."""
    import diffusers
    import torch

    root = Path(folder)
    index = json.loads((root / "model_index.json").read_text())
    components: dict[str, Any] = {}
    for name, value in index.items():
        if not isinstance(value, list):
            continue
        library, class_name = value
        if class_name is None:
            components[name] = None
            continue
        cls = getattr(import_module(library), class_name)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            components[name] = _meta_model(library, cls, root / name, dtype)
        else:
            components[name] = cls.from_pretrained(root / name)
    pipe = getattr(diffusers, index["_class_name"])(**components)
    set_timesteps = pipe.scheduler.set_timesteps

    @functools.wraps(set_timesteps)
    def on_host(*args, **kwargs):  # float(sigmas[i]) and Wan 2.2's boundary need values
        return set_timesteps(*args, **{**kwargs, "device": "cpu"})

    pipe.scheduler.set_timesteps = on_host
    pipe.set_progress_bar_config(disable=True)
    return pipe


class MetaPair:
    """The folders' pipeline and small model on the ``meta`` device, built once; each call runs the pipeline
    up to its first denoiser call and counts both models through it."""

    def __init__(self, large: str, small_model_folder: str | Path, dtype) -> None:
        import diffusers

        from ..core.families import family_for

        with _quiet_diffusers():
            self.pipe = meta_pipeline(large, dtype)
        self.denoiser = getattr(self.pipe, family_for(self.pipe).present_denoisers(self.pipe)[0])
        small_config = json.loads((Path(small_model_folder) / "config.json").read_text())
        small_class = getattr(diffusers, small_config["_class_name"])
        self.small = _meta_model("diffusers", small_class, Path(small_model_folder), dtype)

    def activation_bytes(self, call_kwargs: dict) -> int:
        """3 x the largest layer output of one denoiser call, large or small, at the call ``call_kwargs``."""
        import torch
        from torch.utils._pytree import tree_map

        from ..metrics.flops import count_call, first_call_arguments

        with _quiet_diffusers():
            args, kwargs = first_call_arguments(
                self.pipe, self.denoiser, {**call_kwargs, "output_type": "latent"}
            )
        args, kwargs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, (args, kwargs))
        largest = max(
            count_call(model, args, kwargs).largest_tensor_bytes for model in (self.denoiser, self.small)
        )
        return 3 * largest


def _quiet_diffusers():
    """diffusers' warnings (below ERROR) while a folder's pipeline is built and run on the meta device: notes
    about weights it does not load there say nothing about the memory plan."""
    import diffusers  # noqa: F401  (configures its loggers on import: before their level is raised)

    from ..core import patches

    return patches.silenced({"diffusers": ()})


def activation_bytes(large: str, small_model_folder: str | Path, dtype, call_kwargs: dict) -> int:
    """3 x the largest layer output of one denoiser call, large or small, at the call ``call_kwargs``."""
    return MetaPair(large, small_model_folder, dtype).activation_bytes(call_kwargs)


def mode_peaks(
    weights: dict[str, Weights], denoisers: tuple[str, ...], activations: int
) -> dict[str, dict[str, int]]:
    """Per mode: the peak GPU bytes of weights and of activations, and their sum."""
    small = weights.get("small", Weights(0, 0, 0, 0))
    large = [weights[name] for name in denoisers if name in weights]
    others = [w for name, w in weights.items() if name not in (*denoisers, "small")]
    peaks = {
        "none": sum(w.total for w in weights.values()),
        "model": max([max(w.total for w in large) + small.total, *(w.total for w in others)]),
        "group": max(
            [
                max(w.resident + 2 * w.largest_block for w in large) + small.total,
                *(w.resident + 2 * w.largest_block for w in others),
            ]
        ),
        "sequential": max([small.total, *(w.largest_leaf for w in weights.values())]),
    }
    return {
        mode: {"weights": peak, "activations": activations, "total": peak + activations}
        for mode, peak in peaks.items()
    }


def fits(peak: int, memory: int) -> bool:
    return peak <= FIT_SHARE * memory


def assert_fits(peaks: dict[str, dict[str, int]], mode: str, memory: int, what: str) -> None:
    """Refuse ``mode`` when its estimated peak does not fit ``memory``, naming the modes that would."""
    from ..support.memory import gib

    if fits(peaks[mode]["total"], memory):
        return
    fitting = [m for m in OFFLOAD_MODES if fits(peaks[m]["total"], memory)]
    advice = (
        f"--offload {' or '.join(fitting)} would fit"
        if fitting
        else "no offload mode fits: use a smaller --dtype, fewer frames or a smaller size, or a larger GPU"
    )
    raise ValueError(
        f"{what}: --offload {mode} needs an estimated {gib(peaks[mode]['total'])} of GPU memory "
        f"({gib(peaks[mode]['weights'])} weights + {gib(peaks[mode]['activations'])} activations), above "
        f"{FIT_SHARE:.0%} of {gib(memory)}; {advice} (`flowblending-accel plan --memory` prints every mode)."
    )


def table(peaks: dict[str, dict[str, int]], memory: int | None) -> list[str]:
    from ..support.memory import gib

    lines = [
        "| --offload | weights on the GPU at the peak | activations | estimated peak | fits |",
        "|---|---|---|---|---|",
    ]
    for mode in OFFLOAD_MODES:
        peak = peaks[mode]
        verdict = "—" if memory is None else ("yes" if fits(peak["total"], memory) else "no")
        lines.append(
            f"| {mode} | {gib(peak['weights'])} | {gib(peak['activations'])} | {gib(peak['total'])} | "
            f"{verdict} |"
        )
    return lines


def plan_for_folders(pair: Any, options: Any, prompt: str | None) -> dict[str, dict[str, int]]:
    """Every mode's estimated peak for a checked folder pair (``FolderPair``) at the options' dtype and
    the size the tools resolve (:func:`.sizes.folder_size`), from headers and configs only."""
    import torch

    from .sizes import folder_size

    dtype = options.torch_dtype_name
    weights = pipeline_weights(pair.large, pair.small, pair.small_subfolder, dtype)
    call, _ = folder_size(options, pair)
    call.update(prompt=prompt or "a prompt", num_inference_steps=2)
    small_folder = Path(pair.small) / pair.small_subfolder if pair.small_subfolder else Path(pair.small)
    activations = activation_bytes(pair.large, small_folder, getattr(torch, dtype), call)
    return mode_peaks(weights, pair.denoisers, activations)
