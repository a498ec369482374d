"""The journal of a long analysis run (``analyze``, ``calibrate``, ``tune``): every finished pipeline call's
result as one JSON line, appended and flushed as it finishes, so a run stopped at any point (SIGTERM, SIGKILL,
an out-of-memory, a cluster's time limit) keeps every call it finished, and the same command run again on the
same output folder makes only the missing ones.

Layout, in the run's output folder::

    journal/journal.rank-K.jsonl   one file per rank (one process: rank 0), appended by that rank only
    journal/outputs/KEY.pt         the large-only outputs later calls are scored against (a tensor each)

Every line stands alone. A ``run`` line starts each (re)start of a rank: the run's *identity* (the tool, the
target, the prompts and every setting that changes a result) and the rank count. A ``call`` line holds one
finished job: its ``key`` (a stable hash of what it ran: the pass, the schedule or point, the scorers, and the
call's own arguments: prompts, seeds as generator states, size, steps, guidance, embeddings), ``what`` and
``call`` said in words, its ``result`` (scores, divergences, calls per model, FLOPs), its ``seconds`` and the
rank that made it. Resuming reads every rank's file, whatever the rank count was: a journal whose identity
differs from this run's is refused in one line naming the difference; a torn last line (a kill mid-write) is
skipped. Several nodes must see one output folder (a shared filesystem): the runner checks it before any call.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..support.files import append_line, json_lines, write_atomic

SCHEMA = "flowblending-accel/call-line/v1"
FOLDER = "journal"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def canonical(value: Any) -> Any:
    """``value`` as JSON that is equal exactly when the values are: tensors and arrays by dtype, shape and a
    hash of their bytes, a generator by its seed and the hash of its state, PIL images by their pixels. An
    object of another kind is named with its ``repr`` (one holding an address never matches: recomputed)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Generator):
        return {"generator": value.initial_seed(), "state": _digest(_tensor_bytes(value.get_state()))}
    if isinstance(value, torch.Tensor):
        return {
            "tensor": str(value.dtype),
            "shape": list(value.shape),
            "bytes": _digest(_tensor_bytes(value)),
        }
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {"array": str(array.dtype), "shape": list(array.shape), "bytes": _digest(array.tobytes())}
    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
        return canonical(np.asarray(value.convert("RGB")))
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): canonical(item) for key, item in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return {"object": f"{type(value).__module__}.{type(value).__qualname__}", "repr": repr(value)}


def stable_hash(value: Any) -> str:
    return _digest(json.dumps(canonical(value), sort_keys=True).encode())


