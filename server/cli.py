"""``edgefleet server``: run the registry and inference server, migrate, register models.

``edgefleet server --host H --port P`` (or ``edgefleet server run …``) starts the server with
uvicorn; settings come from ``EDGEFLEET_SERVER_*`` environment variables and ``--env-file`` (see
:mod:`server.settings`). ``migrate`` brings the database to the newest schema; ``create-model``
and ``publish`` work on the database and store directly (for bootstrapping a fresh server
before any admin client exists). Only Typer and the standard library are imported at module
level.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    no_args_is_help=False,
    invoke_without_command=True,
    help="Run the registry and inference server; migrate its database; register models.",
)

HostOpt = Annotated[str, typer.Option("--host", help="interface to bind")]
PortOpt = Annotated[int, typer.Option("--port", help="TCP port")]
EnvFileOpt = Annotated[
    Path | None, typer.Option("--env-file", help="dotenv file with EDGEFLEET_SERVER_* settings")
]


def _settings(env_file: Path | None) -> Any:
    from server.settings import load_settings

    try:
        return load_settings(env_file)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to print or log)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"


def describe_failure(exc: BaseException, url: str) -> str:
    """One line saying what went wrong, without a traceback, locals or the URL's password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError

    cause: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        cause = exc.orig  # the driver's message, without SQLAlchemy's statement and links
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    message = lines[0] if lines else type(cause).__name__
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):  # an unparseable URL has no password to hide
        password = None
    if password:
        message = message.replace(str(password), "***")
    if isinstance(exc, DBAPIError | ArgumentError):
        message = f"{message} (database {masked_url(url)})"
    return message


@contextlib.contextmanager
def expected_failures(url: str, doing: str) -> Iterator[None]:
    """Turn the failures an operator can fix (an unreachable database, an unknown revision, a
    registry refusal) into ``error: …`` on one line and exit status 1."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from registry.errors import RegistryError

    try:
        yield
    except (DBAPIError, ArgumentError, CommandError, RegistryError, OSError) as exc:
        typer.echo(f"error: cannot {doing}: {describe_failure(exc, url)}", err=True)
        raise typer.Exit(1) from None


def _preflight(settings: Any) -> None:
    """Connect (and migrate, when ``auto_migrate`` is on) before uvicorn starts, so that a
    database that is down or behind is reported in one line instead of a start-up traceback."""
    from sqlalchemy import text

    from registry import migrate as migrations
    from registry.db import make_engine

    url = settings.database_url
    with expected_failures(url, "start the server"):
        engine = make_engine(url)
        try:
            if settings.auto_migrate:
                migrations.upgrade(engine)
            else:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()


def _serve(host: str, port: int, env_file: Path | None, workers: int) -> None:
    import uvicorn

    from server.logs import configure_logging

    settings = _settings(env_file)
    _preflight(settings)
    if env_file is not None:  # the app factory (possibly in worker processes) reads it
        os.environ["EDGEFLEET_SERVER_ENV_FILE"] = str(env_file.resolve())
    configure_logging(settings.log_level, settings.log_format)
    if not settings.admin_keys:
        typer.echo("warning: no admin key configured: the registry API refuses writes", err=True)
    if not settings.enrollment_tokens:
        typer.echo("warning: no enrolment token configured: devices cannot enrol", err=True)
    uvicorn.run(
        "server.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )


@app.callback()
def main(
    ctx: typer.Context,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    env_file: EnvFileOpt = None,
) -> None:
    """Without a command: start the server (same as ``run``)."""
    if ctx.invoked_subcommand is None:
        _serve(host, port, env_file, workers=1)


@app.command()
def run(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    env_file: EnvFileOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
) -> None:
    """Start the server (uvicorn); the database is migrated at start-up."""
    _serve(host, port, env_file, workers)


@app.command()
def migrate(
    env_file: EnvFileOpt = None,
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Migrate the database to ``revision`` (default: the newest schema)."""
    from registry import migrate as migrations
    from registry.db import make_engine

    settings = _settings(env_file)
    with expected_failures(settings.database_url, f"migrate to revision {revision!r}"):
        engine = make_engine(settings.database_url)
        try:
            before = migrations.current_revision(engine)
            after = migrations.upgrade(engine, revision)
        finally:
            engine.dispose()
    typer.echo(f"database at revision {after} (was {before or 'empty'})")


@app.command("create-model")
def create_model(
    name: str,
    task: Annotated[str, typer.Option(help="e.g. classification")] = "classification",
    description: Annotated[str, typer.Option()] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="repeatable")] = None,
    env_file: EnvFileOpt = None,
) -> None:
    """Register a model directly in the database."""
    from pydantic import ValidationError
    from sqlalchemy.exc import DBAPIError

    from registry.catalog import create_model as create
    from registry.db import make_engine, session_scope
    from registry.errors import RegistryError
    from registry.models import ModelCreate

    settings = _settings(env_file)
    with expected_failures(settings.database_url, "register the model"):
        engine = make_engine(settings.database_url)
    try:
        data = ModelCreate(name=name, task=task, description=description, tags=tag or [])
        with session_scope(engine, write=True) as session:
            create(session, data)
    except (ValidationError, RegistryError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (DBAPIError, OSError) as exc:
        typer.echo(
            f"error: cannot register the model: {describe_failure(exc, settings.database_url)}",
            err=True,
        )
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    typer.echo(f"model {name} registered")


@app.command()
def publish(
    plan_dir: Annotated[Path, typer.Argument(help="plan.tflite + manifest.json + weights")],
    model: Annotated[str, typer.Option(help="model name (created when missing)")],
    alias: Annotated[
        list[str] | None, typer.Option("--alias", help="point it at the new version")
    ] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="name=value")] = None,
    description: Annotated[str, typer.Option()] = "",
    env_file: EnvFileOpt = None,
) -> None:
    """Verify and publish a plan directory as a new version (directly, without HTTP)."""
    from server.bootstrap import publish_plan_dir

    settings = _settings(env_file)
    try:
        number = publish_plan_dir(
            settings,
            plan_dir,
            model,
            aliases=alias or [],
            metrics=metric or [],
            description=description,
        )
    except Exception as exc:  # every failure is reported, none is a traceback
        typer.echo(f"error: {describe_failure(exc, settings.database_url)}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"published {model} version {number}" + (f" as {', '.join(alias)}" if alias else ""))
