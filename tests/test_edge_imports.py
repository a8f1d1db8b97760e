"""The edge agent stays light: importing it (every submodule, the Flower ClientApp and the CLI
included) in a fresh interpreter loads none of the server's or the author's dependencies."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import edge_client

FORBIDDEN = ("tensorflow", "fastapi", "sqlmodel", "scipy", "sqlalchemy", "starlette", "uvicorn")

_PROBE = """
import importlib, json, sys
names = sys.argv[1:]
for name in names:
    importlib.import_module(name)
import edge_client
for attr in edge_client.__all__:          # resolve every lazily exported name too
    getattr(edge_client, attr)
print(json.dumps(sorted(sys.modules)))
"""


def _submodules() -> list[str]:
    return sorted(f"edge_client.{m.name}" for m in pkgutil.iter_modules(edge_client.__path__))


def _loaded_after(*modules: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True,
                         text=True, timeout=120, check=True)
    return set(json.loads(out.stdout))


def _heavy(loaded: set[str]) -> list[str]:
    return sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)


def test_every_submodule_imports_without_heavy_dependencies() -> None:
    modules = _submodules()
    assert {"edge_client.agent", "edge_client.flower_client", "edge_client.cli"} <= set(modules)
    loaded = _loaded_after(*modules)
    assert _heavy(loaded) == []
    assert "flwr.clientapp" in loaded  # the ClientApp really was imported


def test_the_package_and_cli_do_not_load_flower() -> None:
    loaded = _loaded_after("edge_client", "edge_client.cli")
    assert _heavy(loaded) == []
    assert not any(m == "flwr" or m.startswith("flwr.") for m in loaded)


def test_bare_package_import_is_lazy() -> None:
    code = "import sys, edge_client; print(sorted(m for m in sys.modules if 'edge_client' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "['edge_client']"