def call_identity(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """One pipeline call's arguments: their hash, and the prompt, seeds and size in words (for the line)."""
    generators = kwargs.get("generator")
    generators = (
        generators if isinstance(generators, list) else [generators] if generators is not None else []
    )
    prompt = kwargs.get("prompt")
    said = {
        "prompt": prompt,
        "seeds": [g.initial_seed() for g in generators if isinstance(g, torch.Generator)],
        **{k: kwargs[k] for k in ("height", "width", "num_frames", "num_inference_steps") if k in kwargs},
    }
    return {"hash": stable_hash(kwargs), **said}


def job_key(what: Mapping[str, Any], call: Mapping[str, Any] | None) -> str:
    """A job's key: what it runs and the hash of the call it runs it on."""
    return stable_hash({"what": what, "call": None if call is None else call["hash"]})


class JournalMismatch(ValueError):
    """The output folder's journal is of another run: one line, exit 2, before any pipeline call."""


def first_difference(
    first: Any, second: Any, path: str = "", names: tuple[str, str] = ("the journal's", "this run's")
) -> str | None:
    """Where two identities first differ, in words (``names``: whose each is; ``None``: they are equal)."""
    if isinstance(first, dict) and isinstance(second, dict):
        for key in [*first, *(k for k in second if k not in first)]:
            where = f"{path}.{key}" if path else key
            found = first_difference(first.get(key), second.get(key), where, names)
            if found:
                return found
        return None
    if first == second:
        return None
    return f"{path}: {names[0]} {_short(first)}, {names[1]} {_short(second)}"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CallJournal:
    """The journal in ``output/journal``, as rank ``rank`` of ``world`` sees and appends it."""

    remembers = True  # results of earlier job lists are reused (the point of a journal)

    def __init__(self, output: Path, identity: Mapping[str, Any], rank: int = 0, world: int = 1) -> None:
        self.folder = Path(output) / FOLDER
        self.identity = json.loads(json.dumps(canonical(identity)))  # as it reads back from a line
        self.rank, self.world = rank, world
        self.path = self.folder / f"journal.rank-{rank}.jsonl"
        self.done: dict[str, Any] = {}  # key -> result, every rank's, read at open and merged as they come
        self.outputs: dict[str, torch.Tensor] = {}

    # --- opening ---------------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        return sorted(self.folder.glob("journal.rank-*.jsonl"))

    def lines(self) -> Iterator[dict[str, Any]]:
        """Every whole line of every rank's file (a torn or foreign line is skipped)."""
        for path in self.files():
            yield from json_lines(path, SCHEMA)

    def read(self, option: str = "--output") -> int:
        """Load every journalled call; refuse a journal of another run. Returns the calls found."""
        for line in self.lines():
            if line["kind"] == "run":
                difference = first_difference(line["identity"], self.identity)
                if difference:
                    raise JournalMismatch(
                        f"{option} {self.folder.parent}: its journal is of another run ({difference}); run "
                        f"the same command to resume it, or give another {option}, or --overwrite to discard "
                        "it."
                    )
            elif line["kind"] == "call":
                self.done.setdefault(line["key"], line["result"])
        return len(self.done)

    def journalled_calls(self) -> int:
        """The pipeline calls every rank's file holds now (scoring-only jobs make none)."""
        return sum(line.get("calls", 1) for line in self.lines() if line["kind"] == "call")

    def start(self) -> None:
        """This rank's ``run`` line: a (re)start of the run, with its identity. A line a kill tore is ended
        first, so the lines after it stay whole."""
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as stream:
                stream.seek(-1, os.SEEK_END)
                torn = stream.read(1) != b"\n"
            if torn:
                with open(self.path, "ab") as stream:
                    stream.write(b"\n")
        self._append({"kind": "run", "identity": self.identity, "world": self.world})

    def discard(self) -> None:
        """``--overwrite``: the journal goes (rank 0, before any rank reads it)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- recording -------------------------------------------------------------------------------------
    def normalised(self, result: Any) -> Any:
        """``result`` as a resumed run reads it back (JSON: tuples as lists, keys as text), so the run that
        made a call decides from exactly what a resumed one will."""
        return json.loads(json.dumps(result, default=str))

    def record(self, key: str, what: Any, call: Any, result: Any, seconds: float, calls: int = 1) -> None:
        """One finished job (``calls``: the pipeline calls it made), flushed to disk before this returns."""
        line = {"kind": "call", "key": key, "what": what, "call": call, "calls": calls}
        self._append({**line, "result": result, "seconds": seconds})
        self.done[key] = result

    def _append(self, fields: dict[str, Any]) -> None:
        line = {"schema": SCHEMA, **fields, "rank": self.rank, "time": _now()}
        data = (json.dumps(line, default=str) + "\n").encode()
        self.folder.mkdir(parents=True, exist_ok=True)
        append_line(self.path, data)

    # --- outputs later calls are scored against --------------------------------------------------------
    def keep_output(self, key: str, output: torch.Tensor, store: bool = True) -> None:
        """Hold ``output`` in memory and (``store``: the rank that made it) write it beside the journal
        before the call's line, so a journalled call's output is always there to score against."""
        self.outputs[key] = output
        if store:
            buffer = io.BytesIO()
            torch.save(output.detach().cpu().contiguous(), buffer)
            write_atomic(self.folder / "outputs" / f"{key}.pt", buffer.getvalue())

    def output(self, key: str) -> torch.Tensor:
        """The output kept under ``key``: in memory, else read from the journal folder (another rank made
        it, or an earlier run)."""
        if key not in self.outputs:
            path = self.folder / "outputs" / f"{key}.pt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: the journal names this output but it is not there (another node's disk? the "
                    "output folder must be on a filesystem every node sees); rerun with --overwrite."
                )
            self.outputs[key] = torch.load(path, weights_only=True)
        return self.outputs[key]


class MemoryJournal(CallJournal):
    """No files: a library call's results and outputs in memory only (nothing to resume). It remembers no
    result past the job list that asked for it: a library call remakes what it is asked for again (its
    callers keep caches of their own), and keeps the outputs later calls are scored against."""

    remembers = False

    def __init__(self) -> None:
        super().__init__(Path("."), {}, 0, 1)

    def read(self, option: str = "--output") -> int:
        return 0

    def start(self) -> None:
        pass

    def normalised(self, result: Any) -> Any:
        return result

    def record(self, key: str, what: Any, call: Any, result: Any, seconds: float, calls: int = 1) -> None:
        self.done[key] = result

    def keep_output(self, key: str, output: Any, store: bool = True) -> None:
        self.outputs[key] = output
