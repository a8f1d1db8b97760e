"""The round loop on Flower's real in-memory grid and simulation runtime (see harness.py)."""

from __future__ import annotations

import numpy as np
import pytest

from aggregation.report import RoundReport
from aggregation.rounds import RoundOutcome, RoundRunner, RoundSettings
from aggregation.selection import UniformSelection
from aggregation.steering import SteeringConfig
from aggregation.strategies import build_strategy
from aggregation.validation_types import RefusalReason, ValidationBounds
from tests.aggregation.harness import federation
from tests.aggregation.toy import examples, toy_client_app, toy_manifest, zeros

FAST = {"poll_interval_s": 0.05, "query_timeout_s": 3.0, "train_timeout_s": 1.5,
        "wait_for_nodes_s": 5.0, "eval_timeout_s": 3.0}


def runner(grid, *, strategy: str = "fedavg", target: int, min_reports: int, **kw) -> RoundRunner:
    settings = RoundSettings(model="toy", target_clients=target, min_reports=min_reports,
                             **{**FAST, **kw.pop("settings", {})})
    return RoundRunner(grid, toy_manifest(), build_strategy(strategy, kw.pop("params", None)),
                       UniformSelection(), settings=settings, **kw)


def expected_fedavg(pids: list[int], boost: dict[int, float] | None = None) -> float:
    """Aggregate of honest updates from zero weights: 0.5 * (pid + 1), weighted by examples."""
    boost = boost or {}
    w = np.array([examples(p) * (1 + boost.get(p, 0.0)) for p in pids], dtype=float)
    u = np.array([0.5 * (p + 1) for p in pids])
    return float((w * u).sum() / w.sum())


def test_honest_round_aggregates_with_fedavg_and_publishes() -> None:
    published: list[RoundOutcome] = []

    def publish(outcome: RoundOutcome) -> int:
        published.append(outcome)
        return 40 + outcome.report.server_round

    with federation(toy_client_app(["honest"] * 5), 5) as (grid, nodes):
        rr = runner(grid, target=5, min_reports=3, on_round=publish, version=40,
                    settings={"eval_clients": 2})
        result = rr.run(zeros(), num_rounds=2)
    first, second = result.reports
    assert first.ok and second.ok
    assert sorted(first.selected) == sorted(nodes) == sorted(first.accepted)
    assert first.refused == {} and first.stragglers == []
    assert published[0].weights["dense/bias"] == pytest.approx(
        np.full(3, expected_fedavg(list(range(5)))), rel=1e-5)
    assert [r.published_version for r in result.reports] == [41, 42]
    assert rr.version == 42
    assert first.metrics["train.num-examples"] == sum(examples(p) for p in range(5))
    assert first.metrics["clients.nodes"] == 2.0 and first.metrics["clients.eval-acc"] == 0.5
    assert second.metrics["clients.bias"] > first.metrics["clients.bias"] > 0
    assert set(first.timings) >= {"query", "train", "validate", "aggregate", "evaluate"}


def test_bad_updates_are_refused_and_the_round_goes_on() -> None:
    behaviours = ["honest", "honest", "honest", "nan", "shape", "dtype", "names", "liar", "huge"]
    with federation(toy_client_app(behaviours), len(behaviours)) as (grid, nodes):
        rr = runner(grid, target=9, min_reports=3,
                    bounds=ValidationBounds(max_norm_ratio=10.0))
        outcome = rr.run_round(1, zeros())
    report = outcome.report
    by_pid = {p: n for n, p in nodes.items()}
    assert report.ok
    assert sorted(report.accepted) == sorted(by_pid[p] for p in range(3))
    assert report.refused_count() == 6
    expected = {3: RefusalReason.NOT_FINITE, 4: RefusalReason.SHAPE, 5: RefusalReason.DTYPE,
                6: RefusalReason.NAMES, 7: RefusalReason.NUM_EXAMPLES, 8: RefusalReason.NORM}
    for pid, reason in expected.items():
        assert report.refused[by_pid[pid]][0].startswith(reason.value), report.refused
        assert report.refused_count(reason) == 1
    assert outcome.weights["dense/bias"] == pytest.approx(
        np.full(3, expected_fedavg([0, 1, 2])), rel=1e-5)


def test_too_few_valid_reports_fail_the_round_and_keep_the_global_model() -> None:
    called: list[RoundOutcome] = []
    behaviours = ["honest", "nan", "ineligible", "ineligible"]
    with federation(toy_client_app(behaviours), 4) as (grid, _):
        # target 3: all four are selected and the round waits for every reply (only two of
        # them can be updates), so both declines are in
        rr = runner(grid, target=3, min_reports=2, on_round=called.append)
        start = {k: v + 1 for k, v in zeros().items()}
        outcome = rr.run_round(3, start)
    assert outcome.report.status == "failed"
    assert "1 valid reports < min_reports=2" in (outcome.report.failure or "")
    assert all(np.array_equal(outcome.weights[k], start[k]) for k in start)
    assert called == []
    # no query before training: the ineligible nodes selected declined their train message
    assert report_reasons(outcome.report) == {"not eligible: on battery"}


def report_reasons(report: RoundReport) -> set[str]:
    return set(report.declined.values()) | set(report.ineligible.values())


