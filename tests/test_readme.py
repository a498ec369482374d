"""The README's two commands are the ones CI runs and the CLI provides."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = (
    "python3 -m venv .venv && . .venv/bin/activate && "
    'pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q'
)


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in (ROOT / "README.md").read_text()
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()
    assert "\npython -m pytest -q -m slow\n" in (ROOT / ".ci" / "run").read_text()  # and what it leaves out


def test_readme_main_command_installs_the_pinned_cpu_torch():
    readme = (ROOT / "README.md").read_text()
    main_lines = [
        line for line in readme.splitlines() if line.startswith("python3 -m venv") and "[demo]" in line
    ]
    assert len(main_lines) == 1 and "torch==2.13.0" in main_lines[0]


@pytest.mark.slow  # the stack example compiles both models
def test_readme_python_examples_run_as_written(monkeypatch):
    """Every ```python block of the README (but those launched by torchrun), in order, in one namespace, with
    tiny stand-ins for the hub checkpoints and the GPU (the text of the examples is not changed)."""
    from diffusers import WanPipeline, WanTransformer3DModel

    from flowblending_accel.tiny_models import tiny_wan_pair, tiny_wan_pipeline, with_text

    large, small = tiny_wan_pair()
    pipe = with_text(tiny_wan_pipeline(large), "wan")
    monkeypatch.setattr(WanPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe))
    monkeypatch.setattr(WanTransformer3DModel, "from_pretrained", classmethod(lambda cls, *a, **k: small))
    for cls in (WanPipeline, WanTransformer3DModel):
        original_to = cls.to
        monkeypatch.setattr(
            cls, "to", lambda self, *a, _to=original_to, **k: self if a == ("cuda",) else _to(self, *a, **k)
        )
    call = WanPipeline.__call__
    small_video = {"height": 16, "width": 16, "num_frames": 5}  # the tiny model's size, not 480x832x81
    monkeypatch.setattr(WanPipeline, "__call__", lambda self, *a, **k: call(self, *a, **{**small_video, **k}))
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    # A block marked "# launch: torchrun" needs several processes; tests/test_context_parallel.py makes the
    # same calls (flowblending(..., parallel=ContextParallelConfig(ulysses_degree=2))) under two.
    blocks = [block for block in blocks if not block.startswith("# launch: torchrun")]
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["router"].last_run.steps_per_model == {"large": 15, "small": 10}  # 25 DPM++ steps


def test_readme_performance_section_is_rendered_from_the_committed_results():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "performance_table", ROOT / "benchmarks" / "performance_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() in (ROOT / "README.md").read_text(), (
        "run python benchmarks/performance_table.py --write"
    )
