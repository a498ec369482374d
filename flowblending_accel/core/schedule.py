"""Stage schedules: which model denoises which part of the trajectory.

A schedule is a sequence of stages, each a model letter and a share of the trajectory, written like the
paper's Wan 2.1 setting ``"L40-S40-L20"``: the large model for the first 40 %, the small model for the next
40 %, the large model for the last 20 %. Shares are measured on one of two axes:

``step`` (default, the paper's definition)
    Fraction of the run's solver steps. A boundary at cumulative fraction ``b`` of ``N`` steps falls on step
    index ``floor(b * N + 1/2)`` (round half up, computed exactly): stage ``k`` owns the steps
    ``[round(b_{k-1} N), round(b_k N))``. So ``L40-S40-L20`` at 50 steps is 20 / 20 / 10 steps and at 7 steps
    (boundaries 2.8 and 5.6) it is 3 / 3 / 1. A stage can round to zero steps; the plan then lists it empty.
``sigma``
    Fraction of the noise range. Each solver step is placed at ``progress = 1 - noise``, where ``noise`` is
    the flow-matching noise level the model is evaluated at (for VP/epsilon schedulers the SNR-equivalent
    ``sigma / (1 + sigma)``). Stage ``k`` owns the steps with ``b_{k-1} <= progress < b_k``. This keeps the
    same layout in noise space when a step-reduction scheduler or another shift changes the step grid.

Bare letters without numbers are accepted: three letters use the paper's 40/40/20 layout (``"LSL"`` is
``L40-S40-L20``, ``"LSS"`` is ``L40-S40-S20``); any other count splits the axis evenly.

An *adaptive* schedule moves the large-to-small boundary per sample: ``"L20:60~0.05-S-L20"`` keeps each sample
on the large model until its output has settled (the relative change of the large model's own output from one
step to the next falls below 0.05), but at least to 20 % and at most to 60 % of the axis; then the small model
runs until the last 20 %, which the large model denoises again. ``"L20:60~0.05-S"`` never returns to the large
model (SRDiffusion's large-then-small). :class:`AdaptiveSwitch` holds the switch; :mod:`.adaptive` runs it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

MODEL_LETTERS = {"L": "large", "S": "small"}
LETTER_OF_MODEL = {model: letter for letter, model in MODEL_LETTERS.items()}
AXES = ("step", "sigma")
PAPER_THREE_STAGE_LAYOUT = (Fraction(40), Fraction(40), Fraction(20))
# The paper's Wan 2.1 setting: every default schedule in the package and its tools is this one.
PAPER_SCHEDULE = "L40-S40-L20"

_TOKEN = re.compile(r"([A-Za-z])(\d+(?:\.\d+)?)?")
_SEPARATORS = re.compile(r"[\s,\-_/]+")
_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_SEPARATOR = r"[\s,\-_/]*"
# "L20:60~0.05-S-L20": a large stage from the start to a per-sample boundary between 20 % and 60 % (switching
# when the self-difference falls below 0.05), the small stage, and optionally a large stage for the last 20 %.
_ADAPTIVE = re.compile(
    rf"L({_NUMBER}):({_NUMBER})(?:~({_NUMBER}))?{_SEPARATOR}S(?:{_SEPARATOR}L({_NUMBER}))?", re.IGNORECASE
)
ADAPTIVE_EXAMPLE = "L20:60~0.05-S-L20"


class FlowBlendingWarning(UserWarning):
    """A setting that runs but probably not as intended (Python's default filter shows each message once)."""


@dataclass(frozen=True)
class Stage:
    """One stage: ``model`` ("large" or "small") runs for ``share`` (a fraction of 1) of the axis."""

    model: str
    share: Fraction

    def __post_init__(self) -> None:
        if self.model not in LETTER_OF_MODEL:
            raise ValueError(f"Stage.model={self.model!r} must be 'large' or 'small'.")
        if not 0 < self.share <= 1:
            raise ValueError(f"Stage.share={self.share} must be a fraction in (0, 1].")

    @property
    def letter(self) -> str:
        return LETTER_OF_MODEL[self.model]

    def __str__(self) -> str:
        return f"{self.letter}{_percent_text(self.share)}"


@dataclass(frozen=True)
class AdaptiveSwitch:
    """When each sample of an adaptive schedule leaves its first (large) stage for the small one.

    A sample enters the small stage at the first solver step at or after ``floor`` for which the large
    model's output at the step before has settled: its relative self-difference
    ``||v_(t-1) - v_(t-2)|| / ||v_(t-2)||`` (the conditional branch, per sample) is below ``threshold``; at
    ``ceiling`` at the latest. ``floor`` and ``ceiling`` are fractions of the schedule's axis; a threshold of
    0 never switches before the ceiling.
    """

    floor: Fraction
    ceiling: Fraction
    threshold: float

    def __post_init__(self) -> None:
        if not 0 <= self.floor < self.ceiling < 1:
            raise ValueError(
                f"adaptive switch: floor {_percent_text(self.floor)} % and ceiling "
                f"{_percent_text(self.ceiling)} % must satisfy 0 <= floor < ceiling < 100 "
                f"(e.g. {ADAPTIVE_EXAMPLE})."
            )
        if not self.threshold >= 0:
            raise ValueError(
                f"adaptive switch: threshold {self.threshold} must be 0 or more (e.g. {ADAPTIVE_EXAMPLE})."
            )


@dataclass(frozen=True)
class Schedule:
    """An ordered tuple of stages whose shares sum to 1, on the ``step`` or ``sigma`` axis."""

    stages: tuple[Stage, ...]
    axis: str = "step"
    # Set for an adaptive schedule: ``stages`` then hold its latest layout (every sample switching at the
    # ceiling), a large stage, the small one and optionally a final large one.
    adaptive: AdaptiveSwitch | None = None
    # The text it was parsed from, kept for reports that name the schedule as the user wrote it.
    written: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ValueError(f"axis={self.axis!r} is not supported; use one of {AXES}.")
        if not self.stages:
            raise ValueError("schedule has no stages; write one like 'L40-S40-L20'.")
        if sum(stage.share for stage in self.stages) != 1:
            raise ValueError(f"schedule {self}: stage shares must sum to 100 %.")
        if self.adaptive is not None:
            letters = "".join(stage.letter for stage in self.stages)
            if letters not in ("LS", "LSL") or self.stages[0].share != self.adaptive.ceiling:
                raise ValueError(
                    "an adaptive schedule is a large stage up to its ceiling, the small stage and "
                    f"optionally a final large stage, e.g. {ADAPTIVE_EXAMPLE}; got {letters} with "
                    f"{self.stages[0]} before the ceiling {_percent_text(self.adaptive.ceiling)} %."
                )

    # ----------------------------------------------------------------------------------------- parsing
    @classmethod
    def parse(cls, text: str, axis: str = "step") -> Schedule:
        """Parse ``"L40-S40-L20"``, ``"L-S-L-S-L"``, ``"LSL"`` or ``"L100"`` (case-insensitive)."""
        if not isinstance(text, str):
            raise TypeError(f"schedule must be a string like 'L40-S40-L20', got {type(text).__name__}.")
        if ":" in text or "~" in text:
            return cls._parse_adaptive(text, axis, threshold_required=True)
        compact = _SEPARATORS.sub("", text.strip())
        tokens = _TOKEN.findall(compact)
        if not compact or "".join(letter + number for letter, number in tokens) != compact:
            raise ValueError(
                f"schedule {text!r} is malformed: write stages as a model letter (L = large, S = small) and "
                "a percentage, e.g. 'L40-S40-L20', or letters only, e.g. 'LSL'."
            )
        for letter, _ in tokens:
            if letter.upper() not in MODEL_LETTERS:
                raise ValueError(
                    f"schedule {text!r}: unknown model letter {letter!r}; use L (large) or S (small)."
                )
        percents = _percentages(text, [number for _, number in tokens])
        stages = tuple(
            Stage(MODEL_LETTERS[letter.upper()], percent / 100)
            for (letter, _), percent in zip(tokens, percents, strict=True)
        )
        return cls(stages, axis, written=text.strip())

    @classmethod
    def adaptive_window(cls, text: str, axis: str = "step") -> Schedule:
        """An adaptive schedule whose threshold is left to a fit (calibrate, tune): ``"L20:60-S-L20"`` (a
        threshold, when written, is kept). Without one the threshold is 0: every sample switches at the
        ceiling until a fit sets it."""
        if not isinstance(text, str) or ":" not in text:
            raise ValueError(
                f"adaptive window {text!r}: write the floor and ceiling of the switch as percentages and the "
                "stages after it, e.g. 'L20:60-S-L20' (or 'L20:60-S' to end on the small model)."
            )
        return cls._parse_adaptive(text, axis, threshold_required=False)

    @classmethod
    def _parse_adaptive(cls, text: str, axis: str, threshold_required: bool) -> Schedule:
        match = _ADAPTIVE.fullmatch(text.strip())
        if match is not None and threshold_required and match.group(3) is None:
            raise ValueError(
                f"adaptive schedule {text!r} has no threshold: write one after '~' (e.g. "
                f"{ADAPTIVE_EXAMPLE}), or let calibrate or tune fit it (--adaptive {text.strip()})."
            )
        if match is None:
            raise ValueError(
                f"adaptive schedule {text!r} is malformed: write 'L<floor>:<ceiling>~<threshold>-S' and "
                f"optionally '-L<last>', in percent, e.g. {ADAPTIVE_EXAMPLE} (large until the output settles "
                "below 0.05, between 20 % and 60 % of the steps, then small, then large for the last 20 %)."
            )
        floor, ceiling, threshold, late = match.groups()
        late_share = Fraction(late) / 100 if late is not None else Fraction(0)
        if late is not None and not 0 < late_share < 1 - Fraction(ceiling) / 100:
            raise ValueError(
                f"adaptive schedule {text!r}: the last large stage ({late} %) must be positive and leave the "
                f"small stage room after the ceiling ({ceiling} %), e.g. {ADAPTIVE_EXAMPLE}."
            )
        switch = AdaptiveSwitch(
            Fraction(floor) / 100, Fraction(ceiling) / 100, float(threshold) if threshold else 0.0
        )
        stages = [Stage("large", switch.ceiling), Stage("small", 1 - switch.ceiling - late_share)]
        stages += [Stage("large", late_share)] if late_share else []
        return cls(tuple(stages), axis, switch, written=text.strip())

    @classmethod
    def coerce(cls, schedule: str | Schedule, axis: str | None = None) -> Schedule:
        """Accept a string or a Schedule; ``axis`` (when given) overrides the schedule's axis."""
        if isinstance(schedule, Schedule):
            return schedule if axis is None or axis == schedule.axis else replace(schedule, axis=axis)
        return cls.parse(schedule, axis or "step")

    def with_threshold(self, threshold: float) -> Schedule:
        """This adaptive schedule with another switch threshold (what calibrate and tune fit)."""
        if self.adaptive is None:
            raise ValueError(f"schedule {self} is not adaptive; write one like {ADAPTIVE_EXAMPLE}.")
        return replace(self, adaptive=replace(self.adaptive, threshold=float(threshold)), written="")

    @classmethod
    def from_models(cls, models: list[str]) -> Schedule:
        """The step-axis schedule running ``models[i]`` at step ``i`` (exact shares ``count / N``)."""
        if not models:
            raise ValueError("from_models needs at least one step's model.")
        runs: list[list] = []
        for model in models:
            if runs and runs[-1][0] == model:
                runs[-1][1] += 1
            else:
                runs.append([model, 1])
        return cls(tuple(Stage(model, Fraction(count, len(models))) for model, count in runs))

    # ------------------------------------------------------------------------------------------ queries
    def __str__(self) -> str:
        if self.adaptive is not None:
            return self.adaptive_text(with_threshold=True)
        return "-".join(str(stage) for stage in self.stages)

    def adaptive_text(self, with_threshold: bool = False) -> str:
        """An adaptive schedule as written: ``L20:60~0.05-S-L20``, or its window alone (``L20:60-S-L20``,
        what calibrate and tune fit a threshold for)."""
        switch = self.adaptive
        threshold = f"~{_plain(switch.threshold)}" if with_threshold else ""
        text = f"L{_percent_text(switch.floor)}:{_percent_text(switch.ceiling)}{threshold}-S"
        return text + (f"-{self.stages[2]}" if len(self.stages) == 3 else "")

    @property
    def as_written(self) -> str:
        """The text it was parsed from (``"lsl"``), else its canonical form (``"L40-S40-L20"``)."""
        return self.written or str(self)

    @property
    def boundaries(self) -> tuple[Fraction, ...]:
        """Cumulative end of each stage, as exact fractions of the axis (the last is 1)."""
        ends, total = [], Fraction(0)
        for stage in self.stages:
            total += stage.share
            ends.append(total)
        return tuple(ends)

    @property
    def models(self) -> frozenset[str]:
        return frozenset(stage.model for stage in self.stages)

    def advice(self) -> list[str]:
        """What is probably not intended, whatever the step count (see :meth:`Plan.advice` for the rest)."""
        if "large" in self.models and self.stages[-1].model == "small":
            return [
                f"schedule {self} ends on the small model: the last steps fix fine detail, which the small "
                "model leaves noisy (the paper keeps them on the large one, L-S-L); end with an L stage."
            ]
        return []

    def stages_for_step_count(self, num_steps: int) -> list[int]:
        """Stage index of each of ``num_steps`` solver steps on the ``step`` axis (see module docstring); for
        an adaptive schedule, its latest layout (every sample switching at the ceiling)."""
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps} must be at least 1.")
        starts = [0] + [round_half_up(end * num_steps) for end in self.boundaries]
        return [k for k in range(len(self.stages)) for _ in range(starts[k], starts[k + 1])]

    def models_for_step_count(self, num_steps: int) -> list[str]:
        """The model (``"large"`` / ``"small"``) of each of ``num_steps`` solver steps on the ``step``
        axis."""
        return [self.stages[k].model for k in self.stages_for_step_count(num_steps)]

    def stage_at_progress(self, progress: float) -> int:
        """Stage index owning ``progress`` in [0, 1] on the ``sigma`` axis (half-open stage intervals)."""
        for k, end in enumerate(self.boundaries):
            if progress < float(end) - 1e-9:
                return k
        return len(self.stages) - 1

    # --------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schedule": str(self),
            "axis": self.axis,
            "stages": [
                {"model": s.model, "share": [s.share.numerator, s.share.denominator]} for s in self.stages
            ],
        }
        if self.adaptive is not None:
            switch = self.adaptive
            data["adaptive"] = {
                "floor": [switch.floor.numerator, switch.floor.denominator],
                "ceiling": [switch.ceiling.numerator, switch.ceiling.denominator],
                "threshold": switch.threshold,
            }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        stages = tuple(Stage(s["model"], Fraction(*s["share"])) for s in data["stages"])
        switch = data.get("adaptive")
        adaptive = (
            AdaptiveSwitch(Fraction(*switch["floor"]), Fraction(*switch["ceiling"]), switch["threshold"])
            if switch
            else None
        )
        return cls(stages, data.get("axis", "step"), adaptive)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        return cls.from_dict(json.loads(text))


