"""The README's two commands are the ones CI runs and the CLI provides."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = (
    "python3 -m venv .venv && . .venv/bin/activate && "
    'pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q'
)


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in (ROOT / "README.md").read_text()
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


def test_readme_main_command_installs_the_pinned_cpu_torch():
    readme = (ROOT / "README.md").read_text()
    main_lines = [
        line for line in readme.splitlines() if line.startswith("python3 -m venv") and "[demo]" in line
    ]
    assert len(main_lines) == 1 and "torch==2.13.0" in main_lines[0]
