"""The fleet's devices: their data shares, and real edge agents driven over their local endpoint.

:func:`make_shares` splits a data set's training split into a small *central* share (the initial
model is trained on it) and one label-skewed share per device (:func:`dirichlet_partition`);
devices listed in ``shifts`` get their inputs shifted (:func:`apply_shift`), labelled examples
and inference traffic alike, so their drift summaries differ from the others'.

:class:`AgentProcess` is one device: ``edgefleet agent enroll`` then ``edgefleet agent run`` as
processes with their own data directory. Once its model is installed it is fed the device's
labelled examples (``POST /v1/labels``) and inference traffic (``POST /v2/models/{m}/infer``,
Open Inference Protocol V2) on its local HTTP endpoint, exactly as an application on the device
would; its telemetry (drift summaries) reaches the server through its outbox.
:class:`TrafficPump` goes on sending each device's traffic in the background, shifted on the
devices it is told to shift from then on (the whole loop's injected drift).

Each device is enrolled with a ``ring`` label (:func:`ring_of`): ring k holds the devices that
join the rollout at its k-th step, so that step k covers exactly :data:`STEP_SHARES` [k] % of
the fleet (rounded up: every step holds at least one device).
"""

from __future__ import annotations

import math
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgefleet.datasets import Dataset
from edgefleet.v2 import request_from_array
from simulation.errors import FleetError
from simulation.fleet_server import ServerHandle, wait_http
from simulation.partition import Shift, apply_shift, dirichlet_partition, resample
from simulation.processes import Child, ProcessSupervisor, free_port

BATCH = 32
#: The share of the fleet (percent) each rollout step of the whole loop covers.
STEP_SHARES = (25, 50, 100)


def ring_of(index: int, n_devices: int) -> int:
    """The rollout ring (1-based) of device ``index`` of ``n_devices``: the first step whose
    share, rounded up to whole devices, includes it (devices join in index order)."""
    for k, share in enumerate(STEP_SHARES, start=1):
        if index < math.ceil(share * n_devices / 100):
            return k
    return len(STEP_SHARES)


@dataclass(frozen=True)
class DeviceShare:
    """What one device holds: labelled examples, inference traffic, its input shift."""

    index: int
    device_id: str
    shift: Shift
    x: np.ndarray
    y: np.ndarray
    traffic: np.ndarray

    def class_counts(self, n_classes: int) -> list[int]:
        counts = Counter(int(v) for v in self.y)
        return [counts.get(c, 0) for c in range(n_classes)]


