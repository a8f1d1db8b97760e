"""``edgefleet server scrub`` and ``edgefleet server keys list|rotate`` on a SQLite registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet_cli.main import app as cli
from registry.db import make_engine, session_scope
from registry.models import ModelVersion
from server.bootstrap import publish_plan_dir
from server.settings import ServerSettings


@pytest.fixture
def env(tmp_path: Path, digits_plan_dir: Path) -> dict[str, str]:
    values = {
        "EDGEFLEET_SERVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        "EDGEFLEET_SERVER_ARTIFACT_DIR": str(tmp_path / "store"),
        "EDGEFLEET_SERVER_SIGNING_KEY_PATH": str(tmp_path / "keys" / "k.pem"),
    }
    settings = ServerSettings(database_url=values["EDGEFLEET_SERVER_DATABASE_URL"],
                              artifact_dir=tmp_path / "store",
                              signing_key_path=tmp_path / "keys" / "k.pem")
    assert publish_plan_dir(settings, digits_plan_dir, "digits", aliases=["production"]) == 1
    return values


def run(env: dict[str, str], *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["server", *args], env={**os.environ, **env})


def test_keys_rotate_and_list_keep_old_keys(env: dict[str, str]) -> None:
    first = run(env, "keys", "list")
    assert first.exit_code == 0 and "current" in first.output
    old_id = first.output.split()[0]
    rotated = run(env, "keys", "rotate")
    assert rotated.exit_code == 0 and f"{old_id} ->" in rotated.output
    listing = run(env, "keys", "list").output.splitlines()
    assert len(listing) == 2 and "current" in listing[0] and f"endorsed by {old_id}" in listing[0]
    assert listing[1].startswith(old_id) and "retired" in listing[1]
    scrubbed = run(env, "scrub")  # the version signed with the old key still verifies
    assert scrubbed.exit_code == 0 and "0 damaged" in scrubbed.output, scrubbed.output


def test_scrub_reports_a_damaged_version_and_exits_1(env: dict[str, str]) -> None:
    engine = make_engine(env["EDGEFLEET_SERVER_DATABASE_URL"])
    try:
        with session_scope(engine) as session:
            sha = session.get(ModelVersion, 1).weights_sha256  # type: ignore[union-attr]
    finally:
        engine.dispose()
    store = Path(env["EDGEFLEET_SERVER_ARTIFACT_DIR"])
    blob = store / "blobs" / "sha256" / sha[:2] / sha[2:4] / sha
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1])
    result = run(env, "scrub")
    assert result.exit_code == 1
    assert "DAMAGED digits v1: weights" in result.output and "1 damaged" in result.output


def test_a_key_inside_the_store_is_refused(env: dict[str, str]) -> None:
    bad = {**env, "EDGEFLEET_SERVER_SIGNING_KEY_PATH":
           str(Path(env["EDGEFLEET_SERVER_ARTIFACT_DIR"]) / "k.pem")}
    result = run(bad, "keys", "rotate")
    assert result.exit_code == 1 and "must not lie inside" in result.output
