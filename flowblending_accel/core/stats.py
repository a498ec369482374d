"""What one routed run did: every denoiser call, and totals per model and per stage."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CallRecord:
    """One denoiser call. ``seconds`` is host wall time, or CUDA-event time on a GPU (see ``timing``)."""

    step: int
    model: str
    stage: int
    timestep: float
    sigma: float
    iteration: int | None = None
    seconds: float | None = None
    flops: int | None = None
    replayed: bool = False  # answered by a listener (an identical earlier call), not computed
    samples: tuple[int, ...] | None = None  # the samples of the batch it ran (None: all of them)


@dataclass
class RunStats:
    """Per-run record. ``calls`` is in call order; CFG and Heun correctors give several calls per step."""

    schedule: str
    axis: str
    scheduler: str
    num_steps: int
    planned_steps: dict[str, int]
    calls: list[CallRecord] = field(default_factory=list)
    finished: bool = False
    aborted: bool = False
    error: str | None = None
    skipped_uncond_calls: int = (
        0  # unconditional calls answered with the conditional output (small_guidance="off")
    )
    # Adaptive schedules: per sample of the batch, the step it entered the small stage (None: it never did),
    # and per step of the switch window the self-difference of each sample still on the large model.
    boundaries: list[int | None] | None = None
    switch_window: tuple[int, int] | None = None  # (first, ceiling): the steps a sample may switch at
    late_start: int | None = None  # the first step of the final large stage (the end when there is none)
    first_step: int = 0
    batch_samples: int | None = None  # samples per call, once an adaptive run has seen its first output
    self_difference: dict[int, list[float | None]] = field(default_factory=dict)
    _pending_events: list[tuple[int, Any, Any]] = field(default_factory=list, repr=False)

    # -------------------------------------------------------------------------------------- recording
    def add(self, record: CallRecord, events: tuple[Any, Any] | None = None) -> None:
        if events is not None:
            self._pending_events.append((len(self.calls), *events))
        self.calls.append(record)

    def adaptive_record(self, boundaries: list[int | None], self_difference: dict) -> None:
        """What an adaptive run decided: each sample's boundary and the self-differences it read."""
        self.boundaries = list(boundaries)
        self.self_difference = {step: list(values) for step, values in self_difference.items()}

    def resolve_timings(self) -> None:
        """Turn pending CUDA events into seconds (waits for them; done lazily so the run never syncs)."""
        for index, start, end in self._pending_events:
            end.synchronize()
            self.calls[index].seconds = start.elapsed_time(end) / 1000.0
        self._pending_events.clear()

    # ---------------------------------------------------------------------------------------- summary
    @property
    def trace(self) -> list[tuple[int, str]]:
        """``(solver step, model)`` once per step, in order: the routing decision (``"mixed"`` where an
        adaptive run's samples ran on both models; :meth:`sample_trace` has each sample's)."""
        seen: dict[int, str] = {}
        for call in self.calls:
            if seen.setdefault(call.step, call.model) != call.model:
                seen[call.step] = "mixed"
        return list(seen.items())

    def sample_trace(self, sample: int) -> list[tuple[int, str]]:
        """``(solver step, model)`` once per step for one sample of the batch."""
        seen: dict[int, str] = {}
        for call in self.calls:
            if call.samples is None or sample in call.samples:
                seen.setdefault(call.step, call.model)
        return list(seen.items())

    @property
    def batch_calls_per_model(self) -> dict[str, float]:
        """Calls per model counted in whole batches: a call on 3 of a batch's 10 samples counts 0.3 (what
        FLOPs follow; equal to :attr:`calls_per_model` for a fixed schedule)."""
        totals: dict[str, float] = {}
        for call in self.calls:
            share = 1.0 if call.samples is None else len(call.samples) / (self.batch_samples or 1)
            totals[call.model] = totals.get(call.model, 0.0) + share
        return totals

    @property
    def call_trace(self) -> list[tuple[int, str]]:
        return [(call.step, call.model) for call in self.calls]

    @property
    def calls_per_model(self) -> dict[str, int]:
        return dict(Counter(call.model for call in self.calls))

    @property
    def steps_per_model(self) -> dict[str, int]:
        return dict(Counter(model for _, model in self.trace))

    @property
    def switches(self) -> int:
        models = [model for _, model in self.trace]
        return sum(1 for a, b in zip(models, models[1:], strict=False) if a != b)

    @property
    def seconds_per_model(self) -> dict[str, float]:
        return self._sum_seconds(lambda call: call.model)

    @property
    def seconds_per_stage(self) -> dict[int, float]:
        return self._sum_seconds(lambda call: call.stage)

    @property
    def flops_per_model(self) -> dict[str, int]:
        totals: Counter = Counter()
        for call in self.calls:
            if call.flops is not None:
                totals[call.model] += call.flops
        return dict(totals)

    def _sum_seconds(self, key) -> dict:
        self.resolve_timings()
        totals: dict = {}
        for call in self.calls:
            if call.seconds is not None:
                totals[key(call)] = totals.get(key(call), 0.0) + call.seconds
        return totals

    def table(self) -> str:
        """A short human summary: per model steps, calls, time and (when counted) FLOPs."""
        seconds, flops = self.seconds_per_model, self.flops_per_model
        state = "aborted" if self.aborted else ("finished" if self.finished else "in progress")
        header = f"{'model':<6} {'steps':>5} {'calls':>5} {'seconds':>9}" + (
            f" {'GFLOPs':>10}" if flops else ""
        )
        lines = [
            f"run {state}: schedule {self.schedule} (axis={self.axis}) on {self.scheduler}, "
            f"{self.num_steps} solver steps, {self.switches} switches",
            header,
        ]
        if self.boundaries:
            taken = [b for b in self.boundaries if b is not None]
            mean = f"; mean {sum(taken) / len(taken):.2f}" if taken else ""
            lines.insert(1, f"adaptive: step each sample entered the small stage {self.boundaries}{mean}")
        for model in sorted(set(self.planned_steps) | set(self.calls_per_model)):
            secs = f"{seconds[model]:9.4f}" if model in seconds else f"{'-':>9}"
            line = (
                f"{model:<6} {self.steps_per_model.get(model, 0):>5} "
                f"{self.calls_per_model.get(model, 0):>5} {secs}"
            )
            if flops:
                line += f" {flops.get(model, 0) / 1e9:10.3f}"
            lines.append(line)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        self.resolve_timings()
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        data.update(
            calls_per_model=self.calls_per_model,
            steps_per_model=self.steps_per_model,
            seconds_per_model=self.seconds_per_model,
            seconds_per_stage={str(k): v for k, v in self.seconds_per_stage.items()},
            flops_per_model=self.flops_per_model,
            switches=self.switches,
            batch_calls_per_model=self.batch_calls_per_model,
            self_difference={str(k): v for k, v in self.self_difference.items()},
        )
        return data


def merge_runs(runs: list[RunStats]) -> RunStats:
    """One record from the routers of several denoisers of the same run (Wan 2.2's two experts)."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    merged = RunStats(
        schedule=first.schedule,
        axis=first.axis,
        scheduler=first.scheduler,
        num_steps=max(run.num_steps for run in runs),
        planned_steps=dict(first.planned_steps),
        finished=all(run.finished for run in runs),
        aborted=any(run.aborted for run in runs),
        error=next((run.error for run in runs if run.error), None),
        skipped_uncond_calls=sum(run.skipped_uncond_calls for run in runs),
        boundaries=first.boundaries,
        switch_window=first.switch_window,
        late_start=first.late_start,
        first_step=min(run.first_step for run in runs),
        self_difference=first.self_difference,
    )
    for run in runs:
        run.resolve_timings()
        merged.calls.extend(run.calls)
    merged.calls.sort(key=lambda call: (call.step, call.iteration if call.iteration is not None else -1))
    return merged
