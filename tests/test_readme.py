"""The README and the docs/ pages: the two commands are the ones CI runs, every code block runs or parses as
written, every link resolves, and the README stays a five-minute read."""

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport the project depends on there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
TEST_COMMAND = (
    "python3 -m venv .venv && . .venv/bin/activate && "
    'pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q'
)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), re.S | re.M)


def _python_blocks(page: Path) -> list[str]:
    # A block marked "# launch: torchrun" needs several processes; tests/test_context_parallel.py makes the
    # same calls (flowblending(..., FlowBlendingConfig(..., accelerators=["cp:2"]))) under two.
    return [block for block in _blocks(page, "python") if not block.startswith("# launch: torchrun")]


def _runs_here(block: str) -> bool:
    """A block marked "# needs: <feature>" runs where the installed diffusers has that feature
    (flowblending_accel.core.diffusers_versions); the others everywhere."""
    from flowblending_accel.core import diffusers_versions

    needs = re.match(r"# needs: (\w+)\n", block)
    return needs is None or diffusers_versions.has(needs.group(1))


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in README.read_text()
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()
    assert "\npython -m pytest -q -m slow\n" in (ROOT / ".ci" / "run").read_text()  # and what it leaves out


def test_readme_main_command_installs_the_pinned_cpu_torch():
    readme = README.read_text()
    main_lines = [
        line for line in readme.splitlines() if line.startswith("python3 -m venv") and "[demo]" in line
    ]
    assert len(main_lines) == 1 and "torch==2.13.0" in main_lines[0]


def test_readme_is_short_with_a_contents_list_in_section_order():
    readme = README.read_text()
    assert len(readme.splitlines()) <= 350
    contents = readme.split("\n## Contents\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"\]\(#([\w-]+)\)", contents)
    sections = [_slug(title) for title in re.findall(r"^## (.+)$", readme, re.M) if title != "Contents"]
    assert listed == sections


def test_every_docs_page_is_linked_from_the_readme():
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", README.read_text()))
    assert linked == {_name(page) for page in DOCS}


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # a "# comment" is no heading
    return {_slug(heading) for heading in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_and_anchor_resolves(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert not broken, f"{_name(page)}: {broken}"


def test_one_spelling_of_the_dtype_argument():
    """diffusers 0.42 deprecates from_pretrained(torch_dtype=...) for dtype=...: every example passes dtype=,
    and the text names torch_dtype= only to say so."""
    examples = [_name(page) for page in PAGES for block in _blocks(page, "python") if "torch_dtype" in block]
    assert not examples
    for page in PAGES:
        for paragraph in page.read_text().split("\n\n"):
            assert "torch_dtype" not in paragraph or "deprecate" in paragraph, (_name(page), paragraph)


def test_the_test_command_time_is_stated_once():
    """The test command's time appears in one paragraph of README and docs together (the README's)."""
    paragraphs = [(page, p) for page in PAGES for p in page.read_text().split("\n\n")]
    timed = [
        page for page, p in paragraphs if re.search(r"\d+ min", p) and re.search(r"run the tests|pytest", p)
    ]
    assert timed == [README], [_name(page) for page in timed]


def _documented_commands() -> list[tuple[str, str]]:
    """Every flowblending-accel command of a ```bash block, and every one quoted inline in the text with its
    arguments (but those with a "..." placeholder), as (page, arguments after the program name)."""
    found = []
    for page in PAGES:
        for block in _blocks(page, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                if line.startswith("flowblending-accel "):
                    found.append((_name(page), line.split(" ", 1)[1]))
        prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M).replace("\n", " ")
        for quoted in re.findall(r"`flowblending-accel ([^`]+)`", prose):
            if " " in quoted and "..." not in quoted and "|" not in quoted:
                found.append((_name(page), quoted))
    return found


def test_every_documented_command_parses():
    from flowblending_accel.cli import build_parser

    commands = _documented_commands()
    assert len(commands) >= 20 and {page for page, _ in commands} >= {"README.md", "docs/tune.md"}
    failed = []
    for page, arguments in commands:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                build_parser().parse_args(shlex.split(arguments, comments=True))
        except SystemExit as exit_:
            if exit_.code:
                failed.append(f"{page}: flowblending-accel {arguments}")
    assert not failed, failed


def test_the_documented_ci_job_is_the_workflow_job():
    """docs/ci-gate.md quotes the user-pipeline job of the shipped workflow (which the suite runs)."""
    (block,) = _blocks(ROOT / "docs" / "ci-gate.md", "yaml")
    workflow = yaml.safe_load((ROOT / "integrations" / "github" / "flowblending-check.yml").read_text())
    assert yaml.safe_load(block) == {"user-pipeline": workflow["jobs"]["user-pipeline"]}


def test_the_documented_config_file_is_the_example_project():
    (block,) = _blocks(ROOT / "docs" / "your-own-pipeline.md", "toml")
    example = ROOT / "integrations" / "github" / "example" / "flowblending.toml"
    assert tomllib.loads(block) == tomllib.loads(example.read_text())


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_blocks_compile(page):
    for number, block in enumerate(_python_blocks(page)):
        compile(block, f"{_name(page)} block {number}", "exec")


# After each page's blocks ran: what its last example left behind.
RAN = {
    "README.md": lambda ns: ns["router"].last_run.steps_per_model == {"large": 30, "small": 20},  # 50 steps
    "docs/stacking.md": lambda ns: ns["router"].last_run.steps_per_model == {"large": 15, "small": 10},  # 25
    "docs/your-own-pipeline.md": lambda ns: callable(ns["make"]),
}


@pytest.mark.slow  # the stacking page compiles both models
@pytest.mark.parametrize("page", [p for p in PAGES if _python_blocks(p)], ids=_name)
def test_python_examples_run_as_written(page, monkeypatch):
    """Every ```python block of a page (but those launched by torchrun), in order, in one namespace, with
    tiny stand-ins for the hub checkpoints and the GPU (the text of the examples is not changed). A docs page
    goes on from the README's "Use it", which loads the `pipe` and `small` its examples use."""
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
    _small_modular_calls(monkeypatch, small_video)
    namespace: dict = {}
    for ran in dict.fromkeys([README, page]):
        for block in filter(_runs_here, _python_blocks(ran)):
            exec(compile(block, _name(ran), "exec"), namespace)  # noqa: S102
    assert RAN.get(_name(page), lambda ns: True)(namespace)


def _small_modular_calls(monkeypatch, size: dict) -> None:
    """Modular pipelines run at the tiny model's size too (where this diffusers has them)."""
    try:
        from diffusers.modular_pipelines import ModularPipeline
    except ImportError:
        return
    call = ModularPipeline.__call__
    monkeypatch.setattr(ModularPipeline, "__call__", lambda self, *a, **k: call(self, *a, **{**size, **k}))


def test_performance_page_is_rendered_from_the_committed_results():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "performance_table", ROOT / "benchmarks" / "performance_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() in (ROOT / "docs" / "performance.md").read_text(), (
        "run python benchmarks/performance_table.py --write"
    )
