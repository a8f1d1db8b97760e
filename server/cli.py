"""``edgefleet server``: run the registry and inference server, migrate, register models.

``edgefleet server --host H --port P`` (or ``edgefleet server run …``) starts the server with
uvicorn (:func:`server.serve.serve`; ``--workers N`` runs the N processes of
:mod:`server.workers`); settings come from ``EDGEFLEET_SERVER_*`` environment variables and
``--env-file`` (see :mod:`server.settings`). ``migrate`` brings the database to the newest
schema; ``create-model`` and ``publish`` work on the database and store directly (for
bootstrapping a fresh server before any admin client exists). ``scrub`` re-hashes the
artifact store and checks every signature (what fails becomes DAMAGED); ``keys list|rotate``
shows and rotates the version-signing key (:mod:`registry.signing`). Only Typer, the standard
library and :mod:`server.serve` (which imports no more) are imported at module level.
"""

from __future__ import annotations

import contextlib
import getpass
from pathlib import Path
from typing import Annotated, Any

import typer

from server.serve import describe_failure, expected_failures, serve, settings_or_exit

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


@app.callback()
def main(
    ctx: typer.Context,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    env_file: EnvFileOpt = None,
) -> None:
    """Without a command: start the server (same as run)."""
    if ctx.invoked_subcommand is None:
        serve(host, port, env_file, workers=1)


@app.command()
def run(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    env_file: EnvFileOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
) -> None:
    """Start the server (uvicorn); the database is migrated at start-up."""
    serve(host, port, env_file, workers)


