"""The agent against the real EdgeFleet server in a child process on 127.0.0.1: enrolment, model
updates, fallback inference and telemetry — and each fault the issue names: the server down,
a corrupt artifact, a model that fails its smoke test, a full disk, a wrong-shaped input."""

from __future__ import annotations

import resource
import signal
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_client.agent import Agent
from edge_client.client import ServerClient
from edge_client.credentials import Credentials, enroll
from edge_client.errors import (
    DiskFullError,
    InvalidInputError,
    ServerUnavailableError,
    UnauthorizedError,
)
from edgefleet.datasets import Dataset
from edgefleet_cli.main import app as cli
from tests.edge_client.conftest import (
    MODEL,
    active,
    fast_settings,
    poisoned_weights,
    scaled_weights,
)
from tests.edge_client.server_process import ENROLLMENT_TOKEN, ServerProcess

pytestmark = pytest.mark.slow
TOKEN = ENROLLMENT_TOKEN.split(":", 1)[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_plan_dir: Path
           ) -> Iterator[ServerProcess]:
    """One server for the module: v1 (trained), v2 (other weights), v3 (a first-layer kernel
    that overflows to NaN on real inputs: the server's zeros smoke test passes it at upload,
    the agent's smoke test, which also probes the training means, does not)."""
    root = tmp_path_factory.mktemp("server")
    proc = ServerProcess(root).start()
    try:
        proc.create_model(MODEL)
        assert proc.upload(MODEL, digits_plan_dir) == 1
        variants = {2: scaled_weights(digits_plan_dir, 0.9), 3: poisoned_weights(digits_plan_dir)}
        for version, data in variants.items():
            weights = root / f"weights-{version}.safetensors"
            weights.write_bytes(data)
            assert proc.upload(MODEL, digits_plan_dir, weights=weights, plan_from_version=1) \
                == version
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def production_v1(server: ServerProcess) -> ServerProcess:
    if server.proc is None:
        server.start()
    server.set_alias(MODEL, 1)
    return server


@pytest.fixture
def device(production_v1: ServerProcess, tmp_path: Path) -> Iterator[Agent]:
    """A freshly enrolled device running version 1."""
    settings = fast_settings(tmp_path / "agent")
    enroll(production_v1.url, TOKEN, settings.credentials_path,
           device_id=f"dev-{uuid.uuid4().hex[:8]}", model=MODEL)
    with Agent(settings) as agent:
        assert agent.poll() == "installed"
        yield agent


