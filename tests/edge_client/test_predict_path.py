"""The local predict path's bookkeeping under its fast paths: exact counts, drift and metrics from
concurrent callers (answers queued without a lock and folded later), callers that reuse their
input arrays, one-row and many-row answers alike, and the direct ``infer`` call across batch
shapes and a replaced signature runner."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.errors import InvalidInputError
from edge_client.models import ModelManager
from edge_client.settings import AgentSettings
from edgefleet.datasets import Dataset
from edgefleet.drift.accumulator import DriftAccumulator
from edgefleet.plan import PlanManifest
from edgefleet.runtime import PlanRuntime
from tests.edge_client.conftest import MODEL, active, fast_settings


def _agent(tmp_path: Path, plan_dir: Path) -> Agent:
    settings: AgentSettings = fast_settings(tmp_path / "agent")
    ModelManager(settings.models_dir).install_dir(plan_dir, MODEL, 1)
    return Agent(settings)


def _metric(agent: Agent, name: str, **labels: str) -> float:
    value = agent.metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_concurrent_callers_are_all_counted_once(tmp_path: Path, digits_plan_dir: Path,
                                                 digits_data: Dataset) -> None:
    threads, calls = 4, 300  # more than a fold's batch, in every counter
    pool = digits_data.x_test.astype(np.float32)
    x = pool[np.arange(threads * calls) % len(pool)]
    with _agent(tmp_path, digits_plan_dir) as agent:
        def work(k: int) -> None:
            for i in range(k * calls, (k + 1) * calls):
                assert agent.predict(x[i: i + 1]).path == "local"

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        agent.predict(x[:7])  # and one batch of 7 rows
        assert agent.predict(x[:0]).probs.shape == (0, 10)  # and none: counted, no rows
        total = threads * calls
        assert _metric(agent, "edgefleet_agent_predictions_total", path="local") == total + 2
        assert _metric(agent, "edgefleet_agent_prediction_rows_total", path="local") == total + 7
        assert _metric(agent, "edgefleet_agent_prediction_duration_seconds_count",
                       path="local") == total + 2
        report = agent.flush_telemetry()[0]
        assert report.inference.local == total + 7
        assert report.drift is not None and report.drift.n == total + 7

        manifest = PlanManifest.load(digits_plan_dir / "manifest.json")
        assert manifest.reference is not None
        expected = DriftAccumulator(manifest.reference, model=MODEL, version=1)
        rows = np.concatenate([x, x[:7]])
        expected.update(rows, PlanRuntime.from_dir(digits_plan_dir).predict(rows))
        want = expected.to_summary()
        assert report.drift.class_counts == want.class_counts  # the same rows, whatever order
        assert report.drift.bin_counts == want.bin_counts


def test_a_reused_input_buffer_does_not_change_the_drift(tmp_path: Path, digits_plan_dir: Path,
                                                         digits_data: Dataset) -> None:
    x = digits_data.x_test[:50].astype(np.float32)
    assert len(x) == 50
    with _agent(tmp_path / "a", digits_plan_dir) as fresh:
        for i in range(len(x)):
            fresh.predict(x[i: i + 1].copy())
        want = fresh.flush_telemetry()[0].drift
    with _agent(tmp_path / "b", digits_plan_dir) as reusing:
        buffer = np.empty((1, 64), dtype=np.float32)
        for i in range(len(x)):
            buffer[:] = x[i]  # an application filling the same array every time
            probs = reusing.predict(buffer).probs
            probs *= 0  # and scribbling on the answer
        got = reusing.flush_telemetry()[0].drift
    assert want is not None and got is not None
    assert got.bin_counts == want.bin_counts
    assert got.class_counts == want.class_counts


def test_non_finite_inputs_are_refused_on_the_fast_path(tmp_path: Path,
                                                        digits_plan_dir: Path) -> None:
    with _agent(tmp_path, digits_plan_dir) as agent:
        for bad in (np.nan, np.inf, -np.inf):
            x = np.ones((1, 64), dtype=np.float32)
            x[0, 17] = bad
            with pytest.raises(InvalidInputError, match="NaN/inf"):
                agent.predict(x)
        assert agent.flush_telemetry()[0].inference.local == 0


def test_direct_infer_follows_batch_shapes_and_a_replaced_runner(digits_plan_dir: Path,
                                                                 digits_data: Dataset) -> None:
    runtime = PlanRuntime.from_dir(digits_plan_dir)
    reference = PlanRuntime.from_dir(digits_plan_dir)
    runner = reference._runners["infer"]
    x = digits_data.x_test[:9].astype(np.float32)
    for rows in (1, 5, 1, 9, 3, 3, 1):
        want = runner(x=x[:rows])[runtime.manifest.output.name]
        np.testing.assert_array_equal(runtime.predict(x[:rows]), want)
    calls = []

    def counting(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        return dict(runner(**inputs))

    runtime._runners["infer"] = counting  # whatever runner is installed answers
    np.testing.assert_array_equal(runtime.predict(x[:2]), runner(x=x[:2])["probabilities"])
    assert calls == [2]


def test_agent_answers_one_row_and_many_rows_alike(tmp_path: Path, digits_plan_dir: Path,
                                                   digits_data: Dataset) -> None:
    x = digits_data.x_test[:6].astype(np.float32)
    with _agent(tmp_path, digits_plan_dir) as agent:
        many = agent.predict(x)
        ones = [agent.predict(x[i: i + 1]) for i in range(len(x))]
        runtime = active(agent).runtime
        np.testing.assert_allclose(np.concatenate([p.probs for p in ones]), many.probs,
                                   rtol=1e-6)
        assert [p.classes[0] for p in ones] == many.classes
        assert many.classes == [str(i) for i in runtime.predict(x).argmax(axis=1)]
        assert agent.predict(x[0]).probs.shape == (1, 10)  # one example without a batch axis
        assert agent.predict(x.astype(np.float64)[:2]).path == "local"
