"""``edgefleet agent``: enrol this device, run the agent, show its status, predict locally,
install a plan directory without a network.

Only Typer and the standard library are imported here; the agent (numpy, httpx, a TFLite
interpreter) is imported inside the commands, so ``edgefleet --help`` stays fast everywhere.

Every command takes ``--data-dir`` (default ``EDGEFLEET_AGENT_DATA_DIR`` or
``~/.local/state/edgefleet-agent``); other settings come from ``EDGEFLEET_AGENT_*`` variables.
Exit codes: 0 success, 1 an agent error (message on stderr), 2 usage error.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from edge_client.settings import AgentSettings

app = typer.Typer(no_args_is_help=True, add_completion=False)



class LogLevel(StrEnum):
    """The ``--log-level`` choices (case-insensitive)."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


DataDir = typer.Option(None, "--data-dir", help="agent data directory", show_default=False)


def _settings(data_dir: Path | None, **overrides: Any) -> AgentSettings:
    from edge_client.settings import AgentSettings

    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return AgentSettings(**overrides)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


@app.command()
def enroll(
    server: str = typer.Option(..., "--server", help="server base URL, e.g. http://10.0.0.2:8000"),
    token: str = typer.Option(
        ..., "--token", help="the enrolment token (one token enrols any number of new device ids)"),
    device_id: str | None = typer.Option(None, "--device-id", help="stable id (else generated)"),
    label: list[str] = typer.Option([], "--label", help="device label key=value (repeatable)"),
    model: str | None = typer.Option(None, "--model", help="the model this device should run"),
    force: bool = typer.Option(False, "--force", help="replace existing credentials"),
    data_dir: Path | None = DataDir,
) -> None:
    """Trade an enrolment token for device credentials (stored with mode 0600)."""
    from edge_client.credentials import enroll as do_enroll
    from edge_client.credentials import parse_labels
    from edge_client.errors import AgentError

    settings = _settings(data_dir)
    if settings.credentials_path.exists() and not force:
        raise _fail(FileExistsError(
            f"{settings.credentials_path} exists: this device is enrolled (use --force)"))
    try:
        creds = do_enroll(server, token, settings.credentials_path, device_id=device_id,
                          labels=parse_labels(label), model=model)
    except AgentError as exc:
        raise _fail(exc) from exc
    typer.echo(f"enrolled as {creds.device_id}; credentials in {settings.credentials_path}")


