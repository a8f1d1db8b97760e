"""``edgefleet registry``: the operator's view of a running server, over its REST API.

Commands: ``models``, ``versions MODEL``, ``aliases MODEL``, ``history MODEL [--alias A]``,
``promote MODEL VERSION [--alias production --reason R]`` (moves the alias),
``rollback MODEL [--alias production --reason R]`` (the alias back to its previous version),
``inferences [filters]``, ``monitor MODEL [--since --until --against --window-s]`` and
``events [filters]`` (device events from telemetry), and ``card MODEL VERSION`` (a version's
model card, from :mod:`edgefleet_cli.audit`). Each prints a table, or the server's JSON
with ``--json``. The server is ``--url`` (default
``$EDGEFLEET_URL`` or ``http://127.0.0.1:8000``); the admin key comes from
``$EDGEFLEET_ADMIN_KEY`` (never from the command line, where other users' ``ps`` would see it).
A refusal prints the server's message and exits 1; a server that cannot be reached, one line
naming the URL and why (:mod:`edgefleet_cli.remote`, shared by every admin command).

Only Typer and the standard library are imported at module level; httpx inside the commands.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from edgefleet_cli import remote
from edgefleet_cli.audit import card
from edgefleet_cli.remote import Url

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Inspect the registry and the inference log of a running server.")
app.command("card")(card)  # a version's model card (edgefleet_cli.audit)

Json = Annotated[bool, typer.Option("--json", help="print the server's JSON")]
Limit = Annotated[int, typer.Option(min=1, max=500)]
Offset = Annotated[int, typer.Option(min=0)]


def _client(url: str | None) -> Any:
    """An httpx client for the server with the admin key (the seam tests replace)."""
    return remote.open_client(url, timeout=30)


def _get(url: str | None, path: str, params: dict[str, Any] | None = None) -> Any:
    return _call(url, "GET", path, params=params)


def _call(url: str | None, method: str, path: str, *, params: dict[str, Any] | None = None,
          body: dict[str, Any] | None = None) -> Any:
    """The server's JSON answer, or one line on standard error and exit 1 (see
    :func:`edgefleet_cli.remote.request`)."""
    query = {k: v for k, v in (params or {}).items() if v is not None and v is not False}
    return remote.request(_client, url, method, path, params=query, body=body).json()


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``rows`` as a plain-text table of ``columns`` (missing values shown as ``-``)."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict | list):
            return json.dumps(value, separators=(",", ":"))
        return str(value)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _show(data: Any, as_json: bool, columns: list[str], items: str | None = "items") -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    rows = data[items] if items else data
    typer.echo(table(rows, columns))
    if items and "total" in data:
        typer.echo(f"({len(rows)} of {data['total']}, offset {data['offset']})")


@app.command()
def models(url: Url = None, as_json: Json = False, limit: Limit = 50,
           offset: Offset = 0) -> None:
    """List models."""
    data = _get(url, "/api/v1/models", {"limit": limit, "offset": offset})
    _show(data, as_json, ["name", "latest_version", "aliases", "tags", "updated_at"])


@app.command()
def versions(model: str, url: Url = None, as_json: Json = False, limit: Limit = 50,
             offset: Offset = 0) -> None:
    """List a model's versions."""
    data = _get(url, f"/api/v1/models/{model}/versions", {"limit": limit, "offset": offset})
    _show(data, as_json, ["version", "status", "created_at", "aliases", "description"])


@app.command()
def aliases(model: str, url: Url = None, as_json: Json = False) -> None:
    """List a model's aliases and the versions they name."""
    data = _get(url, f"/api/v1/models/{model}/aliases")
    _show(data, as_json, ["alias", "version", "rollout_percent", "updated_at"], items=None)


@app.command()
def history(model: str, alias: Annotated[str | None, typer.Option()] = None,
            url: Url = None, as_json: Json = False, limit: Limit = 50,
            offset: Offset = 0) -> None:
    """The history of a model's aliases (or of one alias)."""
    path = (f"/api/v1/models/{model}/aliases/{alias}/history" if alias
            else f"/api/v1/models/{model}/alias-history")
    data = _get(url, path, {"limit": limit, "offset": offset})
    _show(data, as_json, ["at", "alias", "from_version", "to_version", "actor", "reason"])


