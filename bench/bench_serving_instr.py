"""Instructions per V2 request, ours beside the bare FastAPI floor, counted by callgrind.

``bench_serving.py`` measures time, which follows the machine: on this project's shared 2-core
machine the same tree's tiny-model ratio to the floor has ranged from 0.37 to 0.91 between runs,
so a change of less than about 10 % cannot be told apart end to end. An instruction count does
not move with the machine: valgrind's callgrind counts the instructions a process executes,
the same for the same binaries and inputs whatever else runs beside it. This bench runs each
server under ``valgrind --tool=callgrind`` (``--trace-children=yes``: the access log's and the
inference log's child processes are counted too) with the instrumentation off while it starts,
its model is registered and warmed; then ``wrk`` (one thread, keep-alive, the bench's body and
headers) runs ``--warm`` seconds with the instrumentation on, every process's counters are
zeroed, ``wrk`` runs ``--seconds`` more, and each process dumps its counters. A row gives the
requests completed in the measured part and the instructions per request of the serving process,
of each child and of all of them.

The targets are ``bench_serving.py``'s floor (``--serve-bare``, answering our own recorded
response) and ours with ``--workers 1`` and every production feature on, on the same body. The
serving process's count is the one to compare: its request path runs the same whatever the pace.
The children work in rounds of fixed time, so at valgrind's pace (about 50 times slower) each
round holds fewer requests and their figures are upper bounds of what they cost at full speed.
Ours also does periodic work whatever the load (the serving table's refresh every 0.25 s),
spread over those fewer requests too: its serving process's figure is, if anything, above what a
request costs it. A heavy model's count is mostly its interpreter's, and valgrind runs it
without AVX-512 (the CPU it emulates has none), so ``--models tiny`` (the default) is the one to
read for the server's code.

Run: ``.venv/bin/python bench/bench_serving_instr.py --plans DIR`` (about 2 minutes a model;
valgrind and wrk from Debian's packages, installed when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import build_digits_plan, free_port, process
from _serving_setup import HEADERS, HEAVY_FEATURES, body_for, build_heavy_plan, register
from _serving_wrk import descendants, ensure_wrk, wrk
from bench_serving import server_cmd, server_env, warm

VALGRIND = ("valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes")
#: The child processes, by a part of their command line.
CHILDREN = {"server.log_process": "access-log child",
            "server.evidence.writer_process": "inference-log child"}
SERVER = "serving process"
DUMP_TIMEOUT_S = 120.0


@dataclass
class Count:
    """One target's measured part: requests completed and instructions per request by process."""

    requests: int
    per_request: dict[str, float]


def ensure_valgrind() -> None:
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        return
    subprocess.run(["apt-get", "install", "-y", "valgrind"], check=True,
                   stdout=subprocess.DEVNULL)


def _control(pids: list[int], *args: str) -> None:
    for pid in pids:
        subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True,
                       check=False, timeout=DUMP_TIMEOUT_S)


def _name(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return f"process {pid}"
    return next((name for part, name in CHILDREN.items() if part in cmdline), SERVER)


def _dumped(out: Path, pid: int, before: set[Path]) -> int:
    """The instructions in ``pid``'s newest dump (waiting for it to be written)."""
    deadline = time.monotonic() + DUMP_TIMEOUT_S
    while time.monotonic() < deadline:
        new = sorted(set(out.glob(f"cg.{pid}.*")) - before,
                     key=lambda p: int(p.suffix.lstrip(".") or 0))
        for path in reversed(new):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.5)
    raise RuntimeError(f"process {pid} wrote no callgrind dump within {DUMP_TIMEOUT_S:g} s")


