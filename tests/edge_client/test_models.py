"""Model updates against a real HTTP server on 127.0.0.1 that misbehaves on demand: verified
downloads, atomic switches, rollback, and an active model that survives every fault."""

from __future__ import annotations

import json
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.client import ServerClient
from edge_client.credentials import Credentials
from edge_client.errors import (
    DiskFullError,
    DownloadInterruptedError,
    ModelRejectedError,
)
from edge_client.models import ModelManager
from edge_client.settings import AgentSettings
from tests.edge_client.conftest import MODEL, active, scaled_weights
from tests.edge_client.stub_server import StubServer


@pytest.fixture
def agent(settings: AgentSettings, published: StubServer, stub_credentials: Credentials
          ) -> Iterator[Agent]:
    with Agent(settings, credentials=stub_credentials) as a:
        yield a


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_install_switch_and_keep_previous(agent: Agent, published: StubServer) -> None:
    assert agent.models.active is None
    assert agent.poll() == "installed"
    assert active(agent).info.version == 1
    assert agent.poll() == "current"  # ETag → 304, nothing downloaded again
    published.assign(MODEL, 2)
    before = list(published.state.downloads)
    assert agent.poll() == "installed"
    assert active(agent).info.version == 2
    # v2 has the same plan and manifest: they are copied locally, only the weights downloaded
    assert published.state.downloads[len(before):] == ["weights"]
    current, history = agent.models.read_pointer()
    assert current is not None and current.version == 2
    assert [h.version for h in history] == [1]
    assert (agent.settings.models_dir / MODEL / "1" / "plan.tflite").is_file()
    assert not list(agent.settings.models_dir.glob(".staging-*"))


@pytest.mark.parametrize("cut", [0, 1000, -1])
def test_interrupted_download_leaves_active_model(agent: Agent, published: StubServer,
                                                  cut: int) -> None:
    agent.poll()
    snapshot = _files(agent.settings.models_dir)
    pointer = (agent.settings.models_dir / "active.json").read_bytes()
    published.assign(MODEL, 2)
    size = published.assignment().weights.size
    published.state.truncate["weights"] = cut % size  # close the connection mid-body
    with pytest.raises(DownloadInterruptedError, match="download interrupted"):
        agent.poll()
    assert active(agent).info.version == 1
    assert (agent.settings.models_dir / "active.json").read_bytes() == pointer
    assert _files(agent.settings.models_dir) == snapshot  # no partial file anywhere
    assert agent.predict(np.zeros(64)).path == "local"
    assert agent.poll() == "installed"  # the next poll retries and succeeds
    assert active(agent).info.version == 2


def test_interrupted_first_install_leaves_nothing(agent: Agent, published: StubServer) -> None:
    published.state.truncate["plan"] = 5000
    with pytest.raises(DownloadInterruptedError, match=r"plan\.tflite"):
        agent.poll()
    assert agent.models.active is None
    assert _files(agent.settings.models_dir) == set()
    assert agent.poll() == "installed"


@pytest.mark.parametrize("kind", ["weights", "manifest"])
def test_wrong_hash_is_refused_once_and_remembered(agent: Agent, published: StubServer,
                                                   kind: str) -> None:
    if kind == "weights":  # an update; a manifest is tampered with on the first install
        agent.poll()
        published.assign(MODEL, 2)
    published.state.tamper[kind] = True
    before = len(published.state.downloads)
    assert agent.poll() == "rejected"
    assert (active(agent).info.version if kind == "weights" else agent.models.active) in (1, None)
    assert not list(agent.settings.models_dir.rglob("*.part"))
    for _ in range(5):  # remembered by digest: never fetched again while the assignment stays
        assert agent.poll() == "rejected"
    assert published.state.downloads[before:] == [kind]
    events = [e for e in agent.state.get("events") if e["kind"] == "rejected"]
    assert len(events) == 1 and "sha256" in events[0]["reason"]
    assert "sha256" in agent.status()["last_install_error"]["error"]


