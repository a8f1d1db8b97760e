"""``edgefleet rollout start --guard``: the guard's text as the rollout API takes it."""

from __future__ import annotations

import pytest
import typer

from edgefleet_cli.rollout import _guard


@pytest.mark.parametrize(("text", "guard"), [
    ("device_accuracy", {"kind": "device_accuracy"}),
    ("device_accuracy:0.05:40", {"kind": "device_accuracy", "margin": 0.05, "min_samples": 40}),
    ("error_rate:0.02:200:server",
     {"kind": "error_rate", "margin": 0.02, "min_samples": 200, "statuses": "server"}),
    ("error_rate:::server", {"kind": "error_rate", "statuses": "server"}),
    ("latency_p99::500", {"kind": "latency_p99", "min_samples": 500}),
])
def test_a_guard_text_gives_the_fields_it_names(text: str, guard: dict[str, object]) -> None:
    assert _guard(text) == guard


@pytest.mark.parametrize("text", ["x:y", "error_rate:0.1:many", "error_rate:0.1:5:server:more"])
def test_a_malformed_guard_text_says_the_form(text: str) -> None:
    with pytest.raises(typer.BadParameter, match=r"kind\[:margin\[:min_samples\[:statuses\]\]\]"):
        _guard(text)
