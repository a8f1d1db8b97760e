"""Every admin command (``registry``, ``rollout``, ``audit``) names the server's URL, why it
could not be reached and what to set, in one line on standard error, and exits 1
(:mod:`edgefleet_cli.remote`): a refused connection, a TLS failure (an untrusted certificate,
HTTPS to a plain HTTP server), a URL without a scheme, a timeout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgefleet_cli.main import app
from edgefleet_cli.remote import unreachable
from tests.aggregation.conftest import serve
from tests.server.processes import free_port

REPO = Path(__file__).resolve().parents[2]

# one per way a command reaches the server: registry GET, registry PUT/POST, rollout POST,
# audit GET (JSON), the card (text) and the export (paged)
COMMANDS = [
    ["registry", "models"],
    ["registry", "promote", "digits", "2"],
    ["rollout", "status"],
    ["rollout", "abort", "1"],
    ["audit", "list"],
    ["audit", "verify"],
    ["audit", "export"],
    ["registry", "card", "digits", "1"],
]


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: every connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def run(*args: str, url: str | None = None) -> Any:
    env = {"EDGEFLEET_ADMIN_KEY": "an-admin-key-1"}
    if url is not None:
        env["EDGEFLEET_URL"] = url
    return CliRunner().invoke(app, list(args), env=env)


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_admin_command_names_the_url_it_could_not_reach(
    args: list[str], refused_url: str
) -> None:
    out = run(*args, url=refused_url)
    assert out.exit_code == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"error: cannot reach the server at {refused_url} (connection refused); "
        "set --url or EDGEFLEET_URL to the server's base URL"]


def test_the_url_option_wins_over_the_environment(refused_url: str) -> None:
    out = run("registry", "models", "--url", refused_url, url="http://127.0.0.1:1")
    assert out.exit_code == 1 and f"at {refused_url} (connection refused)" in out.stderr


def test_a_real_process_prints_one_line_and_no_traceback(refused_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgefleet_cli", "rollout", "status", "--url", refused_url],
        env={**os.environ, "EDGEFLEET_ADMIN_KEY": "an-admin-key-1"},
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"error: cannot reach the server at {refused_url} (connection refused); "
        "set --url or EDGEFLEET_URL to the server's base URL"]


async def _plain(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering 200 to every request (served over plain HTTP)."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def test_https_to_a_plain_http_server_is_a_tls_failure() -> None:
    with serve(_plain) as url:
        https = url.replace("http://", "https://")
        out = run("audit", "list", "--url", https)
    assert out.exit_code == 1
    [line] = out.stderr.splitlines()
    assert line.startswith(f"error: cannot reach the server at {https} (TLS handshake failed: ")
    assert line.endswith("; set --url or EDGEFLEET_URL to the server's base URL")


@contextmanager
def _serve_https(certs: Path) -> Iterator[str]:
    """:func:`_plain` over HTTPS (uvicorn in a thread, the certificate of ``scripts/certs.py``)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        _plain, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
        ssl_certfile=str(certs / "server.pem"), ssl_keyfile=str(certs / "server.key")))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the HTTPS server did not start"
        time.sleep(0.05)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_an_untrusted_certificate_names_ssl_cert_file_which_fixes_it(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / "certs.py"), str(tmp_path)],
                   capture_output=True, timeout=60, check=True)
    with _serve_https(tmp_path) as url:
        out = run("registry", "card", "digits", "1", "--url", url)
        trusted = CliRunner().invoke(app, ["registry", "card", "digits", "1", "--url", url], env={
            "EDGEFLEET_ADMIN_KEY": "an-admin-key-1", "SSL_CERT_FILE": str(tmp_path / "ca.pem")})
    assert out.exit_code == 1
    [line] = out.stderr.splitlines()
    assert line.startswith(f"error: cannot reach the server at {url} (TLS: certificate not "
                           "trusted: ")
    assert line.endswith("; set SSL_CERT_FILE to the CA bundle that signed it, or "
                         "--url/EDGEFLEET_URL")
    assert trusted.exit_code == 0 and trusted.stdout == "{}\n", trusted.output


def test_a_url_without_a_scheme_and_a_password_in_the_url(refused_url: str) -> None:
    out = run("registry", "models", "--url", "127.0.0.1:8000")
    assert out.exit_code == 1 and out.stderr.splitlines() == [
        "error: cannot reach the server at 127.0.0.1:8000 (the URL must start with http:// or "
        "https://); set --url or EDGEFLEET_URL to the server's base URL"]
    with_password = refused_url.replace("http://", "http://ops:s3cret@")
    out = run("registry", "models", "--url", with_password)
    assert out.exit_code == 1 and "s3cret" not in out.stderr
    assert f"at {refused_url} (connection refused)" in out.stderr


def test_a_server_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(httpx.ReadTimeout) as caught:
            httpx.get(url, timeout=0.2)
    assert unreachable(caught.value, url) == (
        f"error: cannot reach the server at {url} (timed out waiting for an answer); "
        "set --url or EDGEFLEET_URL to the server's base URL")


def test_a_missing_admin_key_is_still_its_own_error(refused_url: str) -> None:
    out = CliRunner().invoke(app, ["audit", "list", "--url", refused_url],
                             env={"EDGEFLEET_ADMIN_KEY": ""})
    assert out.exit_code == 2 and "EDGEFLEET_ADMIN_KEY" in out.output