def test_corrupt_plan_with_matching_hash_is_rejected_and_reported(
    agent: Agent, published: StubServer, digits_plan_dir: Path
) -> None:
    agent.poll()
    plan = bytearray((digits_plan_dir / "plan.tflite").read_bytes())
    plan = plan[: len(plan) // 2]  # truncated at the source: hashes match, the bytes are junk
    published.publish(MODEL, 3, digits_plan_dir, plan=bytes(plan))
    published.assign(MODEL, 3)
    assert agent.poll() == "rejected"
    assert active(agent).info.version == 1
    assert agent.poll() == "rejected"  # remembered: not downloaded again every poll
    events = agent.state.get("events")
    assert events[-1]["kind"] == "rejected" and events[-1]["version"] == 3


def test_model_that_answers_nan_is_rejected(agent: Agent, published: StubServer,
                                            digits_plan_dir: Path) -> None:
    agent.poll()
    published.publish(MODEL, 4, digits_plan_dir, weights=scaled_weights(digits_plan_dir, 1e37))
    published.assign(MODEL, 4)
    assert agent.poll() == "rejected"
    assert "smoke test" in agent.state.get("events")[-1]["reason"]
    assert active(agent).info.version == 1


def test_rollback_at_start_when_current_no_longer_loads(
    settings: AgentSettings, published: StubServer, stub_credentials: Credentials
) -> None:
    with Agent(settings, credentials=stub_credentials) as agent:
        agent.poll()
        published.assign(MODEL, 2)
        agent.poll()
    # the current version's plan is damaged on disk (bit rot, a bad flash sector)
    (settings.models_dir / MODEL / "2" / "plan.tflite").write_bytes(b"garbage")
    with Agent(settings, credentials=stub_credentials) as agent:
        assert active(agent).info.version == 1
        events = agent.state.get("events")
        assert events[-1]["kind"] == "rolled_back" and events[-1]["to"]["version"] == 1
        current, history = agent.models.read_pointer()
        assert current is not None and current.version == 1 and history == []


def test_repeated_local_failures_roll_back(agent: Agent, published: StubServer) -> None:
    agent.poll()
    published.assign(MODEL, 2)
    agent.poll()
    active(agent).runtime._runners["infer"] = _broken_runner  # the interpreter starts failing
    for _ in range(agent.settings.failures_before_rollback):
        assert agent.predict(np.zeros(64)).path == "fallback"  # the server answers meanwhile
    assert active(agent).info.version == 1
    assert agent.predict(np.zeros(64)).path == "local"
    assert agent.poll() == "rejected"  # still assigned, but not reinstalled
    assert agent.state.get("events")[-1]["kind"] == "rolled_back"


def _broken_runner(**_: object) -> dict[str, np.ndarray]:
    raise RuntimeError("tensor arena corrupted")


def test_disk_full_during_download(agent: Agent, published: StubServer) -> None:
    """A real kernel refusal: RLIMIT_FSIZE makes write() fail with EFBIG past 8 KiB."""
    agent.poll()
    published.assign(MODEL, 2)
    pointer = (agent.settings.models_dir / "active.json").read_bytes()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))
    try:
        with pytest.raises(DiskFullError, match="disk full"):
            agent.models.install(agent.client, published.assignment(),  # type: ignore[arg-type]
                                 pinned=[published.signing_key])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert active(agent).info.version == 1
    assert (agent.settings.models_dir / "active.json").read_bytes() == pointer
    assert not list(agent.settings.models_dir.glob(".staging-*"))
    assert not list(agent.settings.models_dir.rglob("*.part"))


def test_free_space_reserve_refuses_before_writing(
    tmp_path: Path, published: StubServer, stub_credentials: Credentials
) -> None:
    import shutil

    # 10 GiB above today's free space: other tests running beside this one free and fill disk
    free = shutil.disk_usage(tmp_path).free
    manager = ModelManager(tmp_path / "models", min_free_bytes=free + 10 * 2**30)
    with ServerClient(published.url, token=published.state.token) as client, \
            pytest.raises(DiskFullError, match="not enough disk space"):
        manager.install(client, published.assignment(), pinned=[published.signing_key])
    assert published.state.downloads == []  # refused before the first artifact byte
    assert not (tmp_path / "models" / "active.json").exists()


def test_manifest_for_another_plan_is_rejected(
    tmp_path: Path, published: StubServer, digits_plan_dir: Path
) -> None:
    a = published.assignment()
    a = a.model_copy(update={"manifest_url": "/api/v1/models/digits-mlp/versions/1/manifest",
                             "plan": a.plan.model_copy(update={"sha256": "0" * 64})})
    manager = ModelManager(tmp_path / "models")
    with ServerClient(published.url, token=published.state.token) as client, \
            pytest.raises(ModelRejectedError, match="signature refused"):
        manager.install(client, a, pinned=[published.signing_key])  # the statement differs


def test_leftover_staging_is_cleaned_at_start(settings: AgentSettings,
                                              stub_credentials: Credentials) -> None:
    leftover = settings.models_dir / ".staging-crashed"
    leftover.mkdir(parents=True)
    (leftover / "plan.tflite").write_bytes(b"half")
    with Agent(settings, credentials=stub_credentials):
        assert not leftover.exists()


def test_pointer_file_is_json_with_current_and_history(agent: Agent) -> None:
    agent.poll()
    data = json.loads((agent.settings.models_dir / "active.json").read_text())
    assert data["current"]["model"] == MODEL and data["current"]["version"] == 1
    assert data["history"] == []
