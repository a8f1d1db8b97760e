"""The load generator of ``bench_serving.py``: one ``wrk`` run per cell, read into a :class:`Cell`.

``wrk`` (Debian's package, installed when missing) runs one thread, keep-alive, against
127.0.0.1 with a Lua script that POSTs the body. Around each run the bench reads the generator's
CPU (``RUSAGE_CHILDREN``) and the server's (every thread and descendant process, from ``/proc``).
"""

from __future__ import annotations

import contextlib
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _common import cpu_seconds


@dataclass
class Cell:
    rps: float
    p50_ms: float
    p99_ms: float
    gen_cores: float
    errors: int
    server_ms: float = 0.0  # the server's CPU time (every thread and worker) per request
    requests: int = 0  # the requests wrk completed


def median_cell(runs: list[Cell]) -> Cell:
    """One cell of several runs: each figure the median of the runs' (errors: their sum)."""
    def median(values: list[float]) -> float:
        return float(statistics.median(values))

    return Cell(median([r.rps for r in runs]), median([r.p50_ms for r in runs]),
                median([r.p99_ms for r in runs]), median([r.gen_cores for r in runs]),
                sum(r.errors for r in runs), median([r.server_ms for r in runs]),
                sum(r.requests for r in runs))


def tree_cpu(pid: int) -> float:
    """CPU seconds so far of process ``pid`` and all its descendants (uvicorn's workers, the
    inference log's writer processes), whichever of its threads started them."""
    total = cpu_seconds(pid)
    for child in descendants(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a child ended
            total += cpu_seconds(child)
    return total


def descendants(pid: int) -> list[int]:
    """The process ids of ``pid``'s children, their children and so on."""
    out = []
    for child in _children(pid):
        out += [child, *descendants(child)]
    return out


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is not installed: trying `apt-get install -y wrk` (Debian's package)…",
          file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: install it with `apt-get install -y wrk` and run again")
    return found


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    if m is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(binary: str, url: str, body: bytes, headers: dict[str, str], connections: int,
        seconds: float, workdir: Path, server: int) -> Cell:
    script = workdir / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    argv = [binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-s", str(script), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = tree_cpu(server)
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    server_cpu = tree_cpu(server) - server_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr or proc.stdout}")
    out = proc.stdout
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if "50" not in pct or "99" not in pct:
        raise RuntimeError(f"wrk reported no latency distribution:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*?(\d+).*?(\d+).*?(\d+).*?(\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    if errs:
        errors += sum(int(g) for g in errs.groups())
    return Cell(rps, _ms(pct["50"]), _ms(pct["99"]), cpu / wall, errors,
                server_cpu * 1e3 / max(done, 1), done)
