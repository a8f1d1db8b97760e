"""An agent running as its own process: a free port, its environment, and waiting until ready."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import httpx


def agent_env(data_dir: Path | str, port: int) -> dict[str, str]:
    """This process's environment plus an agent's data dir, local HTTP port and no retry backoff."""
    return {**os.environ, "EDGEFLEET_AGENT_DATA_DIR": str(data_dir),
            "EDGEFLEET_AGENT_HTTP_PORT": str(port), "EDGEFLEET_AGENT_RETRY_BACKOFF_S": "0",
            "TF_CPP_MIN_LOG_LEVEL": "3"}


def wait_ready(proc: subprocess.Popen[str], port: int, tries: int = 200) -> bool:
    """Whether the agent ``proc`` answers ready on ``port`` within ``tries`` x 0.1 s (bounded:
    ~20 s for start-up, poll and install); ``False`` at once when the process ends."""
    for _ in range(tries):
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False
