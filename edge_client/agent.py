"""The agent: one object that serves predictions, keeps the model current, stores labels and
reports telemetry. ``edgefleet agent run`` is :meth:`Agent.run`; applications may also embed an
:class:`Agent` and call :meth:`Agent.predict` directly.

Which path answers a prediction (see :mod:`edge_client.inference` for the details):

* the **local** model when one is active and the request is for it;
* the server's **fallback** V2 inference when no local model can answer (none installed yet, it
  failed to load or raised, or the request names another model or version);
* neither, with :class:`~edge_client.errors.InvalidInputError`, when the input is wrong for the
  very model version the server would use too — asking the server would only repeat the refusal,
  and a misbehaving application would turn into a storm of doomed fallback requests.

The memory of refused and retried installs is :mod:`edge_client.installs`; the status read from
the data directory (``edgefleet agent status``) is :mod:`edge_client.status`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_client.client import ServerClient
from edge_client.credentials import Credentials
from edge_client.eligibility import DeviceEligibility, EligibilityProvider
from edge_client.errors import (
    AgentError,
    IntegrityError,
    ModelRejectedError,
    NotEnrolledError,
)
from edge_client.http_api import LocalServer
from edge_client.inference import InferenceRouter, Prediction
from edge_client.installs import InstallLedger
from edge_client.metrics import AgentMetrics
from edge_client.models import InstalledVersion, ModelManager
from edge_client.outbox import Outbox
from edge_client.settings import DEFAULT_POLL_INTERVAL_S, AgentSettings
from edge_client.side_versions import SideVersions
from edge_client.status import collect_status
from edge_client.storage import StateStore
from edge_client.store import LabelStore
from edge_client.telemetry import DrainResult, Telemetry, merge_report_bodies
from edgefleet.errors import EdgeFleetError
from edgefleet.wire import Assignment, LocalEvaluation, TelemetryReport

__all__ = ["EVAL_LIMIT", "MAX_EVENTS", "Agent", "collect_status"]  # collect_status: re-export

log = logging.getLogger(__name__)
MAX_EVENTS = 50
EVAL_LIMIT = 5000


class Agent:
    """The edge agent.

    Parameters
    ----------
    settings : AgentSettings or None
        Defaults to the environment (``EDGEFLEET_AGENT_*``).
    credentials : Credentials or None
        Defaults to ``<data_dir>/credentials.json``; without any the agent works offline (local
        model only, nothing polled or sent).
    eligibility : EligibilityProvider or None
        Defaults to :class:`DeviceEligibility` from the settings.
    client : ServerClient or None
        Replaces the HTTP client built from the credentials (tests, embedding).
    """

    def __init__(
        self,
        settings: AgentSettings | None = None,
        *,
        credentials: Credentials | None = None,
        eligibility: EligibilityProvider | None = None,
        client: ServerClient | None = None,
    ) -> None:
        self.settings = s = settings or AgentSettings()
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if credentials is None:
            try:
                credentials = Credentials.load(s.credentials_path)
            except NotEnrolledError:
                log.warning("not enrolled: working offline with the local model only")
        self.credentials = credentials
        self.state = StateStore(s.state_db)
        self.labels = LabelStore(s.labels_db, s.label_store_max)
        self.outbox = Outbox(s.outbox_db, max_entries=s.outbox_max_reports,
                             backoff_base_s=s.outbox_backoff_base_s,
                             backoff_max_s=s.outbox_backoff_max_s, merge=merge_report_bodies)
        self.telemetry = Telemetry(self.outbox, self.state)
        self.installs = InstallLedger(self.state, s, self._note)
        self.eligibility = eligibility or DeviceEligibility.from_settings(s)
        self._stop = threading.Event()  # replaced by run()'s: it cuts retry waits short
        if client is None and credentials is not None:
            client = ServerClient(
                s.server_url or credentials.server_url, token=credentials.device_token,
                connect_timeout_s=s.connect_timeout_s, read_timeout_s=s.read_timeout_s,
                retries=s.retries, backoff_s=s.retry_backoff_s, sleep=self._pause,
                cancelled=self._stop_requested,
            )
        self.client = client
        self.models = ModelManager(s.models_dir, interpreter=s.interpreter,
                                   keep_versions=s.keep_versions,
                                   min_free_bytes=s.min_free_bytes, on_event=self._on_event)
        self.assignment: Assignment | None = None
        try:
            cached = self.state.get("assignment")
            self.assignment = Assignment.model_validate(cached) if cached else None
        except ValueError as exc:  # written by another release: the next poll replaces it
            log.warning("ignoring the cached assignment: %s", exc)
        degraded = {k: v for k, v in self.storage_condition().items() if v != "ok"}
        if degraded:
            log.warning("storage degraded, serving anyway: %s", degraded)
        self.side = SideVersions(self.models, self.telemetry, pinned=lambda: [  # prefetch, shadow
            k for k in [self.credentials.signing_key if self.credentials else None] if k])
        self.router = InferenceRouter(self.models, self.telemetry, self.labels, s,
                                      assignment=lambda: self.assignment,
                                      client=lambda: self.client, reject=self.reject)
        self.metrics = AgentMetrics(self)
        self.models.load_active()

    # --- identity -------------------------------------------------------------------------------
    @property
    def device_id(self) -> str | None:
        return self.credentials.device_id if self.credentials else None

    def _require_client(self) -> tuple[ServerClient, str]:
        if self.client is None or self.credentials is None:
            raise NotEnrolledError("not enrolled: run `edgefleet agent enroll` first")
        return self.client, self.credentials.device_id

    # --- inference and labels -------------------------------------------------------------------
    def predict(self, x: Any, *, model: str | None = None, version: int | None = None
                ) -> Prediction:
        """Class probabilities for ``x`` (``[n, *sample_shape]`` or one example), from the
        local model or the server's fallback (see the module docstring)."""
        started = time.perf_counter()
        try:
            prediction = self.router.predict(x, model=model, version=version)
        except Exception as exc:
            self.metrics.failed(exc)
            raise
        self.metrics.answered(prediction.path, prediction.probs.shape[0],
                              time.perf_counter() - started)
        return prediction

    def record_label(self, x: Any, y: Any) -> int:
        """Store labelled examples (``y`` class indices or class labels) for local training and
        evaluation; returns how many were stored. They never leave the device."""
        return self.router.record_label(x, y)

    def local_evaluation(self) -> LocalEvaluation | None:
        """The active model on the newest labelled examples (``None`` without a model)."""
        active = self.models.active
        if active is None:
            return None
        m = active.runtime.manifest
        x, y = self.labels.load(m.name, m.input.sample_shape, limit=EVAL_LIMIT)
        known = (y >= 0) & (y < m.output.n_classes)
        x, y = x[known], y[known]
        if len(y) == 0:
            return LocalEvaluation(n_examples=0)
        try:
            result = active.runtime.evaluate(x, y)
        except EdgeFleetError as exc:
            log.warning("local evaluation failed: %s", exc)
            return LocalEvaluation(n_examples=0)
        return LocalEvaluation(n_examples=result.n, accuracy=result.accuracy, loss=result.loss)

    # --- model lifecycle ------------------------------------------------------------------------
    def poll(self) -> str:
        """Poll the assignment once and install it when it changed.

        Returns ``"none"`` (nothing assigned), ``"current"`` (already running it), ``"installed"``,
        ``"rejected"`` (refused now or before; not fetched again until it changes) or
        ``"backoff"`` (an earlier attempt failed; the retry is not due yet).

        Raises
        ------
        ServerError, ArtifactError
            The poll or a download failed; the active model is untouched.
        """
        client, device_id = self._require_client()
        etag = self.state.get("assignment_etag") if self.assignment else None
        try:
            result = client.assignment(device_id, etag)
        except AgentError as exc:
            self._note("last_poll", {"at": time.time(), "ok": False, "error": str(exc)})
            raise
        self._note("last_poll", {"at": time.time(), "ok": True, "status": result.status})
        if result.status == "none":
            self._set_assignment(None, None)
            return "none"
        if result.status == "changed":
            self._set_assignment(result.assignment, result.etag)
        a = self.assignment
        if a is None:
            return "none"
        self._guarded("side versions", lambda: self.side.sync(client, a))  # a rollout's extras
        if self.models.is_current(a):
            return "current"
        return self._install(client, a)

    def _install(self, client: ServerClient, a: Assignment) -> str:
        """Install ``a`` unless it was refused before or its retry is not due yet.

        A refusal (integrity, signature, manifest, smoke test) is remembered by the
        assignment's fingerprint (digests and signature) until the assignment changes; other
        failures are retried with exponential backoff and jitter (``install_backoff_*``; see
        :mod:`edge_client.installs`). A blue-green pre-download of ``a`` is installed from
        instead of downloading again (its files verified as a download's) and dropped once
        ``a`` is installed or refused.
        """
        attempt = self.installs.check(a)
        if attempt.blocked is not None:
            return attempt.blocked
        pinned = [self.credentials.signing_key] if self.credentials and \
            self.credentials.signing_key else []
        prefetched = self.side.prefetched_for(a)
        try:
            self.models.install(client, a, pinned=pinned, prefetched=prefetched)
        except (ModelRejectedError, IntegrityError) as exc:
            if prefetched is not None:
                self.side.consumed(a)
            self.installs.refused(attempt, exc)
            log.error("assignment %s v%s refused (not fetched again until it changes): %s",
                      a.model, a.version, exc)
            return "rejected"
        except AgentError as exc:
            self.installs.failed(attempt, exc)
            raise
        if prefetched is not None:
            self.side.consumed(a)
        self.installs.succeeded()
        self.router.reset_failures()
        return "installed"

    def reject(self, info: InstalledVersion) -> None:
        """Never reinstall ``info`` (same model, version and hashes) unless the assignment
        changes: it failed to answer after passing its smoke test."""
        self.installs.reject(info)

    def _set_assignment(self, a: Assignment | None, etag: str | None) -> None:
        self.assignment = a
        self._note("assignment", a.model_dump(mode="json") if a else None)
        self._note("assignment_etag", etag)

    def _note(self, key: str, value: Any) -> None:
        """Best-effort bookkeeping: a full disk must not turn a poll or a rollback into a crash
        (the download that needs the space reports it clearly)."""
        try:
            self.state.set(key, value)
        except AgentError as exc:
            log.error("could not record %s: %s", key, exc)

    def poll_interval(self) -> float:
        """Seconds until the next poll, with jitter.

        An explicit ``poll_interval_s`` setting wins; without one the server's suggestion
        (bounded by ``min_poll_interval_s``/``max_poll_interval_s``) is used, and
        ``DEFAULT_POLL_INTERVAL_S`` until the server has suggested one.
        """
        s = self.settings
        if s.poll_interval_s is not None:
            base = s.poll_interval_s
        elif self.assignment is not None:
            base = min(max(self.assignment.poll_interval_s, s.min_poll_interval_s),
                       s.max_poll_interval_s)
        else:
            base = DEFAULT_POLL_INTERVAL_S
        return base * random.uniform(1 - s.poll_jitter, 1 + s.poll_jitter)

    def _on_event(self, kind: str, details: dict[str, Any]) -> None:
        log.log(logging.INFO if kind == "installed" else logging.WARNING,
                "model %s: %s", kind, details)
        self.telemetry.events.observe(kind, details)  # reported upstream (edge_client.events)
        try:
            events = self.state.get("events", [])
        except AgentError:
            events = []
        events.append({"at": time.time(), "kind": kind, **details})
        self._note("events", events[-MAX_EVENTS:])

    # --- telemetry ------------------------------------------------------------------------------
    def flush_telemetry(self) -> list[TelemetryReport]:
        """Close the telemetry windows into reports queued in the outbox."""
        active = self.models.active
        key = (active.info.model, active.info.version) if active else None
        return self.telemetry.flush(key, self.local_evaluation)

    def drain_outbox(self) -> DrainResult:
        """Send the queued reports that are due (nothing when not enrolled)."""
        if self.client is None or self.credentials is None:
            return DrainResult()
        return self.telemetry.drain(self.client, self.credentials.device_id)

    # --- running --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Everything ``edgefleet agent status`` shows, plus live facts of this process."""
        out = collect_status(self.settings, eligibility=self.eligibility)
        active = self.models.active
        out["interpreter"] = active.runtime.interpreter_name if active else None
        out["consecutive_local_failures"] = self.router.failures
        out["storage"] = self.storage_condition()
        return out

    def storage_condition(self) -> dict[str, str]:
        """``{"state": "ok" | why it is degraded, ...}`` for the agent's three databases (a
        read-only or full data folder: see :mod:`edge_client.storage`)."""
        return {name: db.degraded or "ok" for name, db in
                (("state", self.state), ("labels", self.labels), ("outbox", self.outbox))}

    def _pause(self, seconds: float) -> None:
        """The client's wait between retries, cut short once the agent is asked to stop."""
        self._stop.wait(seconds)

    def _stop_requested(self) -> bool:
        return self._stop.is_set()

    def run(self, stop: threading.Event, *, serve_http: bool = True) -> None:
        """Poll, report and serve until ``stop`` is set; flush telemetry on the way out.

        Shutdown is prompt: setting ``stop`` wakes the loop and any retry wait at once; the
        local endpoint stops within a fraction of a second; telemetry windows are flushed into
        the on-disk outbox, and one last drain tries each due report once with a short timeout
        (what it cannot send is sent after the next start).

        Raises
        ------
        ConfigurationError
            The local endpoint's port is in use or cannot be bound.
        """
        self._stop = stop
        server = None
        if serve_http and self.settings.http_port >= 0:
            server = LocalServer(self, port=self.settings.http_port).start()
            log.info("local inference endpoint on http://127.0.0.1:%d", server.port)
        now = time.monotonic()
        next_poll, next_drain = now, now
        next_flush = now + self.settings.telemetry_interval_s
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_poll:
                    if self.client is not None:
                        self._guarded("poll", self.poll)
                    next_poll = now + self.poll_interval()
                if now >= next_flush:
                    self._guarded("telemetry flush", self.flush_telemetry)
                    next_flush = now + self.settings.telemetry_interval_s
                if now >= next_drain:
                    self._guarded("outbox drain", self.drain_outbox)
                    next_drain = now + min(10.0, self.settings.telemetry_interval_s)
                stop.wait(max(0.05, min(next_poll, next_flush, next_drain) - time.monotonic()))
        finally:
            if self.client is not None:
                self.client.hurry()
            if server is not None:
                server.stop()
            self._guarded("final telemetry flush", self.flush_telemetry)
            self._guarded("final outbox drain", self.drain_outbox)

    @staticmethod
    def _guarded(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except (AgentError, EdgeFleetError, OSError) as exc:
            log.warning("%s failed: %s", what, exc)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        for db in (self.state, self.labels, self.outbox):
            db.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

