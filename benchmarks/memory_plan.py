"""The memory plan of the real pairs, estimated from their public configs (no checkpoint is downloaded):
every offload mode's peak GPU memory, what crosses PCIe per denoiser call, and the time that costs.

    python benchmarks/memory_plan.py        # writes benchmarks/results/memory-plan/memory-plan.md and .json

For each pair it writes a header-only pipeline folder (each component's config, and safetensors headers
listing every tensor's dtype and shape; no data) in a temporary folder, and runs the same memory plan
``flowblending-accel plan --memory`` runs on a user's folders. The text encoders are umT5-XXL (Wan) and
T5-v1.1-XXL (LTX), their public configs; the tokenizer files are the tests' tiny ones (the text encoder is
never run: its outputs are shaped from its config). Every number is an estimate.

Time per mode (estimates): the bytes each denoiser call moves host -> GPU at a stated 25 GB/s (pinned
memory, PCIe Gen5 x16 in practice), against a call's FLOPs at a stated 400 TFLOP/s. Group offloading copies
the next block on a stream while the current one computes, so it costs what the copies exceed compute by;
sequential offloading copies each layer before it runs (not hidden); model offloading moves each component
once per pipeline call.
"""

from __future__ import annotations

import argparse
import json
import struct
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "benchmarks" / "results" / "memory-plan"
BANDWIDTH = 25e9  # bytes/s host -> GPU, stated
THROUGHPUT = 400e12  # FLOP/s bf16, stated (as the GPU suite's cost model)
GPUS = {"24 GiB": 24 * 2**30, "48 GiB": 48 * 2**30, "80 GiB": 80 * 2**30}
PAIRS = {
    "Wan 2.1 14B + 1.3B": dict(preset="wan2.1-14b+1.3b", size=(480, 832, 81), text="umt5"),
    "LTX-Video 13B + 2B": dict(preset="ltx-13b+2b", size=(480, 704, 121), text="t5"),
}
TEXT_ENCODERS = {  # public configs of the encoders the pipelines ship
    "umt5": ("UMT5EncoderModel", "UMT5Config", 256384),
    "t5": ("T5EncoderModel", "T5Config", 32128),
}
_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}


def _header_only(folder: Path, name: str, state: dict[str, torch.Tensor]) -> None:
    header, offset = {}, 0
    for key, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        header[key] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    data = json.dumps(header).encode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(struct.pack("<Q", len(data)) + data)


def _text_encoder(kind: str):
    import transformers

    cls_name, config_name, vocab = TEXT_ENCODERS[kind]
    config = getattr(transformers, config_name)(
        vocab_size=vocab,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
    )
    with torch.device("meta"):
        return getattr(transformers, cls_name)._from_config(config, dtype=torch.bfloat16)


def write_pair(root: Path, preset: str, text: str) -> tuple[Path, Path]:
    """A header-only pipeline folder and small-model folder for ``preset`` with its real text encoder."""
    from flowblending_accel.targets.presets import preset_target
    from flowblending_accel.tiny_models.text import tiny_tokenizer

    target = preset_target(preset, "meta", torch.bfloat16)
    pipe, small = target.pipe, target.small
    encoder = _text_encoder(text)
    index = {"_class_name": type(pipe).__name__, "_diffusers_version": "0.42.1"}
    for name, component in {**pipe.components, "text_encoder": encoder}.items():
        if component is None:
            index[name] = [None, None]
            continue
        library = "transformers" if name == "text_encoder" else "diffusers"
        index[name] = [library, type(component).__name__]
        folder = root / "pipeline" / name
        if isinstance(component, torch.nn.Module):
            weights = (
                "model.safetensors" if library == "transformers" else "diffusion_pytorch_model.safetensors"
            )
            _header_only(folder, weights, component.state_dict())
            if library == "transformers":
                component.config.to_json_file(folder / "config.json")
            else:
                component.save_config(folder)
        else:
            component.save_pretrained(folder)
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    tiny_tokenizer(512).save_pretrained(root / "pipeline" / "tokenizer")
    (root / "pipeline" / "model_index.json").write_text(json.dumps(index, indent=2))
    _header_only(root / "small" / "transformer", "diffusion_pytorch_model.safetensors", small.state_dict())
    small.save_config(root / "small" / "transformer")
    return root / "pipeline", root / "small"


