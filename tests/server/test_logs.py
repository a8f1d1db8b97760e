"""The server's log writer (``server/logs.py``): deferred records, batched writes, JSON lines.

A record deferred to the writer thread (the access log's) must come out as the line the same
record handled on the request's path would have given, and only be deferred when nothing on the
way (another handler, a filter, a level) could have treated it differently.
"""

from __future__ import annotations

import io
import json
import logging
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from server import logs
from server.log_lines import PIPE_BUF, JsonFormatter, iso_millis, json_line, record_at
from server.logs import BackgroundHandler, background_handler, configure_logging
from server.middleware import ACCESS_LOG
from tests.server.support import APP_KEY, Api

FIELDS = {"request_id": "r-1", "method": "POST", "path": "/v2/models/m/infer", "status": 200,
          "latency_ms": 0.25, "caller": "app:shop", "model": "m", "model_version": 3}


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def quiet_writer() -> Iterator[list[BackgroundHandler]]:
    """Background handlers made by a test, closed (thread stopped) at its end."""
    made: list[BackgroundHandler] = []
    yield made
    for handler in made:
        handler.close()


def writer(made: list[BackgroundHandler], target: logging.Handler) -> BackgroundHandler:
    handler = BackgroundHandler(target, interval_s=3600)  # written only when the test says
    made.append(handler)
    return handler


def test_iso_millis_is_what_datetime_gives() -> None:
    rng = random.Random(7)
    stamps = [rng.uniform(0, 4e9) for _ in range(20_000)]
    stamps += [1764612000.0, 1764612000.9995, 1764612000.9999996, 1764612000.0004999,
               1764612000.0005, 0.0, 59.9999999]
    for t in stamps:
        assert iso_millis(t) == datetime.fromtimestamp(t, UTC).isoformat(
            timespec="milliseconds"), t


def test_a_deferred_json_line_is_the_line_of_the_record() -> None:
    logger = logging.getLogger("edgefleet.test.logs")
    for created in (1764612000.1234, 1764612001.9999):
        record = record_at(logger, created, logging.INFO, "%s %s %s", ("POST", "/x", 200),
                           dict(FIELDS), pathname=__file__)
        assert record.created == created
        assert record.getMessage() == "POST /x 200"
        line = json_line(logger, created, logging.INFO, "%s %s %s", ("POST", "/x", 200),
                         dict(FIELDS))
        assert line == JsonFormatter().format(record)
        assert json.loads(line) == {
            "time": iso_millis(created), "level": "INFO", "logger": "edgefleet.test.logs",
            "message": "POST /x 200", **FIELDS}


def test_a_json_line_encodes_every_field_as_the_formatter_does() -> None:
    """Non-ASCII text, floats, ``None``, a value JSON cannot hold (its ``str``), a field named
    like a line key; a field starting with ``_`` is left out, as the formatter leaves it."""
    logger = logging.getLogger("edgefleet.test.logs")
    fields = {"caller": "app:caf\u00e9 \"q\"", "latency_ms": 0.1 + 0.2, "model": None,
              "at": datetime(2030, 1, 1, tzinfo=UTC), "level": "shadowed"}
    for extra in (fields, {**fields, "_hidden": 1}):
        record = record_at(logger, 1764612000.5, logging.INFO, "done", (), dict(extra))
        line = json_line(logger, 1764612000.5, logging.INFO, "done", (), dict(extra))
        assert line == JsonFormatter().format(record)
        assert "_hidden" not in line and json.loads(line)["level"] == "shadowed"


def test_queued_records_are_written_at_once(quiet_writer: list[BackgroundHandler]) -> None:
    stream = io.StringIO()
    target = logging.StreamHandler(stream)
    target.setFormatter(JsonFormatter())
    writes = []
    stream_write = stream.write

    def counted(text: str) -> int:
        writes.append(text)
        return stream_write(text)

    stream.write = counted  # type: ignore[method-assign]
    handler = writer(quiet_writer, target)
    logger = logging.getLogger("edgefleet.test.logs")
    handler.handle(logger.makeRecord(logger.name, logging.WARNING, "", 0, "plain %d", (1,), None))
    handler.defer(logger, 1764612000.5, logging.INFO, "%s %s %s", ("GET", "/y", 404),
                  dict(FIELDS), __file__)
    handler.write_queued()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["plain 1", "GET /y 404"]
    assert lines[1]["time"] == iso_millis(1764612000.5) and lines[1]["request_id"] == "r-1"
    assert len(writes) == 1  # one write for the whole round
    for i in range(2 * logs.WRITE_CHUNK + 1):
        handler.defer(logger, 1764612000.5, logging.INFO, "n %d", (i,), {})
    handler.write_queued()
    # then a write per WRITE_CHUNK lines, or more: each at most PIPE_BUF, cut at line ends
    assert len(writes) >= 4
    assert all(len(w) <= PIPE_BUF and w.endswith("\n") for w in writes)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines[2:]] == [
        f"n {i}" for i in range(2 * logs.WRITE_CHUNK + 1)]