@app.command()
def run(
    data_dir: Path | None = DataDir,
    http_port: int | None = typer.Option(
        None, "--http-port", help="local endpoint port on 127.0.0.1 (0 = any, -1 = off)"),
    log_level: LogLevel = typer.Option(
        LogLevel.INFO, "--log-level", case_sensitive=False, help="logging threshold"),
) -> None:
    """Run the agent until SIGTERM/SIGINT: poll, update models, serve, report."""
    logging.basicConfig(level=log_level.value,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edge_client.agent import Agent
    from edge_client.errors import AgentError

    overrides: dict[str, Any] = {} if http_port is None else {"http_port": http_port}
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("edge_client").info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        with Agent(_settings(data_dir, **overrides)) as agent:
            agent.run(stop)
    except AgentError as exc:
        raise _fail(exc) from exc


@app.command()
def install(
    plan_dir: Path = typer.Argument(..., help="plan.tflite + manifest.json + weights.safetensors"),
    version: int = typer.Option(..., "--version", min=0, help="the version number to record"),
    model: str | None = typer.Option(None, "--model", help="model name (default: manifest's)"),
    data_dir: Path | None = DataDir,
) -> None:
    """Activate a plan directory without a network (verified and smoke-tested like a download)."""
    from edge_client.errors import AgentError
    from edge_client.models import ModelManager
    from edgefleet.errors import EdgeFleetError
    from edgefleet.plan import PlanManifest

    settings = _settings(data_dir)
    try:
        name = model or PlanManifest.load(plan_dir / "manifest.json").name
        manager = ModelManager(settings.models_dir, interpreter=settings.interpreter,
                               keep_versions=settings.keep_versions)
        manager.install_dir(plan_dir, name, version)
    except (AgentError, EdgeFleetError, OSError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"installed {name} v{version} from {plan_dir}")


@app.command("install-service")
def install_service(
    superlink: str = typer.Option("", "--superlink", help="SuperLink host:port (empty: no "
                                  "SuperNode unit)"),
    root_certificates: Path = typer.Option(Path("/etc/edgefleet/ca.pem"), "--root-certificates",
                                           help="the deployment CA"),
    supernode_key: Path = typer.Option(Path("/etc/edgefleet/supernode.key"), "--supernode-key",
                                       help="this device's SuperNode private key"),
    user: str = typer.Option("edgefleet", "--user", help="account the services run as"),
    data_dir: Path = typer.Option(Path("/var/lib/edgefleet"), "--data-dir"),
    log_dir: Path = typer.Option(Path("/var/log/edgefleet"), "--log-dir"),
    root: Path = typer.Option(Path("/"), "--root", help="write under this root (packaging)"),
    systemctl: bool = typer.Option(True, "--systemctl/--no-systemctl",
                                   help="reload systemd, enable and (re)start the units"),
) -> None:
    """Install (or update in place) the systemd units of the agent and its SuperNode, and
    their log rotation (see edge_client.service)."""
    from edge_client.errors import AgentError
    from edge_client.service import ServiceOptions, install

    options = ServiceOptions(user=user, data_dir=data_dir, log_dir=log_dir, superlink=superlink,
                             root_certificates=root_certificates, supernode_key=supernode_key)
    try:
        changes = install(options, root, systemctl=systemctl)
    except (AgentError, OSError) as exc:
        raise _fail(exc) from exc
    for path, what in changes.items():
        typer.echo(f"{what:9} {path}")


@app.command()
def upgrade(
    spec: str = typer.Argument("edgefleet[edge]", help="what pip installs (a version, a wheel)"),
    restart: bool = typer.Option(True, "--restart/--no-restart",
                                 help="systemctl try-restart the units afterwards"),
) -> None:
    """Upgrade the agent in place (pip, in this environment), then restart its services."""
    from edge_client.errors import AgentError
    from edge_client.service import upgrade as run_upgrade

    try:
        for command in run_upgrade(spec, restart=restart):
            typer.echo("ran: " + " ".join(command))
    except AgentError as exc:
        raise _fail(exc) from exc


@app.command()
def status(
    data_dir: Path | None = DataDir,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Active version, last poll, outbox depth, labelled examples, eligibility."""
    from edge_client.agent import collect_status
    from edge_client.errors import AgentError

    try:
        info = collect_status(_settings(data_dir))
    except AgentError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    active = info["active"]
    poll = info.get("last_poll") or {}
    elig = info["eligibility"]
    lines = [
        f"device:      {info.get('device_id', '(not enrolled)')} -> {info.get('server_url', '-')}",
        "active:      " + (f"{active['model']} v{active['version']}" if active else "(none)"),
        "previous:    " + (", ".join(f"{p['model']} v{p['version']}" for p in info["previous"])
                           or "(none)"),
        "last poll:   " + (f"{poll.get('seconds_ago')} s ago, "
                           + ("ok" if poll.get("ok") else f"failed: {poll.get('error')}")
                           if poll else "(never)"),
        f"outbox:      {info['outbox']['depth']} queued, "
        f"{info['outbox']['dropped_total']} dropped in total",
        f"labels:      {info['labelled_examples']} examples",
        "eligibility: " + ("eligible" if elig["eligible"] else "not eligible: "
                           + "; ".join(elig["reasons"])),
    ]
    typer.echo("\n".join(lines))


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not JSON: {exc}") from None


def _read_rows(json_text: str | None, csv_text: str | None, file: Path | None) -> Any:
    import csv
    import io

    given = [v for v in (json_text, csv_text, file) if v is not None]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --json, --csv or --file")
    if file is not None:
        text = file.read_text()
        if file.suffix.lower() == ".json":
            return _json(text, str(file))
        csv_text = text
    if json_text is not None:
        return _json(json_text, "--json")
    assert csv_text is not None
    rows = [r for r in csv.reader(io.StringIO(csv_text)) if r]
    try:
        return [[float(v) for v in r] for r in rows]
    except ValueError:  # a header row?
        pass
    try:
        numbers = [[float(v) for v in r] for r in rows[1:]]
    except ValueError as exc:
        raise ValueError(f"CSV values are non-numeric ({exc})") from None
    if not numbers:
        raise ValueError("CSV values are non-numeric: "
                         f"{','.join(rows[0]) if rows else '(empty)'}")
    return numbers


@app.command()
def predict(
    json_text: str | None = typer.Option(None, "--json", help="one row [..] or rows [[..], ..]"),
    csv_text: str | None = typer.Option(None, "--csv", help="comma-separated row(s)"),
    file: Path | None = typer.Option(None, "--file", help=".json or .csv file of rows"),
    data_dir: Path | None = DataDir,
) -> None:
    """Predict with the local model (falling back to the server when enrolled)."""
    from edge_client.agent import Agent
    from edge_client.errors import AgentError

    try:
        rows = _read_rows(json_text, csv_text, file)
    except (OSError, ValueError) as exc:
        raise _fail(exc) from exc
    try:
        with Agent(_settings(data_dir)) as agent:
            pred = agent.predict(rows)
    except AgentError as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps({"path": pred.path, "model": pred.model, "version": pred.version,
                           "classes": pred.classes,
                           "probabilities": [[round(float(p), 6) for p in row]
                                             for row in pred.probs]}))


if __name__ == "__main__":  # pragma: no cover
    app(sys.argv[1:])
