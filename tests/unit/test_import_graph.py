"""The project's import graph has no cycles, and late imports of its own modules are few and explained.

The graph is built from the source with ``ast`` (nothing is imported): every ``.py`` under
``core/`` and ``pages/`` plus ``app.py``. An edge is any import of one of those modules,
wherever it stands: at module level, under ``if TYPE_CHECKING:`` or inside a function (a late
import that closes a cycle is still a cycle). ``from core.ui import cache`` counts as an import
of ``core.ui.cache`` when that is a module, ``from core.x import name`` as one of ``core.x``.
Importing a submodule runs its package's ``__init__`` too; that implicit edge is not counted,
so a package may re-export its submodules.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("core", "pages")
TOP_LEVEL = ("app.py",)

# The most function-level imports of the project's own modules the issue allows: each keeps an
# optional heavy dependency (Ray, TorchCodec, umap-learn) off the import path.
MAX_LATE_IMPORTS = 8


@dataclass(frozen=True)
class Import:
    """One import of a project module: who imports what, where, and whether inside a function."""

    importer: str
    imported: str
    path: Path
    line: int
    late: bool


def module_name(path: Path) -> str:
    """``core/ui/cache.py`` -> ``core.ui.cache``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    """Every project module by dotted name."""
    files = [REPO / name for name in TOP_LEVEL]
    for root in ROOTS:
        files += sorted((REPO / root).rglob("*.py"))
    return {module_name(path): path for path in files if "__pycache__" not in path.parts}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to: itself, else its longest module prefix, else None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def base_of(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


class ImportCollector(ast.NodeVisitor):
    """Collects the project imports of one module, noting those inside a function body."""

    def __init__(self, importer: str, path: Path, modules: dict[str, Path]) -> None:
        self.importer = importer
        self.path = path
        self.modules = modules
        self.depth = 0
        self.found: list[Import] = []

    def add(self, name: str | None, node: ast.stmt) -> None:
        if name is not None and name != self.importer:
            self.found.append(Import(self.importer, name, self.path, node.lineno, self.depth > 0))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(resolve(alias.name, self.modules), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = base_of(node, self.importer, self.path.name == "__init__.py")
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self.add(submodule if submodule in self.modules else resolve(base, self.modules), node)


def project_imports() -> list[Import]:
    """Every import of a project module by a project module."""
    modules = project_files()
    found: list[Import] = []
    for name, path in modules.items():
        collector = ImportCollector(name, path, modules)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found += collector.found
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def graph(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for item in imports:
        edges.setdefault(item.importer, set()).add(item.imported)
    return edges


def describe(component: list[str], imports: list[Import]) -> str:
    """A cycle with the import lines that hold it together."""
    members = set(component)
    lines = [
        f"    {item.importer} -> {item.imported} ({item.path.relative_to(REPO)}:{item.line}"
        f"{', late' if item.late else ''})"
        for item in imports
        if item.importer in members and item.imported in members
    ]
    return "cycle: " + ", ".join(component) + "\n" + "\n".join(sorted(set(lines)))


def late_imports(imports: list[Import]) -> list[Import]:
    """Function-level imports of project modules, one per import statement."""
    seen: set[tuple[Path, int]] = set()
    late = []
    for item in imports:
        if item.late and (item.path, item.line) not in seen:
            seen.add((item.path, item.line))
            late.append(item)
    return late


def has_reason(item: Import) -> bool:
    """A comment on the import's own line or the line above it."""
    lines = item.path.read_text(encoding="utf-8").splitlines()
    here = lines[item.line - 1]
    above = lines[item.line - 2].strip() if item.line > 1 else ""
    return "#" in here or above.startswith("#")


def test_the_graph_sees_the_project():
    edges = graph(project_imports())
    assert {"core.ui.context", "core.ui.workshop"} <= edges["app"]  # `from core.ui import workshop`
    assert "core.methods.spotlight.search" in edges["core.methods"]  # a package's re-exports
    assert len(project_files()) > 50


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    imports = project_imports()
    found = cycles(graph(imports))
    assert not found, "import cycles among the project's modules:\n" + "\n".join(
        describe(component, imports) for component in found
    )


def test_late_imports_are_few_and_explained():
    late = late_imports(project_imports())
    unexplained = [
        f"{item.path.relative_to(REPO)}:{item.line} imports {item.imported}"
        for item in late
        if not has_reason(item)
    ]
    assert not unexplained, "function-level imports without a one-line reason:\n" + "\n".join(
        unexplained
    )
    assert len(late) <= MAX_LATE_IMPORTS, "\n".join(
        f"{item.path.relative_to(REPO)}:{item.line} imports {item.imported}" for item in late
    )


def test_core_is_packages_by_job():
    """core/'s top level is the architecture: packages, plus at most 6 modules."""
    core = REPO / "core"
    modules = sorted(p.name for p in core.glob("*.py"))
    packages = sorted(p.name for p in core.iterdir() if (p / "__init__.py").exists())
    assert len(modules) <= 6, modules
    assert {"data", "models", "store", "methods", "scoring", "services", "ui", "demo"} <= set(packages)
    methods = sorted(p.name for p in (core / "methods").iterdir() if (p / "__init__.py").exists())
    # beside the method packages only the two contracts they share: method records and explainers
    assert sorted(p.name for p in (core / "methods").glob("*.py")) == ["__init__.py", "explainer.py", "records.py"]
    for method in methods:  # each method package defines its record
        assert (core / "methods" / method / "record.py").exists(), method
    assert methods == ["activis", "intersectional", "saliency", "spotlight", "subgroups"]


# The packages from the bottom up (README, Architecture: "Package layering"): a module imports
# only modules of its own package or of packages before it, but for the exceptions below.
LAYERS = ("core.errors", "core.limits", "core.specs", "core.registry", "core.data", "core.models", "core.store", "core.scoring",
          "core.methods", "core.demo", "core.services", "core.ui", "core.__main__", "pages")
EXCEPTIONS = {
    ("core.registry", "core.data.datasets"),  # the ImageDataset type a dataset kind builds
    ("core.methods.activis.rows", "core.services.cohorts"),  # ActiVis rows name saved cohorts...
    ("core.methods.activis.rows", "core.services.subsets"),  # ... and subsets
    ("core.methods.intersectional.features", "core.services.estimates"),  # the hosted byte cap
    ("core.store.ray_source", "core.services.workspace"),  # Ray workers rebuild the dataset from the workspace list
}


def layer(module: str) -> int:
    parts = module.split(".")
    name = "pages" if parts[0] in ("pages", "app") else ".".join(parts[:2])
    return LAYERS.index(name)


def test_packages_import_only_the_layers_below():
    upward = {(i.importer, i.imported) for i in project_imports() if layer(i.imported) > layer(i.importer)}
    assert upward == EXCEPTIONS, f"imports up the layers: {sorted(upward - EXCEPTIONS)}; stale exceptions: {sorted(EXCEPTIONS - upward)}"
