"""The import rules, checked in the style of click's import test.

1. **Entry points** — each runs in a fresh interpreter, which then reports the top-level modules
   it loaded; everything beyond the standard library (``sys.stdlib_module_names``) and what an
   empty interpreter loads must be on that entry point's allow-list. ``edgefleet --help`` and every
   subcommand's ``--help`` load Typer and the deployables' ``cli`` modules only; ``import
   edge_client`` loads nothing else (its names resolve lazily); ``import edgefleet.drift`` loads
   numpy and pydantic; the ClientApp module and the agent load the edge install only, never
   TensorFlow, FastAPI, SQLModel or scipy.
2. **The README's "may import" table** — every import statement of every package (at module level,
   inside functions or under ``TYPE_CHECKING``), read with :mod:`ast`: a first-party package, or a
   third-party one that the base install (:data:`BASE`) does not bring, must be named in the
   package's row. :data:`EXCEPTIONS` names the deliberate exceptions, each with its reason.
3. **No circles inside a package** — the graph of imports between a package's modules (every
   import statement, as above) has no cycle.
"""

from __future__ import annotations

import ast
import graphlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("edgefleet", "authoring", "registry", "server", "edge_client", "aggregation",
            "simulation", "edgefleet_cli")

# --- 1. entry points -----------------------------------------------------------------------------
_PROBE = r"""
import importlib, json, sys
kind, args = sys.argv[1], sys.argv[2:]
if kind == "cli":
    from edgefleet_cli.main import app
    try:
        app(args, prog_name="edgefleet")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
else:
    for name in args:
        importlib.import_module(name)
print(json.dumps(sorted({m.partition(".")[0] for m in sys.modules})))
"""
# interpreter and compiled-extension plumbing, whatever the entry point
_PLUMBING = re.compile(r"^(_cython_\d+_\d+_\d+|cython_runtime|_sysconfigdata_.*|__editable__.*)$")

TYPER = {"typer", "click", "rich", "markdown_it", "mdurl", "pygments", "shellingham"}
CLI = TYPER | {"attr", "edgefleet_cli", "aggregation", "authoring", "edge_client", "server",
               "simulation"}
PYDANTIC = {"pydantic", "pydantic_core", "annotated_types", "typing_extensions",
            "typing_inspection"}
CORE = {"edgefleet", "numpy"} | PYDANTIC
#: The ClientApp: the core, the agent's modules it reads with, Flower's client side and its deps.
CLIENT_APP = CORE | TYPER | {
    "edge_client", "pydantic_settings", "dotenv", "httpx", "idna", "flwr", "grpc", "grpc_health",
    "google", "cryptography", "Crypto", "_cffi_backend", "_openssl", "iterators",
    "brotli", "_brotli"}  # httpx's optional decoder, loaded when installed (tritonclient's deps)
#: Every module of the agent (``edgefleet agent run``): the ClientApp's and the metrics.
AGENT = CLIENT_APP | {"prometheus_client", "httpcore", "h11", "anyio", "sniffio", "certifi"}
SUBCOMMANDS = ("model", "server", "agent", "fl", "sim")


def _edge_modules() -> list[str]:
    return sorted(f"edge_client.{p.stem}" for p in (REPO / "edge_client").glob("*.py")
                  if p.stem != "__init__")


ENTRY_POINTS: dict[str, tuple[list[str], set[str]]] = {
    "edgefleet --help": (["cli", "--help"], CLI),
    **{f"edgefleet {c} --help": (["cli", c, "--help"], CLI) for c in SUBCOMMANDS},
    "edgefleet agent run --help": (["cli", "agent", "run", "--help"], CLI),
    "edgefleet server run --help": (["cli", "server", "run", "--help"], CLI),
    "import edge_client": (["import", "edge_client"], {"edge_client"}),
    "import edgefleet": (["import", "edgefleet"], {"edgefleet"}),
    "import edgefleet.drift": (["import", "edgefleet.drift"], CORE),
    "the ClientApp (edge_client.flower_client)": (["import", "edge_client.flower_client"],
                                                  CLIENT_APP),
    "every edge_client module": (["import", *_edge_modules()], AGENT),
}


def _loaded(args: list[str]) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True,
                         timeout=120, check=False, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def baseline() -> set[str]:
    """What an empty interpreter of this environment loads."""
    return _loaded(["import"])


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_entry_point_loads_only_its_allow_list(entry: str, baseline: set[str]) -> None:
    args, allowed = ENTRY_POINTS[entry]
    loaded = _loaded(args)
    extra = sorted(m for m in loaded - baseline - allowed
                   if m not in sys.stdlib_module_names and not _PLUMBING.match(m))
    assert extra == [], f"{entry} loads modules beyond its allow-list: {extra}"
    if args[0] == "cli":
        assert "edgefleet_cli" in loaded
    elif "edge_client.flower_client" in args:
        assert "flwr" in loaded  # the ClientApp really was imported


# --- 2. the README's table ------------------------------------------------------------------------
#: Third-party packages every install has (the core's dependencies): any package may import them.
BASE = {"numpy", "pydantic", "pydantic_core", "pydantic_settings", "safetensors", "typer",
        "click", "typing_extensions"}
#: Deliberate exceptions to the table: (module path, imported top-level package) -> why.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("simulation/tff_worker.py", "tensorflow"):
        "the TensorFlow Federated reference backend runs in its own virtual environment "
        "(scripts/tff_venv.sh), as a child process; the package never imports it",
    ("simulation/tff_worker.py", "tensorflow_federated"): "as above",
}


def _readme_table() -> dict[str, set[str]]:
    """``package -> the backticked names of its "may import" cell`` of the README's table."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Packages", 1)[1].split("\n\n", 2)[1]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = cells[0].strip("`").rstrip("/")
        rows[name] = {t.rstrip("/").split(".")[0] for t in re.findall(r"`([^`]+)`", cells[2])}
    return rows


def _imports(package: str) -> Iterator[tuple[str, str, int]]:
    """``(module path, imported top-level package, line)`` of every import in ``package``."""
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield str(path.relative_to(REPO)), name.partition(".")[0], node.lineno


def test_the_readme_table_names_every_package() -> None:
    assert set(_readme_table()) == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_the_readme_allows(package: str) -> None:
    allowed = _readme_table()[package] | BASE | {package}
    wrong: dict[str, str] = {}  # imported package -> where, first
    for path, top, line in _imports(package):
        if top not in sys.stdlib_module_names and top not in allowed and (
                (path, top) not in EXCEPTIONS):
            wrong.setdefault(top, f"{path}:{line}")
    assert wrong == {}, f"not in the README's 'may import' row of {package}: {wrong}"


def test_the_core_imports_no_deployable() -> None:
    deployables = set(PACKAGES) - {"edgefleet"}
    assert _readme_table()["edgefleet"].isdisjoint(deployables)
    assert [f"{p}:{n}" for p, top, n in _imports("edgefleet") if top in deployables] == []


def test_every_exception_is_still_needed() -> None:
    found = {(path, top) for package in PACKAGES for path, top, _ in _imports(package)}
    assert set(EXCEPTIONS) <= found, set(EXCEPTIONS) - found


# --- 3. no circles -------------------------------------------------------------------------------
def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_the_package(package: str) -> None:
    modules = {_module(p): p for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            # the package root re-exports lazily (PEP 562): importing it is not an edge
            graph[module] |= {t for t in targets if t in modules and t != package
                              and t != module and not module.startswith(t + ".")}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"{package} has an import cycle: {' -> '.join(exc.args[1])}")
