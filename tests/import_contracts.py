"""A custom import-linter contract: no module imports another module's ``_private`` names.

Configured in pyproject.toml (``[tool.importlinter]``, ``contract_types``). Private module names are covered
too (``from .pkg import _helpers``); dunders (``__version__``) are public by convention.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache

from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@cache
def _import_nodes(module: str) -> dict[int, ast.AST]:
    spec = importlib.util.find_spec(module)
    source = open(spec.origin, encoding="utf-8").read()  # noqa: SIM115
    return {
        node.lineno: node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
    }


def private_names(importer: str, imported: str, line_number: int) -> list[str]:
    """The private names the import statement at ``line_number`` of ``importer`` takes from ``imported``."""
    found = [part for part in imported.split(".") if _private(part)]
    node = _import_nodes(importer).get(line_number)
    if isinstance(node, ast.ImportFrom):
        found += [alias.name for alias in node.names if _private(alias.name)]
    return found


class PrivateNamesContract(Contract):
    """Modules under ``containers`` may not import a ``_private`` name (or module) from one another."""

    type_name = "private_names"

    containers = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        violations = []
        for container in self.containers:
            modules = graph.find_descendants(container) | {container}
            for importer in sorted(modules):
                for imported in sorted(graph.find_modules_directly_imported_by(importer) & modules):
                    for detail in graph.get_import_details(importer=importer, imported=imported):
                        names = private_names(importer, imported, detail["line_number"])
                        if names:
                            violations.append((importer, imported, detail["line_number"], names))
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for importer, imported, line, names in check.metadata["violations"]:
            output.print_error(
                f"{importer}:{line} imports private {', '.join(names)} from {imported}: make it public "
                "(a documented accessor) or move the code that needs it."
            )
