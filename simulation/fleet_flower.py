"""The fleet's Flower side: a SuperLink, one SuperNode per agent, ``flwr run``, the run's status.

Every SuperNode is given its agent's data directory in ``--node-config`` (``data-dir``), which is
where the agent's ClientApp (``edge_client.flower_client``) finds the active plan, the labelled
examples and the drift summary; the agent stays the only writer. The ServerApp gets the registry
admin key from ``EDGEFLEET_ADMIN_KEY`` in the SuperLink's environment (the run config is stored
on the SuperLink, so it carries no secret).

``flwr run --stream`` exits 0 even when the run failed, so :func:`run_status` asks ``flwr ls``.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from simulation.errors import FleetError
from simulation.processes import Child, ProcessSupervisor, free_port

CONNECTION = "fleet"
#: Flower offline: no dependency installation, no update check, no telemetry (Flower's or Ray's).
OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
_ROUND_LINE = re.compile(r"round \d+ (?:ok|failed).*")
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Federation:
    """A running SuperLink and its SuperNodes; ``env`` is what ``flwr`` commands need."""

    superlink: Child
    supernodes: list[Child]
    env: dict[str, str]
    address: str


def flower_env(flwr_home: Path) -> dict[str, str]:
    """``FLWR_HOME`` (with the fleet's connection), the offline switches, this venv on PATH."""
    import os

    return {"FLWR_HOME": str(flwr_home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            **OFFLINE_ENV}


def node_config(values: Mapping[str, str | int | float | bool]) -> str:
    """``--node-config`` text: ``key=value`` pairs, strings quoted (TOML values)."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def start_federation(sup: ProcessSupervisor, root: Path, nodes: list[dict[str, str]], *,
                     admin_key: str, timeout_s: float = 60.0) -> Federation:
    """Start the SuperLink (state in ``root``) and one SuperNode per ``nodes`` entry."""
    home = root / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"127.0.0.1:{port}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{address}"\ninsecure = true\n')
    env = flower_env(home)
    superlink = sup.start("superlink", [
        str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
        "--database", str(root / "superlink.db")], env={**env, "EDGEFLEET_ADMIN_KEY": admin_key})
    wait_port(port, superlink, timeout_s)
    supernodes = [
        sup.start(f"supernode-{i}", [
            str(BIN / "flower-supernode"), "--insecure", "--superlink", address,
            "--port", str(free_port()), "--node-config", node_config(values)], env=env)
        for i, values in enumerate(nodes)]
    return Federation(superlink, supernodes, env, address)


def wait_port(port: int, child: Child, timeout_s: float) -> None:
    """Wait until ``child`` accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise FleetError(f"{child.name} exited (log {child.log_path}):\n{child.tail()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FleetError(f"{child.name} did not open port {port} in {timeout_s:.0f} s")


def run_config(values: Mapping[str, str | int | float | bool]) -> str:
    """``--run-config`` text (same syntax as ``--node-config``)."""
    return node_config(values)


def flwr_run(sup: ProcessSupervisor, fed: Federation, app_dir: Path,
             config: Mapping[str, str | int | float | bool], *, timeout_s: float) -> Path:
    """``flwr run <app_dir> fleet --run-config ... --stream``; returns the streamed log's path.

    Raises
    ------
    FleetError
        ``flwr run`` exited non-zero or did not finish in ``timeout_s``.
    """
    code, tail = sup.run("flwr-run", [
        str(BIN / "flwr"), "run", str(app_dir), CONNECTION, "--run-config", run_config(config),
        "--stream"], env=fed.env, timeout_s=timeout_s)
    log = sup.log_dir / "flwr-run.log"
    if code != 0:
        raise FleetError(f"flwr run failed with code {code} (log {log}):\n{tail}")
    return log


def run_status(sup: ProcessSupervisor, fed: Federation) -> tuple[str, str]:
    """``(status, details)`` of the newest run on the SuperLink (``flwr ls``), e.g.
    ``("finished:completed", "")``; ``("unknown", why)`` when it cannot be read."""
    code, _ = sup.run("flwr-ls", [str(BIN / "flwr"), "ls", CONNECTION, "--format", "json"],
                      env=fed.env, timeout_s=60)
    text = (sup.log_dir / "flwr-ls.log").read_text(errors="replace")
    if code != 0 or "{" not in text:
        return "unknown", f"flwr ls failed with code {code}"
    try:
        runs = json.loads(text[text.index("{"):text.rindex("}") + 1]).get("runs") or []
    except json.JSONDecodeError as exc:
        return "unknown", f"flwr ls printed no JSON: {exc}"
    if not runs:
        return "unknown", "the SuperLink lists no run"
    newest = max(runs, key=lambda r: int(r.get("run-id", 0)))
    return str(newest.get("status", "unknown")), str(newest.get("status-details", "") or "")


def round_lines(log: Path) -> list[str]:
    """The ServerApp's one-line round summaries (``round 2 ok: 4/4 replied, ...``) in ``log``."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [m.group(0).strip() for m in _ROUND_LINE.finditer(text)]
