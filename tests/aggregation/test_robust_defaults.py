"""Round-level defences (direction, weight cap, implausible counts), robust strategies by name,
and the quarantine of repeatedly refused nodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, MultiKrum

from aggregation.errors import SettingsError
from aggregation.selection import UniformSelection
from aggregation.selection.base import Candidate
from aggregation.selection.quarantine import Quarantine, load_entries, release
from aggregation.strategies import build_strategy, strategy_name
from aggregation.validation import UpdateValidator
from aggregation.validation_types import RefusalReason, ValidationBounds, Verdict
from edgefleet.plan import WeightSpec

SPEC = [WeightSpec(name="w", shape=[50])]
GLOBAL = {"w": np.zeros(50, np.float32)}
RNG = np.random.default_rng(0)
DIRECTION = RNG.standard_normal(50).astype(np.float32)


def reply(delta: np.ndarray, n: int = 100) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({"w": Array(np.asarray(delta, np.float32))}),
                       "metrics": MetricRecord({"num-examples": n})})


def honest(i: int, scale: float = 1.0) -> np.ndarray:
    noise = np.random.default_rng(i).standard_normal(50).astype(np.float32)
    return scale * (DIRECTION + 0.3 * noise)


def round_of(updates: list[tuple[np.ndarray, int]], bounds: ValidationBounds | None = None
             ) -> list[Verdict]:
    validator = UpdateValidator(SPEC, GLOBAL, bounds)
    verdicts = [validator.validate(i, reply(d, n), declared_examples=n)
                for i, (d, n) in enumerate(updates)]
    validator.apply_round_bounds(verdicts)
    return verdicts


def test_sign_flips_of_any_size_are_refused_by_direction() -> None:
    small = honest(9, 0.1)  # the smallest client: a x10 flip stays under 10x the median norm
    updates = [(honest(i), 100) for i in range(8)] + [(-small, 10), (-10 * small, 10)]
    verdicts = round_of(updates)
    assert all(v.accepted for v in verdicts[:8])
    for v in verdicts[8:]:
        assert v.reasons == [RefusalReason.DIRECTION] and v.cosine is not None and v.cosine < 0
        assert "median update" in v.refusals[0].detail


def test_noise_of_the_honest_norm_is_refused_and_honest_cosines_are_kept() -> None:
    noise = np.random.default_rng(99).standard_normal(50).astype(np.float32)
    noise *= np.linalg.norm(honest(0)) / np.linalg.norm(noise)
    verdicts = round_of([(honest(i), 100) for i in range(6)] + [(noise, 100)])
    assert [v.accepted for v in verdicts] == [True] * 6 + [False]
    assert min(v.cosine for v in verdicts[:6] if v.cosine is not None) > 0.5


def test_direction_bound_can_be_switched_off() -> None:
    verdicts = round_of([(honest(i), 100) for i in range(5)] + [(-honest(5), 100)],
                        ValidationBounds(min_cosine=None))
    assert all(v.accepted for v in verdicts)


def test_declared_count_is_capped_at_a_multiple_of_the_round_median() -> None:
    verdicts = round_of([(honest(i), 100) for i in range(5)] + [(honest(5), 1000)])
    inflated = verdicts[-1]
    assert inflated.accepted and inflated.num_examples == 200 and inflated.claimed_examples == 1000
    assert all(v.num_examples == 100 and v.claimed_examples is None for v in verdicts[:5])


def test_an_implausible_count_is_refused_even_when_declared_in_the_query_too() -> None:
    verdicts = round_of([(honest(i), 100) for i in range(9)] + [(honest(9), 100_000)])
    assert verdicts[-1].reasons == [RefusalReason.NUM_EXAMPLES]
    assert "x round median" in verdicts[-1].refusals[0].detail


@pytest.mark.parametrize("kwargs", [{"min_cosine": 1.0}, {"max_weight_ratio": 0.5},
                                    {"implausible_ratio": 0.0}, {"direction_sample": 0}])
def test_new_bounds_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(SettingsError):
        ValidationBounds(**kwargs)  # type: ignore[arg-type]


def test_direction_uses_a_bounded_sample_of_coordinates() -> None:
    spec = [WeightSpec(name="a", shape=[300]), WeightSpec(name="b", shape=[700])]
    validator = UpdateValidator(spec, {"a": np.zeros(300, np.float32),
                                       "b": np.zeros(700, np.float32)},
                                ValidationBounds(direction_sample=100))
    content = RecordDict({"arrays": ArrayRecord({"a": Array(np.arange(300, dtype=np.float32)),
                                                 "b": Array(np.ones(700, np.float32))}),
                          "metrics": MetricRecord({"num-examples": 5})})
    assert validator.validate(1, content).accepted
    sample = validator._samples[1]
    assert sample.size == 100 and sample[:30].tolist() == list(range(0, 300, 10))


@pytest.mark.parametrize(("name", "cls", "params"), [
    ("fedmedian", FedMedian, {}),
    ("multikrum", MultiKrum, {"num_malicious_nodes": 1, "num_nodes_to_select": 3}),
    ("bulyan", Bulyan, {"num_malicious_nodes": 1}),
])
def test_robust_strategies_by_name(name: str, cls: type, params: dict[str, int]) -> None:
    strategy = build_strategy(name, params)
    assert type(strategy) is cls and strategy_name(strategy) == name
    with pytest.raises(SettingsError, match="takes no"):
        build_strategy(name, {"no_such_parameter": 1})


# --- quarantine ----------------------------------------------------------------------------
def verdict(node: int, refused: bool) -> Verdict:
    v = Verdict(node)
    if refused:
        v.refuse(RefusalReason.DIRECTION, "away")
    return v


def test_a_node_refused_three_times_is_quarantined_until_released(tmp_path: Path) -> None:
    path = tmp_path / "quarantine.json"
    q = Quarantine(UniformSelection(), path=path)
    candidates = [Candidate(n) for n in (1, 2, 3)]
    rng = np.random.default_rng(0)
    for r in (1, 2):
        q.record(r, [verdict(1, True), verdict(2, False), verdict(3, False)])
        assert sorted(q.select(candidates, 3, r + 1, rng)) == [1, 2, 3]
    q.record(3, [verdict(1, True), verdict(2, False), verdict(3, False)])
    assert sorted(q.select(candidates, 3, 4, rng)) == [2, 3]
    assert q.refusals == {1: 3}
    [entry] = load_entries(path)  # on disk: outlives the run
    assert entry.node_id == 1 and entry.since_round == 3 and entry.reasons == ["direction"]
    again = Quarantine(UniformSelection(), path=path)  # a new run keeps it out
    assert sorted(again.select(candidates, 3, 1, rng)) == [2, 3]
    assert release(path, 1) is True and release(path, 1) is False  # the operator lets it back
    assert sorted(again.select(candidates, 3, 2, rng)) == [1, 2, 3]
    assert json.loads(path.read_text())["quarantined"] == []


def test_refusals_outside_the_window_do_not_quarantine() -> None:
    q = Quarantine(UniformSelection(), after=3, window=3)
    for r, refused in enumerate([True, False, True, False, True, False], start=1):
        q.record(r, [verdict(5, refused)])
    assert q.quarantined == {} and q.refusals == {5: 3}


def test_quarantine_parameters_are_checked() -> None:
    with pytest.raises(SettingsError):
        Quarantine(UniformSelection(), after=6, window=5)


def test_the_operator_lists_and_releases_from_the_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgefleet_cli.main import app as cli

    path = tmp_path / "q.json"
    q = Quarantine(UniformSelection(), path=path)
    for r in (1, 2, 3):
        q.record(r, [verdict(42, True)])
    runner = CliRunner()
    listed = runner.invoke(cli, ["fl", "quarantine", "list", "--file", str(path)])
    assert listed.exit_code == 0 and listed.output.startswith("42  since round 3  direction")
    released = runner.invoke(cli, ["fl", "quarantine", "release", "42", "--file", str(path)])
    assert released.exit_code == 0 and "may be selected again" in released.output
    again = runner.invoke(cli, ["fl", "quarantine", "release", "42", "--file", str(path)])
    assert again.exit_code == 1 and "not quarantined" in again.output


def test_direction_bound_follows_the_spread_of_honest_non_iid_cosines() -> None:
    # label skew: each honest update is the shared direction plus a large client-specific part
    skewed = [(0.15 * DIRECTION + 2.0 * np.random.default_rng(100 + i).standard_normal(50)
               .astype(np.float32), 100) for i in range(20)]
    relative = round_of(skewed)
    absolute = round_of(skewed, ValidationBounds(direction_mads=None))
    cosines = [v.cosine for v in relative if v.cosine is not None]
    assert min(cosines) < 0.1  # honest updates below min_cosine ...
    assert all(v.accepted for v in relative)  # ... are not refused by the relative bound
    assert any(RefusalReason.DIRECTION in v.reasons for v in absolute)  # the absolute one did
    flipped = round_of([(honest(i), 100) for i in range(8)] + [(-honest(8), 100)])
    assert flipped[-1].reasons == [RefusalReason.DIRECTION]  # an aligned round: as before
