"""Velocity divergence between the two models along a trajectory, per solver step and per sample.

At every denoiser call of a run (large-only by default, or any blended schedule) the *other* model is
evaluated on exactly the same inputs, and per step, with classifier-free guidance applied as the pipeline
does, we record for each sample:

* ``velocity_cos_distance`` / ``velocity_rel_l2``: the cosine distance 1 - cos (0 to 2) and
  ||v_L - v_S|| / ||v_L|| of the guided outputs;
* ``x0_cos_distance`` / ``x0_rel_l2``: the same for the predicted clean sample ``x0 = x_t - sigma * v``
  (flow-matching schedulers only); at high noise the velocity is mostly the noise, which both models get
  right, while the predicted x0 shows whether they agree on the content;
* ``state_rel``: ``|sigma_next - sigma| * ||v_L - v_S|| / ||x_t||``, the perturbation that using the small
  model at this step injects into the trajectory.

Which of these predicts where the small model hurts quality is an empirical question: :mod:`.evidence`
measures it by substituting the small model in windows of steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..accelerators import FlowBlendingConfig, flowblending
from ..core.api import add_flowblending_listener, flowblending_routers
from ..core.diffusers_internals import context_name
from ..core.families import family_for
from ..core.listeners import CallEvent, RouterListener
from .call_runner import CallRunner, Job, identities_of, jobs_over
from .journal import canonical
from .scores import Scores, as_quality


@dataclass
class _StepCalls:
    sigma: float
    next_sigma: float
    model: str
    flow: bool  # a flow-matching grid: x0 = x_t - sigma * v
    calls: list[tuple[str | None, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


class DivergenceProbe(RouterListener):
    """A router listener that evaluates the other model on every call and keeps both outputs per step."""

    def __init__(self, guidance_scale: float, batched_cfg: bool) -> None:
        self.guidance_scale, self.batched_cfg = guidance_scale, batched_cfg
        self.runs: list[dict[int, dict[str, torch.Tensor]]] = []
        self._steps: dict[int, _StepCalls] = {}

    # One pipeline call is the span in which any router's run is open (Wan 2.2 routes each expert).
    _open_runs = 0

    def on_run_start(self, router, session) -> None:
        if self._open_runs == 0:
            self._steps, self._plans, self._all_finished = {}, {}, True
        self._open_runs += 1
        self._plans[id(router)] = session.plan

    def on_call(self, router, call: CallEvent) -> None:
        record, args, kwargs = call.record, call.args, call.kwargs
        other_output = router.call_model("small" if record.model == "large" else "large", *args, **kwargs)
        latents = kwargs.get("hidden_states", args[0] if args else None)
        plan = self._plans[id(router)]
        index = record.step - plan.first_step
        next_sigma = plan.steps[index + 1].sigma if index + 1 < len(plan.steps) else 0.0
        entry = self._steps.setdefault(
            record.step, _StepCalls(record.sigma, next_sigma, record.model, plan.view.kind == "flow")
        )
        name = context_name(router.cache_context)
        entry.calls.append((name, latents, _first(call.output), _first(other_output)))

    def on_run_end(self, router, stats) -> None:
        self._open_runs = max(0, self._open_runs - 1)
        self._all_finished = self._all_finished and stats.finished
        if self._open_runs == 0 and self._all_finished:
            self.runs.append({step: self._measure(entry) for step, entry in sorted(self._steps.items())})

    def _guided(self, calls, which: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, guided output) of one step; ``which`` picks the routed (2) or the other (3) model's
        output."""
        g = self.guidance_scale
        by_name: dict = {}
        for call in calls:  # the first call of each branch: the step's own evaluation (Heun adds a corrector)
            by_name.setdefault(call[0], call)
        if "cond" in by_name and "uncond" in by_name and g > 1:
            cond, uncond = by_name["cond"], by_name["uncond"]
            return cond[1], uncond[which] + g * (cond[which] - uncond[which])
        latents, output = calls[0][1], calls[0][which]
        if self.batched_cfg and g > 1:  # [uncond, cond] stacked in the batch
            uncond, cond = output.chunk(2)
            return latents.chunk(2)[1], uncond + g * (cond - uncond)
        return latents, output

    def _measure(self, entry: _StepCalls) -> dict[str, torch.Tensor]:
        x_t, routed = self._guided(entry.calls, 2)
        _, other = self._guided(entry.calls, 3)
        v_large, v_small = (routed, other) if entry.model == "large" else (other, routed)
        flat = lambda t: t.float().flatten(1)  # noqa: E731
        vl, vs, x = flat(v_large), flat(v_small), flat(x_t)
        result = {
            "velocity_cos_distance": 1 - F.cosine_similarity(vl, vs, dim=1),
            "velocity_rel_l2": (vl - vs).norm(dim=1) / vl.norm(dim=1).clamp_min(1e-12),
            "state_rel": abs(entry.next_sigma - entry.sigma)
            * (vl - vs).norm(dim=1)
            / x.norm(dim=1).clamp_min(1e-12),
        }
        if entry.flow:
            x0l, x0s = x - entry.sigma * vl, x - entry.sigma * vs
            result["x0_cos_distance"] = 1 - F.cosine_similarity(x0l, x0s, dim=1)
            result["x0_rel_l2"] = (x0l - x0s).norm(dim=1) / x0l.norm(dim=1).clamp_min(1e-12)
        result["sigma"] = torch.full_like(result["state_rel"], entry.sigma)
        return result


