"""The layering holds (import-linter contracts in pyproject.toml), no module reaches into another's private
names or attributes, and the command line's help never imports torch."""

import ast
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
from import_contracts import PrivateNamesContract
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flowblending_accel"


def test_import_contracts_hold(monkeypatch):
    monkeypatch.chdir(ROOT)
    # import-linter configures its logging with dictConfig, which disables every logger that exists: the
    # package's loggers (whose notes later tests read) are enabled again after it.
    enabled = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.disabled
    ]
    try:
        assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0
    finally:
        for logger in enabled:
            logger.disabled = False


def test_private_names_contract_catches_an_import(tmp_path, monkeypatch):
    package = tmp_path / "layered"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "inner.py").write_text("_hidden = 1\nshown = 2\n")
    (package / "outer.py").write_text("from .inner import (\n    shown,\n    _hidden,\n)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    contract = PrivateNamesContract(
        name="private", session_options={}, contract_options={"containers": ["layered"]}
    )
    check = contract.check(grimp.build_graph("layered"), verbose=False)
    assert not check.kept and check.metadata["violations"] == [
        ("layered.outer", "layered.inner", 1, ["_hidden"])
    ]


# Names a class of ours overrides from a library's base class: the library's, not ours. _is_stateful:
# diffusers' ModelHook flag, set by ModelRouter, read by diffusers_internals on every hook.
INHERITED = {"_is_stateful"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _own_private_attributes() -> dict[str, set[str]]:
    """Private attribute and method names each module of the package defines on its classes."""
    defined: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ClassDef):
                names = [
                    item.name
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
                names += [
                    t.id
                    for item in node.body
                    if isinstance(item, ast.Assign | ast.AnnAssign)
                    for t in (item.targets if isinstance(item, ast.Assign) else [item.target])
                    if isinstance(t, ast.Name)
                ]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names = [node.attr]
            for name in set(filter(_private, names)) - INHERITED:
                defined.setdefault(name, set()).add(str(path))
    return defined


def test_no_module_reaches_into_another_modules_private_attributes():
    defined = _own_private_attributes()
    offences = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and _private(node.attr) and node.attr in defined):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if str(path) not in defined[node.attr]:
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert offences == [], "private attributes used outside the module that defines them:\n" + "\n".join(
        offences
    )


def test_help_imports_no_torch_and_lists_each_command_once():
    script = textwrap.dedent("""
        import contextlib, io, sys
        from flowblending_accel.cli import DESCRIPTION, build_parser
        parser = build_parser()
        commands = list(parser._subparsers._group_actions[0].choices)
        for command in [[]] + [[name] for name in commands]:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                parser.parse_args(command + ["--help"])
        listed = [line.split()[0] for line in DESCRIPTION.split("commands:")[1].splitlines() if line.strip()]
        print(sorted(commands) == sorted(listed) and len(set(listed)) == len(listed), "torch" in sys.modules)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.split() == ["True", "False"], result.stdout + result.stderr


def _architecture_rows() -> list[str]:
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("\n## ", 1)[0]  # the table, before "One denoiser call"
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| layer")]


def test_docs_architecture_names_every_module_in_its_folder_row():
    """Each folder of the package has one row in the table of docs/architecture.md naming every module in it
    (as `module`), and every folder or module the table names exists."""
    package = ROOT / "flowblending_accel"
    rows = _architecture_rows()
    for folder in sorted(p for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        row = next((r for r in rows if f"`{folder.name}/`" in r), None)
        assert row is not None, f"docs/architecture.md: no row for {folder.name}/"
        modules = sorted(m.stem for m in folder.rglob("*.py") if m.stem not in ("__init__", "__main__"))
        missing = [module for module in modules if f"`{module}`" not in row]
        assert not missing, f"docs/architecture.md: the {folder.name}/ row does not name {missing}"
    named = {name for row in rows for name in re.findall(r"`(\w+)/`", row)}
    assert named <= {p.name for p in package.iterdir() if p.is_dir()}, named
    loose = [p.stem for p in package.glob("*.py") if p.stem != "__init__"]
    assert not loose, f"modules at the package root, outside every layer: {loose}"


def test_every_public_name_of_the_package_resolves():
    """``import flowblending_accel`` exports its public names lazily: each points at a module that exists."""
    import flowblending_accel

    for name in flowblending_accel.__all__:
        assert getattr(flowblending_accel, name) is not None, name
