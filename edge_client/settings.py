"""The agent's settings: environment variables with the prefix ``EDGEFLEET_AGENT_``.

Every field below can be set as ``EDGEFLEET_AGENT_<FIELD>`` (for example
``EDGEFLEET_AGENT_DATA_DIR=/var/lib/edgefleet``); lists are JSON
(``EDGEFLEET_AGENT_UNMETERED_INTERFACES='["eth0"]'``). Constructor keywords win over the
environment, which is how the CLI passes its options.

The server URL and the device's identity are *not* settings: they are written once by
``edgefleet agent enroll`` into ``<data_dir>/credentials.json`` (mode 0600).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

InterpreterChoice = Literal["auto", "ai-edge-litert", "tflite-runtime"]
DEFAULT_POLL_INTERVAL_S = 60.0


def default_data_dir() -> Path:
    """``$XDG_STATE_HOME/edgefleet-agent`` or ``~/.local/state/edgefleet-agent``."""
    import os

    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgefleet-agent"


class AgentSettings(BaseSettings):
    """Tunable behaviour of the edge agent.

    Parameters
    ----------
    data_dir : Path
        Where credentials, models, the label store, the outbox and the state live
        (default ``~/.local/state/edgefleet-agent``). Shared with the Flower SuperNode.
    server_url : str or None
        Overrides the server URL recorded at enrolment (default ``None``: use the recorded one).
    poll_interval_s : float or None
        Seconds between assignment polls. The rule (see ``Agent.poll_interval``): when set
        explicitly (keyword or ``EDGEFLEET_AGENT_POLL_INTERVAL_S``) the agent's value is used and
        the server's suggested ``poll_interval_s`` is ignored — an operator's explicit choice is
        never overridden silently. When unset (default ``None``) the agent follows the server's
        suggestion, bounded by ``min_poll_interval_s``/``max_poll_interval_s``, and polls every
        ``DEFAULT_POLL_INTERVAL_S`` (60) seconds until it has one.
    poll_jitter : float
        Each wait is multiplied by a uniform factor in ``[1 - jitter, 1 + jitter]`` (default 0.2)
        so that a fleet restarted together does not poll in lockstep.
    min_poll_interval_s, max_poll_interval_s : float
        Bounds applied to the interval the server suggests (defaults 5 and 3600); an explicit
        ``poll_interval_s`` is not bounded by them.
    connect_timeout_s, read_timeout_s : float
        httpx timeouts for every request (defaults 5 and 30).
    retries : int
        Extra attempts for idempotent requests after a network error or 5xx (default 2).
    retry_backoff_s : float
        First retry delay; doubles each attempt, with jitter (default 0.5).
    inference_timeout_s : float
        Total timeout of one fallback inference request (default 5).
    fallback_cooldown_s : float
        After the server's fallback inference was unreachable, predictions that need it fail at
        once for this long instead of each waiting for timeouts and retries (default 5).
    telemetry_interval_s : float
        Seconds between telemetry reports (default 300).
    outbox_max_reports : int
        Bound of the on-disk outbox; at the bound it merges, then drops the oldest (default 500).
    outbox_backoff_base_s, outbox_backoff_max_s : float
        Exponential backoff of a report that failed to send (defaults 5 and 3600).
    http_port : int
        Port of the local inference endpoint on 127.0.0.1; 0 picks a free port, -1 disables it
        (default 8765).
    max_request_bytes : int
        Largest request body the local endpoint reads (default 4 MiB, as the server); larger
        bodies get 413, checked on ``Content-Length`` before reading and while reading chunked
        bodies.
    max_batch : int
        Most rows in one local V2 inference request (default 1024, as the server); more get 400.
    label_store_max : int
        Most labelled examples kept; the oldest are evicted first (default 10000).
    interpreter : {"auto", "ai-edge-litert", "tflite-runtime"}
        TFLite interpreter used to run plans (default ``"auto"``).
    keep_versions : int
        Installed model versions kept on disk, the active one included (default 2: active plus
        the previous one, for rollback).
    min_free_bytes : int
        Free disk space that must remain after a download; below it the download is refused
        before a byte is written (default 16 MiB).
    install_backoff_base_s, install_backoff_max_s : float
        After a failed install (interrupted download, full disk, server error) the same
        assignment is retried after ``min(max, base * 2**(failures - 1))`` seconds times a
        uniform jitter in [0.5, 1.5] (defaults 10 s and 1 h). A *refused* version (integrity,
        signature, smoke test) is not retried at all until the assignment changes.
    failures_before_rollback : int
        Consecutive unexpected local-inference failures after which the active model is rolled
        back to the previous version (default 3).
    max_load_per_core : float
        Idle means the 1-minute load average per core is below this (default 0.5).
    require_charging : bool
        Train only on mains power or while charging (default True).
    min_battery_pct : float
        Train only above this battery level when a battery exists (default 50).
    require_unmetered : bool
        Train only on an unmetered network (default True).
    unmetered_interfaces : list of str
        Interfaces declared unmetered (for example ``["eth0"]``); when empty, NetworkManager's
        metered flag is used if ``nmcli`` is available, else the interface-name heuristic.
    power_supply_root, proc_root : Path
        Where the Linux probes read ``power_supply`` and ``net/route`` (tests point them at a
        fixture tree; defaults ``/sys/class/power_supply`` and ``/proc``).
    """

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_AGENT_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    server_url: str | None = None
    poll_interval_s: float | None = Field(default=None, gt=0)
    poll_jitter: float = Field(default=0.2, ge=0, lt=1)
    min_poll_interval_s: float = Field(default=5.0, gt=0)
    max_poll_interval_s: float = Field(default=3600.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    inference_timeout_s: float = Field(default=5.0, gt=0)
    fallback_cooldown_s: float = Field(default=5.0, ge=0)
    telemetry_interval_s: float = Field(default=300.0, gt=0)
    outbox_max_reports: int = Field(default=500, ge=2)
    outbox_backoff_base_s: float = Field(default=5.0, ge=0)
    outbox_backoff_max_s: float = Field(default=3600.0, ge=0)
    http_port: int = Field(default=8765, ge=-1, le=65535)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    max_batch: int = Field(default=1024, gt=0)
    label_store_max: int = Field(default=10_000, ge=1)
    interpreter: InterpreterChoice = "auto"
    keep_versions: int = Field(default=2, ge=2)
    min_free_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    install_backoff_base_s: float = Field(default=10.0, ge=0)
    install_backoff_max_s: float = Field(default=3600.0, ge=0)
    failures_before_rollback: int = Field(default=3, ge=1)
    max_load_per_core: float = Field(default=0.5, gt=0)
    require_charging: bool = True
    min_battery_pct: float = Field(default=50.0, ge=0, le=100)
    require_unmetered: bool = True
    unmetered_interfaces: list[str] = Field(default_factory=list)
    power_supply_root: Path = Path("/sys/class/power_supply")
    proc_root: Path = Path("/proc")

    # --- the files under data_dir ----------------------------------------------------------
    @property
    def credentials_path(self) -> Path:
        return self.data_dir / "credentials.json"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def labels_db(self) -> Path:
        return self.data_dir / "labels.sqlite3"

    @property
    def outbox_db(self) -> Path:
        return self.data_dir / "outbox.sqlite3"

    @property
    def state_db(self) -> Path:
        return self.data_dir / "state.sqlite3"
