"""Prompts a user brings: a text file (one prompt a line) or JSONL (one object a line: ``prompt`` and any
per-prompt pipeline-call arguments, such as ``negative_prompt``, ``height``, ``num_frames`` or an ``image``
path for image-to-video). Read and checked before any model is built."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Per-prompt call arguments that name a file to load (an image for i2v / img2img).
IMAGE_ARGUMENTS = ("image", "last_image", "mask_image")


@dataclass(frozen=True)
class Prompt:
    """One prompt: its text (``None`` for targets that take embeddings) and its own call arguments."""

    text: str | None
    arguments: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(f"Prompt.text must be a string, got {type(self.text).__name__}.")
        if "prompt" in self.arguments:
            raise ValueError("Prompt.arguments must not hold 'prompt': it is Prompt.text.")


def read_prompts(path: Path, option: str = "--prompts") -> list[Prompt]:
    """Prompts from ``path``: ``.jsonl`` as objects, anything else one prompt per non-empty line."""
    if not path.is_file():
        raise ValueError(f"{option} {path}: no such file; give a text file (one prompt a line) or JSONL.")
    lines = [(number, line.strip()) for number, line in enumerate(path.read_text().splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"{option} {path}: holds no prompt.")
    if path.suffix != ".jsonl":
        return [Prompt(line) for _, line in lines]
    return [_json_prompt(path, number, line, option) for number, line in lines]


def _json_prompt(path: Path, number: int, line: str, option: str) -> Prompt:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{option} {path}:{number}: not JSON ({error.msg}).") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
        raise ValueError(
            f'{option} {path}:{number}: write an object with a "prompt" string, e.g. '
            '{"prompt": "a cat", "negative_prompt": "blurry"}.'
        )
    arguments = {key: value for key, value in entry.items() if key != "prompt"}
    for key in IMAGE_ARGUMENTS:
        if key in arguments:
            image = (path.parent / arguments[key]).resolve()
            if not image.is_file():
                raise ValueError(f"{option} {path}:{number}: {key} {arguments[key]!r} is not a file.")
            arguments[key] = str(image)
    return Prompt(entry["prompt"], arguments)


def load_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Call arguments with image paths opened as PIL images."""
    loaded = dict(arguments)
    for key in IMAGE_ARGUMENTS:
        if isinstance(loaded.get(key), str):
            from PIL import Image

            loaded[key] = Image.open(loaded[key]).convert("RGB")
    return loaded
