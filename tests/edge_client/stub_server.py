"""A small standard-library HTTP server speaking the device half of the REST contract, with
network faults on demand: it really listens on 127.0.0.1 and really closes connections
mid-body, so the agent's downloader meets genuine ``httpx`` transport errors.

It serves what a device needs (assignment with ETag/304, manifest, plan, weights, telemetry with
idempotency keys, V2 inference through a real :class:`PlanRuntime`); the full server
(``server/``) is exercised by ``test_integration.py``. Faults:

* ``truncate[kind] = n``  — the next download of ``kind`` (``"plan"``/``"weights"``) announces the
  full ``Content-Length`` and closes the connection after ``n`` bytes;
* ``tamper[kind] = True`` — serve bytes other than the ones the assignment's sha256 promises;
* ``down = True``         — answer every request with 503;
* ``signing = "ok"``      — sign assignments with the stub's key (``"none"``: unsigned,
  ``"bad"``: a signature over another statement, ``"stranger"``: signed by an unknown key).

``prefetch = n`` adds version ``n`` of the assigned model as a blue-green pre-download
(``Assignment.prefetch``). Every artifact request is counted in ``downloads`` (its kind) and
``fetched`` (``(version, kind)``).

The stub signs like the registry (:mod:`edgefleet.signature`); its key is ``signing_key`` (hand
it to the agent's credentials, as enrolment does).

Enrolment accepts ``state.enrollment_token`` and hands out ``state.token``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgefleet.plan import PlanManifest, sha256_bytes
from edgefleet.runtime import PlanRuntime
from edgefleet.signature import encode_b64, key_id_of, version_statement
from edgefleet.wire import (
    API_PREFIX,
    ArtifactRef,
    Assignment,
    PrefetchRef,
    SigningKeyInfo,
    TelemetryReport,
    VersionSignature,
    artifact_url,
)


class StubKey:
    """An Ed25519 key signing version statements, as the registry's."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        public = encode_b64(self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        self.info = SigningKeyInfo(key_id=key_id_of(public), public_key=public)

    def sign(self, message: bytes) -> str:
        return encode_b64(self.private.sign(message))


@dataclass
class _Version:
    manifest: bytes
    plan: bytes
    weights: bytes


