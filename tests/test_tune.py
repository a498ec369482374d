"""``flowblending-accel tune`` on a tiny Wan folder: the pick respects its goal, is reproducible, round-trips
into bench and check through tuned.toml, costs less than the grid it replaces (and agrees with it), and
every bad budget or knob is refused before a model is loaded. Prefix replay is exact."""

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from flowblending_accel import add_flowblending_listener, flowblending
from flowblending_accel.analysis.replay import PrefixReplay
from flowblending_accel.analysis.scores import passes
from flowblending_accel.cli import main
from flowblending_accel.tiny_models import save_tiny_folders, tiny_wan_pipeline, wan_call_kwargs

PROMPTS = [
    "a cat playing guitar",
    "a dog on the moon",
    "a polar bear washing dishes",
    "a teddy bear in the city",
]
SMALL_SPACE = ["--step-counts", "10", "6", "--cache-thresholds", "0.1", "0.3"]


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    large, small = save_tiny_folders(root, "wan")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return ["--large", large, "--small", small, "--prompts", str(root / "prompts.txt")]


def _tune(wan, tmp_path, *extra, name="out"):
    argv = ["tune", *wan, "--height", "16", "--width", "16", "--frames", "5", "--steps", "10"]
    argv += ["--scorers", "psnr", "ssim", "--seeds", "1", "--holdout-seeds", "1", "--repeats", "1"]
    assert main([*argv, *SMALL_SPACE, *extra, "--output", str(tmp_path / name)]) == 0
    return json.loads((tmp_path / name / "tune.json").read_text())


def test_the_pick_keeps_the_tolerance_and_round_trips_into_bench_and_check(wan, tmp_path):
    document = _tune(wan, tmp_path)
    chosen, goal = document["chosen"], document["goal"]["tolerance"]
    assert goal == document["match"]["scores"]  # default: the hand-picked schedule's fit-set scores
    assert passes(chosen["fit"]["scores"], goal) and chosen["fit"]["flop_ratio"] < 0.683  # below L40-S40-L20
    assert list(document["held_out"]["rows"])[0] == "LLL" and "tuned" in document["held_out"]["rows"]
    cost = document["cost"]
    assert cost["pipeline_calls"] < cost["grid_pipeline_calls"] and cost["denoiser_calls_replayed"] > 0
    toml = tmp_path / "out" / "tuned.toml"
    size = ["--height", "16", "--width", "16", "--frames", "5", "--steps", "10", "--config", str(toml)]
    assert main(["bench", *wan, *size, "--repeats", "1", "--output", str(tmp_path / "bench")]) == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert rows[1]["schedule"] == chosen["schedule"] and rows[-1]["stack"] == chosen["stack"]
    expected = str(tmp_path / "expected.csv")
    assert main(["check", *wan, *size, "--expected", expected, "--update"]) == 0
    assert main(["check", *wan, *size, "--expected", expected]) == 0


