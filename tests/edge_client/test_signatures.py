"""Signed versions on the device: a version whose signature does not verify against the pinned
key is refused once, reported once, and not fetched again until the assignment changes; failed
installs back off; a rotated key is followed through its endorsement."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.credentials import Credentials
from edge_client.errors import DownloadInterruptedError
from edge_client.settings import AgentSettings
from edgefleet.errors import SignatureError
from edgefleet.signature import rotation_statement, trusted_key, verify_version
from edgefleet.wire import SigningKeyInfo
from tests.edge_client.conftest import MODEL, active, fast_settings
from tests.edge_client.stub_server import StubKey, StubServer


@pytest.fixture
def agent(settings: AgentSettings, published: StubServer, stub_credentials: Credentials
          ) -> Iterator[Agent]:
    with Agent(settings, credentials=stub_credentials) as a:
        assert a.poll() == "installed"  # version 1, properly signed
        yield a


def rejected(agent: Agent) -> list[dict]:
    return [e for e in agent.state.get("events", []) if e["kind"] == "rejected"]


@pytest.mark.parametrize(("signing", "reason"), [
    ("none", "not signed"),
    ("bad", "signature refused: the signature does not verify"),
    ("stranger", "which no pinned key"),
])
def test_bad_or_missing_signature_is_refused_once_and_not_fetched_again(
    agent: Agent, published: StubServer, signing: str, reason: str
) -> None:
    published.state.signing = signing
    published.assign(MODEL, 2)
    before = len(published.state.downloads)
    for _ in range(6):
        assert agent.poll() == "rejected"
    assert active(agent).info.version == 1  # keeps its current model
    assert agent.predict(np.zeros(64)).path == "local"
    events = rejected(agent)
    assert len(events) == 1 and reason in events[0]["reason"] and events[0]["version"] == 2
    assert len(published.state.downloads) - before <= 1  # at most the manifest, once
    assert "plan" not in published.state.downloads[before:]  # nothing else was fetched
    assert reason in agent.status()["last_install_error"]["error"]
    published.state.signing = "ok"  # the assignment changes (a good signature): installed
    assert agent.poll() == "installed" and active(agent).info.version == 2
    assert agent.status()["last_install_error"] is None


def test_a_device_without_a_pinned_key_installs_nothing(
    settings: AgentSettings, published: StubServer
) -> None:
    creds = Credentials(server_url=published.url, device_id="dev-1",
                        device_token=published.state.token)
    with Agent(settings, credentials=creds) as agent:
        assert agent.poll() == "rejected"
        assert agent.models.active is None
        assert "no signing key is pinned" in rejected(agent)[0]["reason"]


def test_failed_installs_back_off_exponentially_with_jitter(
    tmp_path, published: StubServer, stub_credentials: Credentials
) -> None:
    settings = fast_settings(tmp_path / "a", install_backoff_base_s=60.0)
    with Agent(settings, credentials=stub_credentials) as agent:
        published.state.truncate["plan"] = 100
        with pytest.raises(DownloadInterruptedError):
            agent.poll()
        retry = agent.state.get("install_retry")
        assert retry["failures"] == 1
        assert 30.0 <= retry["due"] - agent.state.get("last_install_error")["at"] <= 90.0
        downloads = len(published.state.downloads)
        for _ in range(5):
            assert agent.poll() == "backoff"  # not due: nothing is fetched
        assert len(published.state.downloads) == downloads
        agent._note("install_retry", {**retry, "due": 0})  # time passes
        published.state.truncate["plan"] = 100
        with pytest.raises(DownloadInterruptedError):
            agent.poll()
        second = agent.state.get("install_retry")
        assert second["failures"] == 2
        assert 60.0 <= second["due"] - agent.state.get("last_install_error")["at"] <= 180.0
        agent._note("install_retry", {**second, "due": 0})
        assert agent.poll() == "installed"
        assert agent.state.get("install_retry") is None


def test_enrolment_pins_the_registry_key(tmp_path, published: StubServer) -> None:
    from edge_client.credentials import enroll

    creds = enroll(published.url, published.state.enrollment_token, tmp_path / "c.json")
    assert creds.signing_key == published.signing_key
    assert Credentials.load(tmp_path / "c.json").signing_key == published.signing_key


def test_a_rotated_key_is_trusted_through_its_endorsement() -> None:
    old, new, stranger = StubKey(), StubKey(), StubKey()
    endorsed = SigningKeyInfo(
        key_id=new.info.key_id, public_key=new.info.public_key, endorsed_by=old.info.key_id,
        endorsement=old.sign(rotation_statement(new.info.key_id, new.info.public_key)))
    chain = [old.info, endorsed]
    statement = b"a version statement"
    verify_version(statement, signer_id=new.info.key_id, signature=new.sign(statement),
                   pinned=[old.info], chain=chain)
    forged = endorsed.model_copy(update={
        "endorsement": stranger.sign(rotation_statement(new.info.key_id, new.info.public_key))})
    with pytest.raises(SignatureError, match="does not verify"):
        trusted_key([old.info], [old.info, forged], new.info.key_id)
    with pytest.raises(SignatureError, match="no pinned key"):
        trusted_key([stranger.info], chain, new.info.key_id)