def test_other_targets_get_the_records_themselves(quiet_writer: list[BackgroundHandler]) -> None:
    target = Collect()
    handler = writer(quiet_writer, target)
    logger = logging.getLogger("edgefleet.test.logs")
    handler.defer(logger, 1764612000.25, logging.INFO, "%s", ("hello",), {"model": "m"})
    handler.write_queued()
    (record,) = target.records
    assert record.getMessage() == "hello" and record.created == 1764612000.25
    assert record.name == "edgefleet.test.logs" and record.model == "m"  # type: ignore[attr-defined]


def test_records_are_deferred_only_where_nothing_else_could_see_them(
        quiet_writer: list[BackgroundHandler]) -> None:
    parent = logging.getLogger("edgefleet.test.defer")
    child = logging.getLogger("edgefleet.test.defer.access")
    handler = writer(quiet_writer, Collect())
    parent.handlers[:] = [handler]
    parent.propagate = False
    try:
        assert background_handler(child, logging.INFO) is handler
        handler.setLevel(logging.WARNING)
        assert background_handler(child, logging.INFO) is None  # the handler would drop it
        handler.setLevel(logging.NOTSET)
        child.addFilter(lambda record: True)
        assert background_handler(child, logging.INFO) is None  # a filter decides
        child.filters.clear()
        other = Collect()
        parent.addHandler(other)
        assert background_handler(child, logging.INFO) is None  # it goes elsewhere too
        parent.removeHandler(other)
        parent.propagate = True  # and so on to the root's handlers (pytest's, here)
        assert background_handler(child, logging.INFO) is None or not logging.root.handlers
    finally:
        parent.handlers.clear()
        parent.propagate = True


@pytest.fixture
def server_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """``configure_logging`` as the server process does it, stderr captured; undone after."""
    names = ("edgefleet", "uvicorn", "uvicorn.error")
    saved = [(logging.getLogger(n).handlers[:], logging.getLogger(n).level,
              logging.getLogger(n).propagate) for n in names]
    access_disabled = logging.getLogger("uvicorn.access").disabled
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("INFO", "json")
    yield stream
    logs._stop_background()
    for name, (handlers, level, propagate) in zip(names, saved, strict=True):
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    logging.getLogger("uvicorn.access").disabled = access_disabled


def test_the_access_log_of_the_server_process(
        served: Api, client: TestClient, server_logging: io.StringIO) -> None:
    edgefleet = logging.getLogger("edgefleet")
    queued = logs._background
    assert queued is not None
    capturing = edgefleet.handlers[:]  # pytest's capture handlers join the server's own
    assert background_handler(ACCESS_LOG, logging.INFO) is (
        queued if capturing == [queued] else None)
    edgefleet.handlers[:] = [queued]
    try:
        assert background_handler(ACCESS_LOG, logging.INFO) is logs._background
        _two_requests(client, server_logging)
    finally:
        edgefleet.handlers[:] = capturing


def _two_requests(client: TestClient, server_logging: io.StringIO) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                   "data": [0.5] * 64}]})
    answer = client.post("/v2/models/digits/infer", content=body,
                         headers={"Authorization": f"Bearer {APP_KEY}", "X-Request-ID": "req-7"})
    refused = client.post("/v2/models/digits/infer", content=body)
    assert (answer.status_code, refused.status_code) == (200, 401)
    assert logs._background is not None
    logs._background.write_queued()
    lines = [json.loads(line) for line in server_logging.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "edgefleet.server.access"]
    assert [(a["request_id"], a["status"], a["caller"], a["model"], a["model_version"])
            for a in access] == [("req-7", 200, "app:shop", "digits", 1),
                                 (refused.headers["x-request-id"], 401, "anonymous:-", None,
                                  None)]
    assert access[0]["message"] == "POST /v2/models/digits/infer 200"
    assert access[0]["method"] == "POST" and access[0]["latency_ms"] >= 0
    assert datetime.fromisoformat(access[0]["time"]).tzinfo is not None


@pytest.fixture
def served(api: Api) -> Api:
    api.production()
    return api
