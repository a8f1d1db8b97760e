"""``edgefleet audit list|verify|export`` and ``edgefleet registry card`` against a real server
over HTTP (uvicorn on 127.0.0.1), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from typer.testing import CliRunner

from edgefleet_cli.main import app
from registry.audit import record_hash
from server.main import create_app
from server.settings import ServerSettings
from tests.aggregation.conftest import serve
from tests.server.support import ADMIN, Api


@pytest.fixture
def cli_env(api: Api, settings: ServerSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A model in production (through ``api``), and a second server process-in-thread on the
    same database that the CLI reaches over HTTP."""
    api.production()
    with serve(create_app(settings)) as url:
        monkeypatch.setenv("EDGEFLEET_URL", url)
        monkeypatch.setenv("EDGEFLEET_ADMIN_KEY", ADMIN["X-Admin-Key"])
        yield url


def run(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(app, list(args))
    return out.exit_code, out.output


def test_list_and_export(cli_env: str, tmp_path: Path) -> None:
    code, text = run("audit", "list", "--action", "version.*")
    assert code == 0, text
    header, *rows = text.splitlines()
    assert header.split()[:5] == ["seq", "at", "actor", "action", "target"]
    assert [r.split()[2:5] for r in rows] == [["admin:alice", "version.publish", "digits/1"]]
    code, text = run("audit", "list", "--newest-first", "--limit", "1", "--json")
    data = json.loads(text)
    assert code == 0 and data["items"][0]["action"] == "alias.move"
    assert data["next_after_seq"] == data["items"][0]["seq"]
    out = tmp_path / "trail.jsonl"
    code, text = run("audit", "export", "--out", str(out))
    assert code == 0, text
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"{len(lines)} records written" in text and len(lines) >= 4
    previous = "0" * 64
    for r in lines:  # the export alone proves the chain
        assert r["prev_hash"] == previous
        assert record_hash(**{k: r[k] for k in ("seq", "actor", "action", "target", "request_id",
                                                "before", "after", "reason", "prev_hash")},
                           at=datetime.fromisoformat(r["at"])) == r["hash"]
        previous = r["hash"]


def test_verify_exits_1_on_a_tampered_trail(cli_env: str, engine: Engine) -> None:
    code, text = run("audit", "verify")
    assert code == 0 and text.startswith("ok: "), text
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_record SET actor = 'admin:mallory' "
                             "WHERE action = 'alias.move'"))
    code, text = run("audit", "verify")
    assert code == 1 and "BROKEN" in text and "altered" in text, text
    code, text = run("audit", "verify", "--json")
    assert code == 1 and json.loads(text)["ok"] is False


def test_card_command(cli_env: str, tmp_path: Path) -> None:
    code, text = run("registry", "card", "digits", "1")
    assert code == 0 and text.startswith("# Model card: digits v1"), text
    code, text = run("registry", "card", "digits", "1", "--format", "json")
    assert code == 0 and json.loads(text)["lineage"]["kind"] == "authored"
    page = tmp_path / "card.html"
    code, text = run("registry", "card", "digits", "1", "--format", "html", "--out", str(page))
    assert code == 0 and page.read_text().startswith("<!doctype html>")
    code, text = run("registry", "card", "digits", "9")
    assert code == 1 and "404" in text


def test_refusals_are_clear(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run("audit", "list", "--since", "yesterday")
    assert code == 1 and "422" in text
    monkeypatch.delenv("EDGEFLEET_ADMIN_KEY")
    code, text = run("audit", "list")
    assert code != 0 and "EDGEFLEET_ADMIN_KEY" in text
    monkeypatch.setenv("EDGEFLEET_ADMIN_KEY", "wrong-key-1")
    code, text = run("audit", "verify")
    assert code == 1 and "401" in text
