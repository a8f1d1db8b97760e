"""Real processes for the observability and topology tests: servers, agents, and helpers.

Each process runs through the ``edgefleet`` CLI (``python -m edgefleet_cli``) on 127.0.0.1 with
its log in the test's directory; :class:`Proc` stops it (and what it started) on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.plan import sha256_file
from tests.ports import free_port

ADMIN_SECRET = "admin-secret-21"
ADMIN_KEY = f"ops:{ADMIN_SECRET}"
ADMIN = {"X-Admin-Key": ADMIN_SECRET}
ENROL_TOKEN = "enrol-secret-21"
CLI = [sys.executable, "-m", "edgefleet_cli"]
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "FLWR_TELEMETRY_ENABLED": "0",
         "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}



@dataclass
class Proc:
    """A child process started in its own session, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def terminate(self) -> None:
        """SIGTERM to the process group (returns at once; :meth:`stop` waits)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        self.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def spawn(name: str, argv: Sequence[str], root: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> Proc:
    """Start ``argv`` with the test environment plus ``env``; output to ``root/<name>.log``."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"{name}.log"
    full = {**os.environ, **QUIET, **(env or {})}
    with open(log, "ab") as out:
        popen = subprocess.Popen(list(argv), env=full, stdout=out, stderr=subprocess.STDOUT,
                                 cwd=cwd, start_new_session=True)
    return Proc(name, popen, log)


def wait_http(proc: Proc | None, url: str, *, timeout: float = 60.0, status: int = 200,
              verify: Any = True) -> httpx.Response:
    """GET ``url`` until it answers ``status`` (fails early when ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited: {proc.tail()}")
        try:
            r = httpx.get(url, timeout=3, verify=verify)
            if r.status_code == status:
                return r
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not {status} in {timeout} s ({last}); "
                       f"{proc.tail() if proc else ''}")


def server_env(root: Path, db_url: str, **extra: str) -> dict[str, str]:
    return {
        "EDGEFLEET_SERVER_DATABASE_URL": db_url,
        "EDGEFLEET_SERVER_ARTIFACT_DIR": str(root / "artifacts"),
        "EDGEFLEET_SERVER_ADMIN_KEYS": ADMIN_KEY,
        "EDGEFLEET_SERVER_ENROLLMENT_TOKENS": ENROL_TOKEN,
        "EDGEFLEET_SERVER_POLL_INTERVAL_S": "1",
        "EDGEFLEET_SERVER_LAST_SEEN_INTERVAL_S": "0",
        "EDGEFLEET_SERVER_LOG_FORMAT": "text",
        "EDGEFLEET_SERVER_LOG_LEVEL": "WARNING",
        **extra,
    }


def start_server(root: Path, db_url: str, *, workers: int = 1, name: str = "server",
                 env: Mapping[str, str] | None = None, scheme: str = "http",
                 verify: Any = True) -> Proc:
    """``edgefleet server run`` (``workers`` uvicorn workers), ready when it returns."""
    port = free_port()
    proc = spawn(name, [*CLI, "server", "run", "--host", "127.0.0.1", "--port", str(port),
                        "--workers", str(workers)],
                 root, {**server_env(root, db_url), **(env or {})})
    proc.url = f"{scheme}://127.0.0.1:{port}"
    try:
        wait_http(proc, f"{proc.url}/api/v1/health/ready", timeout=90, verify=verify)
    except Exception:
        proc.stop()
        raise
    return proc


def publish(client: httpx.Client, model: str, plan_dir: Path, *,
            weights: Path | None = None, plan_from: int | None = None,
            metadata: Mapping[str, Any] | None = None) -> int:
    """Create ``model`` if needed and upload a version through the HTTP API (admin client)."""
    r = client.post("/api/v1/models", json={"name": model, "task": "classification"})
    assert r.status_code in (201, 409), r.text
    weights = weights or plan_dir / "weights.safetensors"
    data = {"weights_sha256": sha256_file(weights)}
    files = {"weights": ("weights.safetensors", weights.read_bytes())}
    if plan_from is None:
        data["plan_sha256"] = sha256_file(plan_dir / "plan.tflite")
        files["plan"] = ("plan.tflite", (plan_dir / "plan.tflite").read_bytes())
        files["manifest"] = ("manifest.json", (plan_dir / "manifest.json").read_bytes())
    meta = {**(metadata or {}), **({"plan_from_version": plan_from} if plan_from else {})}
    if meta:
        data["metadata"] = json.dumps(meta)
    r = client.post(f"/api/v1/models/{model}/versions", data=data, files=files)
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


def set_alias(client: httpx.Client, model: str, alias: str, version: int) -> None:
    r = client.put(f"/api/v1/models/{model}/aliases/{alias}", json={"version": version})
    assert r.status_code == 200, r.text


def agent_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "EDGEFLEET_AGENT_DATA_DIR": str(data_dir),
        "EDGEFLEET_AGENT_HTTP_PORT": str(port),
        "EDGEFLEET_AGENT_POLL_INTERVAL_S": "1",
        "EDGEFLEET_AGENT_POLL_JITTER": "0",
        "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "1",
        "EDGEFLEET_AGENT_OUTBOX_BACKOFF_BASE_S": "0.5",
        "EDGEFLEET_AGENT_RETRY_BACKOFF_S": "0.1",
        **extra,
    }


def enroll(server_url: str, data_dir: Path, device_id: str, *,
           env: Mapping[str, str] | None = None, model: str | None = None) -> None:
    argv = [*CLI, "agent", "enroll", "--server", server_url, "--token", ENROL_TOKEN,
            "--device-id", device_id, "--data-dir", str(data_dir)]
    if model:
        argv += ["--model", model]
    proc = subprocess.run(argv, env={**os.environ, **QUIET, **(env or {})}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def start_agent(root: Path, data_dir: Path, *, name: str = "agent",
                env: Mapping[str, str] | None = None) -> Proc:
    """``edgefleet agent run`` (already enrolled); ready when its local endpoint answers."""
    port = free_port()
    proc = spawn(name, [*CLI, "agent", "run"], root, {**agent_env(data_dir, port), **(env or {})})
    proc.url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, f"{proc.url}/v2/health/live", timeout=60)
    except Exception:
        proc.stop()
        raise
    return proc


def scrape(url: str, verify: Any = True) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a ``/metrics`` page: ``{(name, sorted labels): value}``."""
    r = httpx.get(url, timeout=10, verify=verify)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def sample(samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """The value of ``name`` with exactly ``labels`` (``KeyError`` with the candidates)."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        near = [k for k in samples if k[0] == name]
        raise KeyError(f"{key} not scraped; {name} has {near}")
    return samples[key]


def total(samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """The sum of ``name`` over every sample whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))