@app.command()
def migrate(
    env_file: EnvFileOpt = None,
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Migrate the database to REVISION (default: the newest schema)."""
    from registry import migrate as migrations
    from registry.db import make_engine

    settings = settings_or_exit(env_file)
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

    from edgefleet.errors import describe_validation
    from registry.catalog import create_model as create
    from registry.db import make_engine, session_scope
    from registry.errors import RegistryError
    from registry.models import ModelCreate

    settings = settings_or_exit(env_file)
    with expected_failures(settings.database_url, "register the model"):
        engine = make_engine(settings.database_url)
    try:
        data = ModelCreate(name=name, task=task, description=description, tags=tag or [])
        with session_scope(engine, write=True) as session:
            create(session, data)
    except ValidationError as exc:
        typer.echo(f"error: {describe_validation(exc)}", err=True)
        raise typer.Exit(1) from None
    except RegistryError as exc:
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

    settings = settings_or_exit(env_file)
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


@app.command()
def scrub(
    env_file: EnvFileOpt = None,
    no_blobs: Annotated[
        bool, typer.Option("--no-blobs", help="skip blobs that no version references")
    ] = False,
) -> None:
    """Re-hash every stored artifact and check every signature; mark what fails DAMAGED.

    Exits 1 when anything is damaged (listed one per line), 0 when the store is intact.
    """
    from registry.db import make_engine, session_scope
    from registry.integrity import scrub as run
    from registry.store import ArtifactStore

    settings = settings_or_exit(env_file)
    with expected_failures(settings.database_url, "scrub the store"):
        engine = make_engine(settings.database_url)
        try:
            with session_scope(engine, write=True) as session:
                report = run(session, ArtifactStore(settings.artifact_dir), blobs=not no_blobs,
                             actor=f"cli:{getpass.getuser()}")
        finally:
            engine.dispose()
    for model, number, reason in report.damaged:
        typer.echo(f"DAMAGED {model} v{number}: {reason}")
    for model, number in report.restored:
        typer.echo(f"restored {model} v{number}: intact again, READY")
    for sha in report.corrupt_blobs:
        typer.echo(f"corrupt unreferenced blob {sha}")
    typer.echo(f"{report.checked} versions and {report.blobs_checked} blobs checked: "
               f"{len(report.damaged)} damaged, {len(report.unsigned)} unsigned")
    if not report.ok:
        raise typer.Exit(1)


keys_app = typer.Typer(no_args_is_help=True, help="The registry's version-signing keys.")
app.add_typer(keys_app, name="keys")


@keys_app.command("list")
def keys_list(env_file: EnvFileOpt = None) -> None:
    """Every public key the registry signed with (current first), with its endorsement."""
    from sqlmodel import col, select

    from registry.db import make_engine, session_scope
    from registry.models import SigningKey

    settings = settings_or_exit(env_file)
    with expected_failures(settings.database_url, "list the signing keys"):
        engine = make_engine(settings.database_url)
        try:
            with session_scope(engine) as session:
                rows = session.exec(
                    select(SigningKey).order_by(col(SigningKey.created_at).desc())
                ).all()
                for k in rows:
                    state = "current" if k.retired_at is None else f"retired {k.retired_at:%F}"
                    endorsed = f" endorsed by {k.endorsed_by}" if k.endorsed_by else ""
                    typer.echo(f"{k.key_id}  {state}  {k.public_key}{endorsed}")
        finally:
            engine.dispose()


@keys_app.command("rotate")
def keys_rotate(env_file: EnvFileOpt = None) -> None:
    """Replace the signing key: the current key endorses a new one, which signs from now on.

    Old public keys stay recorded (old signatures verify); devices that pinned an old key
    follow the endorsement chain. Restart running servers afterwards so they load the new key.
    """
    from registry.db import make_engine, session_scope
    from registry.signing import check_apart, commit_rotation, open_signer, rotate

    settings = settings_or_exit(env_file)
    with expected_failures(settings.database_url, "rotate the signing key"):
        check_apart(settings.signing_key_path, settings.artifact_dir)
        engine = make_engine(settings.database_url)
        try:
            actor = f"cli:{getpass.getuser()}"
            with session_scope(engine, write=True) as session:
                old = open_signer(session, settings.signing_key_path, actor=actor)
            with session_scope(engine, write=True) as session:
                new = rotate(session, old, actor=actor)
            commit_rotation(new)
        finally:
            engine.dispose()
    typer.echo(f"signing key rotated: {old.key_id} -> {new.key_id} (endorsed by {old.key_id})")


@app.command("precompute")
def precompute_cmd(
    model: Annotated[str, typer.Option(help="model name")],
    input_path: Annotated[Path, typer.Option("--input", help="CSV, NPZ or Parquet file")],
    key_column: Annotated[str, typer.Option("--key-column", help="the entity key column")],
    version: Annotated[int | None, typer.Option(min=1, help="score with this version")] = None,
    alias: Annotated[
        str | None, typer.Option(help="score with the version this alias names (production)")
    ] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="rows scored and committed together")]
    = 1000,
    restart: Annotated[bool, typer.Option(help="score a finished input again")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    env_file: EnvFileOpt = None,
) -> None:
    """Score every row of an input file into the prediction store (resumable; see
    server.precompute)."""
    from edgefleet.errors import EdgeFleetError
    from registry.db import make_engine
    from server.precompute import make_service, precompute

    settings = settings_or_exit(env_file)
    with contextlib.ExitStack() as stack, expected_failures(settings.database_url, "precompute"):
        engine = make_engine(settings.database_url)
        stack.callback(engine.dispose)
        bars: list[Any] = []

        def on_start(total: int, done: int) -> None:
            if progress:
                bar = stack.enter_context(typer.progressbar(length=total, label="scoring"))
                bar.update(done)
                bars.append(bar)

        try:
            report = precompute(
                engine, make_service(settings), model, input_path, key_column,
                version=version, alias=alias, chunk_size=chunk_size, restart=restart,
                on_start=on_start, on_chunk=lambda n: bars[0].update(n) if bars else None,
            )
        except EdgeFleetError as exc:
            typer.echo(f"error: cannot precompute: {exc}", err=True)
            raise typer.Exit(1) from None
    via = f" ({report.alias})" if report.alias else ""
    typer.echo(
        f"run {report.run_id}: {model} version {report.version}{via} scored {report.rows_scored} "
        f"of {report.rows_total} rows ({report.rows_resumed} committed before) "
        f"at {report.rows_per_s:.0f} rows/s"
    )


@app.command("runner")
def runner_cmd(
    registry: Annotated[
        str | None, typer.Option("--registry", help="the registry server's URL")
    ] = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="dotenv file with EDGEFLEET_RUNNER_* settings")
    ] = None,
) -> None:
    """Serve V2 inference from models pulled over the registry's REST API (no database; see
    server.runner)."""
    from pydantic import ValidationError

    from server.logs import configure_logging
    from server.runner.app import serve
    from server.runner.settings import load_runner_settings
    from server.settings import describe_invalid

    try:
        settings = load_runner_settings(env_file, registry_url=registry)
    except ValidationError as exc:
        message = describe_invalid(exc, "EDGEFLEET_RUNNER_")
        typer.echo(f"error: invalid runner settings: {message}", err=True)
        raise typer.Exit(2) from None
    except FileNotFoundError as exc:
        typer.echo(f"error: invalid runner settings: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    serve(settings, host, port)


@app.command("worker")
def worker_cmd(
    model: Annotated[str, typer.Option(help="model served")],
    broker: Annotated[
        str | None, typer.Option("--broker", help="redis://host:6379/0 (default) or nats://…")
    ] = None,
    version: Annotated[int | None, typer.Option(min=1, help="serve this version only")] = None,
    alias: Annotated[
        str | None, typer.Option(help="follow this alias (default production)")
    ] = None,
    max_batch: Annotated[int | None, typer.Option(min=1, help="requests per batch (32)")] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(min=0, help="longest wait to fill a batch (5)")
    ] = None,
    group: Annotated[str | None, typer.Option(help="consumer group")] = None,
    consumer: Annotated[str | None, typer.Option(help="this worker's name (host-pid)")] = None,
    stream_prefix: Annotated[str | None, typer.Option(help="stream names' prefix")] = None,
    claim_idle_s: Annotated[
        float | None, typer.Option(help="take over requests unacknowledged this long (30)")
    ] = None,
    refresh_s: Annotated[float | None, typer.Option(help="re-resolve the alias this often")]
    = None,
    env_file: EnvFileOpt = None,
) -> None:
    """Serve prediction requests from a broker stream in batches (see server.worker)."""
    from pydantic import ValidationError

    from edgefleet.errors import EdgeFleetError
    from server.logs import configure_logging
    from server.settings import describe_invalid
    from server.worker.run import serve
    from server.worker.settings import load_worker_settings

    settings = settings_or_exit(env_file)
    if version is not None and alias is not None:
        typer.echo("error: name --version or --alias, not both", err=True)
        raise typer.Exit(2)
    try:
        wsettings = load_worker_settings(
            env_file, broker_url=broker, max_batch=max_batch, max_wait_ms=max_wait_ms,
            group=group, consumer=consumer, stream_prefix=stream_prefix,
            claim_idle_s=claim_idle_s, refresh_s=refresh_s,
        )
    except ValidationError as exc:
        message = describe_invalid(exc, "EDGEFLEET_WORKER_")
        typer.echo(f"error: invalid worker settings: {message}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    with expected_failures(settings.database_url, "run the worker"):
        try:
            stats = serve(settings, wsettings, model, version=version, alias=alias)
        except (EdgeFleetError, ConnectionError) as exc:
            typer.echo(f"error: cannot run the worker: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(
        f"worker {wsettings.consumer}: {stats.requests} requests in {stats.batches} batches, "
        f"{stats.dead_letters} dead letters, {stats.duplicates} duplicates dropped"
    )
