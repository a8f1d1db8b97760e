"""Run a runner under uvicorn, draining on SIGTERM.

The first SIGTERM (or SIGINT) marks the runner as draining: ``/v2/health/ready`` answers 503 so
the balancer (Kubernetes endpoints, a health-checking proxy) stops choosing it, while requests
are still answered for ``drain_s`` seconds. Then uvicorn stops listening, finishes the requests
in flight and exits. A second signal exits at once.
"""

from __future__ import annotations

import logging
import threading
from types import FrameType
from typing import Any

import uvicorn

from server.runner.app import create_runner_app
from server.runner.settings import RunnerSettings
from server.runner.state import RunnerState

__all__ = ["serve"]

log = logging.getLogger("edgefleet.runner")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains for ``drain_s`` first."""

    def __init__(self, config: uvicorn.Config, state: RunnerState, drain_s: float) -> None:
        super().__init__(config)
        self.runner = state
        self.drain_s = drain_s
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.runner.draining:  # the second signal: stop now
            super().handle_exit(sig, frame)
            return
        self.runner.draining = True
        log.info("runner: draining for %.1f s before stopping", self.drain_s)
        self._timer = threading.Timer(self.drain_s, self._stop)
        self._timer.daemon = True
        self._timer.start()

    def _stop(self) -> None:
        self.should_exit = True


def serve(settings: RunnerSettings, host: str, port: int, **uvicorn_options: Any) -> None:
    """Serve the runner on ``host:port`` until signalled (see the module notes)."""
    app = create_runner_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=30, **uvicorn_options)
    DrainingServer(config, app.state.runner, settings.drain_s).run()
