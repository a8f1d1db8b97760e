"""TLS with real processes: the certificates of ``scripts/certs.py``, the server over HTTPS
(uvicorn's TLS from the ``ssl_*`` settings), and Flower's SuperLink over TLS with SuperNode
authentication (a registered key joins; an unregistered key and a plaintext node do not)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.processes import (
    ADMIN,
    CLI,
    ENROL_TOKEN,
    QUIET,
    Proc,
    free_port,
    spawn,
    start_server,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "certs.py"), str(out),
                           "--node", "dev-1", "--node", "dev-2", "--client", "ops"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("ca.pem", "server.pem", "server.key", "superlink.pem", "superlink.key",
                 "supernodes/dev-1", "supernodes/dev-1.pub"):
        assert (out / name).is_file(), name
    assert (out / "server.key").stat().st_mode & 0o077 == 0  # private keys: owner only
    return out


def test_certs_script_keeps_existing_material(certs: Path) -> None:
    before = (certs / "ca.pem").read_bytes()
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "certs.py"), str(certs),
                           "--node", "dev-3"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert (certs / "ca.pem").read_bytes() == before
    assert (certs / "supernodes" / "dev-3.pub").read_text().startswith("ecdsa-sha2-nistp384 ")


def test_server_serves_https_only_to_clients_that_trust_the_ca(
    certs: Path, tmp_path: Path
) -> None:
    ca = str(certs / "ca.pem")
    server = start_server(tmp_path, f"sqlite:///{tmp_path / 'tls.db'}", scheme="https",
                          verify=ca, env={
                              "EDGEFLEET_SERVER_SSL_CERTFILE": str(certs / "server.pem"),
                              "EDGEFLEET_SERVER_SSL_KEYFILE": str(certs / "server.key")})
    try:
        r = httpx.get(f"{server.url}/api/v1/health/ready", verify=ca)
        assert r.status_code == 200 and r.json()["status"] == "ready"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.url}/api/v1/health/live")  # the public CAs do not know it
        plain = server.url.replace("https://", "http://")
        try:  # plaintext on the TLS port: the handshake fails (or uvicorn answers 400)
            refused = httpx.get(f"{plain}/api/v1/health/live").status_code >= 400
        except httpx.HTTPError:
            refused = True
        assert refused
        # an agent trusts the deployment's CA through SSL_CERT_FILE and enrols over HTTPS
        data = tmp_path / "agent"
        done = subprocess.run(
            [*CLI, "agent", "enroll", "--server", server.url, "--token", ENROL_TOKEN,
             "--device-id", "tls-1", "--data-dir", str(data)],
            env={**os.environ, **QUIET, "SSL_CERT_FILE": ca}, capture_output=True, text=True,
            timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        r = httpx.get(f"{server.url}/api/v1/devices/tls-1", headers=ADMIN, verify=ca)
        assert r.status_code == 200 and r.json()["id"] == "tls-1"
    finally:
        server.stop()


def test_server_can_require_client_certificates(certs: Path, tmp_path: Path) -> None:
    ca = str(certs / "ca.pem")
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(certs / "clients" / "ops.pem", certs / "clients" / "ops.key")
    server = start_server(tmp_path, f"sqlite:///{tmp_path / 'mtls.db'}", scheme="https",
                          verify=context, env={
                              "EDGEFLEET_SERVER_SSL_CERTFILE": str(certs / "server.pem"),
                              "EDGEFLEET_SERVER_SSL_KEYFILE": str(certs / "server.key"),
                              "EDGEFLEET_SERVER_SSL_CA_CERTS": ca})
    try:
        with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
            httpx.get(f"{server.url}/api/v1/health/live", verify=ca).raise_for_status()
        assert httpx.get(f"{server.url}/api/v1/health/live", verify=context).status_code == 200
    finally:
        server.stop()


def test_server_refuses_to_start_with_a_missing_certificate(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "server", "run", "--port", str(free_port())],
        env={**os.environ, **QUIET,
             "EDGEFLEET_SERVER_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
             "EDGEFLEET_SERVER_ARTIFACT_DIR": str(tmp_path / "artifacts"),
             "EDGEFLEET_SERVER_SSL_CERTFILE": str(tmp_path / "missing.pem")},
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "TLS file" in done.stderr and "missing.pem" in done.stderr


@pytest.fixture
def superlink(certs: Path, tmp_path: Path) -> Iterator[tuple[Proc, dict[str, str]]]:
    port = free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fleet"\n[superlink.fleet]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs / "ca.pem"}"\n')
    env = {"FLWR_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = spawn("superlink", [
        str(BIN / "flower-superlink"), "--ssl-certfile", str(certs / "superlink.pem"),
        "--ssl-keyfile", str(certs / "superlink.key"), "--ssl-ca-certfile",
        str(certs / "ca.pem"), "--enable-supernode-auth", "--host", "127.0.0.1", "--port",
        str(port), "--database", str(tmp_path / "superlink.db")], tmp_path, env)
    proc.url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while "Uvicorn running on https://" not in proc.tail(20000):
            assert proc.alive(), proc.tail()
            assert time.monotonic() < deadline, proc.tail()
            time.sleep(0.2)
        yield proc, env
    finally:
        proc.stop()


def _flwr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "flwr"), *args], env={**os.environ, **QUIET, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def _online(env: dict[str, str]) -> list[dict[str, str]]:
    done = _flwr(env, "supernode", "ls", "fleet", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    return [n for n in json.loads(done.stdout)["nodes"] if n["status"] == "online"]


def test_flower_over_tls_admits_only_registered_supernodes(
    certs: Path, tmp_path: Path, superlink: tuple[Proc, dict[str, str]]
) -> None:
    link, env = superlink
    done = _flwr(env, "supernode", "register", str(certs / "supernodes" / "dev-1.pub"), "fleet",
                 "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    node_id = str(json.loads(done.stdout)["node-id"])

    def supernode(name: str, *extra: str) -> Proc:
        return spawn(name, [str(BIN / "flower-supernode"), "--superlink", link.url,
                            "--port", str(free_port()), *extra], tmp_path, env)

    ca = str(certs / "ca.pem")
    nodes = [
        supernode("dev-1", "--root-certificates", ca, "--auth-supernode-private-key",
                  str(certs / "supernodes" / "dev-1")),
        supernode("dev-2", "--root-certificates", ca, "--auth-supernode-private-key",
                  str(certs / "supernodes" / "dev-2")),  # a key nobody registered
        supernode("plain", "--insecure", "--max-retries", "1", "--max-wait-time", "2"),
    ]
    try:
        deadline = time.monotonic() + 45
        online: list[dict[str, str]] = []
        while time.monotonic() < deadline and not (online and not nodes[1].alive()):
            online = _online(env)
            time.sleep(1)
        assert [n["node-id"] for n in online] == [node_id], (online, nodes[0].tail())
        assert nodes[0].alive(), nodes[0].tail()
        assert nodes[1].popen.poll() not in (None, 0), nodes[1].tail()  # refused, exited
        # the plaintext node never got in (it retries until it gives up): still one node online
        assert [n["node-id"] for n in _online(env)] == [node_id]
    finally:
        for n in nodes:
            n.stop()
