"""Device traces: when each simulated device is available, how fast it trains and talks.

Each device gets, from ``(seed, device)`` alone, a speed **tier** (drawn by the tiers' shares,
or from ``tiers_path``), a **time zone** (uniform over ``timezones``) and its **availability**:

* ``always``;
* ``diurnal``: available while its local hour is in ``[window_start_h, window_end_h)`` (the
  window may wrap midnight: 22 -> 6 is the night, when phones charge on Wi-Fi);
* ``onoff``: alternating on and off sessions with exponential lengths (means ``mean_on_s``,
  ``mean_off_s``), starting on with probability ``mean_on / (mean_on + mean_off)``;
* ``file``: CSV ``device,start_s,end_s`` availability intervals (simulated seconds).

:class:`SimClock` turns a round into simulated time: the round starts at ``t``; the query takes
``query_s``; each selected device then downloads the model, trains ``steps * step_s`` and
uploads its update (bytes over its tier's bandwidth); a device also drops out with probability
``dropout``. The round closes at the ``target``-th arrival, or at ``round_deadline_s``.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulation.config import TierConfig, TracesConfig
from simulation.errors import ConfigError

_SALT = 5000


@dataclass(frozen=True)
class Device:
    """A device's fixed traits."""

    device: int
    tier: TierConfig
    tz_h: int


class Traces:
    """Availability, tiers and drop-outs of ``count`` devices (see the module notes)."""

    def __init__(self, cfg: TracesConfig, count: int, seed: int) -> None:
        self.cfg = cfg
        self.count = count
        self.seed = seed
        rng = np.random.default_rng([seed, _SALT])
        shares = np.asarray([t.share for t in cfg.tiers], float)
        tier_idx = rng.choice(len(cfg.tiers), size=count, p=shares / shares.sum())
        if cfg.tiers_path:
            tier_idx = self._tiers_from_file(Path(cfg.tiers_path), tier_idx)
        tz = rng.choice(np.asarray(cfg.timezones or [0]), size=count)
        self.devices = [Device(i, cfg.tiers[int(tier_idx[i])], int(tz[i])) for i in range(count)]
        self._intervals = (self._load_intervals(Path(cfg.path)) if cfg.availability == "file"
                           else {})
        self._sessions: dict[int, np.ndarray] = {}

    def _tiers_from_file(self, path: Path, default: np.ndarray) -> np.ndarray:
        names = {t.name: i for i, t in enumerate(self.cfg.tiers)}
        out = default.copy()
        for row in _rows(path, ("device", "tier")):
            d, tier = int(row["device"]), row["tier"]
            if tier not in names:
                raise ConfigError(f"{path}: tier {tier!r} is not one of {sorted(names)}")
            if 0 <= d < self.count:
                out[d] = names[tier]
        return out

    @staticmethod
    def _load_intervals(path: Path) -> dict[int, list[tuple[float, float]]]:
        out: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for row in _rows(path, ("device", "start_s", "end_s")):
            try:
                d, a, b = int(row["device"]), float(row["start_s"]), float(row["end_s"])
            except ValueError as exc:
                raise ConfigError(f"{path}: bad row {row}: {exc}") from exc
            if b <= a:
                raise ConfigError(f"{path}: interval end before start in {row}")
            out[d].append((a, b))
        return dict(out)

    def available(self, device: int, t: float) -> bool:
        """Whether ``device`` may train at simulated second ``t``."""
        kind = self.cfg.availability
        if kind == "always":
            return True
        if kind == "diurnal":
            hour = (self.cfg.start_hour + t / 3600.0 + self.devices[device].tz_h) % 24.0
            a, b = self.cfg.window_start_h, self.cfg.window_end_h
            return a <= hour < b if a <= b else (hour >= a or hour < b)
        if kind == "file":
            return any(a <= t < b for a, b in self._intervals.get(device, ()))
        return self._onoff(device, t)

    def _onoff(self, device: int, t: float) -> bool:
        on, off = self.cfg.mean_on_s, self.cfg.mean_off_s
        ends = self._sessions.get(device)
        rng = np.random.default_rng([self.seed, _SALT + 1, device])
        first_on = bool(rng.random() < on / (on + off))
        if ends is None or ends[-1] <= t:
            horizon = max(t * 2, 10 * (on + off))
            n = int(horizon / (on + off) * 2) + 4
            means = np.where((np.arange(n) % 2 == 0) == first_on, on, off)
            ends = np.cumsum(rng.exponential(means))
            self._sessions[device] = ends
        k = int(np.searchsorted(ends, t, side="right"))
        return (k % 2 == 0) == first_on

    def drops_out(self, device: int, server_round: int) -> bool:
        if self.cfg.dropout <= 0:
            return False
        rng = np.random.default_rng([self.seed, _SALT + 2, device, server_round])
        return bool(rng.random() < self.cfg.dropout)

    def duration(self, device: int, steps: int, bytes_down: int, bytes_up: int) -> float:
        """Simulated seconds from the train message to the update's arrival."""
        tier = self.devices[device].tier
        return (bytes_down * 8 / (tier.down_mbps * 1e6) + steps * tier.step_s
                + bytes_up * 8 / (tier.up_mbps * 1e6))


def _rows(path: Path, needed: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ConfigError(f"cannot read trace file {path}: {exc}") from exc
    if rows and not set(needed) <= set(rows[0]):
        raise ConfigError(f"trace file {path} needs columns {needed}, has {sorted(rows[0])}")
    return rows
