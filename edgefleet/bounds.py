"""Bounded types for everything that reaches the database: numbers, names, text, JSON, times.

The server's path, query and body models and the wire schemas (:mod:`edgefleet.wire`) use these
types, so a value that no column can hold is refused (400/422) before any query runs, the same
way on SQLite and on PostgreSQL:

* integers fit a PostgreSQL ``INTEGER`` (:data:`DB_INT_MAX` = 2³¹ − 1; SQLite would take 2⁶³ − 1);
* text never carries NUL, other C0 control characters (tab, line feed and carriage return are
  allowed in free text) or lone UTF-16 surrogates, which PostgreSQL cannot store and SQLite's
  driver cannot encode;
* names (models, devices, aliases) match their patterns;
* version numbers are canonical: ``1``, never ``01``, ``+1``, `` 1`` or ``1.0``, in a JSON body,
  a query string or a URL path (:func:`path_version`, the one rule of the server's and the
  agent's V2 routes);
* times are ISO 8601 strings with a zone, never a bare number taken as a Unix time;
* floats are finite (NaN, ±Infinity and overflowing literals such as ``1e999`` are refused);
* free-form JSON (labels, hardware facts, hyperparameters) has finite numbers, integers a
  64-bit column or JSONB can hold, clean strings, and a bounded depth.

Only pydantic and the standard library are imported, so every side can use these types.
"""

from __future__ import annotations

import math
import operator
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

__all__ = [
    "ALIAS_PATTERN",
    "DB_INT_MAX",
    "JSON_INT_MAX",
    "MAX_JSON_DEPTH",
    "NAME_PATTERN",
    "YEARS",
    "AliasName",
    "CleanLine",
    "CleanText",
    "Count",
    "DeviceId",
    "FiniteFloat",
    "JsonObject",
    "Labels",
    "ModelName",
    "NonNegativeFinite",
    "Offset",
    "QueryText",
    "Timestamp",
    "VersionNumber",
    "VersionParam",
    "canonical_number",
    "check_json",
    "check_line",
    "check_text",
    "finite_json",
    "integer_only",
    "path_version",
]

#: Largest integer every backend stores in an integer column (PostgreSQL ``INTEGER``).
DB_INT_MAX = 2**31 - 1
#: Largest magnitude of an integer inside free-form JSON (a signed 64-bit integer).
JSON_INT_MAX = 2**63 - 1
#: Deepest nesting of free-form JSON objects and arrays.
MAX_JSON_DEPTH = 32
#: Years a timestamp may fall in (first included, last excluded).
YEARS = (1900, 9000)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
#: A positive integer in canonical decimal, matched whole (``fullmatch``: ``$`` would let a
#: trailing newline through).
_CANONICAL_INT = re.compile(r"[1-9][0-9]{0,9}")
#: Characters no stored text may carry (single-line text also refuses tab, LF and CR).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_CONTROL_LINE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
#: An ISO 8601 date-time starts with a four-digit year, a month and a day.
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def check_text(value: str, *, multiline: bool = True) -> str:
    """``value`` itself; ``ValueError`` when it carries NUL, control characters or surrogates."""
    pattern = _CONTROL if multiline else _CONTROL_LINE
    found = pattern.search(value)
    if found is not None:
        raise ValueError(
            f"control character U+{ord(found.group()):04X} is not allowed (NUL, C0 controls "
            "and lone surrogates cannot be stored)"
        )
    return value


def check_line(value: str) -> str:
    """``value`` itself; ``ValueError`` when it is not clean single-line text."""
    return check_text(value, multiline=False)


#: Text without NUL, C0 controls other than tab/LF/CR, or surrogates (add ``max_length``).
CleanText = Annotated[str, AfterValidator(check_text)]
#: Single-line text without any control character or surrogate (add ``max_length``).
CleanLine = Annotated[str, AfterValidator(check_line)]


def canonical_number(value: Any) -> Any:
    """Path and query strings must spell the number canonically; JSON must send an integer."""
    if isinstance(value, str):
        if not _CANONICAL_INT.fullmatch(value):
            raise ValueError("a version number is a positive integer written without sign, "
                             "leading zeros, spaces or decimals (e.g. 3)")
        return int(value)
    return value


