"""Telemetry through the outbox: queued while offline, drained later, deduplicated by key,
merged or dropped (and counted) at the bound."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.client import ServerClient
from edge_client.credentials import Credentials
from edge_client.settings import AgentSettings
from edge_client.telemetry import merge_report_bodies
from edgefleet.datasets import Dataset
from edgefleet.wire import TelemetryReport
from tests.edge_client.conftest import fast_settings
from tests.edge_client.stub_server import StubServer


@pytest.fixture
def agent(settings: AgentSettings, published: StubServer, stub_credentials: Credentials
          ) -> Iterator[Agent]:
    with Agent(settings, credentials=stub_credentials) as a:
        a.poll()
        yield a


def test_reports_queue_offline_and_drain_when_back(agent: Agent, published: StubServer,
                                                   digits_data: Dataset) -> None:
    agent.predict(digits_data.x_test[:10])
    published.state.down = True
    report = agent.flush_telemetry()[0]
    result = agent.drain_outbox()
    assert result.sent == 0 and result.failed == 1 and "503" in (result.error or "")
    assert agent.outbox.depth() == 1
    assert agent.predict(digits_data.x_test[:1]).path == "local"  # serving goes on meanwhile
    published.state.down = False
    assert agent.drain_outbox().sent == 1
    assert agent.outbox.depth() == 0
    received = published.state.telemetry[report.idempotency_key]
    assert received["inference"]["local"] == 10 and received["drift"]["n"] == 10


def test_outbox_survives_restart_and_retries_keep_the_key(
    settings: AgentSettings, published: StubServer, stub_credentials: Credentials,
    digits_data: Dataset,
) -> None:
    with Agent(settings, credentials=stub_credentials) as agent:
        agent.poll()
        agent.predict(digits_data.x_test[:5])
        report = agent.flush_telemetry()[0]
    # the first attempt reached the server but its acknowledgement was lost
    with ServerClient(published.url, token=published.state.token) as client:
        assert client.post_telemetry("dev-1", report).duplicate is False
    with Agent(settings, credentials=stub_credentials) as agent:  # a restart
        assert [e.key for e in agent.outbox.entries()] == [report.idempotency_key]
        result = agent.drain_outbox()
        assert result.sent == 1 and result.duplicates == 1
    assert list(published.state.telemetry) == [report.idempotency_key]  # stored once
    assert published.state.telemetry_posts == 2


def test_at_the_bound_reports_merge_then_drop_and_count(
    tmp_path: Path, published: StubServer, stub_credentials: Credentials,
    digits_data: Dataset,
) -> None:
    settings = fast_settings(tmp_path / "a", outbox_max_reports=2)
    with Agent(settings, credentials=stub_credentials) as agent:
        agent.poll()
        for i in range(3):  # three never-sent reports of one version: two merge
            agent.predict(digits_data.x_test[i * 10:(i + 1) * 10])
            agent.flush_telemetry()
        entries = agent.outbox.entries()
        assert len(entries) == 2 and agent.outbox.counter("merged_total") == 1
        merged = TelemetryReport.model_validate_json(entries[0].body)
        assert merged.inference.local == 20 and merged.drift is not None and merged.drift.n == 20
        published.state.down = True
        agent.drain_outbox()  # attempted now: may be on the server, so never merged again
        agent.flush_telemetry()
        assert agent.outbox.pending_dropped() == 1
        published.state.down = False
        last = agent.flush_telemetry()[0]
        assert last.dropped_reports == 1
        # room for `last` came from merging the two unsent ones; the count was handed over
        assert agent.outbox.pending_dropped() == 0 and agent.outbox.counter("merged_total") == 2
        assert agent.drain_outbox().sent == 2
    sent = [TelemetryReport.model_validate(r) for r in published.state.telemetry.values()]
    assert sum(r.dropped_reports for r in sent) == 1
    assert sum(r.inference.local for r in sent) == 10  # the dropped report held the first 20


def test_heartbeat_report_without_traffic_carries_local_eval(agent: Agent,
                                                             digits_data: Dataset) -> None:
    agent.record_label(digits_data.x_test[:50], digits_data.y_test[:50])
    report = agent.flush_telemetry()[0]
    assert report.inference.local == 0 and report.drift is None
    assert report.local_eval is not None and report.local_eval.n_examples == 50


def test_merging_report_bodies_is_associative_for_counts_and_drift(
    agent: Agent, digits_data: Dataset
) -> None:
    bodies = []
    for i in range(3):
        agent.predict(digits_data.x_test[i * 7:(i + 1) * 7] + np.float32(i))
        bodies.append(agent.flush_telemetry()[0].model_dump_json())
    left = TelemetryReport.model_validate_json(
        merge_report_bodies(merge_report_bodies(bodies[0], bodies[1]), bodies[2]))
    right = TelemetryReport.model_validate_json(
        merge_report_bodies(bodies[0], merge_report_bodies(bodies[1], bodies[2])))
    assert left.inference.local == right.inference.local == 21
    assert left.drift is not None and right.drift is not None
    assert left.drift.bin_counts == right.drift.bin_counts
    np.testing.assert_allclose(left.drift.mean, right.drift.mean, rtol=1e-12)
    assert left.window_start <= left.window_end
    assert left.idempotency_key == TelemetryReport.model_validate_json(bodies[0]).idempotency_key
