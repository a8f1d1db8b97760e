"""The blue-green switch after a pre-download, against the stub server (which counts every
artifact request): the switch installs the verified pre-download without fetching it again, a
pre-download altered on the device's disk is refused and downloaded instead, an interrupted
fallback leaves the old version active, and the signature is checked as for any download."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.credentials import Credentials
from edge_client.errors import DownloadInterruptedError
from edge_client.settings import AgentSettings
from edgefleet.datasets import Dataset
from edgefleet.wire import DeviceEvent
from tests.edge_client.conftest import MODEL, active
from tests.edge_client.stub_server import StubServer

FROM_PREFETCH = "installed from the verified pre-download; nothing downloaded again"


@pytest.fixture
def agent(settings: AgentSettings, published: StubServer, stub_credentials: Credentials
          ) -> Iterator[Agent]:
    with Agent(settings, credentials=stub_credentials) as a:
        yield a


def _prefetch_dir(agent: Agent) -> Path:
    return agent.settings.models_dir / f".prefetch-{MODEL}-2"


def _events(agent: Agent, kind: str) -> list[DeviceEvent]:
    return [e for e in agent.telemetry.events.pending() if e.kind == kind]


def _prefetched(agent: Agent, published: StubServer) -> int:
    """v1 active, v2 pre-downloaded; the number of artifact requests so far."""
    published.state.prefetch = 2
    assert agent.poll() == "installed"
    assert active(agent).info.version == 1
    assert [e.version for e in _events(agent, "prefetched")] == [2]
    assert (2, "weights") in published.state.fetched  # the pre-download's one fetch of them
    return len(published.state.fetched)


def _switch(published: StubServer) -> None:
    published.state.prefetch = None  # the switch: the assignment names the candidate itself
    published.assign(MODEL, 2)


def _answers_as(agent: Agent, published: StubServer, version: int, x: np.ndarray) -> bool:
    expected = published.runtime(MODEL, version).predict(x)
    return bool(np.allclose(active(agent).runtime.predict(x), expected, rtol=0, atol=1e-6))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of rot, same size
    path.write_bytes(bytes(data))


def test_switch_installs_the_prefetch_without_downloading_again(
        agent: Agent, published: StubServer, digits_data: Dataset) -> None:
    before = _prefetched(agent, published)
    _switch(published)
    assert agent.poll() == "installed"
    assert published.state.fetched[before:] == []  # no plan, weights or manifest again
    assert active(agent).info.version == 2
    x = digits_data.x_test[:50].astype(np.float32)
    assert _answers_as(agent, published, 2, x)
    assert not _answers_as(agent, published, 1, x)  # really the candidate
    (switch,) = _events(agent, "switch")[-1:]
    assert (switch.version, switch.from_version, switch.detail) == (2, 1, FROM_PREFETCH)
    assert not _prefetch_dir(agent).exists()  # dropped once installed
    assert not list(agent.settings.models_dir.glob(".staging-*"))
    current, history = agent.models.read_pointer()
    assert current is not None and current.version == 2 and [h.version for h in history] == [1]
    assert agent.poll() == "current"


def test_prefetch_survives_a_restart_and_is_still_used(
        settings: AgentSettings, stub_credentials: Credentials, agent: Agent,
        published: StubServer) -> None:
    before = _prefetched(agent, published)
    agent.close()
    _switch(published)
    with Agent(settings, credentials=stub_credentials) as again:  # the files are re-verified
        assert again.poll() == "installed"
        assert active(again).info.version == 2
    assert published.state.fetched[before:] == []


def test_restart_before_the_switch_rechecks_the_prefetch_without_fetching_it(
        settings: AgentSettings, stub_credentials: Credentials, agent: Agent,
        published: StubServer) -> None:
    before = _prefetched(agent, published)
    agent.close()
    with Agent(settings, credentials=stub_credentials) as again:  # still in the prefetch phase
        assert again.poll() == "current"
        assert [e.version for e in _events(again, "prefetched")] == [2, 2]  # checked again
        assert published.state.fetched[before:] == []
        _switch(published)
        assert again.poll() == "installed"
    assert published.state.fetched[before:] == []
    assert not list(settings.models_dir.glob(".staging-*"))


@pytest.mark.parametrize(("name", "damage", "downloaded"), [
    ("weights.safetensors", "flip", [(2, "weights")]),
    ("weights.safetensors", "truncate", [(2, "weights")]),
    # v2 keeps v1's plan: the refused copy is replaced by the installed v1's, nothing is fetched
    ("plan.tflite", "flip", []),
])
def test_damaged_prefetch_is_refused_and_downloaded_instead(
        agent: Agent, published: StubServer, digits_data: Dataset, name: str, damage: str,
        downloaded: list[tuple[int, str]]) -> None:
    before = _prefetched(agent, published)
    path = _prefetch_dir(agent) / name
    if damage == "flip":
        _flip_byte(path)
    else:
        path.write_bytes(path.read_bytes()[:-100])
    _switch(published)
    assert agent.poll() == "installed"
    assert published.state.fetched[before:] == downloaded
    assert active(agent).info.version == 2
    assert _answers_as(agent, published, 2, digits_data.x_test[:50].astype(np.float32))
    (switch,) = _events(agent, "switch")[-1:]
    assert switch.version == 2 and switch.detail.startswith(f"pre-download refused ({name}")
    assert not _prefetch_dir(agent).exists()
    active(agent).info.check_files(active(agent).path)  # what is installed is what was signed


def test_interrupted_fallback_download_leaves_the_old_version_active(
        agent: Agent, published: StubServer) -> None:
    _prefetched(agent, published)
    _flip_byte(_prefetch_dir(agent) / "weights.safetensors")
    pointer = (agent.settings.models_dir / "active.json").read_bytes()
    _switch(published)
    published.state.truncate["weights"] = 1000
    with pytest.raises(DownloadInterruptedError):
        agent.poll()
    assert active(agent).info.version == 1
    assert (agent.settings.models_dir / "active.json").read_bytes() == pointer
    assert not (agent.settings.models_dir / MODEL / "2").exists()
    assert not list(agent.settings.models_dir.glob(".staging-*"))
    assert agent.predict(np.zeros(64)).path == "local"
    assert agent.poll() == "installed"  # the retry downloads the weights in full
    assert active(agent).info.version == 2


def test_switch_with_a_bad_signature_is_refused_despite_the_prefetch(
        agent: Agent, published: StubServer) -> None:
    before = _prefetched(agent, published)
    _switch(published)
    published.state.signing = "bad"  # the pre-downloaded bytes are fine; the statement is not
    assert agent.poll() == "rejected"
    assert active(agent).info.version == 1
    assert published.state.fetched[before:] == []
    (refused,) = _events(agent, "refused")
    assert refused.version == 2 and "signature" in refused.detail
    assert not _prefetch_dir(agent).exists()