def path_version(segment: str) -> int:
    """The version number a URL path segment (``/versions/{segment}/``) names.

    Raises
    ------
    ValueError
        ``segment`` is not a canonical positive integer (``3``, never ``03``, ``+3``, ``3.0``
        or ``3`` and a newline) of at most :data:`DB_INT_MAX`; the message names it (its first
        20 characters), for a 404.
    """
    if not _CANONICAL_INT.fullmatch(segment) or int(segment) > DB_INT_MAX:
        raise ValueError(
            f"unknown version {segment[:20]!r}: versions are positive integers such as 3")
    return int(segment)


def integer_only(value: Any) -> Any:
    """An integer (a numpy integer too), never a string, a float or a boolean."""
    if isinstance(value, bool | str | bytes | float):
        raise ValueError("expected an integer (a JSON number without a fraction or exponent)")
    try:
        return operator.index(value)
    except TypeError:
        return value  # pydantic refuses it with its own message


#: A version number in a JSON body: a JSON integer, 1 to 2³¹ − 1.
VersionNumber = Annotated[int, BeforeValidator(integer_only), Field(ge=1, le=DB_INT_MAX)]
#: A version number in a path or query string: canonical decimal, 1 to 2³¹ − 1.
VersionParam = Annotated[int, BeforeValidator(canonical_number), Field(ge=1, le=DB_INT_MAX)]
#: A counter in a JSON body: a JSON integer, 0 to 2³¹ − 1.
Count = Annotated[int, BeforeValidator(integer_only), Field(ge=0, le=DB_INT_MAX)]
#: A listing offset (query string).
Offset = Annotated[int, Field(ge=0, le=DB_INT_MAX)]
#: A finite float (NaN, ±Infinity and overflowing literals refused).
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
#: A finite float >= 0 (latencies, losses).
NonNegativeFinite = Annotated[float, Field(ge=0, allow_inf_nan=False)]

ModelName = Annotated[str, Field(pattern=NAME_PATTERN, examples=["digits"])]
DeviceId = Annotated[str, Field(pattern=NAME_PATTERN, examples=["pi-17"])]
AliasName = Annotated[str, Field(pattern=ALIAS_PATTERN, examples=["production"])]
#: A filter value in a query string (a task, tag, substring or run id).
QueryText = Annotated[str, Field(max_length=128), AfterValidator(check_line)]


def _iso_only(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("expected an ISO 8601 date-time with a zone, e.g. 2025-03-01T12:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    """``value`` in UTC, between :data:`YEARS` (so adding a window or a bucket cannot overflow)."""
    if value.tzinfo is None:
        raise ValueError("the time must carry a time zone (e.g. 2025-03-01T12:00:00Z)")
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not YEARS[0] <= utc.year < YEARS[1]:
        raise ValueError(f"times must lie between the years {YEARS[0]} and {YEARS[1] - 1} (UTC)")
    return utc


#: A point in time: an ISO 8601 string with a zone (a bare number is refused), in UTC.
Timestamp = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_utc)]


def check_json(value: Any, depth: int = 0) -> Any:
    """``value`` itself when it is storable JSON (see the module notes); ``ValueError`` if not."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if abs(value) > JSON_INT_MAX:
            raise ValueError(f"integer {value} does not fit 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(str(key), multiline=False)
            check_json(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            check_json(item, depth + 1)
    return value


def finite_json(value: Any) -> Any:
    """A copy of JSON-like ``value`` with every NaN or ±Infinity replaced by ``None``.

    For producers whose statistics may be undefined (a mean over nothing): JSON has no NaN,
    and :data:`JsonObject` refuses one.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    return value


#: A free-form JSON object that every backend stores as it was sent.
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json)]
#: Device labels: at most 64 single-line keys and values.
Labels = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=64), AfterValidator(check_line)],
        Annotated[str, Field(max_length=256), AfterValidator(check_line)],
    ],
    Field(max_length=64),
]
