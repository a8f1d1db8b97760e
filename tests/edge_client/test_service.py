"""The agent as a systemd service: the units and logrotate file ``edgefleet agent install-service``
writes (checked by ``systemd-analyze verify`` and a real ``logrotate`` run), installing again in
place, and ``upgrade``'s pip step on a real virtual environment."""

from __future__ import annotations

import base64
import hashlib
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_client.errors import ConfigurationError
from edge_client.service import ServiceOptions, install, render, upgrade
from edgefleet_cli.main import app as cli
from tests.edge_client.agent_process import agent_env, wait_ready
from tests.edge_client.stub_server import StubServer
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "systemd"
UNITS = "etc/systemd/system"


def test_deploy_files_are_the_rendered_defaults() -> None:
    files = render(ServiceOptions(bin_dir=Path("/opt/edgefleet/bin"),
                                  superlink="superlink.example:9093"))
    names = {f"{UNITS}/edgefleet-agent.service": "edgefleet-agent.service",
             f"{UNITS}/edgefleet-supernode.service": "edgefleet-supernode.service",
             "etc/logrotate.d/edgefleet": "edgefleet.logrotate",
             "etc/edgefleet/agent.env": "agent.env.example"}
    for rel, content in files.items():
        assert (DEPLOY / names[rel]).read_text() == content, f"deploy/systemd/{names[rel]}"


