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
Flower's strategy only does the maths (:func:`aggregation.strategies.aggregate`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    MessageType,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import Strategy

from aggregation import linear
from aggregation.answer_book import AnswerBook
from aggregation.errors import RoundFailed, SettingsError
from aggregation.messages import (
    QueryAnswer,
    declined,
    evaluation_metrics,
    parse_query_reply,
    query_content,
    records_of,
    to_arrayrecord,
    train_content,
)
from aggregation.metrics import observe_round
from aggregation.report import RoundReport
from aggregation.selection import DriftScorer, SelectionPolicy, over_selection_count
from aggregation.selection.quarantine import RefusalAware
from aggregation.selection.tracking import DriftTracker, first_epoch_losses, rescore
from aggregation.steering import (
    SteeringConfig,
    aggregation_weights,
    node_train_config,
    strategy_contents,
)
from aggregation.strategies import aggregate, strategy_train_config
from aggregation.validation import UpdateValidator, ValidationBounds, Verdict
from edgefleet import flower_keys as fk
from edgefleet.drift import DriftSummary
from edgefleet.drift.baseline import AnySummary
from edgefleet.drift.packed import merge_summaries
from edgefleet.errors import EdgeFleetError, SummaryError
from edgefleet.plan import PlanManifest
from edgefleet.run_settings import DEFAULTS

log = logging.getLogger(__name__)

# Error replies the SuperLink makes up when the instruction's TTL expired or the node left.
_DROPOUT_CODES = frozenset({ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
                            ErrorCode.NODE_UNAVAILABLE})

Weights = dict[str, np.ndarray]
EvaluateFn = Callable[[int, Mapping[str, np.ndarray]], Mapping[str, float]]


class GridLike(Protocol):
    """The part of :class:`flwr.serverapp.Grid` the round loop uses."""

    def get_node_ids(self) -> Iterable[int]: ...

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]: ...

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]: ...


@dataclass(frozen=True)
class RoundSettings:
    """How a round runs: the round knobs of :class:`edgefleet.run_settings.RunKnobs`, which
    documents each one; the defaults are its :data:`~edgefleet.run_settings.DEFAULTS`.

    Parameters
    ----------
    model : str (default: "model")
        Model name, sent in query and train configs.
    target_clients, min_reports, over_selection, min_nodes : int, int, float, int
        Round size; ``min_nodes`` 0 means ``min_reports`` (it is resolved on construction).
    wait_for_nodes_s, query_timeout_s, train_timeout_s, eval_timeout_s, poll_interval_s : float
        Deadlines and the pause between two pulls, in seconds.
    eval_clients : int
        Eligible nodes asked to evaluate the new global model after the round; 0 disables.
    seed : int
        Seed of the selection randomness (rounds draw ``seed + round``).
    batch_rule, weighting : str
        The devices' training semantics, sent in every train config.
    query_max_age : int
        0: query every node every round. ``K > 0``: no query before selection; a node whose
        last answer (query reply, or train reply) is more than ``K`` rounds old, or who never
        answered, is a candidate presumed eligible (see :mod:`aggregation.answer_book`).
    query_share : float (default: 0.1)
        With ``query_max_age > 0``: the stale nodes the selection passed over that are queried
        in a round, at most ``ceil(query_share * selected)``, oldest answer first.
    """

    model: str = "model"
    target_clients: int = DEFAULTS.target_clients
    min_reports: int = DEFAULTS.min_reports
    over_selection: float = DEFAULTS.over_selection
    min_nodes: int = DEFAULTS.min_nodes
    wait_for_nodes_s: float = DEFAULTS.wait_for_nodes_s
    query_timeout_s: float = DEFAULTS.query_timeout_s
    train_timeout_s: float = DEFAULTS.train_timeout_s
    eval_clients: int = DEFAULTS.eval_clients
    eval_timeout_s: float = DEFAULTS.eval_timeout_s
    poll_interval_s: float = DEFAULTS.poll_interval_s
    seed: int = DEFAULTS.seed
    batch_rule: str = DEFAULTS.batch_rule
    weighting: str = DEFAULTS.weighting
    query_max_age: int = DEFAULTS.query_max_age
    query_share: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.min_reports <= self.target_clients:
            raise SettingsError("need 1 <= min_reports <= target_clients")
        if self.min_nodes == 0:
            object.__setattr__(self, "min_nodes", self.min_reports)
        over_selection_count(self.target_clients, self.over_selection)
        times = (self.wait_for_nodes_s, self.query_timeout_s, self.train_timeout_s,
                 self.eval_timeout_s, self.poll_interval_s)
        if min(times) < 0 or self.query_timeout_s <= 0 or self.train_timeout_s <= 0:
            raise SettingsError("timeouts must be >= 0, query and train timeouts > 0")
        if not 0.0 <= self.query_share <= 1.0:
            raise SettingsError("query_share must be in [0, 1]")