def count(args: argparse.Namespace, cmd: list[str], env: dict[str, str], ready: str,
          infer_url: str, body: bytes, workdir: Path, prepare: Callable[[], None]) -> Count:
    """Run ``cmd`` under callgrind and count the measured part (see the module notes)."""
    out = workdir / "callgrind"
    out.mkdir(parents=True)
    argv = [*VALGRIND, f"--callgrind-out-file={out}/cg.%p", *cmd]
    binary = ensure_wrk()
    with process(argv, env, ready, workdir / "server.log", ready_s=600) as proc:
        prepare()
        pids = [proc.pid, *descendants(proc.pid)]
        _control(pids, "--instr=on")
        wrk(binary, infer_url, body, HEADERS, args.concurrency, args.warm, workdir, proc.pid)
        pids = [proc.pid, *descendants(proc.pid)]  # a child started meanwhile starts off
        _control(pids, "--instr=on")
        _control(pids, "--zero")
        cell = wrk(binary, infer_url, body, HEADERS, args.concurrency, args.seconds, workdir,
                   proc.pid)
        names = {pid: SERVER if pid == proc.pid else _name(pid) for pid in pids}
        before = set(out.iterdir())
        _control(pids, "--dump")
        totals = {pid: _dumped(out, pid, before) for pid in pids}
        _control(pids, "--instr=off")
    per: dict[str, float] = {}
    for pid, total in totals.items():
        per[names[pid]] = per.get(names[pid], 0.0) + total / max(cell.requests, 1)
    return Count(cell.requests, per)


def measure(args: argparse.Namespace, model: str, plan_dir: Path, tmp: Path
            ) -> dict[str, Count]:
    body = body_for(64 if model == "tiny" else HEAVY_FEATURES)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = server_env(tmp / f"{model}-ours", f"sqlite:///{tmp / f'{model}-registry.db'}")
    canned: dict[str, str] = {}

    def prepare_ours() -> None:
        register(base, model, plan_dir)
        canned[model] = warm(base, model, body)

    ours = count(args, server_cmd(port, 1), env, f"{base}/api/v1/health/ready",
                 f"{base}/v2/models/{model}/infer", body, tmp / f"{model}-ours", prepare_ours)
    payloads = tmp / f"{model}-canned.json"
    payloads.write_text(json.dumps(canned))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    floor_cmd = [sys.executable, str(Path(__file__).with_name("bench_serving.py")),
                 "--serve-bare", str(port), "--payloads", str(payloads)]
    floor = count(args, floor_cmd, dict(os.environ), f"{base}/ready",
                  f"{base}/v2/models/{model}/infer", body, tmp / f"{model}-floor", lambda: None)
    return {"floor": floor, "ours": ours}


def report(args: argparse.Namespace, counts: dict[str, dict[str, Count]]) -> None:
    names = [SERVER, *CHILDREN.values()]
    print(f"\ninstructions per V2 request (callgrind), wrk -t1 -c{args.concurrency} keep-alive "
          f"on 127.0.0.1, {args.seconds:g} s counted after {args.warm:g} s")
    print(f"{'model':6} {'target':24} {'requests':>8} " + " ".join(f"{n:>20}" for n in names)
          + f" {'all':>12}")
    labels = {"floor": "floor (bare FastAPI)", "ours": "ours --workers 1"}
    for model, targets in counts.items():
        for target, c in targets.items():
            cells = [f"{c.per_request[n]:>20,.0f}" if n in c.per_request else f"{'-':>20}"
                     for n in names]
            print(f"{model:6} {labels[target]:24} {c.requests:>8} " + " ".join(cells)
                  + f" {sum(c.per_request.values()):>12,.0f}")
    print("\nratios ours / floor:")
    for model, targets in counts.items():
        ours, floor = targets["ours"].per_request, targets["floor"].per_request
        print(f"  {model}: serving process {ours[SERVER] / floor[SERVER]:.2f}, "
              f"all processes {sum(ours.values()) / sum(floor.values()):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=Path, default=None,
                        help="the authored plans (bench_serving.py --plans; built when missing)")
    parser.add_argument("--models", nargs="+", choices=("tiny", "heavy"), default=["tiny"])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warm", type=float, default=3.0,
                        help="seconds of load counted for nothing first")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load counted")
    args = parser.parse_args()
    ensure_valgrind()
    with tempfile.TemporaryDirectory(prefix="edgefleet-instr-") as name:
        tmp = Path(name)
        plans = args.plans or tmp
        dirs = {"tiny": plans / "tiny", "heavy": plans / "heavy"}
        if "tiny" in args.models and not (dirs["tiny"] / "plan.tflite").is_file():
            build_digits_plan(dirs["tiny"])
        if "heavy" in args.models and not (dirs["heavy"] / "plan.tflite").is_file():
            build_heavy_plan(dirs["heavy"])
        counts = {m: measure(args, m, dirs[m], tmp) for m in args.models}
    report(args, counts)


if __name__ == "__main__":
    main()
