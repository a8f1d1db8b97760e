"""Soak: N simulated devices against two server workers on PostgreSQL, for a bounded time.

    .venv/bin/python bench/bench_soak.py   # [--devices 500] [--seconds 8] [--connections 64]

It enrols ``--devices`` devices (each with its own token) on ``edgefleet server run --workers 2``
backed by a fresh PostgreSQL database on 127.0.0.1:5432, then drives them with ``wrk`` (a Lua
script rotates the devices' tokens): one phase per request kind — assignment poll answered 304,
weights download (200, the full artifact), a telemetry report (a new idempotency key each time),
a fallback V2 inference of one row — and a mixed phase (70 % polls, 15 % telemetry, 10 %
inference, 5 % downloads), each ``--seconds`` long. Per phase it prints requests/s, p50/p99
latency, errors (socket errors and non-2xx/3xx; the goal is 0), the server's CPU milliseconds
per request (master + workers, from /proc) and PostgreSQL transactions per request
(``pg_stat_database`` of the soak database only). Then each server process's memory before and
after, the poll phase interleaved with a second server whose metrics middleware is off (the
CPU ratio of the medians is the cost of observability), and what a fleet of ``--fleet`` devices
would need at the production intervals, computed from the measured CPU per request (see
README, "Scaling to a million devices").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import _common
from _common import Column, cpu_seconds, free_port, plan_dir_or_build, print_table

ROOT = _common.ROOT
PG_ADMIN = os.environ.get("EDGEFLEET_SOAK_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
ADMIN_SECRET = "soak-admin-secret"
ENROL = "soak-enrol-secret"
MODEL = "digits-soak"
KINDS = ("poll", "download", "telemetry", "infer", "mixed")

LUA = r"""
local devices, kind, infer_body, telemetry = {}, "poll", "", ""
local counter, tid = 0, 0
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end
local function slurp(path)
  local f = assert(io.open(path, "r")); local s = f:read("*a"); f:close(); return s
