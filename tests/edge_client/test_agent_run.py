"""The agent's loop: the poll-interval rule and a prompt shutdown even while the server is
unreachable and retries would otherwise wait."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

from edge_client.agent import Agent
from edge_client.credentials import Credentials
from edge_client.settings import DEFAULT_POLL_INTERVAL_S
from tests.edge_client.conftest import fast_settings
from tests.edge_client.stub_server import StubServer


def test_poll_interval_explicit_setting_wins_else_the_servers_bounded(
        tmp_path: Path, published: StubServer) -> None:
    with Agent(fast_settings(tmp_path / "a")) as agent:
        assert agent.poll_interval() == DEFAULT_POLL_INTERVAL_S  # nothing suggested yet
        agent.assignment = published.assignment()  # suggests 1 s
        assert agent.poll_interval() == agent.settings.min_poll_interval_s == 5.0
    with Agent(fast_settings(tmp_path / "b", poll_interval_s=30.0)) as agent:
        agent.assignment = published.assignment()
        assert agent.poll_interval() == 30.0


def test_stop_interrupts_retry_waits(tmp_path: Path) -> None:
    attempted = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def _hang_up() -> None:  # accept and drop every connection: each attempt fails at once
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conn.close()
                attempted.set()

    threading.Thread(target=_hang_up, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    settings = fast_settings(tmp_path / "a", retries=5, retry_backoff_s=120.0)
    creds = Credentials(server_url=url, device_id="dev-1", device_token="t")
    try:
        with Agent(settings, credentials=creds) as agent:
            stop = threading.Event()
            runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
            runner.start()
            assert attempted.wait(timeout=30)  # the poll failed once and now waits to retry
            stop.set()
            runner.join(timeout=60)  # bound of the test; the retry waits alone exceed an hour
            assert not runner.is_alive()
            last_poll = agent.state.get("last_poll")
            assert last_poll["ok"] is False and "shutting down" in last_poll["error"]
            assert agent.client is not None and agent.client.retries == 0  # final drain: 1 try
    finally:
        listener.close()