def test_too_few_eligible_nodes_fail_before_training_when_every_round_queries() -> None:
    with federation(toy_client_app(["honest", "ineligible", "otherplan"]), 3) as (grid, nodes):
        report = runner(grid, target=2, min_reports=2,
                        settings={"query_max_age": 0}).run_round(1, zeros()).report
    by_pid = {p: n for n, p in nodes.items()}
    assert report.status == "failed" and report.selected == []
    assert "eligible" in (report.failure or "")
    assert report.ineligible[by_pid[1]] == "on battery"
    assert report.ineligible[by_pid[2]].startswith("runs another plan")


def test_nodes_that_decline_are_ineligible_next_round_without_a_query() -> None:
    behaviours = ["honest", "honest", "ineligible", "otherplan"]
    with federation(toy_client_app(behaviours), 4) as (grid, nodes):
        rr = runner(grid, target=4, min_reports=2, settings={"over_selection": 1.0})
        first, second = rr.run(zeros(), num_rounds=2).reports
    by_pid = {p: n for n, p in nodes.items()}
    assert first.ok and first.queried == [] and sorted(first.selected) == sorted(nodes)
    assert first.declined == {by_pid[2]: "not eligible: on battery",
                              by_pid[3]: "the global model's plan is not this device's plan"}
    assert second.ok and second.queried == []
    assert sorted(second.selected) == sorted([by_pid[0], by_pid[1]])
    assert second.ineligible[by_pid[2]] == "declined in round 1: not eligible: on battery"
    assert second.ineligible[by_pid[3]].startswith("declined in round 1: the global model's")


def test_declines_are_recorded_apart_from_refusals() -> None:
    with federation(toy_client_app(["honest", "honest", "decline"]), 3) as (grid, nodes):
        report = runner(grid, target=3, min_reports=2).run_round(1, zeros()).report
    by_pid = {p: n for n, p in nodes.items()}
    assert report.ok
    assert report.declined == {by_pid[2]: "unplugged"}
    assert report.refused == {} and sorted(report.accepted) == sorted([by_pid[0], by_pid[1]])


def test_stragglers_and_crashes_are_ignored() -> None:
    behaviours = ["honest", "honest", "honest", "slow", "error"]
    with federation(toy_client_app(behaviours), 5) as (grid, nodes):
        report = runner(grid, target=5, min_reports=2).run_round(1, zeros()).report
    by_pid = {p: n for n, p in nodes.items()}
    assert report.ok
    assert report.stragglers == [by_pid[3]]
    assert list(report.error_replies) == [by_pid[4]]
    assert "device crashed" in report.error_replies[by_pid[4]]
    assert sorted(report.accepted) == sorted(by_pid[p] for p in range(3))


def test_round_closes_at_the_target_count() -> None:
    with federation(toy_client_app(["honest", "honest", "mute"]), 3) as (grid, nodes):
        rr = runner(grid, target=2, min_reports=2, settings={"train_timeout_s": 60.0})
        report: RoundReport = rr.run_round(1, zeros()).report
    by_pid = {p: n for n, p in nodes.items()}
    # k = ceil(1.3 * 2) = 3: all selected; the round closed on the two honest replies instead of
    # waiting (up to 60 s) for the mute node, whose late answer is ignored
    assert sorted(report.selected) == sorted(nodes)
    assert sorted(report.accepted) == sorted([by_pid[0], by_pid[1]])
    assert report.stragglers == [by_pid[2]]


def test_drift_steers_epochs_and_weights() -> None:
    scores = [1.0, 0.0, 0.0]
    steering = SteeringConfig(base_epochs=1, max_extra_epochs=2, max_drift_boost=1.0)
    with federation(toy_client_app(["honest"] * 3, drift_scores=scores), 3) as (grid, nodes):
        # the scores come from query replies: the mode that queries every node every round
        outcome = runner(grid, target=3, min_reports=3, steering=steering,
                         settings={"query_max_age": 0}).run_round(1, zeros())
    assert outcome.report.ok
    by_pid = {p: n for n, p in nodes.items()}
    assert outcome.drift_scores == {by_pid[0]: 1.0, by_pid[1]: 0.0, by_pid[2]: 0.0}
    # node 0 trained 3 epochs, the others 1: the aggregated 'epochs' metric is their weighted mean
    w = np.array([10 * 2.0, 20, 30])
    assert outcome.report.metrics["train.epochs"] == pytest.approx((w * [3, 1, 1]).sum() / w.sum())
    assert outcome.weights["dense/bias"] == pytest.approx(
        np.full(3, expected_fedavg([0, 1, 2], boost={0: 1.0})), rel=1e-5)


@pytest.mark.parametrize(
    ("name", "params"),
    [("fedprox", {"proximal_mu": 0.1}), ("fedadam", {"eta": 0.1}), ("fedyogi", {}),
     ("fedtrimmedavg", {"beta": 0.2}), ("krum", {"num_malicious_nodes": 1})],
)
def test_every_strategy_runs_in_the_loop(name: str, params: dict[str, float]) -> None:
    with federation(toy_client_app(["honest"] * 5), 5) as (grid, _):
        result = runner(grid, strategy=name, params=params, target=5, min_reports=3).run(
            zeros(), num_rounds=2)
    assert all(r.ok for r in result.reports), [r.failure for r in result.reports]
    bias = result.weights["dense/bias"]
    assert bias.dtype == np.float32 and np.all(np.isfinite(bias)) and np.all(bias > 0)
