"""The bounded types every side shares: what each refuses, and what it lets through."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from edgefleet.bounds import (
    DB_INT_MAX,
    CleanLine,
    CleanText,
    Count,
    JsonObject,
    Labels,
    Timestamp,
    VersionNumber,
    VersionParam,
    finite_json,
    path_version,
)


def ok(kind: Any, value: Any) -> Any:
    return TypeAdapter(kind).validate_python(value)


def bad(kind: Any, value: Any) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(kind).validate_python(value)


def test_version_numbers() -> None:
    assert ok(VersionNumber, 3) == 3 and ok(VersionNumber, np.int64(3)) == 3
    assert ok(VersionNumber, DB_INT_MAX) == DB_INT_MAX
    for value in (0, -1, DB_INT_MAX + 1, 2**63, "3", 3.0, True, None):
        bad(VersionNumber, value)
    assert ok(VersionParam, "3") == 3 and ok(VersionParam, "2147483647") == DB_INT_MAX
    for text in ("03", "3.0", "+3", " 3", "3 ", "1e0", "0x3", "0", "2147483648", "", "٣",
                 "3\n", "²"):
        bad(VersionParam, text)


def test_a_version_in_a_path_is_canonical() -> None:
    """The one rule of the server's and the agent's ``/versions/{v}/`` segments."""
    assert path_version("3") == 3 and path_version("2147483647") == DB_INT_MAX
    for text in ("01", "0", "+1", "-1", " 1", "1 ", "1\n", "1.0", "1e0", "²", "٣", "",
                 "2147483648", "99999999999", "x" * 10_000):
        with pytest.raises(ValueError, match=r"unknown version .*positive integers") as info:
            path_version(text)
        assert len(str(info.value)) < 100  # the segment is echoed cut short


def test_counters() -> None:
    assert ok(Count, 0) == 0 and ok(Count, DB_INT_MAX) == DB_INT_MAX
    for value in (-1, DB_INT_MAX + 1, "5", 1.5, 2.0, False):
        bad(Count, value)


def test_text_refuses_nul_controls_and_surrogates() -> None:
    assert ok(CleanText, "two\nlines\tand a tab\r") == "two\nlines\tand a tab\r"
    assert ok(CleanLine, "héllo ☃") == "héllo ☃"
    for value in ("a\x00b", "bell\x07", "del\x7f", "\ud800"):
        bad(CleanText, value)
        bad(CleanLine, value)
    bad(CleanLine, "two\nlines")


def test_free_json_is_finite_clean_and_shallow() -> None:
    good = {"cpu": "arm64", "cores": 4, "ghz": 1.8, "flags": [True, None, {"n": -(2**62)}]}
    assert ok(JsonObject, good) == good
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    for value in (
        {"x": math.nan},
        {"x": [math.inf]},
        {"x": "\x00"},
        {"k\x00": 1},
        {"x": 2**64},
        deep,
    ):
        bad(JsonObject, value)


def test_labels_are_bounded() -> None:
    assert ok(Labels, {"site": "lab-3"}) == {"site": "lab-3"}
    for value in ({"": "x"}, {"site": "a\nb"}, {"k" * 65: "v"}, {str(i): "v" for i in range(65)}):
        bad(Labels, value)


def test_timestamps_are_iso_strings_with_a_zone_in_utc() -> None:
    t = ok(Timestamp, "2025-03-01T12:00:00+02:00")
    assert t == datetime(2025, 3, 1, 10, tzinfo=UTC) and t.tzinfo == UTC
    aware = datetime(2025, 3, 1, tzinfo=timezone(timedelta(hours=-5)))
    assert ok(Timestamp, aware) == aware
    for value in ("0.5", 0.5, 1700000000, "1700000000", "2025-03-01T12:00:00",
                  datetime(2025, 3, 1), "0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00Z"):
        bad(Timestamp, value)


def test_finite_json_replaces_what_json_cannot_carry() -> None:
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": "x", "e": 3}
    assert finite_json(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": "x", "e": 3}
    assert ok(JsonObject, finite_json(value))