def make_shares(ds: Dataset, n_devices: int, *, central_fraction: float, alpha: float,
                shifts: dict[int, Shift], traffic: int, seed: int
                ) -> tuple[np.ndarray, list[DeviceShare]]:
    """``(central indices, one share per device)`` of ``ds``'s training split (disjoint)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds.y_train))
    n_central = max(1, round(central_fraction * len(order)))
    central, rest = np.sort(order[:n_central]), order[n_central:]
    parts = dirichlet_partition(ds.y_train[rest], n_devices, alpha=alpha, seed=seed,
                                min_size=max(20, len(rest) // (4 * n_devices)))
    shares = []
    for i, part in enumerate(parts):
        idx = rest[part]
        shift = shifts.get(i, "none")
        x = apply_shift(ds.x_train[idx], shift, seed=seed + i)
        seen = resample(ds.x_train[idx], traffic, seed=seed + 100 + i)
        shares.append(DeviceShare(i, f"fleet-device-{i}", shift, x, ds.y_train[idx],
                                  apply_shift(seen, shift, seed=seed + 200 + i)))
    return central, shares


@dataclass
class AgentProcess:
    """One edge agent: its share, data dir, local endpoint port and process."""

    share: DeviceShare
    data_dir: Path
    ring: int = 1
    http_port: int = field(default_factory=free_port)
    child: Child | None = None
    answered: Counter[str] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def enroll_argv(self, server: ServerHandle, model: str) -> list[str]:
        return [sys.executable, "-m", "edgefleet_cli", "agent", "enroll", "--server", server.url,
                "--token", server.enrollment_token, "--device-id", self.share.device_id,
                "--model", model, "--label", f"shift={self.share.shift}", "--label",
                "fleet=local", "--label", f"ring={self.ring}", "--data-dir", str(self.data_dir)]

    def run_argv(self) -> list[str]:
        return [sys.executable, "-m", "edgefleet_cli", "agent", "run", "--data-dir",
                str(self.data_dir), "--http-port", str(self.http_port)]

    # --- what an application on the device does ---------------------------------------------
    def feed(self, model: str, *, timeout_s: float = 60.0) -> None:
        """Label the device's examples and send its inference traffic, in batches."""
        with httpx.Client(base_url=self.url, timeout=timeout_s) as http:
            x, y = self.share.x, self.share.y
            for start in range(0, len(y), 4 * BATCH):
                rows = slice(start, start + 4 * BATCH)
                self._ok(http.post("/v1/labels", json={"inputs": x[rows].tolist(),
                                                       "labels": y[rows].tolist()}))
            for start in range(0, len(self.share.traffic), BATCH):
                rows_x = self.share.traffic[start:start + BATCH]
                request = request_from_array(rows_x)
                body = self._ok(http.post(f"/v2/models/{model}/infer",
                                          json=request.model_dump(mode="json",
                                                                  exclude_none=True)))
                path = str((body.get("parameters") or {}).get("path", "unknown"))
                self.answered[path] += len(rows_x)  # rows, by the path that answered them

    def status(self) -> dict[str, Any]:
        """The agent's ``GET /v1/status`` (what ``edgefleet agent status`` shows)."""
        with httpx.Client(base_url=self.url, timeout=30) as http:
            return dict(self._ok(http.get("/v1/status")))

    def _ok(self, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            raise FleetError(f"agent {self.share.device_id}: {resp.request.method} "
                             f"{resp.request.url.path} -> {resp.status_code}: {resp.text[:300]}")
        return resp.json()


class TrafficPump:
    """Each device's application: a batch of inference traffic per device every ``period_s``
    (shifted once :meth:`inject` named the device), in a thread of its own."""

    def __init__(self, agents: list[AgentProcess], model: str, *, period_s: float = 2.0,
                 seed: int = 0) -> None:
        self.agents = agents
        self.model = model
        self.period_s = period_s
        self.seed = seed
        self.shifts: dict[str, Shift] = {}
        self.errors: list[str] = []
        self._pools = {a.share.device_id: resample(a.share.x, 4096, seed=seed + 300 + i)
                       for i, a in enumerate(agents)}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._round = 0

    def start(self) -> TrafficPump:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def inject(self, shifts: dict[str, Shift]) -> None:
        """From now on these devices see shifted inputs; they also label shifted examples."""
        with self._lock:
            self.shifts.update(shifts)
        for agent in self.agents:
            shift = shifts.get(agent.share.device_id)
            if shift is None:
                continue
            x = apply_shift(agent.share.x, shift, seed=self.seed + 400 + agent.share.index)
            with httpx.Client(base_url=agent.url, timeout=60) as http:
                for start in range(0, len(x), 4 * BATCH):
                    rows = slice(start, start + 4 * BATCH)
                    r = http.post("/v1/labels", json={"inputs": x[rows].tolist(),
                                                      "labels": agent.share.y[rows].tolist()})
                    if r.status_code >= 400:
                        raise FleetError(f"labelling on {agent.share.device_id}: "
                                         f"{r.status_code} {r.text[:200]}")

    def _batch(self, agent: AgentProcess) -> np.ndarray:
        pool = self._pools[agent.share.device_id]
        start = (self._round * BATCH) % (len(pool) - BATCH)
        rows = pool[start:start + BATCH]
        with self._lock:
            shift = self.shifts.get(agent.share.device_id)
        if shift is None:
            return rows
        return apply_shift(rows, shift, seed=self.seed + 500 + self._round)

    def _run(self) -> None:
        from edgefleet.v2 import request_from_array

        clients = {a.share.device_id: httpx.Client(base_url=a.url, timeout=30)
                   for a in self.agents}
        try:
            while not self._stop.is_set():
                for agent in self.agents:
                    body = request_from_array(self._batch(agent)).model_dump(
                        mode="json", exclude_none=True)
                    try:
                        r = clients[agent.share.device_id].post(
                            f"/v2/models/{self.model}/infer", json=body)
                        if r.status_code >= 400:
                            self.errors.append(f"{agent.share.device_id}: {r.status_code}")
                    except httpx.HTTPError as exc:
                        self.errors.append(f"{agent.share.device_id}: {type(exc).__name__}")
                self._round += 1
                self._stop.wait(self.period_s)
        finally:
            for c in clients.values():
                c.close()


AGENT_ENV = {
    # report often and poll often: the fleet runs for minutes, not days
    "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "2",
    "EDGEFLEET_AGENT_POLL_INTERVAL_S": "2",
    "EDGEFLEET_AGENT_MIN_POLL_INTERVAL_S": "1",
    "EDGEFLEET_AGENT_OUTBOX_BACKOFF_BASE_S": "1",
}


def start_agents(sup: ProcessSupervisor, server: ServerHandle, model: str,
                 shares: list[DeviceShare], root: Path, *, timeout_s: float = 90.0
                 ) -> list[AgentProcess]:
    """Enrol every device, start its agent, wait until its model is installed and serving."""
    agents = [AgentProcess(s, root / s.device_id, ring_of(s.index, len(shares)))
              for s in shares]
    enrolling = [sup.start(f"enroll-{a.share.device_id}", a.enroll_argv(server, model))
                 for a in agents]
    for agent, child in zip(agents, enrolling, strict=True):
        try:
            code = child.proc.wait(timeout=timeout_s)
        except Exception as exc:
            raise FleetError(f"enrolling {agent.share.device_id} did not finish: {exc}") from exc
        sup.stop(child)
        if code != 0:
            raise FleetError(f"enrolling {agent.share.device_id} failed (log {child.log_path}):"
                             f"\n{child.tail()}")
    for agent in agents:
        agent.child = sup.start(f"agent-{agent.share.device_id}", agent.run_argv(), env=AGENT_ENV)
    for agent in agents:
        assert agent.child is not None
        wait_http(f"{agent.url}/v2/health/ready", agent.child, timeout_s,
                  what=f"agent {agent.share.device_id} (installing its assigned model)")
    return agents
