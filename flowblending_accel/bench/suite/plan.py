"""What the GPU evidence suite measures: parts (one device call each), their sections (one subprocess each)
and each section's rows, for the real-size ``gpu`` suite and its CPU ``rehearsal`` on tiny presets.

Parts run in order of what matters most, and each fits one short call (at most :data:`PART_SECONDS`, the
offline install included):

* ``smoke``: the environment, one real-size Wan 1.3B pipeline routed (``L100``) vs unwrapped, bit for bit,
  the router's overhead per call with CUDA events, and the launch-bound worst case on a tiny pipeline;
* ``wan``: Wan 2.1 14B + 1.3B large-only vs L40-S40-L20 (efficiency against the time-ideal), then the
  eager stack, cumulatively: + DPM++ at half the steps, + FirstBlockCache, + the best attention backend,
  + torchao quantization;
* ``compile``: all of that + regional compile (last, so one compiled variant holds everything), and
  TensorRT where installed;
* ``individual``: each accelerator alone on top of FlowBlending (stacked ÷ product of the individual
  speedups);
* ``ltx``: LTX-Video 13B + 2B large-only vs L40-S40-L20, and peak memory with the inactive model offloaded.

Ratios do not need 50 steps: 10 keep every stage of L40-S40-L20 non-empty (4-4-2), 5 after the step
reduction (2-2-1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...core.schedule import PAPER_SCHEDULE

SCHEDULE = PAPER_SCHEDULE
PART_SECONDS = 240.0  # one device call: install, start-up and every section of the part
# The CPU rehearsal shares a 2-core machine with other work: its boxes leave room for a machine several times
# slower than when idle, so no test of it depends on how busy the machine is (none waits for a box to end
# but the hang's, which sets its own).
REHEARSAL_PART_SECONDS = 480.0
BEST_ATTENTION = "attn:best"  # resolved where the section runs: the fastest backend installed there


@dataclass(frozen=True)
class SuiteRow:
    """One measured configuration: a label, the FlowBlending schedule and the stack on top."""

    label: str
    schedule: str
    stack: tuple[str, ...] = ()

    def specs(self, attention_backend: str = "native") -> tuple[str, ...]:
        """The stack's spec strings, with the best attention backend named (``attention_backend``)."""
        return tuple(f"attn:{attention_backend}" if s == BEST_ATTENTION else s for s in self.stack)

    def configs(self, attention_backend: str = "native") -> list:
        from ...accelerators import as_configs

        return as_configs(self.specs(attention_backend))

    def kinds(self) -> set[str]:
        return {config.kind for config in self.configs()}


BASELINE = SuiteRow("baseline (large only)", "L100")
BLENDED = SuiteRow(f"+FlowBlending {SCHEDULE}", SCHEDULE)
PROBE = SuiteRow("small only (probe)", "S100")


@dataclass(frozen=True)
class SuiteWorkload:
    """A random-weight preset pair at one size (height, width, frames) and step count."""

    preset: str
    size: tuple[int, int, int]
    steps: int

    def describe(self) -> str:
        height, width, frames = self.size
        return f"{self.preset} at {width}x{height}, {frames} frames, {self.steps} steps"


@dataclass(frozen=True)
class Section:
    """One subprocess: ``kind`` is ``smoke`` (routed vs unwrapped pairs), ``overhead`` (the router's own
    cost) or ``rows`` (interleaved rows against the large-only baseline)."""

    name: str
    title: str
    kind: str
    workload: SuiteWorkload
    rows: tuple[SuiteRow, ...] = ()
    probe: bool = False  # also time the small model alone: its per-call time makes the time-ideal
    repeats: int = 3
    box: float = 120.0  # seconds for everything: start-up, build, FLOP count, warm-up, rounds

    @property
    def measured_rows(self) -> tuple[SuiteRow, ...]:
        return self.rows + ((PROBE,) if self.probe else ())


@dataclass(frozen=True)
class Part:
    name: str
    purpose: str
    sections: tuple[Section, ...]
    budget: float = PART_SECONDS


@dataclass(frozen=True)
class Suite:
    name: str
    device: str
    dtype: str
    parts: tuple[Part, ...] = field(default=())

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise ValueError(f"the {self.name} suite has no part {name!r}; choose one of {self.part_names}.")

    @property
    def part_names(self) -> list[str]:
        return [part.name for part in self.parts]

    def section(self, name: str) -> Section:
        for part in self.parts:
            for section in part.sections:
                if section.name == name:
                    return section
        raise ValueError(f"the {self.name} suite has no section {name!r}.")


def cumulative(first: SuiteRow, stack: list[str]) -> list[SuiteRow]:
    """One row per member, each adding it to the row before (``first`` holds the members already on)."""
    rows, members = [], list(first.stack)
    for spec in stack:
        members.append(spec)
        rows.append(SuiteRow(f"+{spec}", first.schedule, tuple(members)))
    return rows