def _percentages(text: str, numbers: list[str]) -> list[Fraction]:
    given = [number for number in numbers if number]
    if given and len(given) != len(numbers):
        raise ValueError(
            f"schedule {text!r}: give a percentage for every stage or for none (e.g. 'L40-S40-L20' or 'LSL')."
        )
    if not given:
        if len(numbers) == 3:
            return list(PAPER_THREE_STAGE_LAYOUT)
        return [Fraction(100, len(numbers))] * len(numbers)
    percents = [Fraction(number) for number in numbers]
    if any(p <= 0 for p in percents):
        raise ValueError(f"schedule {text!r}: every stage needs a positive percentage.")
    total = sum(percents)
    # A schedule printed from step counts carries rounded thirds and sixths (L16.6667-S16.6667-L66.6667):
    # a sum off by its rounding is read as the shares it was printed from.
    if abs(total - 100) > Fraction(1, 1000) * len(percents):
        raise ValueError(
            f"schedule {text!r}: percentages sum to {float(total):.6g}; they must sum to 100 "
            "(e.g. 'L40-S40-L20')."
        )
    return [percent * 100 / total for percent in percents]


def round_half_up(value: Fraction) -> int:
    """``floor(value + 1/2)``, exactly: where a boundary at ``value`` steps lands (see module docstring)."""
    return int((value + Fraction(1, 2)).__floor__())


def _percent_text(share: Fraction) -> str:
    percent = share * 100
    return str(percent.numerator) if percent.denominator == 1 else f"{float(percent):g}"


def _plain(value: float) -> str:
    """A threshold as a plain decimal: ``0.00001``, never ``1e-05`` (its minus sign reads as a separator)."""
    text = format(Decimal(repr(float(value))), "f")
    return text[:-2] if text.endswith(".0") else text
