"""Canary membership of devices: the percent's hash share, with a floor of ceil(p·n/100)
devices on a small fleet; sticky and monotone across steps (pure, no database)."""

from __future__ import annotations

import math

import pytest

from registry.rollouts.strategies import (
    RoutingView,
    arm_for_caller,
    arm_for_device,
    bucket,
    canary_floor,
)

STEPS = (5, 25, 50, 100)
SALTS = [f"salt-{i}" for i in range(300)]


def members(ids: list[str], salt: str, percent: float, floor: bool = True) -> set[str]:
    positions = [bucket(d, "m", salt) for d in ids]
    view = RoutingView(rollout_id=1, strategy="canary", state="running", step=0, phase="",
                       candidate=2, baseline=1, percent=percent,
                       floor=canary_floor(percent, positions) if floor else None)
    return {d for d in ids if arm_for_device(view, d, {}, "m", salt) is not None}


@pytest.mark.parametrize("n", range(1, 13))
def test_every_step_holds_devices_and_only_grows(n: int) -> None:
    ids = [f"dev-{i}" for i in range(n)]
    empty_without_floor = 0
    for salt in SALTS:
        before: set[str] = set()
        for p in STEPS:
            inside = members(ids, salt, p)
            hashed = members(ids, salt, p, floor=False)
            assert len(inside) >= math.ceil(p * n / 100) >= 1, (salt, p)
            assert len(inside) >= max(len(hashed), math.ceil(p * n / 100))
            if len(inside) < n:  # a prefix by position (more than the floor only on a tie)
                assert (max(bucket(d, "m", salt) for d in inside)
                        <= min(bucket(d, "m", salt) for d in set(ids) - inside))
                k = max(len(hashed), math.ceil(p * n / 100))
                assert len(inside) == k or len({bucket(d, "m", salt) for d in inside}) < len(inside)
            assert hashed <= inside and before <= inside, (salt, p)  # sticky as p rises
            empty_without_floor += not hashed
            before = inside
        assert before == set(ids)  # 100 %: the whole fleet
    if n <= 3:
        assert empty_without_floor > 0  # the defect the floor repairs does occur


def test_the_floor_takes_the_lowest_positions() -> None:
    ids = [f"dev-{i}" for i in range(3)]
    for salt in SALTS:
        order = sorted(ids, key=lambda d: bucket(d, "m", salt))
        if all(bucket(d, "m", salt) >= 25 for d in ids):
            assert members(ids, salt, 25) == {order[0]}
            assert members(ids, salt, 50) == set(order[:2])
            return
    raise AssertionError("no salt leaves a 25 % step empty among 300")  # pragma: no cover


def test_floor_edges() -> None:
    assert canary_floor(None, [1.0]) is None and canary_floor(0, [1.0]) is None
    assert canary_floor(25, []) is None
    assert canary_floor(25, [9.0, 3.0, 5.0]) == 3.0  # ceil(0.75) = 1 device
    assert canary_floor(50, [9.0, 3.0, 5.0]) == 5.0  # ceil(1.5) = 2
    assert canary_floor(100, [9.0, 3.0, 5.0]) == 9.0
    assert canary_floor(10, [float(i) for i in range(10)]) == 0.0  # exactly 1, not 2


def test_rest_callers_follow_the_percent_alone() -> None:
    view = RoutingView(rollout_id=1, strategy="canary", state="running", step=0, phase="",
                       candidate=2, baseline=1, percent=0.01, floor=99.99)
    callers = [f"app-{i}" for i in range(200)]
    assert sum(arm_for_caller(view, c, "m", "s") is not None for c in callers) <= 2
