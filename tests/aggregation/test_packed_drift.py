"""The drift summary as Flower replies carry it: the packed vector (round trip, every refusal of
hostile input), the answer book decoding a round's replies together, and the stacked baseline
update agreeing with the one-at-a-time one."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from aggregation.answer_book import AnswerBook
from aggregation.messages import QueryAnswer
from aggregation.selection.tracking import DriftTracker
from edgefleet import flower_keys as fk
from edgefleet.drift import DriftAccumulator, DriftSummary, ReferenceProfile, build_reference
from edgefleet.drift.packed import (
    PackedSummary,
    merge_summaries,
    pack,
    pack_state,
    unpack,
    unpack_many,
)
from edgefleet.errors import SummaryError


def summary(ref: ReferenceProfile, x: np.ndarray, seed: int, rows: int = 80,
            shift: float = 0.0, labelled: bool = True) -> DriftSummary:
    rng = np.random.default_rng(seed)
    acc = DriftAccumulator(ref, model="digits", version=1)
    probs = rng.dirichlet(np.ones(10), size=rows)
    labels = rng.integers(0, 10, rows) if labelled else None
    acc.update(np.clip(x[rng.integers(0, len(x), rows)] + shift, 0, 16), probs, labels)
    return acc.to_summary()


def test_a_packed_summary_round_trips_to_the_same_summary(digits) -> None:
    x, _, ref = digits
    s = summary(ref, x, 1)
    p = unpack(pack(s), ref)
    assert isinstance(p, PackedSummary) and p.to_summary() == s
    assert p.model == "digits" and p.version == 1 and p.n == 80
    empty = DriftSummary.empty(ref, model="digits", version=3)  # no rows: None ranges
    assert unpack(pack(empty), ref).to_summary() == empty
    many = unpack_many([pack(summary(ref, x, i)) for i in range(5)], ref)
    assert [m.to_summary() for m in many] == [summary(ref, x, i) for i in range(5)]  # type: ignore[union-attr]
    parts = [summary(ref, x, i) for i in range(3)]
    assert merge_summaries([unpack(pack(p), ref) for p in parts]) == DriftSummary.merge_all(parts)


def _words(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<i8").copy()


def _offsets(ref: ReferenceProfile) -> dict[str, int]:
    """Word offsets of the packed sections for a summary of model ``digits`` (one name word)."""
    f, t = len(ref.features), sum(len(ft.bin_edges) + 3 for ft in ref.features)
    c, k = ref.n_classes, len(ref.confidence_bin_edges) + 1
    start = 10 + 4 + 1
    bins = start + f
    nan = bins + t
    cls = nan + f
    conf = cls + c
    lt = conf + k
    lc = lt + c
    mean = lc + c
    return {"n": 3, "version": 2, "fingerprint": 10, "bins": bins, "nan": nan, "cls": cls,
            "conf": conf, "lt": lt, "lc": lc, "mean": mean, "m2": mean + f, "lo": mean + 2 * f}


def test_hostile_vectors_are_refused_with_a_reason_never_an_exception(digits) -> None:
    x, y, ref = digits
    good = pack(summary(ref, x, 2))
    at = _offsets(ref)

    def edited(word: int, value: int | float) -> bytes:
        w = _words(good)
        if isinstance(value, float):
            w.view("<f8")[word] = value
        else:
            w[word] = value
        return w.tobytes()

    # the same bins under other feature names: another fingerprint, the same layout
    other = build_reference(x, y, [f"q{i}" for i in range(64)], 10)
    cases = {
        "not a packed drift summary": [b"", b"\x00" * 7, "text", None, good[:-3]],
        "not laid out for this reference": [good[:-8], good + b"\x00" * 8, edited(0, 7),
                                            edited(4, 63), edited(8, 300)],
        "schema version": [edited(1, 2)],
        "fingerprint": [pack(summary(other, x, 1))],
        "version must be >= 0": [edited(at["version"], -1)],
        "negative counts": [edited(at["bins"], -1), edited(at["n"], -5), edited(at["lt"], -1)],
        "counts must be in": [edited(at["cls"], 2**60)],
        "must be finite": [edited(at["mean"], float("nan")), edited(at["m2"], float("inf"))],
        "m2 must be >= 0": [edited(at["m2"], -1.0)],
        "inconsistent": [edited(at["bins"], 5), edited(at["n"], 81), edited(at["nan"], 3),
                         edited(at["mean"], 99.0), edited(at["lo"], 20.0)],
        "confidence_counts": [edited(at["conf"], 10**6)],
        "label_correct exceeds": [edited(at["lc"], 10**4)],
    }
    for expected, blobs in cases.items():
        for reason in unpack_many(blobs, ref):
            assert isinstance(reason, str) and expected in reason, (expected, reason)
    with pytest.raises(SummaryError):
        unpack(edited(at["bins"], -1), ref)
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, len(good), dtype=np.uint8).tobytes() for _ in range(20)]
    assert all(isinstance(r, str) for r in unpack_many(noise, ref))
    # one bad vector does not spoil the others decoded with it
    out = unpack_many([good, edited(at["bins"], -1), good], ref)
    assert isinstance(out[0], PackedSummary) and isinstance(out[1], str)
    assert isinstance(out[2], PackedSummary)


def test_the_model_name_is_checked(digits) -> None:
    x, _, ref = digits
    s = summary(ref, x, 3)
    bad_utf8 = pack_state(s.to_state(), "m", 1, ref.fingerprint).replace(b"m\x00", b"\xff\x00", 1)
    assert "UTF-8" in str(unpack_many([bad_utf8], ref)[0])


def _reply(packed: object = None, json: str | None = None) -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    cfg = ConfigRecord({"status": "ok"})
    if packed is not None:
        cfg[fk.DRIFT_PACKED] = packed  # type: ignore[assignment]
    if json is not None:
        cfg[fk.DRIFT] = json
    return Message(RecordDict({"config": cfg}), reply_to=Message(RecordDict(), 1, "train"))


def test_the_answer_book_decodes_a_rounds_packed_summaries_and_refuses_bad_ones(digits) -> None:
    x, _, ref = digits
    book = AnswerBook(3, None, ref)
    first = {n: QueryAnswer(n, True, "", 80) for n in range(1, 5)}
    s1, s2 = summary(ref, x, 1), summary(ref, x, 2)
    book.after_train(1, first, {1: _reply(pack(s1)), 2: _reply(pack(s2)),
                                3: _reply(json=s1.model_dump_json()), 4: _reply()}, {})
    known = book.fresh(1, range(1, 5))
    assert known[1].drift.to_summary() == s1 and known[2].drift.to_summary() == s2  # type: ignore[union-attr]
    assert known[3].drift == s1 and known[4].drift is None
    # round 2: node 1 sends the same vector (the decoded object is reused), node 2 a malformed
    # one (its old summary stays, with its age), node 3 garbage bytes, node 4 a new summary
    bad = bytearray(pack(s2))
    bad[-8:] = np.float64(np.nan).tobytes()
    book.after_train(2, known, {1: _reply(pack(s1)), 2: _reply(bytes(bad)),
                                3: _reply(b"\x01" * 64), 4: _reply(pack(s2))}, {})
    now = book.fresh(2, range(1, 5))
    assert now[1].drift is known[1].drift
    assert now[2].drift is known[2].drift and now[3].drift == s1
    assert now[4].drift.to_summary() == s2  # type: ignore[union-attr]
    assert 2 not in book.fresh(5, [2]) and 4 in book.fresh(5, [4])  # node 2's summary: round 1


def test_stale_nodes_are_queried_oldest_first_within_the_budget() -> None:
    book = AnswerBook(2, None)
    book.record(1, {n: QueryAnswer(n, True, "", 10) for n in (5, 6)})
    book.record(2, {7: QueryAnswer(7, False, "on battery", 10)})
    book.record(4, {8: QueryAnswer(8, True, "", 10)})
    nodes = [5, 6, 7, 8, 9, 10]
    assert book.stale(5, nodes, 10) == [9, 10, 5, 6, 7]  # never answered, then oldest
    assert book.stale(5, nodes, 3) == [9, 10, 5]
    assert book.stale(5, nodes, 0) == []
    presumed = book.presumed(7)  # stale: a candidate again, presumed eligible
    assert presumed.eligible and presumed.num_examples == 10
    assert book.presumed(9) == QueryAnswer(9, True)


def test_stacked_baselines_agree_with_one_summary_at_a_time(digits) -> None:
    x, y, ref = digits
    one, stacked = DriftTracker(ref), DriftTracker(ref)
    accs = [DriftAccumulator(ref, model="digits", version=1) for _ in range(12)]
    rng = np.random.default_rng(5)
    for r in range(7):
        batch = []
        for node, acc in enumerate(accs):
            shift = 4.0 if (node % 4 == 0 and r >= 4) else 0.0
            pick = rng.integers(0, len(x), 30)
            acc.update(np.clip(x[pick] + shift, 0, 16), rng.dirichlet(np.ones(10), 30), y[pick])
            if node == 5 and r == 3:
                acc = accs[node] = DriftAccumulator(ref, model="digits", version=2)  # new version
                acc.update(x[pick])
            s = acc.to_summary() if node % 3 else summary(ref, x, 100 * r + node, rows=30)
            if node == 10 and r in (2, 4):  # not heard from: its last summary is older
                continue
            one.observe(node, s)
            batch.append((node, unpack(pack(s), ref) if node != 7 else s))  # 7 stays JSON
        stacked.observe_many(batch)
    for node in range(12):
        a, b = one.reading(node), stacked.reading(node)
        assert a is not None and b is not None
        assert (a.rows, a.baseline_labels, a.recent_labels) == (
            b.rows, b.baseline_labels, b.recent_labels)
        for f in ("change", "difference", "baseline_accuracy", "recent_accuracy"):
            va, vb = getattr(a, f), getattr(b, f)
            assert (va is None) == (vb is None), (node, f)
            if va is not None:
                assert vb == pytest.approx(va, rel=1e-6, abs=1e-9), (node, f)  # rounding
    assert stacked.score(4) == one.score(4) == 1.0  # drifted from round 4
    assert stacked.score(1) == pytest.approx(one.score(1), rel=1e-6)
