"""What the benchmarks share: the digits plan, child processes, call timing and text tables.

The ``bench_*.py`` scripts run as ``.venv/bin/python bench/bench_x.py``, so this folder is on
``sys.path`` and they ``import _common``; importing it puts the repository root on ``sys.path``
too. Only the standard library is imported at module top (numpy is imported where it is used),
so ``bench_agent.py`` still measures a bare interpreter's memory before anything heavy loads.

``build_digits_plan`` / ``plan_dir_or_build``
    Author the digits MLP plan in a child process: TensorFlow never loads in the benchmark.
``free_port``, ``process``, ``cpu_seconds``
    Start a server process on a loopback port, wait until it answers, stop it; its CPU time.
``call_times``, ``timeit``, ``median_p99``
    Per-call wall times of a function over a time budget, after a warm-up.
``Column``, ``print_table``
    A header, a rule and aligned rows (first column left, the others right).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_BUILD = (
    "import sys\n"
    "from authoring.plans import build_dataset_plan\n"
    "hidden = tuple(int(h) for h in sys.argv[2].split(','))\n"
    "build_dataset_plan(sys.argv[1], dataset='digits', arch='mlp', hidden=hidden)\n"
)


# --- child processes -----------------------------------------------------------------------------
def build_digits_plan(out: Path, hidden: Sequence[int] = (64,)) -> Path:
    """Author the digits MLP plan into ``out`` in a child process (the only place TF runs).

    Exits the benchmark with the child's error output when the build fails.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD, str(out), ",".join(str(h) for h in hidden)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"building the digits plan failed:\n{proc.stderr[-3000:]}")
    return out


def plan_dir_or_build(plan_dir: Path | None, workdir: Path) -> Path:
    """``plan_dir`` when given, else a digits plan freshly built in ``workdir / "plan"``."""
    if plan_dir is not None:
        return plan_dir
    print("building the digits plan (TensorFlow, in a child process)…", file=sys.stderr, flush=True)
    return build_digits_plan(workdir / "plan")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0
                ) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


@contextmanager
def process(
    args: list[str], env: dict[str, str], ready_url: str, log: Path, ready_s: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` (output to ``log``) until the block ends, once ``ready_url`` answers 200
    (within ``ready_s`` seconds)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            _wait_ready(ready_url, proc, log, ready_s)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- timing --------------------------------------------------------------------------------------
def call_times(
    fn: Callable[[], Any],
    seconds: float,
    *,
    min_calls: int = 20,
    warmup: int = 5,
    max_calls: int = 200_000,
) -> list[float]:
    """Seconds taken by each call of ``fn``, called for about ``seconds`` after ``warmup`` calls.

    At least ``min_calls`` calls whatever the budget, at most ``max_calls``.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        if len(samples) >= max_calls:
            break
    return samples


def timeit(fn: Callable[[], Any], seconds: float, min_calls: int = 20) -> float:
    """Median seconds per call of ``fn`` over about ``seconds`` (after a warm-up)."""
    return statistics.median(call_times(fn, seconds, min_calls=min_calls))


def median_p99(fn: Callable[[], Any], seconds: float, min_calls: int = 200) -> tuple[float, float]:
    """Median and p99 seconds per call of ``fn`` over about ``seconds`` (after a warm-up)."""
    import numpy as np

    arr = np.asarray(call_times(fn, seconds, min_calls=min_calls, warmup=20, max_calls=500_000))
    return float(np.median(arr)), float(np.percentile(arr, 99))


# --- tables --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One column of a table: its title, its width and how numbers are formatted.

    ``align`` is ``"<"`` or ``">"``; by default the first column is left-aligned and the others
    right-aligned.
    """

    title: str
    width: int
    spec: str = ""
    suffix: str = ""
    align: str = ""

    def cell(self, value: object) -> str:
        """``value`` formatted: strings as they are, ``None`` as a dash, numbers by ``spec``."""
        if isinstance(value, str):
            return value
        if value is None:
            return "—"
        return format(value, self.spec) + self.suffix


def print_table(
    columns: Sequence[Column], rows: Iterable[Sequence[object]], *, rule: bool = True
) -> None:
    """Print a header, a rule (``rule``) and one line per row.

    Cells are separated by one space and aligned as :class:`Column` says.
    """

    def line(cells: Sequence[str]) -> str:
        aligned = [
            f"{c:{col.align or ('<' if i == 0 else '>')}{col.width}}"
            for i, (col, c) in enumerate(zip(columns, cells, strict=True))
        ]
        return " ".join(aligned).rstrip()

    head = line([c.title for c in columns])
    print(head)
    if rule:
        print("-" * len(head))
    for row in rows:
        print(line([col.cell(v) for col, v in zip(columns, row, strict=True)]))
