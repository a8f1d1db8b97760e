"""Starting the server from ``edgefleet server run``: settings, checks, then uvicorn.

:func:`serve` loads the settings (:func:`settings_or_exit`), validates the JSON policies and
reaches (or migrates) the database (:func:`preflight`), sets up the metrics directory several
processes share (:func:`metrics_dir`) and the TLS options (:func:`tls_options`), then runs one
uvicorn server in this process or, with ``workers > 1``, the supervisor of
:mod:`server.workers`. What an operator can fix is reported as ``error: …`` on one line with
exit status 1 (a failure) or 2 (bad settings): :func:`describe_failure` and
:func:`expected_failures` turn the database's, Alembic's and the registry's exceptions into
that line without the URL's password (:func:`masked_url`). The command-line commands of
:mod:`server.cli` use the same helpers. Only Typer and the standard library are imported at
module level.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

__all__ = [
    "check_policies",
    "describe_failure",
    "expected_failures",
    "masked_url",
    "metrics_dir",
    "preflight",
    "serve",
    "settings_or_exit",
    "tls_options",
]


def settings_or_exit(env_file: Path | None) -> Any:
    """The server's settings (:func:`server.settings.load_settings`); invalid ones are one
    ``error: invalid settings: …`` line and exit status 2."""
    from pydantic import ValidationError

    from server.settings import describe_invalid, load_settings

    try:
        return load_settings(env_file)
    except ValidationError as exc:
        typer.echo(f"error: invalid settings: {describe_invalid(exc)}", err=True)
        raise typer.Exit(2) from None
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


def check_policies(settings: Any) -> None:
    """Validate the JSON settings the app factory reads (``batching``, ``drift_thresholds``)
    before uvicorn starts, so that a mistake in them is one line instead of a traceback."""
    from pydantic import ValidationError

    from server.drift import ThresholdPolicy
    from server.inference.batcher import BatchingSettings
    from server.settings import describe_invalid

    for field, policy in (("batching", BatchingSettings), ("drift_thresholds", ThresholdPolicy)):
        try:
            policy.model_validate(getattr(settings, field))
        except ValidationError as exc:
            message = describe_invalid(exc, field=field)
            typer.echo(f"error: invalid settings: {message}", err=True)
            raise typer.Exit(2) from None


def preflight(settings: Any) -> None:
    """Check the JSON settings, then connect (and migrate, when ``auto_migrate`` is on) before
    uvicorn starts, so that bad settings or a database that is down or behind are reported in
    one line instead of a start-up traceback."""
    from sqlalchemy import text

    from registry import migrate as migrations
    from registry.db import make_engine

    check_policies(settings)
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


def metrics_dir() -> None:
    """Several workers share their Prometheus samples through files (see :mod:`server.metrics`):
    a directory emptied at start, or a fresh one when ``PROMETHEUS_MULTIPROC_DIR`` is unset."""
    import tempfile

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="edgefleet-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def tls_options(settings: Any) -> dict[str, Any]:
    """uvicorn's TLS options from the ``ssl_*`` settings (none: plain HTTP)."""
    import ssl

    if settings.ssl_certfile is None:
        if settings.ssl_keyfile is not None or settings.ssl_ca_certs is not None:
            typer.echo("error: ssl_keyfile/ssl_ca_certs need ssl_certfile", err=True)
            raise typer.Exit(2)
        return {}
    for path in (settings.ssl_certfile, settings.ssl_keyfile, settings.ssl_ca_certs):
        if path is not None and not Path(path).is_file():
            typer.echo(f"error: TLS file {path} does not exist", err=True)
            raise typer.Exit(2)
    options: dict[str, Any] = {"ssl_certfile": str(settings.ssl_certfile)}
    if settings.ssl_keyfile is not None:
        options["ssl_keyfile"] = str(settings.ssl_keyfile)
    if settings.ssl_ca_certs is not None:
        options["ssl_ca_certs"] = str(settings.ssl_ca_certs)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def serve(host: str, port: int, env_file: Path | None, workers: int) -> None:
    """Run the server on ``host:port`` until SIGINT or SIGTERM.

    One worker is uvicorn in this process (``server.main:create_app``); several are the
    processes of :func:`server.workers.run`, each with its own listening socket
    (``server.main:create_worker_app``, which configures its own logging). A port that is in
    use, or workers that keep failing at start-up, are one ``error: …`` line and exit status 1.
    """
    import uvicorn

    from server.logs import configure_logging
    from server.proxy import uvicorn_options

    settings = settings_or_exit(env_file)
    preflight(settings)
    if env_file is not None:  # the app factory (possibly in worker processes) reads it
        os.environ["EDGEFLEET_SERVER_ENV_FILE"] = str(env_file.resolve())
    configure_logging(settings.log_level, settings.log_format, line_process=workers == 1)
    if not settings.admin_keys:
        typer.echo("warning: no admin key configured: the registry API refuses writes", err=True)
    if not settings.enrollment_tokens:
        typer.echo("warning: no enrolment token configured: devices cannot enrol", err=True)
    if workers > 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir()
    tls = tls_options(settings)
    if workers == 1:
        uvicorn.run("server.main:create_app", factory=True, host=host, port=port,
                    **uvicorn_options(tls))
        return
    from server.workers import WorkersError
    from server.workers import run as run_workers

    try:
        run_workers(host, port, workers, tls)
    except WorkersError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