@dataclass
class StubState:
    versions: dict[tuple[str, int], _Version] = field(default_factory=dict)
    assigned: tuple[str, int] | None = None
    truncate: dict[str, int] = field(default_factory=dict)
    tamper: dict[str, bool] = field(default_factory=dict)
    down: bool = False
    telemetry: dict[str, dict[str, Any]] = field(default_factory=dict)
    telemetry_posts: int = 0
    downloads: list[str] = field(default_factory=list)
    fetched: list[tuple[int, str]] = field(default_factory=list)
    prefetch: int | None = None
    infer_calls: int = 0
    token: str = "device-token"
    enrollment_token: str = "enrol-me"
    signing: str = "ok"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes | dict[str, Any], headers: dict[str, str] | None = None,
              *, length: int | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)

    def _auth(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.server.state.token}":
            self._send(401, {"detail": "bad device token"})
            return False
        return True

    def do_GET(self) -> None:
        st = self.server.state
        if st.down:
            return self._send(503, {"detail": "down"})
        if not self._auth():
            return None
        parts = self.path.strip("/").split("/")
        if self.path.endswith("/assignment"):
            if st.assigned is None:
                return self._send(404, {"detail": "no assignment"})
            a = self.server.assignment()
            etag = '"' + sha256_bytes(a.model_dump_json().encode()) + '"'
            if self.headers.get("If-None-Match") == etag:
                return self._send(304, b"", {"ETag": etag})
            return self._send(200, a.model_dump_json().encode(), {"ETag": etag})
        # /api/v1/models/{m}/versions/{v}/{kind}
        model, version, kind = parts[3], int(parts[5]), parts[6]
        v = st.versions[(model, version)]
        data: bytes = getattr(v, kind)
        st.downloads.append(kind)
        st.fetched.append((version, kind))
        if st.tamper.get(kind):
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        cut = st.truncate.pop(kind, None)
        if cut is not None:
            self._send(200, data[:cut], length=len(data))
            self.close_connection = True
            return None
        return self._send(200, data, {"ETag": f'"{sha256_bytes(data)}"'})

    def do_POST(self) -> None:
        st = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if st.down:
            return self._send(503, {"detail": "down"})
        if self.path == f"{API_PREFIX}/devices/enroll":
            req = json.loads(body)
            if req["enrollment_token"] != st.enrollment_token:
                return self._send(401, {"detail": "invalid enrolment token"})
            return self._send(200, {"device_id": req.get("device_id") or "dev-1",
                                    "device_token": st.token,
                                    "signing_key": self.server.key.info.model_dump()})
        if not self._auth():
            return None
        if self.path.endswith("/telemetry"):
            st.telemetry_posts += 1
            report = TelemetryReport.model_validate_json(body)
            duplicate = report.idempotency_key in st.telemetry
            st.telemetry.setdefault(report.idempotency_key, json.loads(body))
            rid = list(st.telemetry).index(report.idempotency_key) + 1
            return self._send(200, {"report_id": rid, "duplicate": duplicate})
        if self.path.startswith("/v2/models/"):
            return self._infer(body)
        return self._send(404, {"detail": "no route"})

    def _infer(self, body: bytes) -> None:
        st = self.server.state
        st.infer_calls += 1
        parts = self.path.strip("/").split("/")
        model = parts[2]
        version = int(parts[4]) if len(parts) > 4 and parts[3] == "versions" else None
        known = [k for k in st.versions if k[0] == model]
        key = (model, version) if version is not None else max(known, default=(model, 0))
        v = st.versions.get(key)
        if v is None:
            return self._send(404, {"error": f"unknown model {model}"})
        runtime = self.server.runtime(key)
        req = json.loads(body)
        tensor = req["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        try:
            probs = runtime.predict(x)
        except Exception as exc:
            return self._send(400, {"error": str(exc)})
        out = {"model_name": model, "model_version": str(key[1]),
               "outputs": [{"name": "probabilities", "datatype": "FP32",
                            "shape": list(probs.shape), "data": probs.reshape(-1).tolist()}]}
        return self._send(200, out)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = StubState()
        self.key = StubKey()
        self._stranger = StubKey()
        self._runtimes: dict[tuple[str, int], PlanRuntime] = {}

    def _refs(self, model: str, version: int) -> tuple[dict[str, ArtifactRef],
                                                       VersionSignature | None]:
        v = self.state.versions[(model, version)]
        refs = {kind: ArtifactRef(url=artifact_url(model, version, kind),  # type: ignore[arg-type]
                                  sha256=sha256_bytes(data), size=len(data))
                for kind, data in (("plan", v.plan), ("weights", v.weights),
                                   ("manifest", v.manifest))}
        return refs, self._signature(model, version, v, refs)

    def assignment(self) -> Assignment:
        assert self.state.assigned is not None
        model, version = self.state.assigned
        refs, signature = self._refs(model, version)
        prefetch = None
        if self.state.prefetch is not None:
            side, side_sig = self._refs(model, self.state.prefetch)
            prefetch = PrefetchRef(version=self.state.prefetch, plan=side["plan"],
                                   weights=side["weights"], manifest=side["manifest"],
                                   manifest_url=side["manifest"].url, signature=side_sig)
        return Assignment(
            device_id="dev-1", model=model, version=version, alias="production",
            plan=refs["plan"], weights=refs["weights"], manifest=refs["manifest"],
            manifest_url=refs["manifest"].url, poll_interval_s=1.0, signature=signature,
            prefetch=prefetch)

    def _signature(self, model: str, version: int, v: _Version,
                   refs: dict[str, ArtifactRef]) -> VersionSignature | None:
        mode = self.state.signing
        if mode == "none":
            return None
        manifest = PlanManifest.from_json(v.manifest)
        labels = list(manifest.output.class_labels)
        if mode == "bad":
            labels = labels[::-1]  # a statement about other labels
        statement = version_statement(
            model=model, version=version, plan=refs["plan"], weights=refs["weights"],
            manifest=refs["manifest"], plan_name=manifest.name, plan_format=manifest.format,
            class_labels=labels)
        key = self._stranger if mode == "stranger" else self.key
        return VersionSignature(key_id=key.info.key_id, signature=key.sign(statement))

    def runtime(self, key: tuple[str, int]) -> PlanRuntime:
        if key not in self._runtimes:
            v = self.state.versions[key]
            from edgefleet.plan import weights_from_bytes

            manifest = PlanManifest.from_json(v.manifest)
            self._runtimes[key] = PlanRuntime.from_bytes(
                v.plan, manifest, weights_from_bytes(v.weights, manifest=manifest))
        return self._runtimes[key]


class StubServer:
    """Start with ``StubServer().start()``; ``url``, ``state``, ``publish``, ``assign``."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def state(self) -> StubState:
        return self._server.state

    @property
    def signing_key(self) -> SigningKeyInfo:
        """The public key devices pin (what enrolment hands out)."""
        return self._server.key.info

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def publish(self, model: str, version: int, plan_dir: Path, *, plan: bytes | None = None,
                weights: bytes | None = None) -> None:
        """Publish a plan directory (optionally with other plan or weights bytes)."""
        manifest = PlanManifest.load(plan_dir / "manifest.json")
        manifest = manifest.model_copy(update={"name": model})
        plan_bytes = plan if plan is not None else (plan_dir / "plan.tflite").read_bytes()
        if plan is not None:
            manifest = manifest.model_copy(update={"plan_sha256": sha256_bytes(plan),
                                                   "plan_size": len(plan)})
        self.state.versions[(model, version)] = _Version(
            manifest.to_json().encode(), plan_bytes,
            weights if weights is not None else (plan_dir / "weights.safetensors").read_bytes())

    def assign(self, model: str, version: int) -> None:
        self.state.assigned = (model, version)

    def assignment(self) -> Assignment:
        """The assignment the server currently hands out."""
        return self._server.assignment()

    def runtime(self, model: str, version: int) -> PlanRuntime:
        """A published version loaded from the bytes the stub serves (what it should answer)."""
        return self._server.runtime((model, version))

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


