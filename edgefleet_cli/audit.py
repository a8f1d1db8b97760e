"""``edgefleet audit``: the server's audit trail, and ``edgefleet registry card``: a model card.

Commands: ``list [filters]`` (a table, or the server's JSON with ``--json``), ``verify`` (walks
the hash chain on the server; exits 1 when a record was altered or removed), ``export``
(every matching record as JSON Lines, to ``--out`` or standard output, paging through the
trail), and :func:`card` (registered under ``edgefleet registry``: a version's card as Markdown,
HTML or JSON). The server and the admin key come from ``--url`` / ``$EDGEFLEET_URL`` and
``$EDGEFLEET_ADMIN_KEY``, as for ``edgefleet registry``; a refusal prints the server's message
and exits 1, as does a server that cannot be reached (one line, from :mod:`edgefleet_cli.remote`).

Only Typer and the standard library are imported at module level; httpx inside the commands.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from edgefleet_cli import remote
from edgefleet_cli.remote import Url

__all__ = ["app", "card"]

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="The audit trail of a running server: list, verify, export.")

Json = Annotated[bool, typer.Option("--json", help="print the server's JSON")]
Action = Annotated[str | None, typer.Option(help="an action, or a family like 'rollout.*'")]
Actor = Annotated[str | None, typer.Option(help="e.g. admin:alice")]
Target = Annotated[str | None, typer.Option(help="e.g. digits/3; a trailing * matches a prefix")]
Since = Annotated[str | None, typer.Option(help="ISO 8601 with a zone")]
_PAGE = 500


class CardFormat(StrEnum):
    """What ``card`` prints."""

    markdown = "markdown"
    html = "html"
    json = "json"


def _client(url: str | None) -> Any:
    """An httpx client for the server with the admin key (the seam tests replace)."""
    return remote.open_client(url, timeout=60)


def _get(url: str | None, path: str, params: dict[str, Any] | None = None) -> Any:
    """GET ``path``: the response (any status below 400), or one line on standard error and
    exit 1 (see :func:`edgefleet_cli.remote.request`)."""
    query = {k: v for k, v in (params or {}).items() if v is not None}
    return remote.request(_client, url, "GET", path, params=query)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


@app.command("list")
def list_cmd(
    action: Action = None, actor: Actor = None, target: Target = None,
    since: Since = None, until: Since = None,
    after_seq: Annotated[int | None, typer.Option(min=0, help="records after this seq")] = None,
    newest_first: Annotated[bool, typer.Option("--newest-first")] = False,
    limit: Annotated[int, typer.Option(min=1, max=_PAGE)] = 50,
    url: Url = None, as_json: Json = False,
) -> None:
    """Audit records, in chain order (or newest first)."""
    data = _get(url, "/api/v1/audit", {
        "action": action, "actor": actor, "target": target, "since": since, "until": until,
        "after_seq": after_seq, "order": "desc" if newest_first else "asc", "limit": limit,
    }).json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(_table(data["items"], ["seq", "at", "actor", "action", "target", "request_id",
                                      "reason"]))
    if data.get("next_after_seq") is not None:
        typer.echo(f"(more: --after-seq {data['next_after_seq']})")


@app.command()
def verify(url: Url = None, as_json: Json = False) -> None:
    """Verify the hash chain; exit 1 when a record was altered, removed or re-linked."""
    data = _get(url, "/api/v1/audit/verify").json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    elif data["ok"]:
        typer.echo(f"ok: {data['checked']} records, head {data['head_seq']} "
                   f"{data['head_hash']}")
    else:
        typer.echo(f"BROKEN: {len(data['problems'])} problem(s) in {data['checked']} records")
        typer.echo(_table(data["problems"], ["seq", "kind", "detail"]))
    if not data["ok"]:
        raise typer.Exit(1)


def _export(url: str | None, params: dict[str, Any], out: IO[str]) -> int:
    after: int | None = None
    written = 0
    while True:
        page = _get(url, "/api/v1/audit", {**params, "after_seq": after, "limit": _PAGE}).json()
        for item in page["items"]:
            out.write(json.dumps(item, sort_keys=True, separators=(",", ":")) + "\n")
            written += 1
        after = page.get("next_after_seq")
        if after is None:
            return written


@app.command()
def export(
    out: Annotated[Path | None, typer.Option("--out", help="file (default: standard output)")]
    = None,
    action: Action = None, actor: Actor = None, target: Target = None,
    since: Since = None, until: Since = None, url: Url = None,
) -> None:
    """Every matching record as JSON Lines (one record per line, chain order, with hashes)."""
    params = {"action": action, "actor": actor, "target": target, "since": since,
              "until": until}
    if out is None:
        _export(url, params, sys.stdout)
        return
    with out.open("w", encoding="utf-8") as f:
        n = _export(url, params, f)
    typer.echo(f"{n} records written to {out}", err=True)


def card(
    model: str,
    version: Annotated[int, typer.Argument(min=1)],
    fmt: Annotated[CardFormat, typer.Option("--format")] = CardFormat.markdown,
    out: Annotated[Path | None, typer.Option("--out", help="file (default: standard output)")]
    = None,
    url: Url = None,
) -> None:
    """A version's model card: lineage, evaluation, promotion, limitations."""
    r = _get(url, f"/api/v1/models/{model}/versions/{version}/card", {"format": fmt.value})
    text = json.dumps(r.json(), indent=2) if fmt == CardFormat.json else r.text
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"card written to {out}", err=True)
