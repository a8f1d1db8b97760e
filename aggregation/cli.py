"""`edgefleet fl` commands: the drift-triggered controller, the Flower run-config template and
the quarantine of repeatedly refused nodes (``edgefleet fl quarantine list|release``).

The federated run itself is a Flower app: ``flwr run <app dir> <superlink>`` loads the ServerApp
``aggregation.server_app:app`` (see :mod:`aggregation.server_app`). Only typer and the standard
library are imported here; the rest is imported inside the commands.
"""

from __future__ import annotations

import logging
import time

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("run-config")
def run_config() -> None:
    """Print the Flower app config table (tool.flwr.app.config): every ServerApp key, its default.

    The table is :func:`edgefleet.run_settings.app_config_table`: the Flower app's
    ``pyproject.toml`` holds the same one, and ``flwr run --run-config`` may only override keys
    it declares.
    """
    import json

    from edgefleet.run_settings import app_config_table

    typer.echo("[tool.flwr.app.config]")
    for key, value in app_config_table().items():
        # JSON spells str, int, float and bool as TOML does
        typer.echo(f"{key} = {json.dumps(value)}")


@app.command()
def controller(
    model: str = typer.Option(..., help="The model to watch."),
    server_url: str = typer.Option("http://127.0.0.1:8000", help="The EdgeFleet server."),
    admin_key: str = typer.Option("", envvar="EDGEFLEET_ADMIN_KEY", help="Registry admin key."),
    app_dir: str = typer.Option(".", help="The Flower app to run."),
    superlink: str = typer.Option("local", help="Flower SuperLink connection name."),
    schedule_hours: float = typer.Option(24.0, help="Run at least this often; 0 disables."),
    cooldown_minutes: float = typer.Option(60.0, help="No two runs closer than this."),
    interval_s: float = typer.Option(60.0, help="Seconds between two drift checks."),
    max_iterations: int = typer.Option(1, min=1, help="Drift checks before exiting."),
    run_config: list[str] = typer.Option([], help="Extra run-config key=value for each run."),
    metrics_port: int = typer.Option(0, help="Serve Prometheus /metrics on this port; 0: off."),
) -> None:
    """Start federated runs when the fleet drifts (or on schedule), with a cooldown."""
    from datetime import timedelta

    from aggregation.controller import ControllerPolicy, DriftController, FlwrRunLauncher
    from aggregation.registry_client import RegistryClient

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    extra: dict[str, str | int | float | bool] = {}
    for item in run_config:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint="run-config")
        extra[key.strip()] = _scalar(value.strip())
    extra.setdefault("server-url", server_url)
    policy = ControllerPolicy(
        schedule_every=timedelta(hours=schedule_hours) if schedule_hours > 0 else None,
        cooldown=timedelta(minutes=cooldown_minutes),
    )
    if metrics_port:
        from aggregation.metrics import serve

        serve(metrics_port)
    from aggregation.metrics import observe_decision

    with RegistryClient(server_url, admin_key or None) as client:
        ctl = DriftController(model, client, FlwrRunLauncher(app_dir, superlink, extra), policy)
        for i in range(max_iterations):  # DriftController.run's loop, reporting each check
            decision = ctl.step()
            observe_decision(decision.reason, decision.start)
            typer.echo(f"{'start' if decision.start else 'wait '} {decision.reason}: "
                       f"{decision.detail}")
            if i + 1 < max_iterations:
                time.sleep(interval_s)


def _scalar(text: str) -> str | int | float | bool:
    """A run-config value typed like TOML would: bool, int, float, else the string."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip('"')


@app.command()
def quarantine(
    action: str = typer.Argument("list", help="list, or release (with NODE)"),
    node: int | None = typer.Argument(None, help="the Flower node id to let back"),
    file: str = typer.Option(..., "--file", help="the run's quarantine-path (JSON)"),
) -> None:
    """List the nodes quarantined from selection, or let one back (``release NODE``)."""
    from aggregation.selection.quarantine import load_entries, release

    if action == "list":
        for e in load_entries(file):
            typer.echo(f"{e.node_id}  since round {e.since_round}  {', '.join(e.reasons)}")
        return
    if action != "release" or node is None:
        typer.echo("error: use `list` or `release NODE`", err=True)
        raise typer.Exit(2)
    if not release(file, node):
        typer.echo(f"error: node {node} is not quarantined", err=True)
        raise typer.Exit(1)
    typer.echo(f"node {node} may be selected again")