@dataclass
class RoundOutcome:
    """A finished round: its report, the global weights after it, and its drift.

    ``drift`` is the merged drift summary of the round's accepted nodes (``drift_parts``),
    merged when first read (publishing reads it; a simulation need not).
    """

    report: RoundReport
    weights: Weights
    drift_scores: dict[int, float | None] = field(default_factory=dict)
    drift_parts: list[AnySummary | None] = field(default_factory=list, repr=False)
    _drift: list[DriftSummary | None] = field(default_factory=list, init=False, repr=False)

    @property
    def drift(self) -> DriftSummary | None:
        if not self._drift:
            self._drift.append(_merge(self.drift_parts))
        return self._drift[0]


@dataclass
class RunResult:
    """All rounds of one :meth:`RoundRunner.run`."""

    weights: Weights
    outcomes: list[RoundOutcome]

    @property
    def reports(self) -> list[RoundReport]:
        return [o.report for o in self.outcomes]


class RoundRunner:
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
        :class:`~aggregation.validation.ValidationBounds`.
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
        answers, eligible = self._eligibility(report)
        rng = np.random.default_rng(s.seed + r)
        self._select(report, eligible, rng)
        self._query_stale(report, answers)
        t = self.clock()
        good = self._train(report, answers, weights)
        report.timings["train"] = self.clock() - t

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
        self._evaluate(report, new, eligible, rng)
        report.timings["evaluate"] = self.clock() - t
        outcome.weights = new
        outcome.drift_scores = scores
        outcome.drift_parts = [answers[v.node_id].drift for v in accepted]

    # --- the round's phases -------------------------------------------------------------------
    def _eligibility(self, report: RoundReport) -> tuple[dict[int, QueryAnswer],
                                                         list[QueryAnswer]]:
        """Connected nodes' answers (answer book, presumed, or a query of every node when
        ``query_max_age`` is 0), re-scored; the eligible ones."""
        r, s = report.server_round, self.settings
        t = self.clock()
        nodes = self._wait_for_nodes()
        report.connected = len(nodes)
        if s.query_max_age <= 0:
            report.queried = list(nodes)
            answers = self._query(r, nodes)
        else:
            known = self.book.fresh(r, nodes)
            answers = {n: known[n] if n in known else self.book.presumed(n) for n in nodes}
        if self.tracker is not None:
            answers = rescore(self.tracker, r, answers)
        report.timings["query"] = self.clock() - t
        eligible = [a for a in answers.values() if a.eligible]
        report.eligible = [a.node_id for a in eligible]
        report.ineligible = {a.node_id: a.reason for a in answers.values() if not a.eligible}
        if len(eligible) < s.min_reports:
            raise RoundFailed(r, f"{len(eligible)} eligible nodes < min_reports={s.min_reports}")
        return answers, eligible

    def _select(self, report: RoundReport, eligible: list[QueryAnswer],
                rng: np.random.Generator) -> None:
        """The policy's picks among ``eligible`` (at most the over-selection count)."""
        r, s = report.server_round, self.settings
        k = over_selection_count(s.target_clients, s.over_selection)
        picked = self.policy.select([a.candidate() for a in eligible], k, r, rng)
        allowed = {a.node_id for a in eligible}
        report.selected = list(dict.fromkeys(n for n in picked if n in allowed))[:k]
        if len(report.selected) < s.min_reports:
            raise RoundFailed(r, f"{len(report.selected)} selected < min_reports={s.min_reports}")

    def _query_stale(self, report: RoundReport, answers: Mapping[int, QueryAnswer]) -> None:
        """Query the budget of stale nodes the selection passed over (their answers serve the
        next rounds; :meth:`AnswerBook.stale <aggregation.answer_book.AnswerBook.stale>`)."""
        s = self.settings
        if s.query_max_age <= 0 or s.query_share <= 0:
            return
        t = self.clock()
        picked = set(report.selected)
        budget = math.ceil(s.query_share * len(report.selected))
        ask = self.book.stale(report.server_round, (n for n in answers if n not in picked),
                              budget)
        if ask:
            report.queried = ask
            self._query(report.server_round, ask)
        report.timings["query"] = report.timings.get("query", 0.0) + self.clock() - t

    def _train(self, report: RoundReport, answers: Mapping[int, QueryAnswer],
               weights: Mapping[str, np.ndarray]) -> dict[int, Message]:
        """Send the train messages, collect the replies; the updates (not declined, no error)."""
        r, s = report.server_round, self.settings
        arrays = to_arrayrecord(weights)
        base: dict[str, ConfigRecordValues] = {
            fk.SERVER_ROUND: r, fk.MODEL: s.model, fk.PLAN_SHA256: self.manifest.plan_sha256,
            fk.SEED: s.seed + r, fk.BATCH_RULE: s.batch_rule, fk.WEIGHTING: s.weighting,
        }
        base.update(strategy_train_config(self.strategy))
        if self.version is not None:
            base[fk.VERSION] = self.version
        contents = _shared_contents(arrays, base, {
            n: node_train_config(answers[n].candidate(), self.steering) for n in report.selected})
        declines: dict[int, str] = {}
        replies, stragglers = self._exchange(r, MessageType.TRAIN, contents,
                                             s.train_timeout_s, until=s.target_clients,
                                             declines=declines)
        errors = {n: m for n, m in replies.items() if m.has_error()}
        report.stragglers = sorted(stragglers + [n for n, m in errors.items() if _dropped(m)])
        report.error_replies = {n: str(m.error.reason) for n, m in errors.items()
                                if not _dropped(m)}
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
        self.book.learn_examples({v.node_id: int(v.num_examples or 0)
                                  for v in verdicts if v.accepted})
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

    def _evaluate(self, report: RoundReport, new: Weights, eligible: list[QueryAnswer],
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

    # --- messaging ---------------------------------------------------------------------------
    def _wait_for_nodes(self) -> list[int]:
        deadline = self.clock() + self.settings.wait_for_nodes_s
        while True:
            nodes = sorted(int(n) for n in self.grid.get_node_ids())
            if len(nodes) >= self.settings.min_nodes or self.clock() >= deadline:
                return nodes
            self.sleep(self.settings.poll_interval_s)

    def _query(self, server_round: int, nodes: list[int]) -> dict[int, QueryAnswer]:
        """Query ``nodes``; their answers (recorded in the answer book), in ``nodes`` order."""
        content = query_content(server_round, self.settings.model, self.version)
        replies, silent = self._exchange(server_round, MessageType.QUERY,
                                         dict.fromkeys(nodes, content),
                                         self.settings.query_timeout_s, until=None)
        plan = self.manifest.plan_sha256
        drift = self.book.drift_of({
            n: None if m.has_error() else next(iter(records_of(m.content, ConfigRecord)), None)
            for n, m in replies.items()})
        answers = {n: parse_query_reply(m, self.scorer, plan, drift[n])
                   for n, m in replies.items()}
        for n in silent:
            answers[n] = QueryAnswer(n, False, "no query reply before the deadline")
        self.book.record(server_round, answers)
        return {n: answers[n] for n in nodes if n in answers}

    def _exchange(
        self, server_round: int, message_type: str, contents: Mapping[int, RecordDict],
        timeout: float, *, until: int | None, declines: dict[int, str] | None = None,
    ) -> tuple[dict[int, Message], list[int]]:
        """Push one message per node; pull until ``until`` content replies, all, or timeout.

        Returns the replies by node (error replies included) and the nodes that did not answer;
        with ``until``, the replies that decline are also put in ``declines`` (node -> reason).
        """
        declines = {} if declines is None else declines
        group = f"{server_round}"
        messages = [Message(c, n, message_type, ttl=timeout, group_id=group)
                    for n, c in contents.items()]
        ids = list(self.grid.push_messages(messages))
        pending = {mid: int(m.metadata.dst_node_id) for mid, m in zip(ids, messages, strict=True)}
        replies: dict[int, Message] = {}
        deadline = self.clock() + timeout
        ok = 0  # content replies so far (no error, not a decline)
        while pending:
            for msg in self.grid.pull_messages(list(pending)):
                node = pending.pop(msg.metadata.reply_to_message_id, None)
                if node is not None:
                    replies[node] = msg
                    if until is not None and not msg.has_error():
                        why = declined(msg)
                        if why is None:
                            ok += 1
                        else:
                            declines[node] = why
            if (until is not None and ok >= until) or self.clock() >= deadline:
                break
            if pending:
                self.sleep(self.settings.poll_interval_s)
        return replies, sorted(pending.values())

    def _client_evaluation(self, server_round: int, weights: Weights,
                           eligible: list[QueryAnswer], rng: np.random.Generator
                           ) -> dict[str, float]:
        n = min(self.settings.eval_clients, len(eligible))
        idx = rng.choice(len(eligible), size=n, replace=False)
        arrays = to_arrayrecord(weights)
        config: dict[str, ConfigRecordValues] = {
            fk.SERVER_ROUND: server_round, fk.MODEL: self.settings.model,
        }
        contents = {eligible[int(i)].node_id: train_content(arrays, config) for i in idx}
        replies, _ = self._exchange(server_round, MessageType.EVALUATE, contents,
                                    self.settings.eval_timeout_s, until=None)
        return evaluation_metrics(list(replies.values()))


def _shared_contents(arrays: ArrayRecord, base: Mapping[str, ConfigRecordValues],
                     per_node: Mapping[int, Mapping[str, ConfigRecordValues]]
                     ) -> dict[int, RecordDict]:
    """Train contents by node: one ``RecordDict`` per distinct node config, shared by the nodes
    with that config (as ``FedAvg.configure_train`` shares one among all nodes)."""
    shared: dict[tuple[tuple[str, ConfigRecordValues], ...], RecordDict] = {}
    out = {}
    for node, cfg in per_node.items():
        key = tuple(sorted(cfg.items()))
        content = shared.get(key)
        if content is None:
            content = shared[key] = train_content(arrays, {**base, **cfg})
        out[node] = content
    return out


def _dropped(message: Message) -> bool:
    """An error reply that only says the message expired or the node went away (a drop-out)."""
    return message.has_error() and message.error.code in _DROPOUT_CODES


def _merge(summaries: list[AnySummary | None]) -> DriftSummary | None:
    """The merged drift summary of the round's accepted nodes (``None`` if none or unmergeable)."""
    present = [s for s in summaries if s is not None]
    if not present:
        return None
    try:
        return merge_summaries(present)
    except SummaryError:
        return None