end
function init(args)
  kind = args[1]
  for line in io.lines(args[2]) do
    local id, token, etag, weights = line:match("(%S+) (%S+) (%S+) (%S+)")
    devices[#devices + 1] = {id = id, auth = "Bearer " .. token, etag = etag, weights = weights}
  end
  infer_body = slurp(args[3])
  telemetry = slurp(args[4])
end
function request()
  counter = counter + 1
  local d = devices[(counter * 7 + tid * 13) % #devices + 1]
  local k = kind
  if kind == "mixed" then
    local r = counter % 20
    if r < 14 then k = "poll" elseif r < 17 then k = "telemetry"
    elseif r < 19 then k = "infer" else k = "download" end
  end
  if k == "poll" then
    return wrk.format("GET", "/api/v1/devices/" .. d.id .. "/assignment",
                      {["Authorization"] = d.auth, ["If-None-Match"] = d.etag})
  elseif k == "download" then
    return wrk.format("GET", d.weights, {["Authorization"] = d.auth})
  elseif k == "telemetry" then
    local body = telemetry:gsub("__KEY__", tid .. "-" .. counter .. "-" .. d.id)
    return wrk.format("POST", "/api/v1/devices/" .. d.id .. "/telemetry",
                      {["Authorization"] = d.auth, ["Content-Type"] = "application/json"}, body)
  else
    return wrk.format("POST", "/v2/models/__MODEL__/infer",
                      {["Authorization"] = d.auth, ["Content-Type"] = "application/json"},
                      infer_body)
  end
end
function done(summary, latency, requests)
  io.write(string.format(
    'SOAK {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class Phase:
    kind: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: float
    wrk_cpu_ms: float
    xacts: float
    requests: int


def _pg(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(url, autocommit=True)


def _server_pids(master: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            children.append(int(stat.parent.name))
    return [master, *sorted(children)]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _name(pid: int) -> str:
    """``master`` (the CLI process), ``worker`` (uvicorn's) or the child's own name."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"
    what = ("master" if "edgefleet_cli" in cmd else "worker" if "spawn_main" in cmd
            else "tracker" if "resource_tracker" in cmd else cmd.split()[0])
    return f"{what} {pid}"


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # a process that ended counts no more
            total += cpu_seconds(pid)
    return total


def _xacts(conn, db: str) -> int:  # type: ignore[no-untyped-def]
    row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                       "WHERE datname = %s", (db,)).fetchone()
    return int(row[0])


def _setup(url: str, plan_dir: Path, work: Path, n_devices: int) -> Path:
    """Publish the model, enrol the devices, write the device file for the Lua script."""
    import httpx
    import numpy as np

    from edgefleet.datasets import load_dataset
    from edgefleet.drift.accumulator import DriftAccumulator
    from edgefleet.plan import PlanManifest, sha256_file

    admin = {"X-Admin-Key": ADMIN_SECRET}
    with httpx.Client(base_url=url, headers=admin, timeout=60) as c:
        c.post("/api/v1/models", json={"name": MODEL, "task": "classification"}).raise_for_status()
        files = {name: (name, (plan_dir / name).read_bytes())
                 for name in ("plan.tflite", "manifest.json", "weights.safetensors")}
        r = c.post(f"/api/v1/models/{MODEL}/versions", files={
            "plan": files["plan.tflite"], "manifest": files["manifest.json"],
            "weights": files["weights.safetensors"]}, data={
            "plan_sha256": sha256_file(plan_dir / "plan.tflite"),
            "weights_sha256": sha256_file(plan_dir / "weights.safetensors")})
        r.raise_for_status()
        c.put(f"/api/v1/models/{MODEL}/aliases/production", json={"version": 1}
              ).raise_for_status()
    lines = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(n_devices):
            r = c.post("/api/v1/devices/enroll", json={
                "enrollment_token": ENROL, "device_id": f"soak-{i:05d}", "model": MODEL})
            r.raise_for_status()
            token = r.json()["device_token"]
            a = c.get(f"/api/v1/devices/soak-{i:05d}/assignment",
                      headers={"Authorization": f"Bearer {token}"})
            a.raise_for_status()
            lines.append(f"soak-{i:05d} {token} {a.headers['etag']} "
                         f"{a.json()['weights']['url']}")
    devices = work / "devices.txt"
    devices.write_text("\n".join(lines) + "\n")
    data = load_dataset("digits", seed=0)
    row = data.x_test[:1].astype(np.float32)
    (work / "infer.json").write_text(json.dumps({"inputs": [{
        "name": "x", "shape": list(row.shape), "datatype": "FP32", "data": row.ravel().tolist()}]}))
    reference = PlanManifest.model_validate_json((plan_dir / "manifest.json").read_text()).reference
    acc = DriftAccumulator(reference, model=MODEL, version=1)  # type: ignore[arg-type]
    acc.update(data.x_test[:50])
    end = datetime.now(UTC)
    (work / "telemetry.json").write_text(json.dumps({
        "idempotency_key": "__KEY__", "model": MODEL, "version": 1,
        "window_start": (end - timedelta(minutes=5)).isoformat(), "window_end": end.isoformat(),
        "inference": {"local": 50}, "drift": acc.to_summary().model_dump(mode="json")}))
    return devices


def _phase(kind: str, url: str, work: Path, pids: list[int], pg, db: str,  # type: ignore[no-untyped-def]
           seconds: float, connections: int) -> Phase:
    script = work / "soak.lua"
    args = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout",
            "10s", "-s", str(script), url, "--", kind, str(work / "devices.txt"),
            str(work / "infer.json"), str(work / "telemetry.json")]
    cpu0, x0 = _cpu(pids), _xacts(pg, db)
    before = os.times()
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = os.times()
    cpu1, x1 = _cpu(pids), _xacts(pg, db)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("SOAK ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")
    s = json.loads(line[5:])
    n = max(1, s["requests"])
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    wrk_cpu = (after.children_user + after.children_system
               - before.children_user - before.children_system)
    return Phase(kind, s["requests"] / (s["duration_us"] / 1e6), s["p50_us"] / 1e3,
                 s["p99_us"] / 1e3, errors, (cpu1 - cpu0) / n * 1e3, wrk_cpu / n * 1e3,
                 (x1 - x0) / n, s["requests"])


def _fleet(phases: dict[str, Phase], fleet: int, poll_s: float, telemetry_s: float,
           rollout_h: float, fallback_share: float, fallback_s: float) -> None:
    rates = {  # requests per second the fleet sends at these intervals
        "poll": fleet / poll_s,
        "telemetry": fleet / telemetry_s,
        "download": fleet / (rollout_h * 3600),
        "infer": fleet * fallback_share / fallback_s,
    }
    rows, cores, xacts = [], 0.0, 0.0
    for kind, rate in rates.items():
        p = phases[kind]
        need = rate * p.cpu_ms / 1e3
        cores += need
        xacts += rate * p.xacts
        rows.append([kind, rate, p.cpu_ms, need, rate * p.xacts])
    rows.append(["total", sum(rates.values()), None, cores, xacts])
    print(f"\nA fleet of {fleet:,} devices: poll every {poll_s:.0f} s, telemetry every "
          f"{telemetry_s:.0f} s, one new version downloaded by every device within "
          f"{rollout_h:.0f} h, {fallback_share:.0%} of devices on the fallback at one request "
          f"per {fallback_s:.0f} s")
    print_table([Column("request", 10), Column("req/s", 9, ",.0f"),
                 Column("CPU ms/req", 11, ".2f"), Column("server cores", 13, ".1f"),
                 Column("PG xact/s", 10, ",.0f")], rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--plan-dir", type=Path, default=None)
    ap.add_argument("--fleet", type=int, default=1_000_000)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is missing (apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="edgefleet-soak-"))
    plan_dir = plan_dir_or_build(args.plan_dir, work)
    (work / "soak.lua").write_text(LUA.replace("__MODEL__", MODEL))
    db = f"soak_{uuid.uuid4().hex[:8]}"
    pg = _pg(PG_ADMIN)
    pg.execute(f'CREATE DATABASE "{db}"')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "EDGEFLEET_SERVER_DATABASE_URL":
               PG_ADMIN.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0]
               + f"/{db}",
           "EDGEFLEET_SERVER_ARTIFACT_DIR": str(work / "artifacts"),
           "EDGEFLEET_SERVER_ADMIN_KEYS": f"ops:{ADMIN_SECRET}",
           "EDGEFLEET_SERVER_ENROLLMENT_TOKENS": f"fleet:{ENROL}",
           "EDGEFLEET_SERVER_LOG_LEVEL": "WARNING", "EDGEFLEET_SERVER_LAST_SEEN_INTERVAL_S": "30",
           "PROMETHEUS_MULTIPROC_DIR": str(work / "prom")}
    cmd = [sys.executable, "-m", "edgefleet_cli", "server", "run", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "2"]
    try:
        with _common.process(cmd, env, f"{url}/api/v1/health/ready", work / "server.log") as proc:
            time.sleep(1.0)
            devices = _setup(url, plan_dir, work, args.devices)
            pids = _server_pids(proc.pid)
            print(f"{args.devices} devices ({devices}), server pids {pids} (master + workers), "
                  f"wrk -t2 -c{args.connections}, {args.seconds:.0f} s per phase")
            _phase("poll", url, work, pids, pg, db, 2.0, args.connections)  # warm-up
            rss0 = {pid: _rss_mb(pid) for pid in pids}
            phases = {k: _phase(k, url, work, pids, pg, db, args.seconds, args.connections)
                      for k in KINDS}
            rss1 = {pid: _rss_mb(pid) for pid in pids}
            names = [_name(p) for p in pids]
            # the poll again, alternating with a second server whose metrics middleware is off
            # (same database): the cost of observability, as a median of interleaved runs
            port_off = free_port()
            url_off = f"http://127.0.0.1:{port_off}"
            off_env = {**env, "EDGEFLEET_SERVER_METRICS_ENABLED": "false",
                       "PROMETHEUS_MULTIPROC_DIR": str(work / "prom-off")}
            cmd_off = [*cmd[:-3], str(port_off), "--workers", "2"]
            with _common.process(cmd_off, off_env, f"{url_off}/api/v1/health/ready",
                                 work / "server-off.log") as proc_off:
                pids_off = _server_pids(proc_off.pid)
                _phase("poll", url_off, work, pids_off, pg, db, 2.0, args.connections)
                ab: dict[str, list[Phase]] = {"on": [], "off": []}
                servers = {"on": (url, pids), "off": (url_off, pids_off)}
                # ABBA order: whichever runs first after a quiet spell also pays for the
                # devices' last_seen writes (shared database), so neither always goes first
                for name in ("on", "off", "off", "on") * 2:
                    u, ps = servers[name]
                    ab[name].append(_phase("poll", u, work, ps, pg, db, 3.0, args.connections))
    finally:
        pg.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        pg.close()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_table([Column("phase", 10), Column("req/s", 8, ",.0f"), Column("p50 ms", 7, ".1f"),
                 Column("p99 ms", 7, ".1f"), Column("errors", 7, "d"),
                 Column("server CPU ms/req", 18, ".2f"), Column("wrk CPU ms/req", 15, ".3f"),
                 Column("PG xact/req", 12, ".2f"), Column("requests", 9, ",d")],
                [[p.kind, p.rps, p.p50_ms, p.p99_ms, p.errors, p.cpu_ms, p.wrk_cpu_ms, p.xacts,
                  p.requests] for p in phases.values()])
    print()
    print_table([Column("process", 16), Column("RSS before MB", 14, ".1f"),
                 Column("RSS after MB", 13, ".1f"), Column("growth", 8, "+.1f")],
                [[n, rss0[p], rss1[p], rss1[p] - rss0[p]] for n, p in zip(names, pids,
                                                                          strict=True)])
    med = {k: (statistics.median(p.rps for p in v), statistics.median(p.cpu_ms for p in v))
           for k, v in ab.items()}
    print("\npoll (304), 4 interleaved (ABBA) 3 s runs each, medians:")
    errs = {k: sum(p.errors for p in v) for k, v in ab.items()}
    print_table([Column("server", 12), Column("req/s", 8, ",.0f"),
                 Column("server CPU ms/req", 18, ".2f"), Column("× CPU", 6, ".2f"),
                 Column("errors", 7, "d")],
                [["metrics on", *med["on"], med["on"][1] / med["off"][1], errs["on"]],
                 ["metrics off", *med["off"], 1.0, errs["off"]]])
    _fleet(phases, args.fleet, poll_s=60, telemetry_s=300, rollout_h=24, fallback_share=0.01,
           fallback_s=60)
    runs = [*phases.values(), *ab["on"], *ab["off"]]
    return 1 if any(p.errors for p in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
