"""The round loop: select -> train -> validate -> aggregate -> evaluate -> publish.

Eligibility and drift come from the nodes' train replies (:mod:`aggregation.answer_book`): no
round queries its nodes before training, and a bounded share of stale nodes is queried after
selection (``RoundSettings.query_share``); ``query_max_age = 0`` queries every node first.

:class:`RoundRunner` drives any object with Flower's ``Grid`` methods ``get_node_ids``,
``push_messages`` and ``pull_messages`` (the deployment engine's grid, the simulation engine's
``InMemoryGrid``), so the same loop runs on both. Unlike ``Strategy.start()``, a round closes
as soon as ``target_clients`` train replies are in or its deadline passes; late replies
(stragglers) are ignored. A round with fewer than ``min_reports`` valid updates fails and the
global weights stay.
Flower's strategy only does the maths (:func:`aggregation.strategies.aggregate`). The settings
and outcomes are :mod:`aggregation.round_types`, the messaging :mod:`aggregation.exchange`, the
fleet's per-round state :mod:`aggregation.roster`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import ConfigRecordValues, Message, MessageType
from flwr.serverapp.strategy import Strategy

from aggregation import linear
from aggregation.answer_book import AnswerBook
from aggregation.errors import RoundFailed
from aggregation.exchange import GridExchange, Pending, dropped, shared_contents
from aggregation.messages import QueryAnswer, to_arrayrecord
from aggregation.metrics import observe_round
from aggregation.report import RoundReport
from aggregation.roster import Roster
from aggregation.round_types import GridLike, RoundOutcome, RoundSettings, RunResult, Weights
from aggregation.selection import DriftScorer, SelectionPolicy, over_selection_count
from aggregation.selection.base import Candidate
from aggregation.selection.quarantine import RefusalAware
from aggregation.selection.tracking import DriftTracker, first_epoch_losses
from aggregation.steering import (
    SteeringConfig,
    aggregation_weights,
    node_train_config,
    strategy_contents,
)
from aggregation.strategies import aggregate, strategy_train_config
from aggregation.validation import UpdateValidator
from aggregation.validation_types import ValidationBounds, Verdict
from edgefleet import flower_keys as fk
from edgefleet.errors import EdgeFleetError
from edgefleet.plan import PlanManifest

__all__ = ["GridLike", "RoundOutcome", "RoundRunner", "RoundSettings", "RunResult"]

log = logging.getLogger(__name__)

EvaluateFn = Callable[[int, Mapping[str, np.ndarray]], Mapping[str, float]]


class RoundRunner(GridExchange):
    """Run federated rounds on a grid.

    Parameters
    ----------
    grid : GridLike
        Flower's grid (or anything with its three messaging methods).
    manifest : PlanManifest
        The plan being trained: weight spec, reference profile for drift scores.
    strategy : flwr.serverapp.strategy.Strategy
        Built by :func:`aggregation.strategies.build_strategy`.
    policy : SelectionPolicy
        Which eligible nodes train.
    settings, steering, bounds
        :class:`RoundSettings`, :class:`~aggregation.steering.SteeringConfig`,
        :class:`~aggregation.validation_types.ValidationBounds`.
    evaluate_fn : callable or None (default: None)
        ``evaluate_fn(round, weights) -> metrics`` on a server-side holdout set.
    on_round : callable or None (default: None)
        Called with every *successful* :class:`RoundOutcome`; returns the published version.
        Its exceptions stop the run (a restart resumes from the last published version).
    version : int or None (default: None)
        The registry version the first round starts from (sent to nodes in configs).
    clock, sleep : callables (default: time.monotonic, time.sleep)
        Injected for tests.
    """

    def __init__(
        self,
        grid: GridLike,
        manifest: PlanManifest,
        strategy: Strategy,
        policy: SelectionPolicy,
        *,
        settings: RoundSettings | None = None,
        steering: SteeringConfig | None = None,
        bounds: ValidationBounds | None = None,
        evaluate_fn: EvaluateFn | None = None,
        on_round: Callable[[RoundOutcome], int | None] | None = None,
        version: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.grid = grid
        self.manifest = manifest
        self.strategy = strategy
        self.policy = policy
        self.settings = settings or RoundSettings(model=manifest.name)
        self.steering = steering or SteeringConfig()
        self.bounds = bounds or ValidationBounds()
        self.evaluate_fn = evaluate_fn
        self.on_round = on_round
        self.version = version
        self.clock = clock
        self.sleep = sleep
        ref = manifest.reference
        self.scorer = DriftScorer(ref) if ref is not None and ref.features else None
        # drift scores as change against each node's own baseline (selection.tracking)
        self.tracker = (DriftTracker(ref, self.steering.tracking)
                        if ref is not None and ref.features and self.steering.tracking
                        else None)
        # the tracker re-scores every answer: the plan-reference score would be discarded
        self.book = AnswerBook(self.settings.query_max_age,
                               self.scorer if self.tracker is None else None, ref)
        self._candidates: dict[int, Candidate] = {}  # each node's last selection candidate

    # --- the run ---------------------------------------------------------------------------
    def run(self, weights: Mapping[str, np.ndarray], *, num_rounds: int, first_round: int = 1
            ) -> RunResult:
        """Run rounds ``first_round .. first_round + num_rounds - 1``."""
        self.manifest.check_weights(weights)
        current: Weights = dict(weights)
        outcomes = []
        for r in range(first_round, first_round + num_rounds):
            outcome = self.run_round(r, current)
            log.info(outcome.report.summary_line())
            current = outcome.weights
            outcomes.append(outcome)
        return RunResult(current, outcomes)

    def run_round(self, server_round: int, weights: Mapping[str, np.ndarray]) -> RoundOutcome:
        """One round; a failed round returns ``weights`` unchanged with a failed report."""
        report = RoundReport(server_round)
        outcome = RoundOutcome(report, dict(weights))
        started = self.clock()
        try:
            self._round(report, outcome, weights)
        except RoundFailed as exc:
            report.fail(exc.reason)
            outcome.weights = dict(weights)
            observe_round(report, self.clock() - started)
            return outcome
        report.status = "ok"
        if self.on_round is not None:
            t = self.clock()
            report.published_version = self.on_round(outcome)
            report.timings["publish"] = self.clock() - t
            if report.published_version is not None:
                self.version = report.published_version
        observe_round(report, self.clock() - started)
        return outcome

    def _round(self, report: RoundReport, outcome: RoundOutcome, weights: Mapping[str, np.ndarray]
               ) -> None:
        r, s = report.server_round, self.settings
        roster = self._eligibility(report)
        rng = np.random.default_rng(s.seed + r)
        self._select(report, roster, rng)
        answers = roster.answers(report.selected)
        stale = self._query_stale(report, roster)
        t = self.clock()
        good = self._train(report, answers, weights, stale)
        report.timings["train"] = self.clock() - t
        if stale is not None:
            t = self.clock()
            self._finish_query(r, stale)
            report.timings["query"] += self.clock() - t

        t = self.clock()
        validator, verdicts = self._validate(report, weights, good, answers)
        report.timings["validate"] = self.clock() - t
        if len(report.accepted) < s.min_reports:
            raise RoundFailed(r, f"{len(report.accepted)} valid reports < min_reports="
                                 f"{s.min_reports}")

        t = self.clock()
        accepted = [v for v in verdicts if v.accepted]
        new, scores = self._aggregate(report, weights, good, answers, accepted, validator)
        report.timings["aggregate"] = self.clock() - t

        t = self.clock()
        self._evaluate(report, new, report.eligible, rng)
        report.timings["evaluate"] = self.clock() - t
        outcome.weights = new
        outcome.drift_scores = scores
        outcome.drift_parts = [answers[v.node_id].drift for v in accepted]

    # --- the round's phases -------------------------------------------------------------------
    def _eligibility(self, report: RoundReport) -> Roster:
        """The connected nodes as the round sees them (answer book and presumed answers, or a
        query of every node when ``query_max_age`` is 0), re-scored for the whole fleet."""
        r, s = report.server_round, self.settings
        t = self.clock()
        nodes = self._wait_for_nodes()
        report.connected = len(nodes)
        if s.query_max_age <= 0:
            report.queried = list(nodes)
            roster = Roster.of(self._query(r, nodes))
        else:
            roster = self.book.roster(r, nodes)
        if self.tracker is not None:
            roster.scores = self.tracker.round_scores(r, roster.nodes.tolist(), roster.drift)
        report.timings["query"] = self.clock() - t
        report.eligible = roster.eligible_ids()
        report.ineligible = roster.reasons
        if len(report.eligible) < s.min_reports:
            raise RoundFailed(r, f"{len(report.eligible)} eligible nodes < "
                                 f"min_reports={s.min_reports}")
        return roster

    def _select(self, report: RoundReport, roster: Roster, rng: np.random.Generator) -> None:
        """The policy's picks among the eligible nodes (at most the over-selection count)."""
        r, s = report.server_round, self.settings
        k = over_selection_count(s.target_clients, s.over_selection)
        picked = self.policy.select(roster.candidates(self._candidates), k, r, rng)
        allowed = set(report.eligible)
        report.selected = list(dict.fromkeys(n for n in picked if n in allowed))[:k]
        if len(report.selected) < s.min_reports:
            raise RoundFailed(r, f"{len(report.selected)} selected < min_reports={s.min_reports}")

    def _query_stale(self, report: RoundReport, roster: Roster) -> Pending | None:
        """Push a query to the budget of stale nodes the selection passed over (their answers
        serve the next rounds; :meth:`AnswerBook.stale
        <aggregation.answer_book.AnswerBook.stale>`); the replies are pulled along with the
        train replies."""
        s = self.settings
        if s.query_max_age <= 0 or s.query_share <= 0:
            return None
        t = self.clock()
        side = None
        budget = math.ceil(s.query_share * len(report.selected))
        passed = roster.nodes[~np.isin(roster.nodes, np.fromiter(report.selected, np.uint64))]
        ask = self.book.stale(report.server_round, passed.tolist(), budget)
        if ask:
            report.queried = ask
            side = self._push_query(report.server_round, ask)
        report.timings["query"] = report.timings.get("query", 0.0) + self.clock() - t
        return side

    def _train(self, report: RoundReport, answers: Mapping[int, QueryAnswer],
               weights: Mapping[str, np.ndarray], side: Pending | None = None
               ) -> dict[int, Message]:
        """Send the train messages, collect the replies (and ``side``'s, pushed before); the
        updates (not declined, no error)."""
        r, s = report.server_round, self.settings
        arrays = to_arrayrecord(weights)
        base: dict[str, ConfigRecordValues] = {
            fk.SERVER_ROUND: r, fk.MODEL: s.model, fk.PLAN_SHA256: self.manifest.plan_sha256,
            fk.SEED: s.seed + r, fk.BATCH_RULE: s.batch_rule, fk.WEIGHTING: s.weighting,
        }
        base.update(strategy_train_config(self.strategy))
        if self.version is not None:
            base[fk.VERSION] = self.version
        contents = shared_contents(arrays, base, {
            n: node_train_config(answers[n].candidate(), self.steering) for n in report.selected})
        declines: dict[int, str] = {}
        replies, stragglers = self._exchange(r, MessageType.TRAIN, contents,
                                             s.train_timeout_s, until=s.target_clients,
                                             declines=declines, side=side)
        errors = {n: m for n, m in replies.items() if m.has_error()}
        report.stragglers = sorted(stragglers + [n for n, m in errors.items() if dropped(m)])
        report.error_replies = {n: str(m.error.reason) for n, m in errors.items()
                                if not dropped(m)}
        report.declined = declines
        good = {n: m for n, m in replies.items() if n not in errors and n not in declines}
        report.replied = sorted(good)
        self.book.after_train(r, answers, good, report.declined)
        return good

    def _validate(self, report: RoundReport, weights: Mapping[str, np.ndarray],
                  good: Mapping[int, Message], answers: Mapping[int, QueryAnswer]
                  ) -> tuple[UpdateValidator, list[Verdict]]:
        """Every update's verdict (per-update and round-level checks), recorded in the report."""
        r = report.server_round
        validator = UpdateValidator(self.manifest.weights, weights, self.bounds)
        verdicts = validator.validate_all(
            [(n, m.content, answers[n].num_examples) for n, m in good.items()])
        report.norm_median = validator.apply_round_bounds(verdicts)
        report.record(verdicts)
        if isinstance(self.policy, RefusalAware):  # refusals per node, towards quarantine
            self.policy.record(r, verdicts)
        if self.tracker is not None:  # the received model's loss on each node's data
            self.tracker.trained(r, first_epoch_losses(good, report.accepted))
        return validator, verdicts

    def _aggregate(self, report: RoundReport, weights: Mapping[str, np.ndarray],
                   good: Mapping[int, Message], answers: Mapping[int, QueryAnswer],
                   accepted: list[Verdict], validator: UpdateValidator
                   ) -> tuple[Weights, dict[int, float | None]]:
        """The new global weights from the accepted updates, drift-weighted; their scores."""
        r = report.server_round
        scores = {v.node_id: answers[v.node_id].drift_score for v in accepted}
        agg_w = aggregation_weights({v.node_id: int(v.num_examples or 0) for v in accepted},
                                    scores, self.steering)
        msgs = [good[v.node_id] for v in accepted]
        factors = [agg_w[v.node_id] for v in accepted]
        if linear.applies(self.strategy) and all(v.arrays for v in accepted):
            new, train_metrics = linear.weighted_mean(
                [v.arrays for v in accepted], factors,
                [v.metrics[0] for v in accepted],
                self.manifest.weights)
        else:
            for msg, content in zip(msgs, strategy_contents([m.content for m in msgs], factors),
                                    strict=True):
                msg.content = content
            new, train_metrics = aggregate(self.strategy, r, weights, msgs,
                                           self.manifest.weights)
        report.metrics.update({f"train.{k}": v for k, v in train_metrics.items()})
        return new, scores

    def _evaluate(self, report: RoundReport, new: Weights, eligible: list[int],
                  rng: np.random.Generator) -> None:
        """Holdout evaluation and federated evaluation of the new weights, into the report."""
        r = report.server_round
        if self.evaluate_fn is not None:
            try:
                holdout = self.evaluate_fn(r, new)
            except EdgeFleetError as exc:
                raise RoundFailed(r, f"holdout evaluation failed: {exc}") from exc
            report.metrics.update({f"holdout.{k}": float(v) for k, v in holdout.items()})
        if self.settings.eval_clients > 0:
            report.metrics.update(self._client_evaluation(r, new, eligible, rng))
