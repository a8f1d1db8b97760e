"""Running the agent and its Flower SuperNode as systemd services, with log rotation and upgrades.

``edgefleet agent install-service`` writes (under ``--root``, ``/`` by default):

``etc/systemd/system/edgefleet-agent.service``      the agent (``edgefleet agent run``)
``etc/systemd/system/edgefleet-supernode.service``  its SuperNode on the same data directory,
                                                    started with and stopped with the agent
``etc/logrotate.d/edgefleet``                       daily rotation of both logs, 14 kept
``etc/edgefleet/agent.env``                         ``EDGEFLEET_AGENT_*`` settings (kept when
                                                    present: operators edit it)

Both units run as an unprivileged user, append to ``<log dir>/{agent,supernode}.log`` (which
logrotate rotates with ``copytruncate``, so the services keep their file handles), restart on
failure, and get a read-only file system except their data and log directories. Installing again
rewrites the units in place and reports what changed. ``edgefleet agent upgrade`` upgrades the
package in the agent's own environment with pip and then restarts the units (``try-restart``:
only those running); the agent flushes its telemetry to the on-disk outbox on SIGTERM, and its
models and outbox live in the data directory, which an upgrade never touches.

The files in ``deploy/systemd/`` are these templates rendered with the defaults.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_client.errors import ConfigurationError

__all__ = ["ServiceOptions", "install", "render", "upgrade"]

UNITS = ("edgefleet-agent.service", "edgefleet-supernode.service")

AGENT_UNIT = """\
[Unit]
Description=EdgeFleet edge agent (models, local inference, telemetry)
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User={user}
Group={user}
Environment=EDGEFLEET_AGENT_DATA_DIR={data_dir}
EnvironmentFile=-{env_file}
ExecStart={bin_dir}/edgefleet agent run
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=5
StandardOutput=append:{log_dir}/agent.log
StandardError=inherit
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={data_dir} {log_dir}

