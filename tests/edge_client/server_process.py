"""The real EdgeFleet server as a child process on 127.0.0.1 (SQLite database and artifact store
in a temporary directory), stoppable and restartable on the same port and data, plus the admin
calls the agent's integration tests need (register a model, upload a version, move an alias)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from edgefleet.plan import sha256_file
from tests.environments import main_env_python  # the server's extras are not in .venv-tflite
from tests.ports import free_port

ADMIN_KEY = "admin:admin-secret-1"
ENROLLMENT_TOKEN = "enrol:enrol-secret-1"
ADMIN_HEADERS = {"X-Admin-Key": ADMIN_KEY.split(":", 1)[1]}



class ServerProcess:
    """``edgefleet server run`` in a subprocess; ``start()``, ``stop()``, ``url``."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.extra_env = dict(env or {})  # more EDGEFLEET_SERVER_* settings
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifact_dir(self) -> Path:
        return self.root / "artifacts"

    def env(self) -> dict[str, str]:
        """The server's environment (also what ``edgefleet server scrub`` needs)."""
        return {
            **os.environ,
            "EDGEFLEET_SERVER_DATABASE_URL": f"sqlite:///{self.root / 'server.db'}",
            "EDGEFLEET_SERVER_ARTIFACT_DIR": str(self.artifact_dir),
            "EDGEFLEET_SERVER_SIGNING_KEY_PATH": str(self.root / "keys" / "signing.pem"),
            "EDGEFLEET_SERVER_ADMIN_KEYS": ADMIN_KEY,
            "EDGEFLEET_SERVER_ENROLLMENT_TOKENS": ENROLLMENT_TOKEN,
            "EDGEFLEET_SERVER_POLL_INTERVAL_S": "1",
            "EDGEFLEET_SERVER_LAST_SEEN_INTERVAL_S": "0",
            "EDGEFLEET_SERVER_LOG_FORMAT": "text",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            **self.extra_env,
        }

    def scrub(self) -> subprocess.CompletedProcess[str]:
        """Run ``edgefleet server scrub`` on this server's database and store."""
        return subprocess.run([main_env_python(), "-m", "edgefleet_cli", "server", "scrub"],
                              env=self.env(), capture_output=True, text=True, timeout=120,
                              check=False)

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        env = self.env()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [main_env_python(), "-m", "edgefleet_cli", "server", "run", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout_s} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # --- admin --------------------------------------------------------------------------------
    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=ADMIN_HEADERS, timeout=60)

    def create_model(self, name: str) -> None:
        with self.admin() as c:
            r = c.post("/api/v1/models", json={"name": name, "task": "classification"})
            assert r.status_code in (201, 409), r.text

    def upload(self, model: str, plan_dir: Path, *, weights: Path | None = None,
               plan_from_version: int | None = None) -> int:
        """Upload a plan directory (or, with ``plan_from_version``, only weights)."""
        weights = weights or plan_dir / "weights.safetensors"
        data = {"weights_sha256": sha256_file(weights)}
        files = {"weights": ("weights.safetensors", weights.read_bytes())}
        if plan_from_version is None:
            data["plan_sha256"] = sha256_file(plan_dir / "plan.tflite")
            files["plan"] = ("plan.tflite", (plan_dir / "plan.tflite").read_bytes())
            files["manifest"] = ("manifest.json", (plan_dir / "manifest.json").read_bytes())
        else:
            data["metadata"] = f'{{"plan_from_version": {plan_from_version}}}'
        with self.admin() as c:
            r = c.post(f"/api/v1/models/{model}/versions", data=data, files=files)
            assert r.status_code == 201, r.text
            return int(r.json()["version"])

    def set_alias(self, model: str, version: int, alias: str = "production") -> None:
        with self.admin() as c:
            r = c.put(f"/api/v1/models/{model}/aliases/{alias}", json={"version": version})
            assert r.status_code == 200, r.text

    def blob(self, sha256: str) -> Path:
        return self.artifact_dir / "blobs" / "sha256" / sha256[:2] / sha256[2:4] / sha256