def replay(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every torch.Generator replaced by a fresh one in the same state, so one set of call
    arguments gives the same noise however often it is run (a generator advances when it is used)."""

    def fresh(value):
        if isinstance(value, torch.Generator):
            clone = torch.Generator(device=value.device)
            clone.set_state(value.get_state())
            return clone
        if isinstance(value, list) and value and isinstance(value[0], torch.Generator):
            return [fresh(v) for v in value]
        return value

    return {key: fresh(value) for key, value in kwargs.items()}


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else getattr(output, "sample", output)


class KeptOutputs(Sequence):
    """The outputs a pass kept (one per call, what later calls are scored against), read when asked for: in
    memory where this rank made them, else from the journal folder."""

    def __init__(self, runner: CallRunner, jobs: list[Job]) -> None:
        self.runner, self.jobs = runner, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.runner.output(job) for job in self.jobs[index]]
        return self.runner.output(self.jobs[index])


@dataclass
class DivergenceCurve:
    """Per solver step: sigma and, per measure, the per-sample values (samples x steps)."""

    sigmas: list[float]
    values: dict[str, torch.Tensor]  # measure -> (samples, steps)
    schedule: str
    outputs: Sequence[Any] = field(default_factory=list, repr=False)  # the pipeline's outputs, one per call

    def mean(self, measure: str) -> list[float]:
        return self.values[measure].mean(0).tolist()

    def std(self, measure: str) -> list[float]:
        return (
            self.values[measure].std(0).tolist()
            if len(self.values[measure]) > 1
            else [0.0] * len(self.sigmas)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "trajectory": self.schedule,
            "sigmas": self.sigmas,
            "samples": int(next(iter(self.values.values())).shape[0]),
            "measures": {m: {"mean": self.mean(m), "std": self.std(m)} for m in self.values},
        }


def divergence_curve(
    pipe,
    small,
    calls: list[dict[str, Any]],
    guidance_scale: float,
    trajectory: str = "L100",
    progress=None,
    output_field: str = "frames",
    runner: CallRunner | None = None,
    quality: Any = None,
    keep_outputs: bool = True,
    **router_options: Any,
) -> DivergenceCurve:
    """Run ``pipe`` on every call's arguments along ``trajectory``, evaluating both models at every step.

    Each call is one job of ``runner`` (none: one in memory, advancing ``progress``): made once, journalled,
    shared across ranks. Its output is kept (unless ``keep_outputs`` is off: nothing will be scored against
    it), prepared by ``quality`` (:func:`.scores.as_quality`; none: as the pipeline gave it), for later calls
    to score against."""
    runner = runner if runner is not None else CallRunner(progress=progress)
    quality = as_quality(quality) if quality is not None else None
    probe = DivergenceProbe(guidance_scale, batched_cfg=family_for(pipe).batched_cfg)
    what = {
        "pass": "divergence",
        "trajectory": trajectory,
        "guidance_scale": guidance_scale,
        "router": canonical(router_options),
        "scorers": quality.key if quality is not None else None,
    }
    jobs = jobs_over(what, identities_of(calls))

    @contextmanager
    def routed(_job: Job) -> Iterator[None]:
        config = FlowBlendingConfig(trajectory, timing="off", **router_options)
        with flowblending(pipe, small, config), torch.inference_mode():
            add_flowblending_listener(pipe, probe)
            yield

    def make(job: Job) -> dict[str, Any]:
        finished = len(probe.runs)
        output = getattr(pipe(**replay(calls[job.index])), output_field)
        for router in flowblending_routers(pipe):  # a pipeline that leaves its run open at the end (SD's)
            router.end_run(completed=True)
        if len(probe.runs) == finished:
            raise RuntimeError("no run finished; nothing to analyse.")
        if keep_outputs:
            runner.keep_output(job, quality.prepare(output) if quality is not None else output)
        return _run_result(probe.runs.pop())

    results = runner.run(jobs, make, routed)
    steps = len(results[0]["sigmas"])
    values = {
        m: torch.cat([torch.tensor(r["values"][m], dtype=torch.float32).reshape(-1, steps) for r in results])
        for m in results[0]["values"]
    }
    return DivergenceCurve(results[0]["sigmas"], values, trajectory, KeptOutputs(runner, jobs))


def self_scores(curve: DivergenceCurve, quality: Any) -> Scores:
    """The quality of ``curve``'s outputs against themselves (each score's ceiling, and its names); scoring
    jobs of the runner that kept them, so they are journalled and shared like the calls."""
    quality, outputs = as_quality(quality), curve.outputs
    if not isinstance(outputs, KeptOutputs):
        return quality.combine([quality.of_call(output, output) for output in outputs])
    what = {"pass": "self-score", "scorers": quality.key}
    jobs = [Job({**what, "of": job.key}, job.index, job.call, 0) for job in outputs.jobs]
    results = outputs.runner.run(jobs, lambda job: quality.of_call(outputs[job.index], outputs[job.index]))
    return quality.combine(results)


def _run_result(run: dict[int, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """One call's divergences (per measure: samples x steps, as lists) and its sigmas."""
    steps = sorted(run)
    measures = [m for m in run[steps[0]] if m != "sigma"]
    return {
        "sigmas": [float(run[s]["sigma"][0]) for s in steps],
        "values": {m: torch.stack([run[s][m] for s in steps], dim=1).float().tolist() for m in measures},
    }
