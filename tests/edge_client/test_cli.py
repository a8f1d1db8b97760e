"""``edgefleet agent enroll|run|status|predict`` — in-process through Typer, and ``run`` as a real
process stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from typer.testing import CliRunner

from edge_client.credentials import Credentials
from edge_client.outbox import Outbox
from edgefleet.datasets import Dataset
from edgefleet_cli.main import app
from tests.edge_client.agent_process import agent_env, wait_ready
from tests.edge_client.conftest import MODEL
from tests.edge_client.stub_server import StubServer
from tests.ports import free_port

runner = CliRunner()


def _agent(data_dir: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["agent", *args, "--data-dir", str(data_dir)])
    return result.exit_code, result.output


def test_enroll_writes_0600_credentials_and_refuses_twice(tmp_path: Path,
                                                          stub: StubServer) -> None:
    data = tmp_path / "agent"
    code, out = _agent(data, "enroll", "--server", stub.url, "--token", "enrol-me",
                       "--device-id", "press-7", "--label", "site=berlin")
    assert code == 0, out
    assert "enrolled as press-7" in out
    path = data / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = Credentials.load(path)
    assert creds.device_token == stub.state.token and creds.labels == {"site": "berlin"}
    code, out = _agent(data, "enroll", "--server", stub.url, "--token", "enrol-me")
    assert code == 1 and "--force" in out


def test_enroll_with_a_bad_token_or_no_server(tmp_path: Path, stub: StubServer) -> None:
    code, out = _agent(tmp_path / "a", "enroll", "--server", stub.url, "--token", "wrong")
    assert code == 1 and "401" in out
    assert not (tmp_path / "a" / "credentials.json").exists()
    dead = f"http://127.0.0.1:{free_port()}"
    code, out = _agent(tmp_path / "b", "enroll", "--server", dead, "--token", "t")
    assert code == 1 and "cannot connect" in out


def test_status_of_a_fresh_device(tmp_path: Path) -> None:
    code, out = _agent(tmp_path / "a", "status")
    assert code == 0, out
    assert "(not enrolled)" in out and "active:      (none)" in out
    code, out = _agent(tmp_path / "a", "status", "--json")
    info = json.loads(out)
    assert info["enrolled"] is False and info["outbox"]["depth"] == 0
    assert isinstance(info["eligibility"]["eligible"], bool)


def test_predict_from_json_csv_and_file(tmp_path: Path, published: StubServer,
                                        stub_credentials: Credentials,
                                        digits_data: Dataset) -> None:
    from edge_client.agent import Agent
    from tests.edge_client.conftest import fast_settings

    data = tmp_path / "agent"
    with Agent(fast_settings(data), credentials=stub_credentials) as agent:
        agent.poll()
        stub_credentials.save(data / "credentials.json")
    row = digits_data.x_test[0]
    code, out = _agent(data, "predict", "--json", json.dumps(row.tolist()))
    assert code == 0, out
    result = json.loads(out)
    assert result["path"] == "local" and result["model"] == MODEL and result["version"] == 1
    assert result["classes"] == [str(int(np.argmax(result["probabilities"][0])))]
    code, out = _agent(data, "predict", "--csv", ",".join(str(v) for v in row))
    assert code == 0 and json.loads(out)["classes"] == result["classes"]
    csv_file = tmp_path / "rows.csv"
    header = ",".join(f"f{i}" for i in range(64))
    csv_file.write_text(header + "\n" + "\n".join(",".join(map(str, r))
                                                  for r in digits_data.x_test[:3]))
    code, out = _agent(data, "predict", "--file", str(csv_file))
    assert code == 0 and len(json.loads(out)["classes"]) == 3
    code, out = _agent(data, "predict", "--json", "[1, 2, 3]")
    assert code == 1 and "expected [n, 64]" in out
    code, out = _agent(data, "status")
    assert f"active:      {MODEL} v1" in out


def test_run_serves_and_shuts_down_cleanly_on_sigterm(tmp_path: Path, published: StubServer,
                                                      stub_credentials: Credentials) -> None:
    data = tmp_path / "agent"
    data.mkdir()
    stub_credentials.save(data / "credentials.json")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet_cli", "agent", "run"],
                            env=agent_env(data, port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        ready = wait_ready(proc, port)
        assert ready, proc.communicate()[0] if proc.poll() is not None else "not ready"
        body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                            "data": [0.0] * 64}]}
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", json=body)
        assert r.status_code == 200 and r.json()["parameters"]["path"] == "local"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "shutting down" in output
    # the final flush reported the inference window before exiting (sent, or queued)
    sent = [r for r in published.state.telemetry.values() if r["inference"]["local"] == 1]
    assert sent or Outbox(data / "outbox.sqlite3").depth() >= 1


def test_install_offline_then_predict_without_enrolment(tmp_path: Path,
                                                        digits_plan_dir: Path) -> None:
    data = tmp_path / "agent"
    code, out = _agent(data, "install", str(digits_plan_dir), "--version", "5")
    assert code == 0, out
    code, out = _agent(data, "predict", "--json", json.dumps([0.0] * 64))
    assert code == 0, out
    assert json.loads(out)["path"] == "local" and json.loads(out)["version"] == 5
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("manifest.json", "weights.safetensors"):
        (broken / name).write_bytes((digits_plan_dir / name).read_bytes())
    (broken / "plan.tflite").write_bytes(b"TFL3 but not really a plan")
    code, out = _agent(data, "install", str(broken), "--version", "6")
    assert code == 1 and "does not load" in out
    code, out = _agent(data, "status")
    assert f"active:      {MODEL} v5" in out


def test_run_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out = _agent(tmp_path / "agent", "run", "--http-port", str(port))
    assert code == 1
    assert out.strip().splitlines()[-1] == f"error: 127.0.0.1:{port} is already in use"
    assert "Traceback" not in out


def test_predict_rejects_non_numeric_csv_and_run_lists_log_levels(tmp_path: Path) -> None:
    code, out = _agent(tmp_path / "agent", "predict", "--csv", "a,b,c")
    assert code == 1 and "non-numeric" in out
    result = runner.invoke(app, ["agent", "run", "--help"], env={"COLUMNS": "200"})
    assert "debug|info|warning|error|critical" in result.output
    code, out = _agent(tmp_path / "agent", "run", "--log-level", "loud")
    assert code == 2 and "loud" in out


def test_predict_says_which_input_is_not_json(tmp_path: Path) -> None:
    code, out = _agent(tmp_path / "agent", "predict", "--json", "not json")
    assert code == 1 and "error: --json is not JSON: Expecting value" in out, out
    rows = tmp_path / "rows.json"
    rows.write_text("[1, 2,")
    code, out = _agent(tmp_path / "agent", "predict", "--file", str(rows))
    assert code == 1 and f"error: {rows} is not JSON" in out, out


def test_enroll_help_says_the_token_is_reusable() -> None:
    result = runner.invoke(app, ["agent", "enroll", "--help"], env={"COLUMNS": "200"})
    assert "any number of new device ids" in result.output
    assert "one-time" not in result.output