def test_install_writes_then_updates_in_place(tmp_path: Path) -> None:
    run = CliRunner().invoke(cli, ["agent", "install-service", "--superlink", "sl.example:9093",
                                   "--root", str(tmp_path), "--no-systemctl"])
    assert run.exit_code == 0, run.output
    assert run.output.count("created") == 6  # 4 files, the data and log directories
    assert (tmp_path / "var/lib/edgefleet").is_dir() and (tmp_path / "var/log/edgefleet").is_dir()
    agent = (tmp_path / UNITS / "edgefleet-agent.service").read_text()
    assert "ExecStart=" in agent and "agent run" in agent and "User=edgefleet" in agent
    node = (tmp_path / UNITS / "edgefleet-supernode.service").read_text()
    assert "BindsTo=edgefleet-agent.service" in node and "--superlink sl.example:9093" in node
    env = tmp_path / "etc/edgefleet/agent.env"
    env.write_text("EDGEFLEET_AGENT_SERVER_URL=https://fleet.example\n")  # the operator's edit
    again = install(ServiceOptions(superlink="sl.example:9093"), tmp_path, systemctl=False)
    assert set(again.values()) == {"unchanged", "kept"}
    moved = install(ServiceOptions(superlink="sl.example:9093", log_dir=Path("/srv/log")),
                    tmp_path, systemctl=False)
    assert moved[str(tmp_path / UNITS / "edgefleet-agent.service")] == "updated"
    assert "append:/srv/log/agent.log" in (tmp_path / UNITS / "edgefleet-agent.service"
                                           ).read_text()
    assert env.read_text() == "EDGEFLEET_AGENT_SERVER_URL=https://fleet.example\n"
    with pytest.raises(ConfigurationError, match="spaces or quotes"):
        render(ServiceOptions(superlink="a b"))
    no_node = render(ServiceOptions())
    assert f"{UNITS}/edgefleet-supernode.service" not in no_node


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    options = ServiceOptions(user="root", superlink="sl.example:9093",
                             data_dir=tmp_path / "data", log_dir=tmp_path / "log")
    install(options, tmp_path, systemctl=False)
    units = sorted((tmp_path / UNITS).glob("*.service"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_logrotate_rotates_both_logs_keeping_the_handles(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    install(ServiceOptions(user="root", log_dir=logs), tmp_path, systemctl=False)
    with open(logs / "agent.log", "a") as handle:  # the service's open file
        handle.write("before rotation\n")
        handle.flush()
        done = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"),
                               str(tmp_path / "etc/logrotate.d/edgefleet")],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        handle.write("after rotation\n")
    assert (logs / "agent.log.1").read_text() == "before rotation\n"
    assert (logs / "agent.log").read_text().strip("\0") == "after rotation\n"


def _wheel(out: Path, version: str) -> Path:
    """A minimal pure-Python wheel ``edgefleet_probe`` of ``version`` (built by hand)."""
    name = f"edgefleet_probe-{version}"
    path = out / f"{name}-py3-none-any.whl"
    files = {
        "edgefleet_probe.py": f"VERSION = {version!r}\n",
        f"{name}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: edgefleet-probe\n"
                                      f"Version: {version}\n",
        f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                   "Tag: py3-none-any\n",
    }
    record = []
    for rel, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{rel},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{name}.dist-info/RECORD,,")
    files[f"{name}.dist-info/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, text in files.items():
            zf.writestr(rel, text)
    return path


def test_upgrade_installs_the_new_release_into_the_agents_environment(tmp_path: Path) -> None:
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    python = str(env / "bin" / "python")
    offline = ["--no-index", "--disable-pip-version-check", "--no-deps"]
    upgrade(str(_wheel(tmp_path, "1.0")), python=python, pip_args=offline, restart=False)
    commands = upgrade(str(_wheel(tmp_path, "2.0")), python=python, pip_args=offline,
                       restart=False)
    assert commands[0][:5] == [python, "-m", "pip", "install", "--upgrade"]
    probe = "import edgefleet_probe; print(edgefleet_probe.VERSION)"
    version = subprocess.run([python, "-c", probe], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert version == "2.0"
    with pytest.raises(ConfigurationError, match="pip failed, services untouched"):
        upgrade(str(tmp_path / "missing.whl"), python=python, pip_args=offline, restart=False)


def test_install_under_root_refuses_a_missing_user_before_writing_anything() -> None:
    run = CliRunner().invoke(cli, ["agent", "install-service", "--user", "no-such-edgefleet-user",
                                   "--no-systemctl"])
    assert run.exit_code != 0
    assert "useradd --system no-such-edgefleet-user" in run.output, run.output
    assert not Path("/etc/systemd/system/edgefleet-agent.service").exists() or \
        "no-such-edgefleet-user" not in Path("/etc/systemd/system/edgefleet-agent.service"
                                             ).read_text()


def test_starting_the_units_needs_credentials_in_the_services_data_dir(tmp_path: Path) -> None:
    from edge_client.service import _require_credentials

    options = ServiceOptions(data_dir=Path("/var/lib/edgefleet"))
    with pytest.raises(ConfigurationError, match="agent enroll --data-dir /var/lib/edgefleet"):
        _require_credentials(options, tmp_path)
    (tmp_path / "var/lib/edgefleet").mkdir(parents=True)
    (tmp_path / "var/lib/edgefleet/credentials.json").write_text("{}")
    _require_credentials(options, tmp_path)


def test_enrolled_into_the_units_data_dir_the_units_command_installs_the_model(
        tmp_path: Path, published: StubServer) -> None:
    """The README's sequence: enroll --data-dir <the unit's data dir>, then the unit's ExecStart
    with the unit's environment polls, installs the model and serves it."""
    data = tmp_path / "var/lib/edgefleet"
    unit = render(ServiceOptions(data_dir=data))["etc/systemd/system/edgefleet-agent.service"]
    lines = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    key, value = lines["Environment"].split("=", 1)
    assert (key, value) == ("EDGEFLEET_AGENT_DATA_DIR", str(data))
    enrolled = CliRunner().invoke(cli, ["agent", "enroll", "--data-dir", value, "--server",
                                        published.url, "--token", "enrol-me"])
    assert enrolled.exit_code == 0, enrolled.output
    port = free_port()
    proc = subprocess.Popen(lines["ExecStart"].split(), env=agent_env(value, port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = wait_ready(proc, port)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ready, output
    assert "not enrolled" not in output
    assert any((data / "models").rglob("*.tflite")), output