def test_cli_enrolment_stores_a_0600_token_that_the_server_accepts(
    production_v1: ServerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "agent"
    result = CliRunner().invoke(cli, ["agent", "enroll", "--server", production_v1.url,
                                      "--token", TOKEN, "--device-id", "cli-dev", "--model",
                                      MODEL, "--label", "site=lab", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    path = data / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = Credentials.load(path)
    assert creds.device_id == "cli-dev"
    with ServerClient(creds.server_url, token=creds.device_token) as client:
        poll = client.assignment("cli-dev")
        assert poll.status == "changed" and poll.assignment is not None
        assert poll.assignment.version == 1
        assert client.assignment("cli-dev", poll.etag).status == "not-modified"
    with ServerClient(creds.server_url, token="efd_wrong") as client, \
            pytest.raises(UnauthorizedError):
        client.assignment("cli-dev")
    bad = CliRunner().invoke(cli, ["agent", "enroll", "--server", production_v1.url, "--token",
                                   "not-the-token", "--data-dir", str(tmp_path / "other")])
    assert bad.exit_code == 1 and "401" in bad.output


def test_update_serve_and_report(device: Agent, production_v1: ServerProcess,
                                 digits_data: Dataset) -> None:
    pred = device.predict(digits_data.x_test[:50])
    assert pred.path == "local" and pred.version == 1
    assert np.mean(np.argmax(pred.probs, axis=1) == digits_data.y_test[:50]) > 0.7
    assert device.poll() == "current"
    production_v1.set_alias(MODEL, 2)
    assert device.poll() == "installed"
    assert device.predict(digits_data.x_test[:1]).version == 2
    device.record_label(digits_data.x_test[:20], digits_data.y_test[:20])
    reports = device.flush_telemetry()
    assert {(r.version, r.inference.local) for r in reports} == {(1, 50), (2, 1)}
    result = device.drain_outbox()
    assert result.sent == 2 and result.duplicates == 0 and device.outbox.depth() == 0


def test_fallback_inference_through_the_server(device: Agent, digits_data: Dataset) -> None:
    x = digits_data.x_test[:5]
    local = device.predict(x)
    device.models.active = None  # as if the local model had failed to load
    remote = device.predict(x)
    assert remote.path == "fallback" and remote.model == MODEL and remote.version == 1
    np.testing.assert_allclose(remote.probs, local.probs, atol=1e-5)
    assert remote.classes == local.classes
    with pytest.raises(InvalidInputError, match="refused the input too"):
        device.predict(np.zeros((2, 5)))  # the server refuses what the device cannot answer
    assert device.flush_telemetry()[0].inference.fallback == 5


def test_wrong_shaped_input_is_refused_locally(device: Agent) -> None:
    with pytest.raises(InvalidInputError, match=r"expected \[n, 64\]"):
        device.predict(np.zeros((3, 65)))
    assert device.router.failures == 0  # not counted as a model failure


def test_server_down_local_model_serves_and_telemetry_queues(
    device: Agent, production_v1: ServerProcess, digits_data: Dataset
) -> None:
    production_v1.stop()
    try:
        with pytest.raises(ServerUnavailableError):
            device.poll()
        assert device.state.get("last_poll")["ok"] is False
        pred = device.predict(digits_data.x_test[:10])
        assert pred.path == "local"
        first = device.flush_telemetry()[0]
        assert device.drain_outbox().failed == 1
        device.predict(digits_data.x_test[10:13])
        device.flush_telemetry()
        assert device.outbox.depth() == 2
    finally:
        production_v1.start()
    entries = device.outbox.entries()
    assert entries[0].key == first.idempotency_key and entries[0].attempts == 1  # same key
    result = device.drain_outbox()
    assert result.sent == 2 and device.outbox.depth() == 0
    assert device.poll() == "current"


def test_outbox_survives_restart_and_deduplicates(device: Agent,
                                                  digits_data: Dataset) -> None:
    device.predict(digits_data.x_test[:4])
    report = device.flush_telemetry()[0]
    assert device.client is not None and device.device_id is not None
    ack = device.client.post_telemetry(device.device_id, report)  # delivered, ack "lost"
    settings = device.settings
    device.close()
    with Agent(settings) as again:
        assert [e.key for e in again.outbox.entries()] == [report.idempotency_key]
        result = again.drain_outbox()
        assert result.sent == 1 and result.duplicates == 1
        assert again.client is not None and again.device_id is not None
        assert again.client.post_telemetry(again.device_id, report).report_id == ack.report_id


def test_corrupt_artifact_is_refused_and_the_old_model_stays(
    device: Agent, production_v1: ServerProcess
) -> None:
    production_v1.set_alias(MODEL, 2)
    assert device.client is not None and device.device_id is not None
    assignment = device.client.assignment(device.device_id).assignment
    assert assignment is not None
    blob = production_v1.blob(assignment.weights.sha256)
    original = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(original[:-8] + bytes(8))  # bit rot in the server's store: same size
    try:
        # the server re-hashes before it sends: 503, the version becomes DAMAGED
        with pytest.raises(ServerUnavailableError, match="damaged"):
            device.poll()
        assert active(device).info.version == 1
        assert device.predict(np.zeros(64)).path == "local"
        assert not list(device.settings.models_dir.rglob("*.part"))
        with production_v1.admin() as admin:
            info = admin.get(f"/api/v1/models/{MODEL}/versions/2").json()
            ready = admin.get("/api/v1/health/ready").json()
        assert info["status"] == "DAMAGED" and "weights" in info["status_reason"]
        assert ready["status"] == "degraded" and f"{MODEL} v2" in ready["artifacts"]
        with pytest.raises(ServerUnavailableError, match="DAMAGED"):  # never assigned
            device.poll()
    finally:
        blob.write_bytes(original)
        blob.chmod(0o444)
    scrubbed = production_v1.scrub()  # the blob is restored: the scrub makes it READY again
    assert scrubbed.returncode == 0 and f"restored {MODEL} v2" in scrubbed.stdout, scrubbed
    assert device.poll() == "installed"
    assert active(device).info.version == 2


def test_model_failing_its_smoke_test_is_rolled_back_and_reported(
    device: Agent, production_v1: ServerProcess
) -> None:
    production_v1.set_alias(MODEL, 3)
    assert device.poll() == "rejected"
    assert active(device).info.version == 1
    event = device.state.get("events")[-1]
    assert event["kind"] == "rejected" and event["version"] == 3
    assert "smoke test" in event["reason"]
    assert device.predict(np.zeros(64)).path == "local"


def test_full_disk_is_a_clear_error_and_nothing_is_half_written(
    device: Agent, production_v1: ServerProcess
) -> None:
    production_v1.set_alias(MODEL, 2)
    pointer = (device.settings.models_dir / "active.json").read_bytes()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))  # writes past 8 KiB: EFBIG
    try:
        with pytest.raises(DiskFullError, match="disk full"):
            device.poll()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert (device.settings.models_dir / "active.json").read_bytes() == pointer
    assert active(device).info.version == 1
    assert not list(device.settings.models_dir.glob(".staging-*"))
    assert device.poll() == "installed"  # space is back: the next poll succeeds
