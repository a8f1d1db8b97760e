"""The OpenAPI contract, fuzzed: schemathesis against the real server, on SQLite and PostgreSQL.

``edgefleet server`` runs as a process (uvicorn on an ephemeral 127.0.0.1 port, its own fresh
database on each backend, migrated at start-up) with a model ``digits`` in production and an
enrolled device ``pi-17``. Every operation of the server's own ``/openapi.json`` is fuzzed as the
operator (admin key), as the device (its token) and with no credentials, each with positive data
(free path parameters, and the known model/version/device/alias so that requests get past the
look-ups) and negative data (known path parameters, everything else invalid). Checks:
``not_a_server_error``, ``response_schema_conformance``, ``status_code_conformance`` and
``negative_data_rejection``. Every failure of every operation is collected and reported at once.

Both servers run at once and every generated case is sent to each (with that server's
credentials): the same cases on both backends, and Hypothesis's generation, most of the CPU
(measured: 10-16 ms of the client's a case, 2-3 ms of the server's), is paid once for both.

Budget: Hypothesis is derandomised (a fixed seed) with :data:`EXAMPLES` examples per operation
and strategy (admin 10, device 4, anonymous 2): the server's ~45 operations make about 115
strategies, so about 1,800 cases, each sent to both servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup

from tests.ports import free_port
from tests.registry.support import PlanFiles, PostgresDatabases
from tests.server.support import ADMIN, ENROL_TOKEN, sha

ADMIN_SECRET = ADMIN["X-Admin-Key"]
#: Examples per operation and strategy, for each kind of caller (``EDGEFLEET_FUZZ_EXAMPLES=N``
#: sets all three, for a deeper run by hand).
EXAMPLES = {"admin": 10, "device": 4, "anonymous": 2}
if os.environ.get("EDGEFLEET_FUZZ_EXAMPLES"):
    EXAMPLES = dict.fromkeys(EXAMPLES, int(os.environ["EDGEFLEET_FUZZ_EXAMPLES"]))
#: The model, version, device and alias the server knows (path parameters that resolve).
KNOWN = {"model": "digits", "version": 1, "device_id": "pi-17", "alias": "production"}
CHECK_NAMES = (
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "negative_data_rejection",
)
#: What refuses invalid data: schemathesis's default set, and 413 (declared by every route): a
#: negative body can outgrow the server's request limit, and the limit refuses it first.
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429",
            "5xx"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}})



@dataclass
class Target:
    """A running server (``backend`` its database) and the credentials to fuzz it with."""

    backend: str
    base: str
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Targets:
    """The servers fuzzed with the same cases, and the schema they share."""

    schema: Any
    servers: list[Target]


def start(db_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``edgefleet server`` on a free port (started, not yet ready); the process and its URL."""
    env_file = workdir / "server.env"
    env_file.write_text(
        f"EDGEFLEET_SERVER_DATABASE_URL={db_url}\n"
        f"EDGEFLEET_SERVER_ARTIFACT_DIR={workdir / 'artifacts'}\n"
        f"EDGEFLEET_SERVER_ADMIN_KEYS=alice:{ADMIN_SECRET}\n"
        f"EDGEFLEET_SERVER_ENROLLMENT_TOKENS={ENROL_TOKEN}\n"
        "EDGEFLEET_SERVER_MAX_REQUEST_BYTES=65536\n"
        "EDGEFLEET_SERVER_MAX_UPLOAD_BYTES=1048576\n"
        "EDGEFLEET_SERVER_LOG_LEVEL=WARNING\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_SERVER_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet_cli", "server", "--host", "127.0.0.1", "--port",
         str(port), "--env-file", str(env_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[bytes], base: str, workdir: Path) -> None:
    """Until the server answers its liveness probe (fails the test if it does not)."""
    deadline = time.monotonic() + 120  # a loaded machine imports slowly
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/api/v1/health/live", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the server did not start: {(workdir / 'server.log').read_text()[-2000:]}")


