"""The divergence curve as a picture, with schedules' small-model stages shaded."""

from __future__ import annotations

import io

import numpy as np

from ..core.schedule import Schedule
from .divergence import DivergenceCurve


def _small_steps(schedule: str, steps: int) -> list[int]:
    return [
        i for i, model in enumerate(Schedule.parse(schedule).models_for_step_count(steps)) if model == "small"
    ]


def divergence_plot(
    curve: DivergenceCurve, overlay: str | None, evidence=None, second: str | None = None
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(len(curve.sigmas))
    figure, axis = plt.subplots(figsize=(8, 4.2))
    for measure in curve.values:
        mean, std = np.array(curve.mean(measure)), np.array(curve.std(measure))
        scale = max(mean.max(), 1e-12)
        axis.plot(steps, mean / scale, marker="o", markersize=3, label=f"{measure} (÷{scale:.3g})")
        axis.fill_between(steps, (mean - std) / scale, (mean + std) / scale, alpha=0.12)
    if evidence is not None:
        count = len(evidence.loss)
        for k, (name, values) in enumerate(evidence.loss.items()):
            loss = np.array(values)
            centres = (
                np.array(evidence.starts)
                + (evidence.window - 1) / 2
                + (k - (count - 1) / 2) * 0.9 * evidence.window / count
            )
            axis.bar(
                centres,
                loss / max(loss.max(), 1e-12),
                width=evidence.window * 0.9 / count,
                alpha=0.3,
                color=["black", "tab:purple", "tab:brown"][k % 3],
                label=f"measured {name} loss, small on a {evidence.window}-step window",
            )
    for schedule, colour, offset in ((overlay, "tab:green", 0.0), (second, "tab:red", 0.5)):
        if schedule:
            for i in _small_steps(schedule, len(steps)):
                axis.axvspan(
                    i - 0.5,
                    i + 0.5,
                    ymin=offset,
                    ymax=offset + 0.5 if second else 1.0,
                    color=colour,
                    alpha=0.08,
                    linewidth=0,
                )
            axis.plot([], [], color=colour, alpha=0.4, linewidth=6, label=f"small stages of {schedule}")
    axis.set_xlabel("solver step (sigma falls from left to right)")
    axis.set_ylabel("divergence, normalised per measure")
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    stream = io.BytesIO()
    figure.savefig(stream, format="png", dpi=120)
    plt.close(figure)
    return stream.getvalue()
