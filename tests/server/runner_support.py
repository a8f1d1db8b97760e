"""Inference runners as real processes, nginx in front of them, and a tampering proxy.

Used by ``tests/server/test_runner.py``, ``tests/test_topology.py`` and
``bench/bench_runners.py``. :func:`scaled_weights` makes another version's weights;
:func:`start_runner` runs ``edgefleet server runner`` (its log beside the others),
:func:`start_balancer` runs
Debian's nginx (installed by ``scripts/test.sh``) with an upstream of runners, and
:class:`TamperingProxy` sits between a runner and the registry and alters what passes: the
body of every weights download (``flip``), or that body *and* the weights digest the serving
snapshot announces (``forge``), so the digest check passes and only the signature can refuse it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np

from edgefleet.plan import load_weights, save_weights, sha256_bytes
from tests.server.processes import CLI, Proc, free_port, spawn, wait_http

RUNNER_SECRET = "runner-secret-22"
RUNNER_KEY = f"runners:{RUNNER_SECRET}"
APP_SECRET = "app-secret-22"
APP_KEY = f"apps:{APP_SECRET}"
APP = {"Authorization": f"Bearer {APP_SECRET}"}


def scaled_weights(plan_dir: Path, out: Path, factor: float = 0.5) -> Path:
    """Weights for another version of the plan in ``plan_dir``: its weights times ``factor``
    (another answer, same plan), written to ``out/weights.safetensors``."""
    weights = {k: np.asarray(a) * np.float32(factor) for k, a in load_weights(
        plan_dir / "weights.safetensors").items()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "weights.safetensors"
    plan_sha = json.loads((plan_dir / "manifest.json").read_text())["plan_sha256"]
    save_weights(path, weights, plan_sha256=plan_sha)
    return path


def runner_env(root: Path, name: str, **extra: str) -> dict[str, str]:
    return {
        "EDGEFLEET_RUNNER_RUNNER_KEY": RUNNER_SECRET,
        "EDGEFLEET_RUNNER_INFERENCE_KEYS": APP_KEY,
        "EDGEFLEET_RUNNER_CACHE_DIR": str(root / f"{name}-cache"),
        "EDGEFLEET_RUNNER_LOG_FORMAT": "text",
        "EDGEFLEET_RUNNER_LOG_LEVEL": "INFO",
        **extra,
    }


def start_runner(root: Path, registry: str, *, name: str = "runner",
                 env: Mapping[str, str] | None = None, ready: bool = True) -> Proc:
    """``edgefleet server runner``; waits until ``/v2/health/ready`` (or live) answers 200."""
    port = free_port()
    proc = spawn(name, [*CLI, "server", "runner", "--registry", registry, "--host",
                        "127.0.0.1", "--port", str(port)],
                 root, {**runner_env(root, name), **(env or {})})
    proc.url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, f"{proc.url}/v2/health/{'ready' if ready else 'live'}", timeout=90)
    except Exception:
        proc.stop()
        raise
    return proc


NGINX_CONF = """\
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/nginx-body;
    proxy_temp_path {root}/nginx-proxy;
    fastcgi_temp_path {root}/nginx-fastcgi;
    uwsgi_temp_path {root}/nginx-uwsgi;
    scgi_temp_path {root}/nginx-scgi;
    upstream runners {{
        least_conn;
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://runners;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # inference has no side effects: a POST that met a closing runner is retried
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        raise RuntimeError("nginx is missing (scripts/test.sh installs it: apt-get install nginx)")
    return found


def _write_conf(conf_root: Path, upstreams: Sequence[str], port: int) -> Path:
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=5s;" for u in upstreams)
    conf = conf_root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=conf_root, servers=servers, port=port))
    return conf


def start_balancer(root: Path, upstreams: Sequence[str], name: str = "nginx") -> Proc:
    """nginx on a free loopback port spreading requests over ``upstreams`` (``host:port``)."""
    port = free_port()
    conf_root = root / name
    conf_root.mkdir(parents=True, exist_ok=True)
    conf = _write_conf(conf_root, upstreams, port)
    proc = spawn(name, [nginx_binary(), "-c", str(conf), "-p", str(conf_root), "-g",
                        "daemon off;"], root)
    proc.url = f"http://127.0.0.1:{port}"
    proc.extra.update(conf_root=conf_root, port=port)
    wait_http(proc, f"{proc.url}/v2/health/live", timeout=30)
    return proc


def reload_balancer(proc: Proc, upstreams: Sequence[str]) -> None:
    """Give a running balancer a new set of upstreams (``nginx -s reload``: no connection lost)."""
    conf_root: Path = proc.extra["conf_root"]
    conf = _write_conf(conf_root, upstreams, proc.extra["port"])
    subprocess.run([nginx_binary(), "-c", str(conf), "-p", str(conf_root), "-g", "daemon off;",
                    "-s", "reload"], check=True, capture_output=True, timeout=30)


class TamperingProxy:
    """An HTTP proxy to ``upstream`` that alters weights downloads (see the module notes).

    ``mode``: ``"flip"``, ``"forge"`` or ``"honest"`` (changeable while it runs).
    """

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = mode
        self.tampered = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.forward(self)

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TamperingProxy:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _flip(data: bytes) -> bytes:
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]

    def _forge(self, snapshot: bytes, weights: Mapping[str, bytes]) -> bytes:
        """The snapshot with every weights digest and size replaced by the tampered bytes'."""
        doc = json.loads(snapshot)
        for model in doc["models"]:
            for version in model["versions"]:
                data = weights.get(version["weights"]["url"])
                if data is not None:
                    version["weights"]["sha256"] = sha256_bytes(data)
                    version["weights"]["size"] = len(data)
        return json.dumps(doc).encode()

    def _fetch(self, path: str, headers: Mapping[str, str]) -> httpx.Response:
        return httpx.get(self.upstream + path, headers=dict(headers), timeout=30)

    def _tampered_weights(self, snapshot: bytes, headers: Mapping[str, str]) -> dict[str, bytes]:
        urls = [v["weights"]["url"] for m in json.loads(snapshot)["models"]
                for v in m["versions"]]
        return {url: self._flip(self._fetch(url, headers).content) for url in urls}

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        wanted = {k: v for k, v in handler.headers.items()
                  if k.lower() in ("authorization", "if-none-match")}
        mode = self.mode
        if mode == "forge" and handler.path.endswith("/serving/models"):
            wanted.pop("If-None-Match", None)
            wanted.pop("if-none-match", None)
        r = self._fetch(handler.path, wanted)
        body = r.content
        if mode != "honest" and handler.path.endswith("/weights") and r.status_code == 200:
            body = self._flip(body)
            self.tampered += 1
        if mode == "forge" and handler.path.endswith("/serving/models") and r.status_code == 200:
            body = self._forge(body, self._tampered_weights(body, wanted))
        handler.send_response(r.status_code)
        for name in ("content-type", "etag"):
            if name in r.headers:
                handler.send_header(name, r.headers[name])
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def socket_peers(pid: int) -> Iterator[tuple[str, int]]:
    """The remote (address, port) of every TCP socket process ``pid`` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                address, port = fields[2].split(":")
                yield address, int(port, 16)


def open_files(pid: int) -> list[str]:
    """The paths of every file process ``pid`` holds open."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.append(fd.readlink().as_posix())
        except OSError:
            continue
    return out