[Install]
WantedBy=multi-user.target
"""

SUPERNODE_UNIT = """\
[Unit]
Description=EdgeFleet Flower SuperNode (federated training on the agent's data)
After=edgefleet-agent.service network-online.target
Wants=network-online.target
BindsTo=edgefleet-agent.service
PartOf=edgefleet-agent.service

[Service]
Type=exec
User={user}
Group={user}
Environment=FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1
Environment=FLWR_TELEMETRY_ENABLED=0
ExecStart={bin_dir}/flower-supernode --superlink {superlink} \\
    --root-certificates {root_certificates} --auth-supernode-private-key {supernode_key} \\
    --port {clientappio_port} --node-config "data-dir='{data_dir}' eligibility='device'"
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=10
StandardOutput=append:{log_dir}/supernode.log
StandardError=inherit
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={data_dir} {log_dir}

[Install]
WantedBy=edgefleet-agent.service
"""

LOGROTATE = """\
{log_dir}/agent.log {log_dir}/supernode.log {{
    daily
    rotate 14
    maxsize 50M
    missingok
    notifempty
    compress
    delaycompress
    copytruncate
    su {user} {user}
}}
"""

AGENT_ENV = """\
# EDGEFLEET_AGENT_* settings of the edgefleet-agent service (see `edgefleet agent run --help`).
# EDGEFLEET_AGENT_SERVER_URL=https://fleet.example
# SSL_CERT_FILE={root_certificates}
# EDGEFLEET_AGENT_POLL_INTERVAL_S=60
"""


@dataclass(frozen=True)
class ServiceOptions:
    """What the units say.

    Parameters
    ----------
    bin_dir : Path
        Where ``edgefleet`` and ``flower-supernode`` are (default: this interpreter's).
    user : str (default: "edgefleet")
        The unprivileged account both services run as.
    data_dir, log_dir : Path
        Agent data (shared with the SuperNode) and log directories.
    superlink : str
        The SuperLink's ``host:port``; empty: no SuperNode unit.
    root_certificates, supernode_key : Path
        The deployment CA and this device's SuperNode private key (``scripts/certs.py``).
    clientappio_port : int (default: 9094)
        The SuperNode's local ClientAppIo port.
    """

    bin_dir: Path = Path(sys.executable).parent
    user: str = "edgefleet"
    data_dir: Path = Path("/var/lib/edgefleet")
    log_dir: Path = Path("/var/log/edgefleet")
    superlink: str = ""
    root_certificates: Path = Path("/etc/edgefleet/ca.pem")
    supernode_key: Path = Path("/etc/edgefleet/supernode.key")
    clientappio_port: int = 9094

    def values(self) -> dict[str, str]:
        return {"bin_dir": str(self.bin_dir), "user": self.user, "data_dir": str(self.data_dir),
                "log_dir": str(self.log_dir), "superlink": self.superlink,
                "root_certificates": str(self.root_certificates),
                "supernode_key": str(self.supernode_key),
                "clientappio_port": str(self.clientappio_port),
                "env_file": "/etc/edgefleet/agent.env"}


def render(options: ServiceOptions) -> dict[str, str]:
    """Relative path -> content of every file :func:`install` writes."""
    for name, value in (("user", options.user), ("superlink", options.superlink)):
        if any(c.isspace() or c in "\"'\\;" for c in value):
            raise ConfigurationError(f"{name} {value!r} must not contain spaces or quotes")
    v = options.values()
    files = {
        "etc/systemd/system/edgefleet-agent.service": AGENT_UNIT.format(**v),
        "etc/logrotate.d/edgefleet": LOGROTATE.format(**v),
        "etc/edgefleet/agent.env": AGENT_ENV.format(**v),
    }
    if options.superlink:
        files["etc/systemd/system/edgefleet-supernode.service"] = SUPERNODE_UNIT.format(**v)
    return files


def install(options: ServiceOptions, root: Path = Path("/"), *, systemctl: bool = True
            ) -> dict[str, str]:
    """Create the data and log directories and write the files of :func:`render` under
    ``root``; returns ``{path: "created" | "updated" | "unchanged" | "kept"}``. Under ``/`` the
    service's user must exist (:class:`ConfigurationError` otherwise, before anything is
    written), and, when run as root, the directories become that user's. With ``systemctl``
    (and ``root`` = ``/``), reload systemd and enable and (re)start the units."""
    files = render(options)
    owner = _account(options.user) if root == Path("/") else None
    changes: dict[str, str] = {}
    for directory in (options.data_dir, options.log_dir):  # the units' ReadWritePaths
        path = root / directory.relative_to(directory.anchor)
        changes[str(path)] = "unchanged" if path.is_dir() else "created"
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
        if owner is not None and os.geteuid() == 0:
            os.chown(path, *owner)
    for rel, content in files.items():
        path = root / rel
        if path.exists():
            if rel.endswith("agent.env"):
                changes[str(path)] = "kept"
                continue
            old = path.read_text()
            changes[str(path)] = "unchanged" if old == content else "updated"
        else:
            changes[str(path)] = "created"
        if changes[str(path)] != "unchanged":
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(content)
            tmp.replace(path)  # never a half-written unit
    if systemctl and root == Path("/"):
        _require_credentials(options, root)
        units = [u for u in UNITS if (root / "etc/systemd/system" / u).exists()]
        _systemctl(["daemon-reload"])
        _systemctl(["enable", *units])
        _systemctl(["restart", *units])
    return changes


def _require_credentials(options: ServiceOptions, root: Path) -> None:
    """:class:`ConfigurationError` naming the enrol command when the service's data directory
    holds no credentials (the agent would run offline and never get a model)."""
    path = root / options.data_dir.relative_to(options.data_dir.anchor) / "credentials.json"
    if not path.exists():
        raise ConfigurationError(
            f"files written, units not started: {path} does not exist; enrol first with "
            f"`sudo -u {options.user} edgefleet agent enroll --data-dir {options.data_dir} "
            f"--server URL --token TOKEN`, then run install-service again")


def _account(user: str) -> tuple[int, int]:
    """``user``'s uid and gid; :class:`ConfigurationError` when the account does not exist
    (systemd would refuse to start the units)."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigurationError(
            f"user {user!r} does not exist: create it first (useradd --system {user})"
        ) from None
    return entry.pw_uid, entry.pw_gid


def upgrade(spec: str, *, python: str = sys.executable, pip_args: Sequence[str] = (),
            restart: bool = True) -> list[list[str]]:
    """``pip install --upgrade spec`` into ``python``'s environment, then ``systemctl
    try-restart`` the units; returns the commands run. Raises :class:`ConfigurationError` when
    one fails (the running services are left as they were)."""
    commands = [[python, "-m", "pip", "install", "--upgrade", *pip_args, spec]]
    run = subprocess.run(commands[0], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise ConfigurationError(f"pip failed, services untouched: {run.stderr.strip()[-800:]}")
    if restart:
        commands.append(["systemctl", "try-restart", *UNITS])
        _systemctl(commands[-1][1:])
    return commands


def _systemctl(args: list[str]) -> None:
    if shutil.which("systemctl") is None:
        raise ConfigurationError("systemctl not found: start the units by hand")
    run = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise ConfigurationError(f"systemctl {shlex.join(args)} failed: {run.stderr.strip()}")