@app.command()
def inferences(
    model: Annotated[str | None, typer.Option()] = None,
    version: Annotated[int | None, typer.Option(min=1)] = None,
    errors: Annotated[bool, typer.Option("--errors", help="status >= 400 only")] = False,
    request_id: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 with a zone")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 with a zone")] = None,
    url: Url = None, as_json: Json = False, limit: Limit = 50, offset: Offset = 0,
) -> None:
    """Logged inferences, newest first."""
    data = _get(url, "/api/v1/inferences", {
        "model": model, "version": version, "errors": errors, "request_id": request_id,
        "since": since, "until": until, "limit": limit, "offset": offset})
    _show(data, as_json, ["created_at", "request_id", "row_index", "model", "version", "alias",
                          "caller", "status", "latency_ms", "label", "confidence",
                          "true_label"])


@app.command()
def monitor(
    model: str,
    since: Annotated[str | None, typer.Option(help="ISO 8601 (default: a day ago)")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 (default: now)")] = None,
    against: Annotated[int | None, typer.Option(min=1, help="version to compare with")] = None,
    window_s: Annotated[int, typer.Option(min=60)] = 3600,
    url: Url = None, as_json: Json = False,
) -> None:
    """Per-version requests, errors (status >= 400; server_errors: >= 500), latency, prediction
    shift and accuracy."""
    data = _get(url, f"/api/v1/models/{model}/monitor", {
        "since": since, "until": until, "against": against, "window_s": window_s})
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    rows = [{**v, **{f"{k}_ms": v["latency_ms"].get(k) for k in ("p50", "p99")},
             "version": v["version"] if not v.get("variant") else f"{v['version']}/{v['variant']}",
             "top": ",".join(sorted(v["predictions"], key=v["predictions"].get,
                                    reverse=True)[:3])}
            for v in [*data["versions"], *data.get("variants", [])]]
    typer.echo(f"{data['model']}  {data['since']} .. {data['until']}  "
               f"(shift against version {data['against']})")
    typer.echo(table(rows, ["version", "requests", "errors", "server_errors", "error_rate",
                            "p50_ms", "p99_ms", "shift", "labelled", "accuracy", "top"]))


Alias = Annotated[str, typer.Option("--alias", help="the alias to move")]
Reason = Annotated[str, typer.Option("--reason", help="recorded in the alias history")]


@app.command()
def promote(
    model: str,
    version: Annotated[int, typer.Argument(min=1)],
    alias: Alias = "production",
    reason: Reason = "promoted by the operator",
    percent: Annotated[float | None, typer.Option(min=0, max=100,
                                                  help="rollout share (canary)")] = None,
    url: Url = None, as_json: Json = False,
) -> None:
    """Point an alias (default production) at a version."""
    body: dict[str, Any] = {"version": version, "reason": reason}
    if percent is not None:
        body["rollout_percent"] = percent
    data = _call(url, "PUT", f"/api/v1/models/{model}/aliases/{alias}", body=body)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(table([data], ["model", "alias", "version", "rollout_percent", "updated_at",
                              "updated_by"]))


@app.command()
def rollback(
    model: str, alias: Alias = "production", reason: Reason = "rolled back by the operator",
    url: Url = None, as_json: Json = False,
) -> None:
    """Move an alias back to the version it named before its last move."""
    data = _call(url, "POST", f"/api/v1/models/{model}/aliases/{alias}/rollback",
                 body={"reason": reason})
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(table([data], ["model", "alias", "version", "updated_at", "updated_by"]))


@app.command()
def events(
    model: Annotated[str | None, typer.Option()] = None,
    version: Annotated[int | None, typer.Option(min=1)] = None,
    device: Annotated[str | None, typer.Option()] = None,
    kind: Annotated[str | None, typer.Option(
        help="switch, smoke_failed, refused, crash or rollback")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 with a zone")] = None,
    url: Url = None, as_json: Json = False, limit: Limit = 50, offset: Offset = 0,
) -> None:
    """Device events (model switches, failed smoke tests, crashes, rollbacks), newest first."""
    data = _get(url, "/api/v1/telemetry/events", {
        "model": model, "version": version, "device": device, "kind": kind, "since": since,
        "limit": limit, "offset": offset})
    _show(data, as_json, ["at", "device_id", "model", "version", "kind", "from_version",
                          "to_version", "count", "detail"])