def plan_pair(label: str, preset: str, size: tuple[int, int, int], text: str) -> dict:
    from flowblending_accel.metrics.flops import count_call, first_call_arguments
    from flowblending_accel.targets.folders import check_folders
    from flowblending_accel.targets.memory import meta_pipeline, pipeline_weights, plan_for_folders
    from flowblending_accel.targets.options import TargetOptions

    with tempfile.TemporaryDirectory() as temporary:
        large, small = write_pair(Path(temporary), preset, text)
        pair = check_folders(str(large), str(small))
        height, width, frames = size
        options = TargetOptions(
            large=str(large), small=str(small), dtype="bfloat16", height=height, width=width, frames=frames
        )
        peaks = plan_for_folders(pair, options, "a cat on the moon")
        weights = pipeline_weights(str(large), str(small), "transformer", "bfloat16")
        pipe = meta_pipeline(large, torch.bfloat16)
        call = {
            "prompt": "a cat",
            "height": height,
            "width": width,
            "num_frames": frames,
            "num_inference_steps": 2,
        }
        args, kwargs = first_call_arguments(pipe, pipe.transformer, call)
        from torch.utils._pytree import tree_map

        args, kwargs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, (args, kwargs))
        flops = count_call(pipe.transformer, args, kwargs).flops
    compute = flops / THROUGHPUT
    transformer = weights["transformer"]
    per_call = {
        "none": 0.0,
        "model": 0.0,  # each component moves once per pipeline call, not per denoiser call
        "group": max(0.0, transformer.total / BANDWIDTH - compute),  # copies hidden behind compute
        "sequential": transformer.total / BANDWIDTH,  # each layer copied before it runs
    }
    per_pipeline_call = sum(w.total for name, w in weights.items() if name != "small") / BANDWIDTH
    return {
        "pair": label,
        "size": {"height": height, "width": width, "frames": frames},
        "peaks": peaks,
        "weights": {name: w.__dict__ for name, w in weights.items()},
        "large_call_flops": flops,
        "large_call_seconds_at_throughput": compute,
        "exposed_copy_seconds_per_large_call": per_call,
        "model_offload_copy_seconds_per_pipeline_call": per_pipeline_call,
    }


def markdown(results: list[dict]) -> str:
    from flowblending_accel.support.memory import gib
    from flowblending_accel.targets.memory import FIT_SHARE

    lines = [
        "# Memory plan of the real pairs (estimated)",
        "",
        "**Every number here is an estimate**, from the public configs (no checkpoint was read) by "
        "`python benchmarks/memory_plan.py`, which runs the memory plan of "
        "`flowblending-accel plan --memory` on header-only folders. bf16; a mode fits a GPU at most "
        f"{FIT_SHARE:.0%} of its memory; the VAE's decoding is not included. Copy times at a stated "
        f"{BANDWIDTH / 1e9:.0f} GB/s host -> GPU, compute at a stated {THROUGHPUT / 1e12:.0f} TFLOP/s.",
        "",
    ]
    for result in results:
        size = result["size"]
        lines += [
            f"## {result['pair']} at {size['width']}x{size['height']}, {size['frames']} frames",
            "",
            "| --offload | weights on the GPU at the peak | activations | peak | "
            + " | ".join(f"fits {name}" for name in GPUS)
            + " | copies exposed per large-model call |",
            "|---|---|---|---|" + "---|" * len(GPUS) + "---|",
        ]
        for mode, peak in result["peaks"].items():
            fits = ["yes" if peak["total"] <= FIT_SHARE * memory else "no" for memory in GPUS.values()]
            copies = result["exposed_copy_seconds_per_large_call"][mode]
            lines.append(
                f"| {mode} | {gib(peak['weights'])} | {gib(peak['activations'])} | {gib(peak['total'])} | "
                + " | ".join(fits)
                + f" | {copies:.2f} s |"
            )
        lines += [
            "",
            f"A large-model call: {result['large_call_flops'] / 1e12:.0f} TFLOP, about "
            f"{result['large_call_seconds_at_throughput']:.2f} s at the stated throughput. Model offload "
            "moves every component once per pipeline call: about "
            f"{result['model_offload_copy_seconds_per_pipeline_call']:.1f} s.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    results = [plan_pair(label, **pair) for label, pair in PAIRS.items()]
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "memory-plan.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUTPUT / "memory-plan.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