def seed(base: str, files: PlanFiles) -> str:
    """Model ``digits`` v1 in production and device ``pi-17`` enrolled; its token."""
    with httpx.Client(base_url=base, timeout=30, headers=ADMIN) as http:
        assert http.post("/api/v1/models", json={"name": "digits"}).status_code == 201
        r = http.post(
            "/api/v1/models/digits/versions",
            files={"plan": ("p", files.plan), "manifest": ("m", files.manifest),
                   "weights": ("w", files.weights)},
            data={"plan_sha256": sha(files.plan), "weights_sha256": sha(files.weights)},
        )
        assert r.status_code == 201, r.text
        r = http.put("/api/v1/models/digits/aliases/production", json={"version": 1})
        assert r.status_code == 200, r.text
    r = httpx.post(
        f"{base}/api/v1/devices/enroll",
        json={"enrollment_token": ENROL_TOKEN, "device_id": "pi-17", "model": "digits"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["device_token"])


def backends(request: pytest.FixtureRequest, root: Path) -> dict[str, str]:
    """Database URL per backend: SQLite, and PostgreSQL unless its tests are skipped."""
    urls = {"sqlite": f"sqlite:///{root / 'registry.db'}"}
    try:
        postgres: PostgresDatabases = request.getfixturevalue("postgres")
    except pytest.skip.Exception:  # EDGEFLEET_TEST_SKIP_POSTGRES=1: SQLite only
        return urls
    urls["postgresql"] = postgres.create("fuzz")
    return urls


@pytest.fixture(scope="module")
def targets(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    plan_files: PlanFiles,
) -> Iterator[Targets]:
    """A server per backend, started side by side, each seeded alike."""
    root = tmp_path_factory.mktemp("fuzz")
    procs: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        for backend, db_url in backends(request, root).items():
            workdir = root / backend
            workdir.mkdir()
            procs[backend] = (*start(db_url, workdir), workdir)
        servers = []
        for backend, (proc, base, workdir) in procs.items():
            wait_ready(proc, base, workdir)
            token = seed(base, plan_files)
            servers.append(Target(backend, base, {
                "admin": {"X-Admin-Key": ADMIN_SECRET},
                "device": {"Authorization": f"Bearer {token}"},
                "anonymous": {},
            }))
        documents = [httpx.get(f"{t.base}/openapi.json", timeout=30).json() for t in servers]
        assert all(d == documents[0] for d in documents), "the backends' documents differ"
        schema = schemathesis.openapi.from_url(f"{servers[0].base}/openapi.json", config=CONFIG)
        yield Targets(schema, servers)
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
        for proc, _, _ in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
                proc.wait()
    for backend, (_, _, workdir) in procs.items():
        log = (workdir / "server.log").read_text()
        assert "Traceback" not in log, f"{backend}: {log[-3000:]}"


def strategies(operation: Any) -> list[tuple[str, Any]]:
    """Free positive data; positive and negative data with the known path parameters."""
    names = {p.name for p in operation.path_parameters}
    known = {k: v for k, v in KNOWN.items() if k in names}
    positive, negative = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
    out = [("positive", operation.as_strategy(positive))]
    if known:
        out.append(("positive+known", operation.as_strategy(positive, path_parameters=known)))
    out.append(("negative+known", operation.as_strategy(negative, path_parameters=known)))
    return out


def run_strategy(
    servers: list[Target], strategy: Any, who: str, examples: int, tag: str
) -> tuple[int, list[str]]:
    """``examples`` cases of ``strategy``, each sent to every server with its credentials for
    ``who``: requests made, failures found."""
    checks = [CHECKS.get_one(name) for name in CHECK_NAMES]
    failures: list[str] = []
    calls = 0

    @settings(
        max_examples=examples,
        derandomize=True,  # a fixed seed: the same cases on every run
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        nonlocal calls
        generated = dict(case.headers or {})
        for server in servers:
            calls += 1
            # the caller's credentials win
            case.headers = {**generated, **server.credentials[who]}
            try:
                case.call_and_validate(base_url=server.base, checks=checks, timeout=30)
            except (Exception, FailureGroup) as exc:  # collected: one report for the whole run
                failures.append(f"{tag} on {server.backend}: {exc}"[:3000])

    try:
        run()
    except Unsatisfiable:  # nothing to negate: an operation without parameters or body
        if not tag.endswith("negative+known]"):
            raise
    return calls, failures


def fuzz(targets: Targets, who: str) -> tuple[int, list[str]]:
    """Run every operation's strategies as ``who`` on every server; requests made and every
    failure found."""
    failures: list[str] = []
    calls = 0
    for result in targets.schema.get_all_operations():
        operation = result.ok()
        for label, strategy in strategies(operation):
            tag = f"{operation.label} [{who}, {label}]"
            n, found = run_strategy(targets.servers, strategy, who, EXAMPLES[who], tag)
            calls += n
            failures += found
            if os.environ.get("EDGEFLEET_FUZZ_TRACE"):
                print(f"{time.monotonic():.1f} {tag} {n} requests {len(found)} failures")
    return calls, failures


@pytest.mark.parametrize("who", ["anonymous", "device", "admin"])
def test_the_contract_holds_under_fuzzing(targets: Targets, who: str) -> None:
    calls, failures = fuzz(targets, who)
    assert calls > 0
    assert not failures, f"{len(failures)} failures in {calls} requests:\n\n" + "\n\n".join(
        failures[:15]
    )
    for server in targets.servers:  # the fuzzing left every server serving
        r = httpx.get(f"{server.base}/api/v1/health/live", timeout=5)
        assert r.status_code == 200, server.backend


def test_sampled_strategies_cover_every_operation(targets: Targets) -> None:
    """Every operation of the document is fuzzed (none failed to load as a strategy)."""
    operations = [r.ok() for r in targets.schema.get_all_operations()]
    assert len(operations) >= 30
    document = httpx.get(f"{targets.servers[0].base}/openapi.json", timeout=5).json()
    declared = sum(
        1 for item in document["paths"].values() for m in item if m in ("get", "put", "post",
                                                                          "patch", "delete")
    )
    assert len(operations) == declared
