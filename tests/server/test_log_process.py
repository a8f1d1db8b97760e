"""Deferred JSON lines made and written by a child process (server/log_process.py): the same
lines, none lost or cut, the thread's own records beside them, and the thread taking over when
the child is gone. Each case is a real Python process whose stderr is a pipe."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from server.log_lines import PIPE_BUF, pieces
from tests.environments import main_env_python

_SCRIPT = textwrap.dedent('''
    import logging, os, signal, sys, time
    from server import logs
    logs.configure_logging("INFO", "json", line_process=True)
    access = logging.getLogger("edgefleet.server.access")
    sink = logs.background_handler(access, logging.INFO)
    assert sink is not None and sink.lines is not None
    kill = sys.argv[1] == "kill"
    for i in range(3000):
        sink.defer(access, time.time(), logging.INFO, "%s %s %s", ("POST", "/v2/x", 200),
                   {"request_id": f"r{i}", "caller": "inference:app", "pad": "x" * (i % 300)})
        if i == 1000:
            logging.getLogger("edgefleet.server").warning("half way")
            time.sleep(0.5)  # a round: the child has started and written
            if kill:
                os.kill(sink.lines._proc.pid, signal.SIGKILL)
                sink.lines._proc.wait()
            print("child", sink.lines._proc is not None, file=sys.stdout, flush=True)
''')


def _run(mode: str) -> tuple[list[str], str]:
    proc = subprocess.run([main_env_python(), "-c", _SCRIPT, mode], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr.splitlines(), proc.stdout


def test_the_child_writes_every_deferred_line_whole() -> None:
    lines, out = _run("keep")
    assert "child True" in out
    records = [json.loads(line) for line in lines]  # every line is one whole JSON object
    ids = [r["request_id"] for r in records if r["logger"] == "edgefleet.server.access"]
    assert sorted(ids, key=lambda v: int(v[1:])) == [f"r{i}" for i in range(3000)]
    assert len(set(ids)) == 3000
    first = next(r for r in records if r.get("request_id") == "r7")
    assert first["message"] == "POST /v2/x 200" and first["level"] == "INFO"
    assert first["pad"] == "x" * 7 and first["caller"] == "inference:app"
    assert [r["message"] for r in records if r["level"] == "WARNING"] == ["half way"]


def test_the_thread_writes_what_a_dead_child_cannot() -> None:
    lines, _ = _run("kill")
    records = [json.loads(line) for line in lines if line.startswith("{")]
    ids = {r["request_id"] for r in records if r["logger"] == "edgefleet.server.access"}
    # what the child had written before it was killed, and all that came after, from the thread
    assert {f"r{i}" for i in range(1001, 3000)} <= ids
    assert all(line.startswith("{") for line in lines)  # no line cut by the kill


def test_pieces_are_cut_at_line_ends_within_pipe_buf() -> None:
    lines = [f"{'y' * (i * 37 % 900)}\n" for i in range(500)] + ["z" * (PIPE_BUF + 10) + "\n"]
    cut = pieces(lines)
    assert "".join(cut) == "".join(lines)
    assert all(len(p) <= PIPE_BUF or p.count("\n") == 1 for p in cut)
    assert all(p.endswith("\n") for p in cut)
    assert pieces([]) == []
    assert sys.platform != "linux" or PIPE_BUF == 4096
