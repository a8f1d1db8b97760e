"""May this device train now? Probes of its conditions behind one interface, and one policy.

Everything that decides answers :class:`EligibilityProvider` (``check() -> EligibilityStatus``):

* :class:`DeviceEligibility` reads the real machine with :class:`LinuxProbes`:

  - **idle**: the 1-minute load average (``/proc/loadavg``) divided by the number of cores;
  - **power**: ``/sys/class/power_supply/*`` — a ``Mains``/``USB*`` supply whose ``online`` is 1
    means external power; a ``Battery`` gives ``capacity`` (percent) and ``status``
    (``Charging``/``Full`` count as charging when no mains supply is listed). A machine with
    no battery at all is mains powered (desktops, industrial PCs, most containers);
  - **unmetered network**: the interface of the default route (``/proc/net/route``). When
    ``unmetered_interfaces`` is configured it is authoritative (listed = unmetered, else
    metered). Otherwise NetworkManager's ``GENERAL.METERED`` (via ``nmcli``, if installed)
    decides, and without NetworkManager the interface name does: wired (``en*``, ``eth*``) is
    unmetered, cellular/point-to-point (``ww*``, ``ppp*``, ``rmnet*``, ``usb*``) metered, and
    anything else (Wi-Fi, no default route) unknown, which the policy treats as metered.

* :class:`SimulatedEligibility` applies the same policy to conditions set by a test or a
  simulation (``set(...)``), optionally following a trace that advances on every check.

:class:`EligibilityPolicy` turns conditions into a verdict with reasons. :func:`should_continue`
wraps a provider into the callback ``PlanRuntime.fit`` asks before every training step, so
training stops between steps as soon as a condition stops holding.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edge_client.settings import AgentSettings

_WIRED = ("en", "eth")
_METERED = ("ww", "ppp", "rmnet", "usb")


@dataclass(frozen=True)
class DeviceConditions:
    """What the probes saw (``None`` = unknown / not applicable)."""

    load_per_core: float | None = 0.0
    external_power: bool | None = True
    battery_pct: float | None = None
    battery_status: str | None = None
    interface: str | None = None
    unmetered: bool | None = True


@dataclass(frozen=True)
class EligibilityStatus:
    """A verdict: ``eligible`` and, when not, one reason per failed condition."""

    eligible: bool
    reasons: tuple[str, ...]
    conditions: DeviceConditions
    checked_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"eligible": self.eligible, "reasons": list(self.reasons),
                "conditions": asdict(self.conditions), "checked_at": self.checked_at}


@runtime_checkable
class EligibilityProvider(Protocol):
    """Anything that can say whether the device may train now."""

    def check(self) -> EligibilityStatus: ...


@dataclass(frozen=True)
class EligibilityPolicy:
    """Thresholds over :class:`DeviceConditions` (see :class:`~edge_client.settings.AgentSettings`
    for their meaning and defaults)."""

    max_load_per_core: float = 0.5
    require_charging: bool = True
    min_battery_pct: float = 50.0
    require_unmetered: bool = True

    @classmethod
    def from_settings(cls, s: AgentSettings) -> EligibilityPolicy:
        return cls(s.max_load_per_core, s.require_charging, s.min_battery_pct,
                   s.require_unmetered)

    def evaluate(self, c: DeviceConditions) -> EligibilityStatus:
        reasons: list[str] = []
        if c.load_per_core is not None and c.load_per_core >= self.max_load_per_core:
            reasons.append(f"busy: load {c.load_per_core:.2f}/core >= {self.max_load_per_core}")
        if self.require_charging and c.external_power is False:
            reasons.append("on battery power (not charging)")
        if c.battery_pct is not None and c.battery_pct < self.min_battery_pct:
            reasons.append(f"battery {c.battery_pct:.0f}% < {self.min_battery_pct:.0f}%")
        if self.require_unmetered and c.unmetered is not True:
            what = "metered" if c.unmetered is False else "of unknown metering"
            reasons.append(f"network {c.interface or '(none)'} is {what}")
        return EligibilityStatus(not reasons, tuple(reasons), c)


class LinuxProbes:
    """Reads load, power supplies and the default route from ``/proc`` and ``/sys``.

    Parameters
    ----------
    proc_root, power_supply_root : Path
        Where to read (tests point these at a fixture tree).
    unmetered_interfaces : sequence of str
        Interfaces declared unmetered; when non-empty it is authoritative.
    use_nmcli : bool
        Ask NetworkManager about metering when no list is declared (default True).
    """

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        power_supply_root: Path = Path("/sys/class/power_supply"),
        unmetered_interfaces: Sequence[str] = (),
        *,
        use_nmcli: bool = True,
    ) -> None:
        self.proc_root = Path(proc_root)
        self.power_supply_root = Path(power_supply_root)
        self.unmetered_interfaces = tuple(unmetered_interfaces)
        self.use_nmcli = use_nmcli

    def read(self) -> DeviceConditions:
        ext, pct, status = self.power()
        iface = self.default_interface()
        return DeviceConditions(self.load_per_core(), ext, pct, status, iface,
                                self.unmetered(iface))

    def load_per_core(self) -> float | None:
        import os

        try:
            one_minute = float((self.proc_root / "loadavg").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return one_minute / (os.cpu_count() or 1)

    def power(self) -> tuple[bool | None, float | None, str | None]:
        """``(external power, battery percent, battery status)``."""
        mains: list[bool] = []
        battery_pct: float | None = None
        battery_status: str | None = None
        try:
            supplies = sorted(self.power_supply_root.iterdir())
        except OSError:
            supplies = []
        for supply in supplies:
            kind = _read(supply / "type")
            if kind == "Battery":
                if _read(supply / "present") == "0":
                    continue
                cap = _read(supply / "capacity")
                if cap is not None and cap.lstrip("-").isdigit():
                    battery_pct = float(cap)
                battery_status = _read(supply / "status")
            elif kind is not None and (kind == "Mains" or kind.startswith("USB")):
                mains.append(_read(supply / "online") == "1")
        if battery_pct is None and battery_status is None:
            return True, None, None  # no battery: mains powered
        if mains:
            return any(mains), battery_pct, battery_status
        return battery_status in ("Charging", "Full"), battery_pct, battery_status

    def default_interface(self) -> str | None:
        try:
            lines = (self.proc_root / "net" / "route").read_text().splitlines()[1:]
        except OSError:
            return None
        best: tuple[int, str] | None = None
        for line in lines:
            cols = line.split()
            if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
                metric = int(cols[6]) if cols[6].isdigit() else 0
                if best is None or metric < best[0]:
                    best = (metric, cols[0])
        return best[1] if best else None

    def unmetered(self, iface: str | None) -> bool | None:
        if iface is None:
            return None
        if self.unmetered_interfaces:
            return iface in self.unmetered_interfaces
        if self.use_nmcli and (flag := _nmcli_metered(iface)) is not None:
            return not flag
        if iface.startswith(_WIRED):
            return True
        if iface.startswith(_METERED):
            return False
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _nmcli_metered(iface: str) -> bool | None:
    """NetworkManager's metered flag for ``iface`` (``None`` when unknown or no nmcli)."""
    nmcli = shutil.which("nmcli")
    if nmcli is None:
        return None
    try:
        out = subprocess.run(
            [nmcli, "-t", "-f", "GENERAL.METERED", "device", "show", iface],
            capture_output=True, text=True, timeout=2, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.partition(":")[2].strip().lower()
    if value.startswith("yes"):
        return True
    if value.startswith("no"):
        return False
    return None


class DeviceEligibility:
    """The device's eligibility: :class:`LinuxProbes` judged by an :class:`EligibilityPolicy`."""

    def __init__(self, policy: EligibilityPolicy, probes: LinuxProbes | None = None) -> None:
        self.policy = policy
        self.probes = probes or LinuxProbes()

    @classmethod
    def from_settings(cls, s: AgentSettings) -> DeviceEligibility:
        probes = LinuxProbes(s.proc_root, s.power_supply_root, s.unmetered_interfaces)
        return cls(EligibilityPolicy.from_settings(s), probes)

    def check(self) -> EligibilityStatus:
        return self.policy.evaluate(self.probes.read())


class SimulatedEligibility:
    """Eligibility from simulated conditions (tests, simulations).

    Parameters
    ----------
    conditions : DeviceConditions
        The starting conditions (default: idle, mains, unmetered — eligible).
    policy : EligibilityPolicy
        The same policy the real device uses (default thresholds).
    trace : sequence of DeviceConditions or None
        When given, check number ``i`` sees ``trace[i]`` (the last one repeats).
    """

    def __init__(
        self,
        conditions: DeviceConditions | None = None,
        policy: EligibilityPolicy | None = None,
        trace: Sequence[DeviceConditions] | None = None,
    ) -> None:
        self.conditions = conditions or DeviceConditions()
        self.policy = policy or EligibilityPolicy()
        self.trace = list(trace) if trace else None
        self.checks = 0
        self._lock = threading.Lock()

    def set(self, **changes: Any) -> None:
        """Change conditions, e.g. ``set(external_power=False, battery_pct=20)``."""
        with self._lock:
            self.conditions = replace(self.conditions, **changes)

    def check(self) -> EligibilityStatus:
        with self._lock:
            if self.trace:
                self.conditions = self.trace[min(self.checks, len(self.trace) - 1)]
            self.checks += 1
            return self.policy.evaluate(self.conditions)


def should_continue(
    provider: EligibilityProvider, *, min_interval_s: float = 0.0
) -> Callable[[], bool]:
    """A ``should_continue`` callback for ``PlanRuntime.fit``: re-checks at most every
    ``min_interval_s`` seconds (training steps take microseconds; reading ``/sys`` does not)."""
    last: list[float] = [float("-inf")]
    verdict = [True]

    def _ask() -> bool:
        now = time.monotonic()
        if now - last[0] >= min_interval_s:
            verdict[0] = provider.check().eligible
            last[0] = now
        return verdict[0]

    return _ask