def _suite(
    name: str, device: str, dtype: str, sizes: dict, repeats: int, boxes: dict, budget: float = PART_SECONDS
) -> Suite:
    wan = SuiteWorkload(sizes["wan"], sizes["wan_size"], sizes["steps"])
    ltx = SuiteWorkload(sizes["ltx"], sizes["ltx_size"], sizes["steps"])
    smoke = SuiteWorkload(sizes["smoke"], sizes["smoke_size"], sizes["smoke_steps"])
    reduced = f"dpm++:{sizes['steps'] // 2}"
    eager = cumulative(BLENDED, [reduced, "fbc:0.05", BEST_ATTENTION, "quantize:auto"])
    compiled = cumulative(eager[-1], ["compile"])
    tensorrt = SuiteRow("+FlowBlending +step reduction +tensorrt", SCHEDULE, (reduced, "tensorrt"))
    alone = [
        SuiteRow(f"+FlowBlending +{spec}", SCHEDULE, (spec,))
        for spec in (reduced, "fbc:0.05", BEST_ATTENTION, "quantize:auto", "compile")
    ]
    offload = SuiteRow("+FlowBlending, offload with prefetch", SCHEDULE, ("offload:1",))
    offload_peak = SuiteRow("+FlowBlending, offload without prefetch", SCHEDULE, ("offload:0",))

    def rows(
        section: str, title: str, workload: SuiteWorkload, measured: list[SuiteRow], probe=False
    ) -> Section:
        return Section(
            section, title, "rows", workload, (BASELINE, *measured), probe, repeats, boxes[section]
        )

    parts = (
        Part(
            "smoke",
            "is the machine usable: environment, the router bit for bit on a real-size model, its overhead",
            (
                Section("smoke", "Routed (L100) vs unwrapped, real size", "smoke", smoke, box=boxes["smoke"]),
                Section(
                    "overhead",
                    "Router overhead per call on a launch-bound tiny pipeline",
                    "overhead",
                    SuiteWorkload(sizes["overhead"], sizes["overhead_size"], 20),
                    repeats=sizes["overhead_repeats"],
                    box=boxes["overhead"],
                ),
            ),
            budget=budget,
        ),
        Part(
            "wan",
            "FlowBlending's efficiency on Wan 2.1 14B + 1.3B, and the eager stack: + step reduction, "
            "+ cache, + attention backend, + quantization",
            (rows("wan", "Wan pair: FlowBlending and the eager stack", wan, [BLENDED, *eager], probe=True),),
            budget=budget,
        ),
        Part(
            "compile",
            "the whole stack compiled (its own call: compiling with a cache makes many graphs), TensorRT",
            (rows("compile", "Wan pair: the whole stack compiled", wan, [*compiled, tensorrt]),),
            budget=budget,
        ),
        Part(
            "individual",
            "each accelerator alone on top of FlowBlending",
            (rows("individual", "Wan pair: each accelerator alone", wan, [BLENDED, *alone]),),
            budget=budget,
        ),
        Part(
            "ltx",
            "LTX-Video 13B + 2B, and peak memory with the inactive model offloaded",
            (
                rows("ltx", "LTX-Video pair: FlowBlending", ltx, [BLENDED], probe=True),
                replace(
                    rows(
                        "memory",
                        "Peak memory: both resident vs offload with and without prefetch",
                        wan,
                        [BLENDED, offload, offload_peak],
                    ),
                    repeats=1,  # the peaks do not vary; one timed round gives the time each mode costs
                ),
            ),
            budget=budget,
        ),
    )
    return Suite(name, device, dtype, parts)


SUITES = {
    # One H100-class GPU. Wan at 480x832 and 9 frames (3 latent frames, 4,680 tokens a call).
    "gpu": _suite(
        "gpu",
        "cuda",
        "bfloat16",
        dict(
            wan="wan2.1-14b+1.3b",
            wan_size=(480, 832, 9),
            ltx="ltx-13b+2b",
            ltx_size=(480, 704, 25),
            smoke="wan2.1-1.3b",
            smoke_size=(480, 832, 17),
            smoke_steps=4,
            overhead="tiny-wan",
            overhead_size=(16, 16, 5),
            overhead_repeats=10,
            steps=10,
        ),
        repeats=2,
        boxes=dict(smoke=45, overhead=30, wan=200, compile=210, individual=210, ltx=90, memory=120),
    ),
    # The same parts, sections and rows on tiny random presets on a CPU: what the tests run.
    "rehearsal": _suite(
        "rehearsal",
        "cpu",
        "float32",
        dict(
            wan="tiny-wan",
            wan_size=(16, 16, 5),
            ltx="tiny-ltx",
            ltx_size=(32, 32, 9),
            smoke="tiny-wan",
            smoke_size=(16, 16, 5),
            smoke_steps=4,
            overhead="tiny-wan",
            overhead_size=(16, 16, 5),
            overhead_repeats=3,
            steps=10,
        ),
        repeats=2,
        boxes=dict(smoke=200, overhead=200, wan=420, compile=420, individual=420, ltx=210, memory=210),
        budget=REHEARSAL_PART_SECONDS,
    ),
}


def suite_named(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"no suite {name!r}; choose one of {', '.join(SUITES)}.")
    return SUITES[name]