def test_the_printed_bench_line_runs_as_printed_on_the_tuned_folders(wan, tmp_path, monkeypatch):
    document = _tune(wan, tmp_path, "--max-calls", "40")
    toml = (tmp_path / "out" / "tuned.toml").read_text()
    paths = re.findall(r'(?:large|small|prompts) = "([^"]+)"', toml)
    assert len(paths) == 5 and not any(Path(p).is_absolute() for p in paths), toml  # relative to the file
    report = (tmp_path / "out" / "tune.md").read_text()
    printed = re.search(r"as bench takes it: `(flowblending-accel bench [^`]+)`", report)
    assert printed and printed.group(1) == document["chosen"]["bench"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths in the line and the file hold from any folder
    argv = shlex.split(printed.group(1))[1:]
    assert main(argv) == 0
    bench = json.loads(next(elsewhere.glob("*/bench.json")).read_text())
    assert bench["context"]["description"] == document["target"]  # the tuned folders, not the embedded pair
    assert bench["rows"][1]["schedule"] == document["chosen"]["schedule"]


def test_a_flop_budget_is_respected_and_a_hand_made_stack_is_scored_beside_the_pick(wan, tmp_path):
    document = _tune(wan, tmp_path, "--flop-budget", "0.45", "--compare", "L50-S50 dpm++:6 fbc:0.3")
    assert document["chosen"]["fit"]["flop_ratio"] <= 0.45
    compared = document["alone"]["compared: L50-S50 dpm++:6 fbc:0.3"]
    assert compared["label"] == "L50-S50 dpm++:6 fbc:0.3" and compared["scores"]
    row = document["held_out"]["rows"]["compared: L50-S50 dpm++:6 fbc:0.3"]
    assert row["stack"] == ["dpm++:6", "fbc:0.3"] and row["schedule"] == "L50-S50"


@pytest.mark.slow
def test_reproducible_and_compared_with_the_grid(wan, tmp_path):
    grid_space = ["--steps", "6", "--step-counts", "4", "--cache-thresholds", "0.3"]  # 62 points
    first = _tune(wan, tmp_path, *grid_space, "--grid", name="a")
    second = _tune(wan, tmp_path, *grid_space, name="b")
    assert first["chosen"]["schedule"] == second["chosen"]["schedule"]
    assert first["chosen"]["stack"] == second["chosen"]["stack"]
    assert first["chosen"]["fit"]["scores"] == second["chosen"]["fit"]["scores"]
    grid, cost = first["grid"], first["cost"]
    assert grid["points"] == cost["grid_points"] and grid["pick"] is not None
    assert cost == second["cost"]  # the search's own cost, whether or not the grid ran after it
    assert passes(grid["pick"]["scores"], first["goal"]["tolerance"])
    # Random weights make quality jump with the placement; the search is checked against the grid on the
    # embedded pair (benchmarks/results/tune-grid); here it must at least beat FlowBlending alone.
    assert first["chosen"]["fit"]["flop_ratio"] < first["alone"]["FlowBlending alone"]["flop_ratio"]


@pytest.mark.slow
def test_a_latency_budget_picks_a_timed_frontier_point(wan, tmp_path):
    small = ["--steps", "6", "--step-counts", "4", "--cache-thresholds"]  # few frontier points to time
    document = _tune(wan, tmp_path, *small, "--latency-budget", "0.5")
    frontier = {e["label"] for e in document["frontier"]}
    chosen = " ".join([document["chosen"]["schedule"], *document["chosen"]["stack"]])
    assert chosen in frontier or document["chosen"]["fit"]["flop_ratio"] <= 0.5  # else the FLOP-budget pick
    assert document["goal"]["latency_budget"] == 0.5 and document["timing"]["tuned"]["speedup"]["median"] > 0


def test_a_call_budget_stops_the_search_and_still_writes(wan, tmp_path, capsys):
    # --max-calls holds the whole run: 29 calls of fixed parts here, the search gets the rest.
    document = _tune(wan, tmp_path, "--max-calls", "40")
    assert "tune: the search stopped: the call budget was spent (--max-calls 40)" in capsys.readouterr().err
    assert document["cost"]["budget_spent"] is True
    assert document["run"]["plan"].startswith("tune will make at most")
    assert (tmp_path / "out" / "tune.md").read_text().count("call budget was spent") == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--flop-budget", "1.5"], "--flop-budget 1.5 is a fraction of large-only FLOPs"),
        (["--latency-budget", "2"], "--latency-budget 2 is a fraction of large-only time"),
        (["--cache-thresholds", "0.3", "0.1"], "give them in ascending order"),
        (["--extra-stack", "fbc"], "--extra-stack fbc:0.05: only members that leave the output"),
        (["--solver", "nope"], "--solver 'nope' is unknown"),
        (["--match", "L40-X60"], "unknown model letter 'X'"),
        (["--grid", "--max-calls", "4"], "--grid runs every point of the space; it takes no --max-calls"),
        (["--tolerance", "psnr=high"], "write SCORER=MIN pairs"),
        (["--tolerance", "lpips=0.3"], "unknown score lpips"),
        (["--flop-budget", "0.5", "--tolerance", "psnr=30"], "not allowed with argument"),
        (["--compare", "L40-S40-L20 compile"], "compile is not a knob tune compares"),
        (["--compare", "L40-S40-L20 dpm++:8 unipc:6"], "unipc:6 is not a knob tune compares"),
    ],
)
def test_bad_budgets_and_knobs_are_refused_before_loading(wan, tmp_path, capsys, no_loading, extra, message):
    argv = ["tune", *wan, "--scorers", "psnr", *extra, "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_prefix_replay_is_exact_and_saves_calls(wan_pair):
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    with flowblending(pipe, small, "L40-S50-L10"):
        expected = pipe(**wan_call_kwargs(steps=10)).frames
    replay = PrefixReplay()
    replay.context = "call 0"
    for schedule in ("L40-S40-L20", "L40-S50-L10"):
        with flowblending(pipe, small, schedule):
            add_flowblending_listener(pipe, replay)
            frames = pipe(**wan_call_kwargs(steps=10)).frames
    assert torch.equal(frames, expected)
    assert replay.replayed == 16 and replay.mismatched == 0  # steps 0-7 (two CFG calls each) came from memory


def test_counting_a_cached_points_flops_leaves_the_fit_noise_alone(tmp_path):
    """A FLOP count runs the pipeline: it must not advance the fit calls' generators (every later point
    would then be scored on other noise than its reference)."""
    from flowblending_accel.analysis.tune import Evaluator, Point
    from flowblending_accel.metrics.scorers import build_scorers
    from flowblending_accel.targets.presets import preset_target

    target = preset_target("tiny-wan", "cpu", torch.float32, steps=6)
    scorers, _ = build_scorers(["psnr"], {})
    evaluator = Evaluator(target, target.calls(target.prompts, [0, 1]), scorers, 6)
    before = evaluator.evaluate(Point(("large",) * 2 + ("small",) * 2 + ("large",) * 2)).scores
    evaluator.evaluate(Point(("large",) * 6, cache=0.3))
    evaluator.evaluations.clear()
    assert evaluator.evaluate(Point(("large",) * 2 + ("small",) * 2 + ("large",) * 2)).scores == before


def test_the_frontier_keeps_the_shorter_stack_of_tied_points_and_drops_dominated_ones():
    from flowblending_accel.analysis.tune import Evaluation, Point
    from flowblending_accel.analysis.tune_search import frontier

    steps = ("large",) * 6
    plain = Evaluation(Point(steps, "dpm++"), 0.3, {"ssim": 0.9})
    idle_cache = Evaluation(Point(steps, "dpm++", cache=0.05), 0.3, {"ssim": 0.9})
    worse = Evaluation(Point(steps, "dpm++", cache=0.3), 0.3, {"ssim": 0.8})
    cheaper = Evaluation(Point(("large",) * 4, "dpm++"), 0.2, {"ssim": 0.7})
    rejected = Evaluation(Point(("small",) * 4, "dpm++"), 0.1, None, rejected=True)
    assert frontier([idle_cache, worse, plain, cheaper, rejected]) == [cheaper, plain]


class _Landscape:
    """The evaluator's interface over a known quality landscape (no pipeline): each small step costs 0.01
    and a cache threshold t costs 0.05 t per large step it covers, skipping t of the work; a small step
    costs 0.1 of a large one. The search must find what the grid finds."""

    per_call = {"large": 1.0, "small": 0.1}

    def __init__(self, full):
        self.full, self.evaluations = full, {}

    def evaluate(self, point, must_reach=None):
        from flowblending_accel.analysis.tune import Evaluation

        if point not in self.evaluations:
            k, large = point.small_steps, point.steps - point.small_steps
            skip = point.cache or 0.0
            flops = (large + 0.1 * k) * (1 - skip) / self.full
            score = 1 - 0.01 * k - 0.05 * skip * large / self.full - 0.02 * (self.full - point.steps)
            self.evaluations[point] = Evaluation(point, flops, {"q": score}, {"q": score})
        return self.evaluations[point]

    def placements(self, steps, solver, guidance):
        from flowblending_accel.analysis.tune_search import _one_stage

        return {k: _one_stage(steps, k)[1:2] for k in range(1, steps)}


def test_a_cache_can_pay_for_fewer_small_steps_and_the_search_finds_the_grids_pick():
    from flowblending_accel.analysis.scores import passes
    from flowblending_accel.analysis.tune_search import TuneSpace, grid_points, search_tolerance

    space = TuneSpace((10, 8), "dpm++", (0.1, 0.2, 0.3))
    landscape = _Landscape(10)
    result = search_tolerance(landscape, space, {"q": 0.955}, 3.0, lambda steps: None)
    grid = [landscape.evaluate(p) for p in grid_points(space)]
    best = min((e for e in grid if passes(e.scores, {"q": 0.955})), key=lambda e: e.flop_ratio)
    assert result.chosen.flop_ratio == pytest.approx(best.flop_ratio)
    assert result.chosen.point.cache is not None and result.chosen.point.small_steps < 4
